"""RSQ [74] and GuidedQuant [63] against PyTorch transcriptions of the official code.

Oracles (transcribed line for line below; only the device moves, logging and the write-back into ``layer.weight``
are left out):

* RSQ, https://github.com/ylsung/rsq at commit 1a7cf31d09ff69ac2c3c4c5e9da48d70aabd7996:
  ``OriginalAttentionWeighting.compute_weight`` with ``normalize="default"`` and ``normalize_weight`` of
  ``InputWeightingModule`` (``fake_quant/input_weighting_module.py``), called once per calibration sequence as in
  ``gptq_utils.gptq_fwrd``; ``GPTQ.add_batch(inp, out, weighting)`` (``fake_quant/gptq_utils.py``);
  ``random_hadamard_matrix`` (``fake_quant/hadamard_utils.py``: ``matmul_hadU(diag(s))``, i.e. ``diag(s) H / sqrt
  n``, here with ``scipy.linalg.hadamard`` standing in for the fast transform).
* GuidedQuant, https://github.com/snu-mllab/GuidedQuant at commit dbe3e686260aa68414db28c759c5f900367e4afa:
  ``get_gradients``' ``grad_hook`` (``any_precision/quantization/gradients.py``: squared output gradient times
  1e6, averaged over contiguous channel groups), ``GPTQGuided.add_batch`` and ``GPTQGuided.fasterquant``
  (``spin_quant/eval_utils/gptq_guided_utils.py``) with the per-channel min-max quantizer of IST-DASLab/gptq
  ``quant.py`` (commit 2d65066), the grid :mod:`paperlab.quant.gptq` uses.

Scale conventions: the official RSQ Hessian counts sequences (``2 / nsamples``), ours tokens, so ours times the
sequence length is theirs; the official GuidedQuant Hessian is an unnormalized sum over tokens with 1e6-scaled
saliency, ours ``2 / N`` times it with unscaled saliency. GPTQ's result does not depend on the scale of H (damping
is relative), which the last tests check on the quantized weights.

Tolerances: Hessians and importance 1e-5 relative (float32 sums in a different order); quantized weights 1e-4
absolute (Cholesky kernels of LAPACK vs XLA, ~1e-6 relative, far below half a quantization step).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from flax import nnx

torch = pytest.importorskip("torch")

from paperlab import models  # noqa: E402
from paperlab.quant import gptq  # noqa: E402
from paperlab.quant import guidedquant as gq  # noqa: E402
from paperlab.quant import rsq  # noqa: E402


# ---------------------------------------------------------------------------------------------------------------
# RSQ (ylsung/rsq @ 1a7cf31)


def normalize_weight(input_tensor, min_value, max_value, quantile_value=None):
  tensor_min, tensor_max = torch.min(input_tensor), torch.max(input_tensor)
  normalized_input = (input_tensor - tensor_min) / (tensor_max - tensor_min)
  normalized_input = normalized_input * (max_value - min_value) + min_value
  normalized_input.clamp_(min_value, max_value)
  return normalized_input


def attncon_compute_weight(attn_weights, min_value, max_value):
  """``OriginalAttentionWeighting.compute_weight`` after the attention call, ``normalize="default"``."""
  weighting = attn_weights.float().sum(dim=1)  # sum over heads
  weighting = weighting.sum(dim=1)  # sum over tokens
  weighting = weighting.float()
  weighting = weighting.mean(dim=0)  # mean over batch, but the batch size should be just one
  return normalize_weight(weighting, min_value=min_value, max_value=max_value)


class RSQGPTQHessian:
  """``GPTQ.__init__`` (the Hessian part) and ``GPTQ.add_batch`` with a weighting."""

  def __init__(self, columns):
    self.H = torch.zeros((columns, columns))
    self.nsamples = 0

  def add_batch(self, inp, out, weighting=None):
    if len(inp.shape) == 2:
      inp = inp.unsqueeze(0)
    tmp = inp.shape[0]
    if len(inp.shape) == 3:
      inp = inp.reshape((-1, inp.shape[-1]))
    inp = inp.t()
    self.H *= self.nsamples / (self.nsamples + tmp)
    self.nsamples += tmp
    inp = math.sqrt(2 / self.nsamples) * inp.float()
    if weighting is not None:
      weighting = weighting / weighting.sum() * weighting.shape[0]
      inp = inp * weighting.to(inp.device) ** 0.5
    self.H += inp.matmul(inp.t())


def _attn_and_inputs(seed, seqs=3, heads=2, t=16, d=32):
  k1, k2 = jax.random.split(jax.random.key(seed))
  scores = jax.random.normal(k1, (seqs, heads, t, t)) * 2.0
  scores = jnp.where(jnp.tril(jnp.ones((t, t), bool)), scores, -jnp.inf)
  return jax.nn.softmax(scores, axis=-1), jax.random.normal(k2, (seqs, t, d))


def test_rsq_attncon_importance_matches_official():
  p, _ = _attn_and_inputs(0)
  ours = rsq.token_importance(p, r_min=0.005, r_max=1.0)
  for j in range(p.shape[0]):  # the official code weighs one calibration sequence at a time
    ref = attncon_compute_weight(torch.tensor(np.asarray(p[j:j + 1])), 0.005, 1.0)
    np.testing.assert_allclose(ours[j], ref.numpy(), rtol=1e-5, atol=1e-7)


def test_rsq_weighted_hessian_matches_official_add_batch():
  p, x = _attn_and_inputs(1)
  r = rsq.token_importance(p, r_min=0.01, r_max=1.0)
  oracle = RSQGPTQHessian(x.shape[-1])
  for j in range(x.shape[0]):
    oracle.add_batch(torch.tensor(np.asarray(x[j:j + 1])), None, torch.tensor(np.asarray(r[j])))
  ours = rsq.weighted_hessian(x, r) * x.shape[1]  # ours counts tokens, theirs sequences
  np.testing.assert_allclose(ours, oracle.H.numpy(), rtol=1e-5, atol=1e-5)
  # the scale does not move GPTQ: the same quantized kernel from either Hessian
  w = 0.1 * jax.random.normal(jax.random.key(2), (32, 8))
  a = gptq.gptq_layer(w, jnp.asarray(oracle.H.numpy()), bits=3)
  b = rsq.rsq_layer(w, x, r, bits=3)
  np.testing.assert_allclose(a.w_hat, b.w_hat, atol=1e-4)


def test_rsq_random_hadamard_is_the_official_construction():
  q = rsq.random_hadamard(32, jax.random.key(3))
  s = np.sign(np.asarray(q)[:, 0])  # the signs drawn: row i of diag(s) H has the sign of s_i in column 0
  Q = torch.diag(torch.tensor(s, dtype=torch.float64))
  ref = Q @ torch.tensor(scipy.linalg.hadamard(32), dtype=torch.float64) / math.sqrt(32)  # matmul_hadU(Q)
  np.testing.assert_allclose(q, ref.numpy(), atol=1e-7)


# ---------------------------------------------------------------------------------------------------------------
# GuidedQuant (snu-mllab/GuidedQuant @ dbe3e68)


def quantize(x, scale, zero, maxq):
  q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
  return scale * (q - zero)


class Quantizer:
  """IST-DASLab/gptq ``quant.py`` (per channel, asymmetric)."""

  def configure(self, bits):
    self.maxq = torch.tensor(2 ** bits - 1)

  def find_params(self, x):
    tmp = torch.zeros(x.shape[0])
    xmin = torch.minimum(x.min(1)[0], tmp)
    xmax = torch.maximum(x.max(1)[0], tmp)
    tmp = (xmin == 0) & (xmax == 0)
    xmin[tmp] = -1
    xmax[tmp] = +1
    self.scale = ((xmax - xmin) / self.maxq).reshape(-1, 1)
    self.zero = torch.round(-xmin.reshape(-1, 1) / self.scale)

  def fake_quantize(self, x, st_idx, end_idx):
    return quantize(x, self.scale[st_idx:end_idx], self.zero[st_idx:end_idx], self.maxq)


def guided_grad_hook(grad, num_groups):
  """``get_gradients``' ``grad_hook``: (1e3 g)^2 averaged over contiguous channel groups."""
  bsz, seq_len, hidden_dim = grad.shape
  group_size = hidden_dim // num_groups
  grad_squared = (grad.float() * 1e3).pow(2).view(bsz, seq_len, num_groups, group_size)
  return grad_squared.mean(dim=-1)


def guided_add_batch(H, inp, sal_batch):
  """``GPTQGuided.add_batch``: H (D, D, G) += einsum over tokens of X, S-weighted X."""
  inp = inp.reshape(-1, inp.shape[-1]).float()
  sal_batch = sal_batch.reshape(-1, sal_batch.shape[-1]).float()
  sal_weighted_inp = torch.einsum("nj,ng->njg", inp, sal_batch)
  block = torch.einsum("ni,njg->ijg", inp, sal_weighted_inp)
  H.add_(block)


def guided_fasterquant(W, H_all, bits, blocksize=128, percdamp=0.01):
  """``GPTQGuided.fasterquant`` without groups or act-order; returns Q (rows, columns)."""
  W = W.clone().float()
  rows, columns = W.shape
  num_groups = H_all.shape[-1]
  quantizer = Quantizer()
  quantizer.configure(bits)
  quantizer.find_params(W)
  rows_per_sub = rows // num_groups
  Q_final = torch.zeros_like(W)
  for sub_idx in range(num_groups):
    row_start, row_end = sub_idx * rows_per_sub, (sub_idx + 1) * rows_per_sub
    W_sub = W[row_start:row_end, :]
    H_sub = H_all[:, :, sub_idx].clone()
    dead = torch.diag(H_sub) == 0
    H_sub[dead, dead] = 1
    W_sub[:, dead] = 0
    Q = torch.zeros_like(W_sub)
    damp = percdamp * torch.mean(torch.diag(H_sub))
    diag = torch.arange(columns)
    H_sub[diag, diag] += damp
    H_sub = torch.linalg.cholesky(H_sub)
    H_sub = torch.cholesky_inverse(H_sub)
    Hinv = torch.linalg.cholesky(H_sub, upper=True)
    for i1 in range(0, columns, blocksize):
      i2 = min(i1 + blocksize, columns)
      count = i2 - i1
      W1 = W_sub[:, i1:i2].clone()
      Q1 = torch.zeros_like(W1)
      Err1 = torch.zeros_like(W1)
      Hinv1 = Hinv[i1:i2, i1:i2]
      for i in range(count):
        w = W1[:, i]
        d = Hinv1[i, i]
        q = quantizer.fake_quantize(w.unsqueeze(1), st_idx=row_start, end_idx=row_end).flatten()
        Q1[:, i] = q
        err1 = (w - q) / d
        W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
        Err1[:, i] = err1
      Q[:, i1:i2] = Q1
      W_sub[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    Q_final[row_start:row_end, :] = Q
  return Q_final


def _torch_mlp(m):
  """The same 8-16-4 ReLU MLP in torch, with forward hooks on the Linear outputs as ``get_gradients`` does."""
  lin1 = torch.nn.Linear(8, 16)
  head = torch.nn.Linear(16, 4)
  with torch.no_grad():
    for t, j in ((lin1, m.hidden[0]), (head, m.head)):
      t.weight.copy_(torch.tensor(np.asarray(j.kernel[...]).T))
      t.bias.copy_(torch.tensor(np.asarray(j.bias[...])))
  return lin1, head


def test_guided_saliency_matches_official_grad_hook():
  m = models.MLP(8, [16], 4, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(4), (2, 6, 8))  # 2 sequences of 6 tokens, one backward each
  y = jax.random.randint(jax.random.key(5), (2, 6), 0, 4)
  lin1, head = _torch_mlp(m)
  store = {"hidden/0": [], "head": []}

  def hook(name):
    def forward_hook(module, inp, out):
      out.retain_grad()
      out.register_hook(lambda grad: store[name].append(guided_grad_hook(grad, 2)))
    return forward_hook

  lin1.register_forward_hook(hook("hidden/0"))
  head.register_forward_hook(hook("head"))
  for j in range(2):
    tokens = torch.tensor(np.asarray(x[j:j + 1]))
    logits = head(torch.relu(lin1(tokens)))
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 4), torch.tensor(np.asarray(y[j])).long())
    loss.backward()
  ours = gq.guided_saliency(m, [x[0:1], x[1:2]], [y[0:1], y[1:2]], n_groups=2)
  for name in store:
    ref = torch.cat(store[name], dim=0).reshape(-1, 2).numpy() / 1e6  # the official 1e3 gradient scale, squared
    np.testing.assert_allclose(ours[name], ref, rtol=1e-4, atol=1e-12)


def test_guided_hessian_and_gptq_match_official():
  k1, k2, k3 = jax.random.split(jax.random.key(6), 3)
  x = jax.random.normal(k1, (2, 64, 32)) @ (jnp.eye(32) + 0.3 * jax.random.normal(k2, (32, 32)))
  s = jax.random.uniform(k3, (2, 64, 2)) ** 3
  H = torch.zeros(32, 32, 2)
  for j in range(2):
    guided_add_batch(H, torch.tensor(np.asarray(x[j])), torch.tensor(np.asarray(s[j])))
  ours = gq.guided_hessian(x.reshape(-1, 32), s.reshape(-1, 2))
  np.testing.assert_allclose(ours * 128 / 2, H.permute(2, 0, 1).numpy(), rtol=1e-5, atol=1e-4)
  w = 0.1 * jax.random.normal(jax.random.key(7), (32, 16))
  ref = guided_fasterquant(torch.tensor(np.asarray(w).T), H, bits=3)
  np.testing.assert_allclose(gq.guided_gptq_layer(w, ours, bits=3).w_hat, ref.numpy().T, atol=1e-4)
