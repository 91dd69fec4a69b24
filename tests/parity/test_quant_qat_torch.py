"""QAT quantizers against PyTorch autograd on transcriptions of the official / maintained implementations.

Oracles (transcribed below line for line, torch autograd computes the gradients):
  * STE and LSQ: ``grad_scale``, ``round_pass`` and ``LsqQuan.forward`` / ``init_from`` of
    ``quan/quantizer/lsq.py`` in https://github.com/zhutmost/lsq-net at commit
    1f644e9b45925354503f2e2d070c56ae8b552202 (MIT).
  * EfficientQAT: ``round_ste``, ``clamp_ste`` and ``UniformAffineQuantizer.__init__`` / ``fake_quant`` of
    ``quantize/quantizer.py`` in https://github.com/OpenGVLab/EfficientQAT at commit
    78fd3fb6b6a2e70cc29d9e5d5f4fc6c3ea250619 (torch layout ``(out, in)``; ours is the Flax transpose).
  * QA-LoRA: the forward of ``peft_utils.py`` (``AvgPool1d(group_size)`` before ``lora_A``) and the zero-point
    merge of ``merge.py`` in https://github.com/yuhuixu1993/qa-lora at commit
    91604c71e981946442b05b5b6c3f8f07e4e9c1dc, with GPTQ's dequantization ``scale * (q - zero)``.

Tolerances: forward values bit-equal or 1e-6 (float32, same operation order; torch and XLA round the same way);
gradients 1e-5 relative (float32 reductions in different orders).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from paperlab.quant import qat, qat_recipes, rtn  # noqa: E402


# ---------------------------------------------------------------------------------------------------------------
# lsq-net @ 1f644e9 quan/quantizer/lsq.py

def grad_scale(x, scale):
  y = x
  y_grad = x * scale
  return (y - y_grad).detach() + y_grad


def round_pass(x):
  y = x.round()
  y_grad = x
  return (y - y_grad).detach() + y_grad


def lsq_forward(x, s, bit, per_channel=True):
  thd_neg, thd_pos = -2 ** (bit - 1), 2 ** (bit - 1) - 1  # all_positive=False, symmetric=False
  s_grad_scale = 1.0 / ((thd_pos * x.numel()) ** 0.5)
  s_scale = grad_scale(s, s_grad_scale)
  x = x / s_scale
  x = torch.clamp(x, thd_neg, thd_pos)
  x = round_pass(x)
  x = x * s_scale
  return x


def lsq_init(x, bit, per_channel=True):
  thd_pos = 2 ** (bit - 1) - 1
  if per_channel:
    return x.detach().abs().mean(dim=list(range(1, x.dim())), keepdim=True) * 2 / (thd_pos ** 0.5)
  return x.detach().abs().mean() * 2 / (thd_pos ** 0.5)


# ---------------------------------------------------------------------------------------------------------------
# EfficientQAT @ 78fd3fb quantize/quantizer.py

def round_ste(x):
  return (x.round() - x).detach() + x


def clamp_ste(x, min, max):  # pylint: disable=redefined-builtin
  return (x.clamp(min, max) - x).detach() + x


def eqat_init(weight, n_bits, group_size):
  x = weight.reshape(-1, group_size)
  xmin = x.amin([-1], keepdim=True)
  xmax = x.amax([-1], keepdim=True)
  scale = (xmax - xmin) / (2 ** n_bits - 1)
  scale = scale.clamp(min=1e-4, max=1e4)
  zero_point = -(xmin / scale).clamp(min=-1e4, max=1e4)
  return scale, zero_point.round()


def eqat_fake_quant(x, scale, zero_point, n_bits, group_size):
  qmin, qmax = 0, 2 ** n_bits - 1
  scale = clamp_ste(scale, 1e-4, 1e4)
  round_zero_point = clamp_ste(round_ste(zero_point), qmin, qmax)
  dim1, dim2 = x.shape
  x = x.reshape(-1, group_size)
  x_int = round_ste(x / scale)
  x_int = x_int.add(round_zero_point)
  x_int = x_int.clamp(qmin, qmax)
  x_dequant = x_int.sub(round_zero_point)
  x_dequant = x_dequant.mul(scale)
  return x_dequant.reshape(dim1, dim2)


# ---------------------------------------------------------------------------------------------------------------


def _t(a):
  return torch.tensor(np.asarray(a), dtype=torch.float32, requires_grad=True)


@pytest.mark.parametrize("bits", [2, 4])
def test_lsq_forward_and_gradients_match_lsq_net(bits):
  rng = np.random.default_rng(bits)
  w = rng.normal(size=(24, 8)).astype(np.float32)  # Flax (in, out); lsq-net per channel = torch rows (out, in)
  up = rng.normal(size=w.shape).astype(np.float32)
  wt = _t(w.T)
  st = torch.nn.Parameter(lsq_init(wt, bits))
  out = lsq_forward(wt, st, bits)
  (out * torch.tensor(up.T)).sum().backward()

  step = qat.lsq_init_step(jnp.asarray(w), bits=bits, axis=0)
  np.testing.assert_allclose(np.asarray(step).ravel(), st.detach().numpy().ravel(), rtol=1e-6)
  fwd = qat.lsq_quantize(jnp.asarray(w), step, bits=bits)
  gw, gs = jax.grad(lambda w, s: jnp.sum(qat.lsq_quantize(w, s, bits=bits) * up), argnums=(0, 1))(jnp.asarray(w),
                                                                                                 step)
  np.testing.assert_allclose(np.asarray(fwd), out.detach().numpy().T, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(np.asarray(gw), wt.grad.numpy().T, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(gs).ravel(), st.grad.numpy().ravel(), rtol=1e-5, atol=1e-7)
  if bits == 2:  # at 2 bits the LSQ init clips the tails: clipped weights get no gradient
    assert np.any(np.asarray(gw) == 0) and np.any(np.asarray(gw) != 0)


def test_fake_quantize_ste_gradient_matches_torch_round_pass():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(32, 4)).astype(np.float32)
  up = rng.normal(size=w.shape).astype(np.float32)
  q = rtn.quantize_rtn(jnp.asarray(w), bits=3, group_size=8)
  wt = _t(w)
  scale = torch.tensor(np.repeat(np.asarray(q.scale), 8, axis=0))
  zero = torch.tensor(np.repeat(np.asarray(q.zero), 8, axis=0))
  # GPTQ's min-max grid never clips (checked), so the oracle is lsq-net's round_pass without the clamp (torch's
  # clamp gives zero gradient at the exact bounds 0 and 2^b - 1, which the min-max grid reaches by construction)
  levels = torch.round(wt / scale) + zero
  assert bool(((levels >= 0) & (levels <= 7)).all())
  out = scale * (round_pass(wt / scale) + zero - zero)
  (out * torch.tensor(up)).sum().backward()
  fq, vjp = jax.vjp(lambda w: qat.fake_quantize(w, bits=3, group_size=8), jnp.asarray(w))
  np.testing.assert_allclose(np.asarray(fq), out.detach().numpy(), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(np.asarray(vjp(jnp.asarray(up))[0]), wt.grad.numpy(), rtol=1e-6)


def test_efficientqat_init_forward_and_gradients_match_official():
  rng = np.random.default_rng(1)
  w = rng.normal(size=(32, 6)).astype(np.float32)  # Flax (in, out) -> torch (out, in), groups along in
  up = rng.normal(size=w.shape).astype(np.float32)
  g, bits = 8, 2
  s_t, z_t = eqat_init(torch.tensor(w.T), bits, g)
  init = qat_recipes.efficientqat_init(jnp.asarray(w), bits=bits, group_size=g)
  # ours is (in // g, out); torch's (out * in // g, 1) in row-major (out, group) order
  # XLA:CPU divides by the constant 2^b - 1 as a multiplication by its reciprocal: 1 ulp
  np.testing.assert_allclose(np.asarray(init["scale"]).T.ravel(), s_t.numpy().ravel(), rtol=2e-7)
  np.testing.assert_array_equal(np.asarray(init["zero"]).T.ravel(), z_t.numpy().ravel())
  # perturb away from the init so that zero rounding and clamping are exercised
  scale = np.asarray(init["scale"]) * rng.uniform(0.8, 1.2, size=init["scale"].shape).astype(np.float32)
  zero = np.asarray(init["zero"]) + rng.uniform(-0.7, 0.7, size=init["zero"].shape).astype(np.float32)
  wt, st, zt = _t(w.T), _t(scale.T.reshape(-1, 1)), _t(zero.T.reshape(-1, 1))
  out = eqat_fake_quant(wt, st, zt, bits, g)
  (out * torch.tensor(up.T)).sum().backward()
  f = lambda w, s, z: jnp.sum(qat_recipes.affine_fake_quantize(w, s, z, bits=bits) * up)
  fwd = qat_recipes.affine_fake_quantize(jnp.asarray(w), scale, zero, bits=bits)
  gw, gs, gz = jax.grad(f, argnums=(0, 1, 2))(jnp.asarray(w), jnp.asarray(scale), jnp.asarray(zero))
  np.testing.assert_allclose(np.asarray(fwd), out.detach().numpy().T, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(np.asarray(gw), wt.grad.numpy().T, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(gs).T.ravel(), st.grad.numpy().ravel(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(gz).T.ravel(), zt.grad.numpy().ravel(), rtol=1e-5, atol=1e-6)


def test_qalora_forward_and_merge_match_official():
  rng = np.random.default_rng(2)
  d_in, d_out, g, r, alpha = 64, 12, 16, 4, 16.0
  w = rng.normal(size=(d_in, d_out)).astype(np.float32)
  qw = rtn.quantize_rtn(jnp.asarray(w), bits=4, group_size=g)
  a = rng.normal(size=(r, d_in // g)).astype(np.float32)
  b = rng.normal(size=(d_out, r)).astype(np.float32)
  x = rng.normal(size=(5, d_in)).astype(np.float32)
  scale = alpha / r
  # official forward: result + lora_B(lora_A(qa_pool(x))) * scale, with the GPTQ dequantized base
  pool = torch.nn.AvgPool1d(g)
  xt = torch.tensor(x)
  w_hat_t = torch.tensor(np.asarray(qw.w_hat))
  lin_a = torch.nn.Linear(d_in // g, r, bias=False)
  lin_b = torch.nn.Linear(r, d_out, bias=False)
  with torch.no_grad():
    lin_a.weight.copy_(torch.tensor(a))
    lin_b.weight.copy_(torch.tensor(b))
    ref = xt @ w_hat_t + lin_b(lin_a(pool(xt))) * scale
    # official merge.py: qzeros -= (B @ A).t() * scale / group_size / scales  (torch qzeros layout (in // g, out))
    qzeros = torch.tensor(np.asarray(qw.zero)) - (lin_b.weight @ lin_a.weight).t() * scale / g / torch.tensor(
        np.asarray(qw.scale))
  adapter = {"lora_A": jnp.asarray(a), "lora_B": jnp.asarray(b)}
  ours = qat_recipes.qalora_apply(jnp.asarray(x), qw, adapter, alpha=alpha)
  np.testing.assert_allclose(np.asarray(ours), ref.numpy(), rtol=1e-5, atol=1e-5)
  merged = qat_recipes.qalora_merge(qw, adapter, alpha=alpha)
  np.testing.assert_allclose(np.asarray(merged.zero), qzeros.numpy(), rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(merged.codes), np.asarray(qw.codes))
