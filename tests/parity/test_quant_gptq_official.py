"""GPTQ with act-order (and static groups) against a PyTorch transcription of the official IST-DASLab code.

Oracle: ``GPTQ.fasterquant`` of ``gptq.py`` and ``Quantizer.find_params`` / ``quantize`` of ``quant.py`` in
https://github.com/IST-DASLab/gptq at commit 2d65066eeb06a5c9ff5184d8cebdf33662c67faf (2023-07-11), Apache-2.0,
transcribed below line for line. Left out: the ``nn.Conv2d``/``transformers.Conv1D`` reshapes, the timing and
debug prints, ``torch.cuda.synchronize()`` (CPU here), the ``mse`` / ``trits`` quantizer options (off by default)
and the write-back into ``layer.weight`` (the function returns ``Q`` instead). ``add_batch``'s Hessian recursion
is transcribed as well and used to build H.

Tolerance: 1e-4 absolute on the dequantized weight. Both sides run float32; the only differences are the
Cholesky/inverse kernels (LAPACK in torch vs XLA), ~1e-6 relative, far below half a quantization step, so no
rounding decision flips on these inputs.

``benchmarks/quant_gptq.py`` times :func:`official_fasterquant` as the PyTorch reference.
"""

from __future__ import annotations

import copy
import math

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from paperlab.quant import gptq as pgptq  # noqa: E402


# ---------------------------------------------------------------------------------------------------------------
# transcription of quant.py (IST-DASLab/gptq @ 2d65066)

def quantize(x, scale, zero, maxq):
  if maxq < 0:
    return (x > scale / 2).float() * scale + (x < zero / 2).float() * zero
  q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
  return scale * (q - zero)


class Quantizer:

  def __init__(self, shape=1):
    self.maxq = torch.tensor(0)
    self.scale = torch.zeros(shape)
    self.zero = torch.zeros(shape)

  def configure(self, bits, perchannel=False, sym=True):
    self.maxq = torch.tensor(2 ** bits - 1)
    self.perchannel = perchannel
    self.sym = sym

  def find_params(self, x, weight=False):
    shape = x.shape
    if self.perchannel:
      if weight:
        x = x.flatten(1)
    else:
      x = x.flatten().unsqueeze(0)

    tmp = torch.zeros(x.shape[0])
    xmin = torch.minimum(x.min(1)[0], tmp)
    xmax = torch.maximum(x.max(1)[0], tmp)

    if self.sym:
      xmax = torch.maximum(torch.abs(xmin), xmax)
      tmp = xmin < 0
      if torch.any(tmp):
        xmin[tmp] = -xmax[tmp]
    tmp = (xmin == 0) & (xmax == 0)
    xmin[tmp] = -1
    xmax[tmp] = +1

    self.scale = (xmax - xmin) / self.maxq
    if self.sym:
      self.zero = torch.full_like(self.scale, (self.maxq + 1) / 2)
    else:
      self.zero = torch.round(-xmin / self.scale)

    if not self.perchannel:
      tmp = shape[0]
      self.scale = self.scale.repeat(tmp)
      self.zero = self.zero.repeat(tmp)

    shape = [-1] + [1] * (len(shape) - 1)
    self.scale = self.scale.reshape(shape)
    self.zero = self.zero.reshape(shape)

  def ready(self):
    return torch.all(self.scale != 0)


# ---------------------------------------------------------------------------------------------------------------
# transcription of gptq.py (IST-DASLab/gptq @ 2d65066): add_batch and fasterquant for an nn.Linear weight


def official_add_batch(H, nsamples, inp):
  """``GPTQ.add_batch`` for a Linear layer: ``inp`` of shape (batch, seq, in) or (batch, in)."""
  if len(inp.shape) == 2:
    inp = inp.unsqueeze(0)
  tmp = inp.shape[0]
  if len(inp.shape) == 3:
    inp = inp.reshape((-1, inp.shape[-1]))
  inp = inp.t()
  H *= nsamples / (nsamples + tmp)
  nsamples += tmp
  inp = math.sqrt(2 / nsamples) * inp.float()
  H += inp.matmul(inp.t())
  return H, nsamples


def official_fasterquant(weight, H, bits, sym=False, blocksize=128, percdamp=.01, groupsize=-1, actorder=False,
                         static_groups=False):
  """``GPTQ.fasterquant`` on a torch ``weight`` (out, in) and Hessian ``H`` (in, in); returns ``Q`` (out, in)."""
  quantizer = Quantizer()
  quantizer.configure(bits, perchannel=True, sym=sym)
  W = weight.clone()
  W = W.float()
  columns = W.shape[1]
  H = H.clone()

  if not quantizer.ready():
    quantizer.find_params(W, weight=True)

  dead = torch.diag(H) == 0
  H[dead, dead] = 1
  W[:, dead] = 0

  if static_groups:
    groups = []
    for i in range(0, columns, groupsize):
      quantizer1 = copy.deepcopy(quantizer)
      quantizer1.find_params(W[:, i:(i + groupsize)], weight=True)
      groups.append(quantizer1)

  if actorder:
    perm = torch.argsort(torch.diag(H), descending=True)
    W = W[:, perm]
    H = H[perm][:, perm]
    invperm = torch.argsort(perm)

  Losses = torch.zeros_like(W)
  Q = torch.zeros_like(W)

  damp = percdamp * torch.mean(torch.diag(H))
  diag = torch.arange(columns)
  H[diag, diag] += damp
  H = torch.linalg.cholesky(H)
  H = torch.cholesky_inverse(H)
  H = torch.linalg.cholesky(H, upper=True)
  Hinv = H

  for i1 in range(0, columns, blocksize):
    i2 = min(i1 + blocksize, columns)
    count = i2 - i1

    W1 = W[:, i1:i2].clone()
    Q1 = torch.zeros_like(W1)
    Err1 = torch.zeros_like(W1)
    Losses1 = torch.zeros_like(W1)
    Hinv1 = Hinv[i1:i2, i1:i2]

    for i in range(count):
      w = W1[:, i]
      d = Hinv1[i, i]

      if groupsize != -1:
        if not static_groups:
          if (i1 + i) % groupsize == 0:
            quantizer.find_params(W[:, (i1 + i):(i1 + i + groupsize)], weight=True)
        else:
          idx = i1 + i
          if actorder:
            idx = perm[idx]
          quantizer = groups[idx // groupsize]

      q = quantize(w.unsqueeze(1), quantizer.scale, quantizer.zero, quantizer.maxq).flatten()
      Q1[:, i] = q
      Losses1[:, i] = (w - q) ** 2 / d ** 2

      err1 = (w - q) / d
      W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
      Err1[:, i] = err1

    Q[:, i1:i2] = Q1
    Losses[:, i1:i2] = Losses1 / 2

    W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])

  if actorder:
    Q = Q[:, invperm]
  return Q


# ---------------------------------------------------------------------------------------------------------------


def _layer(seed: int, n_in: int, n_out: int, batches: int = 4):
  """A weight and a Hessian from correlated inputs with per-channel scales (distinct diag(H): no argsort ties)."""
  rng = np.random.default_rng(seed)
  mix = rng.standard_normal((n_in, n_in)) / np.sqrt(n_in) + np.eye(n_in)
  chan = np.exp(rng.uniform(-1.0, 1.0, n_in))
  H, n = torch.zeros((n_in, n_in)), 0
  for _ in range(batches):
    x = (rng.standard_normal((2, 32, n_in)) @ mix * chan).astype(np.float32)
    H, n = official_add_batch(H, n, torch.from_numpy(x))
  w = (rng.standard_normal((n_out, n_in)) * 0.1).astype(np.float32)
  return torch.from_numpy(w), H


@pytest.mark.parametrize("bits,groupsize,sym,static_groups,n_in", [
    (4, -1, False, False, 160),  # per channel, a partial last block
    (4, 32, False, False, 256),  # groups smaller than the block: grids read the block-start weight
    (3, 64, False, True, 192),   # static groups
    (4, 128, True, False, 256),  # symmetric, the paper's g128
    (2, 32, True, True, 128),
])
def test_gptq_act_order_matches_official(bits, groupsize, sym, static_groups, n_in):
  w, H = _layer(bits * 100 + n_in, n_in, 48)
  ref = official_fasterquant(w, H, bits, sym=sym, groupsize=groupsize, actorder=True, static_groups=static_groups)
  ours = pgptq.gptq_layer(jnp.asarray(w.numpy().T), jnp.asarray(H.numpy()), bits=bits,
                          group_size=None if groupsize == -1 else groupsize, symmetric=sym, act_order=True,
                          static_groups=static_groups)
  np.testing.assert_allclose(np.asarray(ours.w_hat).T, ref.numpy(), atol=1e-4, rtol=0)


def test_gptq_without_act_order_matches_official_with_a_dead_input():
  w, H = _layer(7, 96, 32)
  H[5, :] = 0
  H[:, 5] = 0  # an input that is always zero
  ref = official_fasterquant(w, H, 4, groupsize=32)
  ours = pgptq.gptq_layer(jnp.asarray(w.numpy().T), jnp.asarray(H.numpy()), bits=4, group_size=32)
  np.testing.assert_allclose(np.asarray(ours.w_hat).T, ref.numpy(), atol=1e-4, rtol=0)
  assert np.all(np.asarray(ours.w_hat)[5] == 0)


def test_hessian_accumulation_matches_official_add_batch():
  rng = np.random.default_rng(0)
  xs = [rng.standard_normal((3, 8, 16)).astype(np.float32) for _ in range(3)]
  H, n = torch.zeros((16, 16)), 0
  for x in xs:
    H, n = official_add_batch(H, n, torch.from_numpy(x))
  # the official code counts sequences, paperlab counts tokens: H differs by the constant seq_len = 8
  ours = pgptq.hessian(jnp.concatenate([jnp.asarray(x) for x in xs]))
  np.testing.assert_allclose(np.asarray(ours) * 8, H.numpy(), rtol=1e-5, atol=1e-5)
