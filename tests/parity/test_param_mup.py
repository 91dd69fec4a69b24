"""muP parity with the ``mup`` package (Microsoft, PyTorch; the implementation of Tensor Programs V).

The same architectures are built in PyTorch with ``mup`` (``MuReadout`` as the readout, ``set_base_shapes`` against a
base and a delta model) and in Flax NNX (``paperlab.models``), and compared leaf by leaf (names mapped, PyTorch's
``(out, in)`` kernels transposed to Flax's ``(in, out)``):

* init std: PyTorch's default init has std ``1/sqrt(3 fan_in)`` for ``nn.Linear`` weights and biases;
  ``set_base_shapes(rescale_params=True)`` multiplies some of them by a deterministic factor, measured here as the
  ratio of each tensor after / before. ``paperlab.param.parametrize(..., init_gain=bias_gain=1/sqrt(3))`` must give
  ``init_scale`` = that ratio and ``init_std`` = ``1/sqrt(3 fan_in)`` times it (relative error <= 1e-6);
* learning-rate multipliers: each parameter's group lr in ``MuAdam(params, lr=1)`` / ``MuSGD(params, lr=1)``
  equals ``lr_multipliers`` (relative error <= 1e-6);
* forward multipliers and training: with the same weights, the logits of the ``mup`` model and of the Flax model
  run through ``apply_multipliers`` agree (rtol 1e-5), and so do the weights after 3 steps of ``MuAdam`` (lr 1e-3) vs
  ``param.mu_adam`` and ``MuSGD`` (lr 0.05, momentum 0.9) vs ``param.mu_sgd`` on the same batch (float32, rtol 1e-5,
  atol 1e-6).

The transformer check uses the shapes of ``paperlab.models.CharTransformer`` (embedding, learned positions, fused
qkv, MLP, LayerNorms, untied readout) built from ``nn.Linear`` / ``nn.Embedding`` / ``nn.LayerNorm`` / ``MuReadout``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
mup = pytest.importorskip("mup")

from paperlab import param  # noqa: E402
from paperlab.models import MLP, CharTransformer  # noqa: E402
from _mup_torch_models import TorchTransformer, flax_name as _flax_name  # noqa: E402

torch.set_num_threads(1)
TOL = 1e-6
TORCH_GAIN = 1 / math.sqrt(3)  # nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) has std 1/sqrt(3 fan_in)


class TorchMLP(torch.nn.Module):
  def __init__(self, width: int, depth: int = 2):
    super().__init__()
    dims = [64] + [width] * depth
    self.hidden = torch.nn.ModuleList([torch.nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:])])
    self.head = mup.MuReadout(width, 10)

  def forward(self, x):
    for layer in self.hidden:
      x = torch.relu(layer(x))
    return self.head(x)


def _to_flax(t: torch.Tensor, flax_name: str) -> np.ndarray:
  a = t.detach().numpy()
  return a.T if flax_name.endswith("kernel") else a


def _mup_model(make, width, base_width, delta_width):
  torch.manual_seed(0)
  model = make(width)
  before = {n: p.detach().clone() for n, p in model.named_parameters()}
  mup.set_base_shapes(model, make(base_width), delta=make(delta_width))
  ratio = {}
  for n, p in model.named_parameters():
    nz = before[n].abs() > 0
    if not bool(nz.any()):  # zero-initialized (LayerNorm bias): nothing to rescale
      ratio[n] = 1.0
      continue
    r = (p.detach()[nz] / before[n][nz]).numpy()
    assert np.ptp(r) <= 1e-6 * abs(r[0]), f"{n}: set_base_shapes' rescaling is not one factor"
    ratio[n] = float(r[0])
  return model, ratio


def _group_lrs(optimizer, model) -> dict:
  names = {id(p): n for n, p in model.named_parameters()}
  return {names[id(p)]: g["lr"] for g in optimizer.param_groups for p in g["params"]}


def _rel(a, b):
  return abs(a - b) / max(abs(b), 1e-30)


CASES = {
    "mlp": (lambda w: TorchMLP(w), lambda w: MLP(64, [w, w], 10, rngs=nnx.Rngs(0)), 256, 32, 64),
    "mlp_narrower": (lambda w: TorchMLP(w, depth=3), lambda w: MLP(64, [w] * 3, 10, rngs=nnx.Rngs(0)), 48, 128, 64),
    "transformer": (lambda w: TorchTransformer(w),
                    lambda w: CharTransformer(50, w, 2, 4, 16, rngs=nnx.Rngs(0)), 128, 32, 64),
}


@pytest.mark.parametrize("case", list(CASES))
def test_mup_init_std_and_lr_multipliers_equal_mups(case):
  make_torch, make_flax, width, base, delta = CASES[case]
  model, ratio = _mup_model(make_torch, width, base, delta)
  flax_model = nnx.eval_shape(lambda: make_flax(width))
  flax_base = nnx.eval_shape(lambda: make_flax(base))
  flax_delta = nnx.eval_shape(lambda: make_flax(delta))
  lrs = {"adam": _group_lrs(mup.MuAdam(model.parameters(), lr=1.0), model),
         "sgd": _group_lrs(mup.MuSGD(model.parameters(), lr=1.0), model)}
  for opt in ("adam", "sgd"):
    p = param.parametrize(flax_model, flax_base, delta=flax_delta, optimizer=opt, init_gain=TORCH_GAIN,
                          bias_gain=TORCH_GAIN)
    assert len(p.rules) == len(ratio)
    for name, tparam in model.named_parameters():
      rule = p.rules[_flax_name(model, name)]
      assert _rel(rule.lr_multiplier, lrs[opt][name]) <= TOL, (opt, name, rule.lr_multiplier, lrs[opt][name])
      module = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
      if name == "pos" or isinstance(module, (torch.nn.LayerNorm, torch.nn.Embedding)):
        # not nn.Linear-initialized: set_base_shapes leaves them, and so does the parametrization
        assert ratio[name] == 1.0 and rule.init_scale == 1.0, name
        continue
      assert _rel(rule.init_scale, ratio[name]) <= TOL, (name, rule.init_scale, ratio[name])
      fan_in = tparam.shape[1] if tparam.ndim == 2 else rule.fan_in  # bias: its layer's fan-in
      torch_std = TORCH_GAIN / math.sqrt(fan_in) * ratio[name]
      assert _rel(rule.init_std, torch_std) <= TOL, (name, rule.init_std, torch_std)


def _flax_params_from(model: torch.nn.Module) -> dict:
  params = {}
  for name, p in model.named_parameters():
    fname = _flax_name(model, name)
    node = params
    *parents, leaf = fname.split("/")
    for k in parents:
      node = node.setdefault(int(k) if k.isdigit() else k, {})
    node[leaf] = jnp.asarray(_to_flax(p, fname))
  return params


def _mlp_loss(params, graphdef, p, x, y):
  model = nnx.merge(graphdef, param.apply_multipliers(params, p))
  logits = model(x)
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))


@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_mup_forward_and_three_steps_equal_mups(opt):
  width, base, delta = 256, 32, 64
  model, _ = _mup_model(lambda w: TorchMLP(w), width, base, delta)
  g = torch.Generator().manual_seed(1)
  x, y = torch.randn(32, 64, generator=g), torch.randint(0, 10, (32,), generator=g)
  flax_model = MLP(64, [width, width], 10, rngs=nnx.Rngs(0))
  graphdef, _ = nnx.split(flax_model, nnx.Param)
  params = _flax_params_from(model)
  p = param.parametrize(flax_model, nnx.eval_shape(lambda: MLP(64, [base, base], 10, rngs=nnx.Rngs(0))),
                        delta=nnx.eval_shape(lambda: MLP(64, [delta, delta], 10, rngs=nnx.Rngs(0))), optimizer=opt)
  xj, yj = jnp.asarray(x.numpy()), jnp.asarray(y.numpy())
  logits = nnx.merge(graphdef, param.apply_multipliers(params, p))(xj)
  np.testing.assert_allclose(np.asarray(logits), model(x).detach().numpy(), rtol=1e-5, atol=1e-6)

  lr = 1e-3 if opt == "adam" else 0.05  # Adam normalizes tiny gradient entries: keep float32 noise below atol
  topt = mup.MuAdam(model.parameters(), lr=lr) if opt == "adam" else mup.MuSGD(model.parameters(), lr=lr,
                                                                               momentum=0.9)
  tx = param.mu_adam(lr, p) if opt == "adam" else param.mu_sgd(lr, p, momentum=0.9)
  state = tx.init(params)
  step = jax.jit(lambda params, state: _step(params, state, tx, graphdef, p, xj, yj))
  for _ in range(3):
    topt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    topt.step()
    params, state = step(params, state)
  for name, tparam in model.named_parameters():
    fname = _flax_name(model, name)
    ours = params
    for k in fname.split("/"):
      ours = ours[int(k) if k.isdigit() else k]
    np.testing.assert_allclose(np.asarray(ours), _to_flax(tparam, fname), rtol=1e-5, atol=1e-6, err_msg=name)


def _step(params, state, tx, graphdef, p, x, y):
  grads = jax.grad(_mlp_loss)(params, graphdef, p, x, y)
  updates, state = tx.update(grads, state, params)
  return jax.tree.map(lambda a, u: a + u, params, updates), state
