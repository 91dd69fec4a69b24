"""Tensor-by-tensor execution of a merge plan (:mod:`paperlab.merge.mergekit_config`) from checkpoints on disk to a
sharded checkpoint, with the memory of a few tensors: per output tensor, the inputs are read, merged by the
pytree functions of :mod:`paperlab.merge` (a tensor is a pytree leaf) and written at their final offset while the
next tensor's inputs are already being read (a prefetch thread; reads and writes release the GIL).

Each mergekit method maps onto those functions with mergekit's conventions (mergekit 0.1.5,
``mergekit/merge_methods/generalized_task_arithmetic.py``, ``sparsify.py``, ``linear.py``, ``slerp.py``,
``nuslerp.py``, ``model_stock.py``): task vectors are sparsified per tensor (``density`` per model), rescaled to
their L1 norm when ``rescale`` is set, weighted, combined with TIES' sign consensus (``ties``, ``dare_ties``,
``breadcrumbs_ties``, ``della``) or summed, divided by the (agreeing) weight sum when ``normalize`` is set, scaled by
``lambda`` and added to the base. Integer and bool tensors are never merged: equal across inputs -> copied,
different -> ``ValueError`` naming the tensor. ``int8_mask`` only changes mergekit's mask storage and is accepted.

Arithmetic: inputs are cast to the config's ``dtype`` when given (as mergekit does); otherwise they keep their
stored dtype and the merge functions compute in float32 (mergekit then computes in the stored dtype, e.g. bf16,
rounding after every operation; the results agree to about one bf16 ulp). The output is cast to ``out_dtype``.

TIES' per-tensor trim threshold (the ``k = max(1, int(density n))``-th largest ``|delta|``) is exact. By default
(``tie_break: keep``) every entry tied with the threshold is kept, in one pass; ``tie_break: index`` keeps exactly
``k``, those tied in row-major order (one pass codes which models are above / at their threshold per entry, the
boundaries are found on the host from it, then one merge pass). On large tensors whose ``|delta|`` values tie a lot
(bf16 fine-tunes that move weights by a few ulp) the threshold is guessed from a sample and verified by counting in
the merge pass itself (:func:`_gta_kernel_counted`); a wrong guess falls back
to the exact selection of :mod:`~paperlab.merge.task_vectors` and the tensor is merged again, so the output is
the same either way, at about the cost of one pass over the inputs instead of two or three.

Random methods (``dare_*``, ``della*``, ``dare_x``) draw their masks from ``jax.random`` keyed by ``seed``, the
tensor's name and the model's position, so a merge is reproducible and independent of tensor order; they match
mergekit in distribution (keep rate, rescaling), not bit for bit (mergekit draws with ``torch.bernoulli``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import json
import os
import resource
import threading
import time
import zlib
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from paperlab.merge import averaging, soups, subspace, task_vectors
from paperlab.merge.checkpoint import CheckpointReader, CheckpointWriter
from paperlab.merge.mergekit_config import MergeConfig, MergePlan, TensorJob, plan_merge

__all__ = ["merge_tensor", "run_merge", "MergeSummary", "peak_rss_bytes", "TOKENIZER_FILES"]

TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer.model",
                   "added_tokens.json", "merges.txt", "vocab.json", "chat_template.jinja", "generation_config.json",
                   "chat_template.json")
_DTYPES = {"bfloat16": np.dtype(ml_dtypes.bfloat16), "float16": np.dtype(np.float16),
           "float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}
_SPARSIFY = {"ties": "magnitude", "dare_ties": "random", "dare_linear": "random", "breadcrumbs": "outliers",
             "breadcrumbs_ties": "outliers", "della": "della", "della_linear": "della", "task_arithmetic": None}
_CONSENSUS = ("ties", "dare_ties", "breadcrumbs_ties", "della")


def _is_float(x) -> bool:
  return np.dtype(x.dtype).kind in "fV"  # ml_dtypes' bfloat16 and float8 types have kind "V"


# ----------------------------------------------------------------------------------------------------------------
# per-tensor kernels


def _l1_rescale(masked: jax.Array, full: jax.Array) -> jax.Array:
  """mergekit's ``rescaled_masked_tensor`` with ``RescaleNorm.l1``: match the L1 norm of the unmasked tensor
  (skipped when either norm is below 1e-7)."""
  before, after = jnp.sum(jnp.abs(full)), jnp.sum(jnp.abs(masked))
  ok = (before >= 1e-7) & (after >= 1e-7)
  return jnp.where(ok, masked * (before / jnp.where(ok, after, 1)), masked)


def _della_mask(key: jax.Array, d: jax.Array, density: jax.Array, epsilon: jax.Array) -> jax.Array:
  """DELLA's MagPrune keep mask (Deep et al., "DELLA-Merging: Reducing Interference in Model Merging through
  Magnitude-Based Sampling", arXiv:2406.11617, Sec. 3.1) as mergekit's ``della_magprune``: per row (axis 0 of a
  matrix, a vector is one row) rank ``|d|`` along axis 1, keep with probability ``density - epsilon + 2 epsilon
  (rank - 1) / (n - 1)``."""
  x = d.reshape(1, -1) if d.ndim < 2 else d
  ranks = jnp.argsort(jnp.argsort(jnp.abs(x), axis=1), axis=1).astype(jnp.float32) + 1
  lo, hi = jnp.min(ranks, axis=1, keepdims=True), jnp.max(ranks, axis=1, keepdims=True)
  rank_norm = jnp.clip((ranks - lo) / jnp.where(hi > lo, hi - lo, 1), 0, 1)
  probs = (density - epsilon) + rank_norm * 2 * epsilon
  return (jax.random.uniform(key, x.shape) < probs).reshape(d.shape)


@functools.partial(jax.jit, static_argnames=("kind", "consensus", "normalize", "rescale"))
def _gta_kernel(b, ms, lo, hi, keys, dens, eps, w, lam, kind, consensus, normalize, rescale, edges=None,
                masks=None):
  """mergekit's generalized task arithmetic on one tensor: sparsify each delta (keep ``lo <= |d| <= hi`` for the
  magnitude methods, a random mask for DARE/DELLA), L1-rescale, weight, combine (TIES sign consensus and
  disjoint merge, or a sum), normalize, scale by ``lam`` and add to the base. With ``edges`` (``tie_break:
  index``) the magnitude methods keep of the entries equal to ``lo``/``hi`` only those in the flat index ranges
  ``edges[j]`` (see ``task_vectors._edge_keep``): exactly mergekit's count, ties in row-major order. With
  ``masks`` (``tie_break: torch``) they keep ``masks[j]``, selected on the host by mergekit's own torch sort."""
  ct = jnp.float64 if b.dtype == jnp.float64 else jnp.float32
  bc = b.astype(ct)
  deltas = []
  for j, m in enumerate(ms):
    d = m.astype(ct) - bc
    a = jnp.abs(d)
    if kind in ("magnitude", "outliers") and masks is not None:
      keep = masks[j]
    elif kind in ("magnitude", "outliers") and edges is not None:
      keep = task_vectors._edge_keep(a, lo[j].astype(ct), hi[j].astype(ct), edges[j])
    elif kind in ("magnitude", "outliers"):
      keep = (a >= lo[j].astype(ct)) & (a <= hi[j].astype(ct))
    elif kind == "random":
      keep = task_vectors._draw_mask(keys[j], dens[j], d.shape, "hash")
    elif kind == "della":
      keep = _della_mask(keys[j], d, dens[j], eps[j])
    else:
      keep = None
    kept = d if keep is None else jnp.where(keep, d, 0)
    if rescale and keep is not None:
      kept = jnp.where(dens[j] >= 1, d, _l1_rescale(kept, d))
    deltas.append(w[j].astype(ct) * kept)
  if consensus:
    mixed = task_vectors.disjoint_merge(deltas, task_vectors.elect_sign(deltas), [w[j].astype(ct) for j in
                                                                                  range(len(ms))],
                                        merge="mean" if normalize else "sum")
  else:
    mixed = sum(deltas)
    if normalize:
      total = jnp.sum(w).astype(ct)
      mixed = mixed / jnp.where(jnp.abs(total) < 1e-8, 1, total)
  return (bc + lam.astype(ct) * mixed).astype(b.dtype)


# Below this many entries a tensor's threshold is found by the exact selection of :mod:`task_vectors` directly.
_SPECULATE_MIN = 1 << 16
_SAMPLE_BLOCK = 256  # sampled entries come in runs (cheap to gather); the guess is verified, so correlation is harmless
_GUESS_SAMPLE = 1 << 16  # sampled entries per tensor: the sampled rank is within ~0.2% of the population's


@functools.lru_cache(maxsize=64)
def _sample_index(n: int, s: int) -> np.ndarray:
  """About ``s`` sorted positions out of ``n``: random runs of :data:`_SAMPLE_BLOCK` (fixed seed per ``n``)."""
  run = min(_SAMPLE_BLOCK, n)
  starts = np.sort(np.random.default_rng(n).integers(0, n - run + 1, max(1, s // run)))
  return (starts[:, None] + np.arange(run)).reshape(-1)


def _on_host(x) -> bool:
  return isinstance(x, np.ndarray) or all(d.platform == "cpu" for d in x.devices())


@jax.jit
def _sample_abs_deltas_xla(b: jax.Array, ms: tuple, idx: jax.Array) -> jax.Array:
  bs = b.reshape(-1)[idx].astype(jnp.float32)
  return jnp.stack([jnp.abs(m.reshape(-1)[idx].astype(jnp.float32) - bs) for m in ms])


def _sample_abs_deltas(b, ms: Sequence, idx: np.ndarray) -> np.ndarray:
  """``(n_models, s)`` float32 ``|m - b|`` at positions ``idx``; on the host (no compilation per shape) when the
  arrays are there. Only a guess is made from it, so NumPy's subnormal handling may differ from XLA's."""
  if not all(_on_host(x) for x in (b, *ms)):
    return np.asarray(_sample_abs_deltas_xla(b, tuple(ms), jnp.asarray(idx, jnp.int32)))
  bs = np.asarray(b).reshape(-1)[idx].astype(np.float32)
  return np.stack([np.abs(np.asarray(m).reshape(-1)[idx].astype(np.float32) - bs) for m in ms])


_GUESS_Z = 2.0  # binomial standard deviations of the sampled rank (see _guess_thresholds)


def _guess_thresholds(base: jax.Array, ms: Sequence[jax.Array], ks: Sequence[int]) -> list[float | None]:
  """Per model, a guess of the ``k``-th largest ``|m - base|``, or ``None``: the value at the scaled rank
  ``k s / n`` of a sample of ``s`` entries, guessed only when at least :data:`_GUESS_Z` binomial standard
  deviations of sampled entries tie with it. Many entries tie at the threshold when weights move by a few ulp
  (bf16 fine-tunes), so ``|delta|`` takes few distinct values and the guess is then usually right; with
  continuous deltas nothing ties and nothing is guessed. A guess is verified by counting in the merge pass
  (:func:`_gta_kernel_counted`), so a wrong one costs time, never exactness."""
  n = base.size
  s = max(1, min(n // 16, _GUESS_SAMPLE))
  if n < _SPECULATE_MIN:
    return [None] * len(ms)
  sample = _sample_abs_deltas(base, ms, _sample_index(n, s))
  s = sample.shape[1]
  out: list[float | None] = []
  for row, k in zip(sample, ks):
    q = k / n
    r = min(max(int(round(q * s)), 1), s)
    g = np.partition(row, s - r)[s - r]
    tied = int(np.count_nonzero(row == g))
    out.append(float(g) if tied >= _GUESS_Z * np.sqrt(s * q * (1 - q)) else None)
  return out


def _bounds(kind: str | None, base: jax.Array, ms: list[jax.Array], ps: list[dict],
            guess: bool = False) -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
  """Per model, the kept band ``[lo, hi]`` of ``|delta|``: the ``k = max(1, int(density n))``-th largest and
  ``inf`` for TIES' trim (exact, by :mod:`~paperlab.merge.task_vectors`' bracketing selection; entries tied with
  the threshold are all kept), mergekit's ``magnitude_outliers`` band for breadcrumbs.

  With ``guess``, models whose threshold :func:`_guess_thresholds` can guess get the guess instead; the third
  value maps them to their ``k`` (the caller verifies the guesses, :func:`_exact_lo` replaces a wrong one)."""
  n = base.size
  lo = np.full(len(ms), -np.inf, np.float32)
  hi = np.full(len(ms), np.inf, np.float32)
  by_k: dict[int, list[int]] = {}  # models trimmed to the same count share one selection pass
  for j, (m, p) in enumerate(zip(ms, ps)):
    density = p.get("density", 1.0)
    if kind not in ("magnitude", "outliers") or density >= 1:
      continue
    if density <= 0:
      lo[j], hi[j] = np.inf, -np.inf
    elif kind == "magnitude":
      by_k.setdefault(max(1, int(density * n)), []).append(j)
    else:
      lo_r, hi_r, n_keep = task_vectors._band_ranks(n, density, p.get("gamma", 0.01))
      if n_keep <= 0:
        lo[j], hi[j] = np.inf, -np.inf
      else:
        d = m.astype(jnp.float32) - base.astype(jnp.float32)
        lo[j], hi[j] = np.asarray(task_vectors._order_stats((d,), jnp.array([lo_r, hi_r]), "exact", 1))
  guessed: dict[int, int] = {}
  if guess and by_k:
    js = [j for js in by_k.values() for j in js]
    ks = {j: k for k, js in by_k.items() for j in js}
    for j, g in zip(js, _guess_thresholds(base, [ms[j] for j in js], [ks[j] for j in js])):
      if g is not None:
        lo[j], guessed[j] = g, ks[j]
    by_k = {k: [j for j in js if j not in guessed] for k, js in by_k.items()}
  for k, js in by_k.items():
    if js:
      lo[js] = _exact_lo(base, [ms[j] for j in js], k)
  return lo, hi, guessed


def _spans(kind: str | None, n: int, ps: list[dict]) -> np.ndarray:
  """Per model, the kept sorted positions ``[start, stop)`` for ``tie_break="index"``: ``[0, k)`` of a descending
  sort for TIES' trim (``k = max(1, int(density n))``; all ``n`` at density 1), mergekit's
  ``magnitude_outliers`` positions of an ascending sort for breadcrumbs."""
  out = np.zeros((len(ps), 2), np.int32)
  for j, p in enumerate(ps):
    density = p.get("density", 1.0)
    if density >= 1:
      out[j] = (0, n)
    elif density <= 0:
      out[j] = (0, 0)
    elif kind == "magnitude":
      out[j] = (0, max(1, int(density * n)))
    elif kind == "outliers":
      lo_r, _, n_keep = task_vectors._band_ranks(n, density, p.get("gamma", 0.01))
      out[j] = (lo_r, lo_r + max(n_keep, 0))
  return out


def _exact_lo(base: jax.Array, ms: Sequence[jax.Array], k: int) -> np.ndarray:
  return np.asarray(task_vectors._kth_largest_deltas((base,), [(m,) for m in ms], k))


_CODE_DTYPES = (np.uint8, np.uint16, np.uint32, np.uint64)  # 2 bits per model: up to 32 models


def _code(b, ms, lo):
  """Per entry, bit ``j`` set where ``|delta_j| >= lo[j]`` and bit ``n_models + j`` where ``|delta_j| > lo[j]``."""
  ct = jnp.float64 if b.dtype == jnp.float64 else jnp.float32
  dt = next(d for d in _CODE_DTYPES if np.dtype(d).itemsize * 8 >= 2 * len(ms))
  code = jnp.zeros(b.shape, dt)
  for j, m in enumerate(ms):
    a = jnp.abs(m.astype(ct) - b.astype(ct))
    t = lo[j].astype(ct)
    code = code | ((a >= t).astype(dt) << j) | ((a > t).astype(dt) << (len(ms) + j))
  return code


@functools.partial(jax.jit, static_argnames=("kind", "consensus", "normalize", "rescale"))
def _gta_kernel_counted(b, ms, lo, hi, keys, dens, eps, w, lam, kind, consensus, normalize, rescale):
  """:func:`_gta_kernel` plus, in the same pass, the code of :func:`_code`. ``lo[j]`` is the exact k-th largest iff
  ``count_ge >= k > count_gt`` (the check of a guessed threshold). The counts are taken on the host
  (:func:`_code_counts`), where counting bits runs at memory speed and XLA's CPU reductions do not."""
  return _gta_kernel(b, ms, lo, hi, keys, dens, eps, w, lam, kind, consensus, normalize, rescale), _code(b, ms, lo)


_code_kernel = jax.jit(_code)  # the code alone, without the merge (tie_break: index)


_SCRATCH = threading.local()  # one reusable buffer per thread: fresh pages would cost a page fault each


def _code_counts(code: np.ndarray, n_models: int) -> tuple[np.ndarray, np.ndarray]:
  """``(count_ge, count_gt)`` per model from :func:`_gta_kernel_counted`'s code."""
  code = code.reshape(-1)
  scratch = getattr(_SCRATCH, "buf", None)
  if scratch is None or scratch.size != code.size or scratch.dtype != code.dtype:
    scratch = _SCRATCH.buf = np.empty_like(code)
  c = [np.count_nonzero(np.bitwise_and(code, code.dtype.type(1 << i), out=scratch)) for i in range(2 * n_models)]
  return np.asarray(c[:n_models]), np.asarray(c[n_models:])


def _gta(method: str, xs: list[jax.Array], bi: int, per_input: list[dict], shared: dict, key: jax.Array) -> jax.Array:
  base = xs[bi]
  idx = [i for i in range(len(xs)) if i != bi]
  if not idx:
    return base
  kind = _SPARSIFY[method]
  ps = [per_input[i] for i in idx]
  ms = [xs[i] for i in idx]
  if kind == "della":
    for p in ps:
      d, e = p.get("density", 1.0), p.get("epsilon", 0.15)
      if 0 < d < 1 and (d + e >= 1 or d - e <= 0):
        raise ValueError(f"della needs density +/- epsilon inside (0, 1), got density={d}, epsilon={e}.")
  keys = (jnp.stack([jax.random.fold_in(key, j) for j in range(len(ms))]) if kind in ("random", "della")
          else jnp.stack([key] * len(ms)))  # unused by the deterministic methods
  dens = jnp.asarray([min(max(p.get("density", 1.0), 0.0), 1.0) for p in ps], jnp.float32)
  eps = jnp.asarray([p.get("epsilon", 0.0) if 0 < p.get("density", 1.0) < 1 else 0.0 for p in ps], jnp.float32)
  w = jnp.asarray([p["weight"] for p in ps], jnp.float32)
  tie_break = shared.get("tie_break", "keep") if kind in ("magnitude", "outliers") else "keep"
  if tie_break in ("index", "torch"):
    task_vectors._check_tie_break(tie_break, "tensor", [int(base.size)])
  static = dict(kind=kind, consensus=method in _CONSENSUS, normalize=bool(shared["normalize"]),
                rescale=bool(shared["rescale"]) and kind is not None)
  if tie_break == "torch":  # mergekit's own torch sort on the host; no thresholds needed
    masks = task_vectors._torch_keep(base, ms, _spans(kind, int(base.size), ps), kind == "magnitude")
    inf = jnp.full((len(ms),), jnp.inf, jnp.float32)
    return _gta_kernel(base, tuple(ms), -inf, inf, keys, dens, eps, w, jnp.float32(shared["lambda"]), **static,
                       masks=jnp.asarray(masks))
  lo, hi, guessed = _bounds(kind, base, ms, ps, guess=kind == "magnitude")
  args = lambda: (base, tuple(ms), jnp.asarray(lo), jnp.asarray(hi), keys, dens, eps, w, jnp.float32(shared["lambda"]))
  if tie_break == "index":
    return _gta_index(base, ms, lo, hi, guessed, _spans(kind, int(base.size), ps), kind, static, args)
  if not guessed or len(ms) > 32:
    return _gta_kernel(*args(), **static)
  out, code = _gta_kernel_counted(*args(), **static)
  ge, gt = _code_counts(np.asarray(code), len(ms))
  wrong = [j for j, k in guessed.items() if not ge[j] >= k > gt[j]]
  if not wrong:
    return out
  for j in wrong:  # the bracket missed: select exactly and merge again
    lo[j] = _exact_lo(base, [ms[j]], guessed[j])[0]
  return _gta_kernel(*args(), **static)


def _code_edges(code: np.ndarray, n_models: int, j: int, need: int) -> int:
  """Flat index just past the ``need``-th entry tied with model ``j``'s threshold (bit ``j`` of
  :func:`_gta_kernel_counted`'s code set, bit ``n_models + j`` clear), counted per row of
  ``task_vectors._TIE_BLOCK`` entries on the host."""
  flat = code.reshape(-1)
  tie = ((flat >> j) & 1) & ~((flat >> (n_models + j)) & 1)
  width = min(task_vectors._TIE_BLOCK, flat.size)
  rows = flat.size // width
  per_row = np.append(np.count_nonzero(tie[: rows * width].reshape(rows, width), axis=1),
                      np.count_nonzero(tie[rows * width:]))
  return task_vectors._host_boundary(per_row, need, flat.size, lambda s, t: tie[s:t])


def _gta_index(base, ms, lo, hi, guessed: dict, spans: np.ndarray, kind: str, static: dict, args) -> jax.Array:
  """``tie_break: index``: keep exactly mergekit's count per model, the entries tied with a threshold in row-major
  order. TIES: one pass codes, per entry, which models' ``|delta|`` is above / at their threshold
  (:func:`_code_kernel`; the counts verify guessed thresholds); where a model has more tied entries than it may
  keep, its boundary is found on the host from that code; then one merge pass. Breadcrumbs' two-sided band takes
  ``task_vectors._index_edges_host``."""
  n = int(base.size)
  if kind != "magnitude" or len(ms) > 32:
    edges = task_vectors._index_edges_host(base, ms, lo, hi, spans, kind == "magnitude")
    return _gta_kernel(*args(), **static, edges=jnp.asarray(edges))
  code = np.asarray(_code_kernel(base, tuple(ms), jnp.asarray(lo)))
  ge, gt = _code_counts(code, len(ms))
  wrong = [j for j, k in guessed.items() if not ge[j] >= k > gt[j]]
  if wrong:  # a guessed threshold was not the k-th largest: select exactly and count again
    for j in wrong:
      lo[j] = _exact_lo(base, [ms[j]], guessed[j])[0]
    code = np.asarray(_code_kernel(base, tuple(ms), jnp.asarray(lo)))
    ge, gt = _code_counts(code, len(ms))
  ks = spans[:, 1]
  edges = np.zeros((len(ms), 4), np.int32)
  for j in range(len(ms)):
    edges[j, 1] = n if ge[j] <= ks[j] else _code_edges(code, len(ms), j, int(ks[j] - gt[j]))
  return _gta_kernel(*args(), **static, edges=jnp.asarray(edges))


def _nuslerp(t: float, v0: jax.Array, v1: jax.Array, row_wise: bool, flatten: bool, eps: float = 1e-8):
  """mergekit's ``nuslerp``: spherical interpolation of rows (or of the flattened tensors)."""
  shape = v0.shape
  if flatten:
    v0, v1 = v0.reshape(-1), v1.reshape(-1)
  elif row_wise:
    v0, v1 = jnp.swapaxes(v0, 0, -1), jnp.swapaxes(v1, 0, -1)
  unit = lambda x: x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-7)
  cos = jnp.clip(jnp.sum(unit(v0) * unit(v1), axis=-1, keepdims=True), -1, 1)
  colinear = (1 - cos ** 2) <= eps ** 2
  theta = jnp.arccos(jnp.where(colinear, 0.0, cos))
  sin = jnp.where(colinear, 1.0, jnp.sin(theta))
  out = (jnp.sin((1 - t) * theta) * v0 + jnp.sin(t * theta) * v1) / sin
  out = jnp.where(colinear, (1 - t) * v0 + t * v1, out)
  if row_wise and not flatten:
    out = jnp.swapaxes(out, 0, -1)
  return out.reshape(shape)


@functools.partial(jax.jit, static_argnames=("normalize",))
def _linear(xs, w, normalize):
  return averaging.weighted_average(list(xs), w, normalize=normalize)


_slerp = jax.jit(averaging.slerp)
_nuslerp = jax.jit(_nuslerp, static_argnames=("row_wise", "flatten"))


def _device_array(x, alias: bool) -> jax.Array:
  if alias and isinstance(x, np.ndarray) and jax.default_backend() == "cpu":
    return jax.device_put(x, may_alias=True)
  return jnp.asarray(x)


def merge_tensor(method: str, tensors: Sequence[Any], base_index: int | None, shared: dict, per_input: Sequence[dict],
                 *, key: jax.Array | None = None, name: str = "tensor", alias_inputs: bool = False) -> jax.Array:
  """Merge one tensor from each input model with a mergekit method (Goddard et al., "Arcee's MergeKit",
  arXiv:2403.13257; each method's paper in ``METHODS[name].reference``) or a paperlab-only one, parameters already
  resolved for this tensor (see :class:`~paperlab.merge.mergekit_config.TensorJob`). ``key`` seeds the random
  methods. Returns an array of the inputs' dtype (the compute dtype; the caller casts to ``out_dtype``).

  Integer/bool inputs are copied when equal and raise ``ValueError`` naming ``name`` when they differ.
  ``alias_inputs`` lets JAX use 64-byte-aligned NumPy inputs in place on CPU (no copy; the caller must not
  modify them while the result is alive, which may be one of them, e.g. for ``passthrough``)."""
  if not all(_is_float(x) for x in tensors):
    first = np.asarray(tensors[0])
    for x in tensors[1:]:
      if np.asarray(x).dtype != first.dtype or not np.array_equal(np.asarray(x), first):
        raise ValueError(f"non-floating tensor {name!r} differs between the models; integer and bool tensors are "
                         f"never merged.")
    return jnp.asarray(first) if first.dtype.itemsize < 8 else first
  xs = [_device_array(x, alias_inputs) for x in tensors]
  key = jax.random.key(0) if key is None else key
  bi = base_index
  if method == "passthrough":
    scale = per_input[0].get("scale")
    return xs[0] if scale is None else (xs[0] * jnp.asarray(scale, xs[0].dtype))
  if method == "linear":
    return _linear(tuple(xs), jnp.asarray([p["weight"] for p in per_input], jnp.float32),
                   bool(shared["normalize"]))
  if method == "slerp":
    return _slerp(xs[bi], xs[1 - bi], jnp.float32(shared["t"]))
  if method == "nuslerp":
    others = [i for i in range(len(xs)) if i != bi]
    w = [per_input[i]["weight"] for i in others]
    t = 0.5 if abs(sum(w)) < 1e-6 else w[1] / sum(w)
    ct = jnp.float64 if xs[0].dtype == jnp.float64 else jnp.float32
    a, b = (xs[i].astype(ct) for i in others)
    args = (shared["nuslerp_row_wise"], shared["nuslerp_flatten"])
    if bi is None:
      return _nuslerp(t, a, b, *args).astype(xs[0].dtype)
    base = xs[bi].astype(ct)
    return (base + _nuslerp(t, a - base, b - base, *args)).astype(xs[0].dtype)
  if method in _SPARSIFY:
    return _gta(method, xs, bi, list(per_input), shared, key)
  if method == "model_stock":
    return soups.model_stock(xs[bi], [x for i, x in enumerate(xs) if i != bi], filter_wise=shared["filter_wise"],
                             layout="torch")
  others = [x for i, x in enumerate(xs) if i != bi]
  if method == "ties_global":
    if "thresholds" not in shared:
      raise ValueError("ties_global needs shared['thresholds'] (the per-model global k-th largest |delta|, found "
                       "by run_merge's threshold passes).")
    n = len(others)
    w = jnp.asarray([per_input[i]["weight"] for i in range(len(xs)) if i != bi], jnp.float32)
    return _gta_kernel(xs[bi], tuple(others), jnp.asarray(shared["thresholds"], jnp.float32),
                       jnp.full((n,), jnp.inf, jnp.float32), jnp.stack([key] * n), jnp.ones((n,), jnp.float32),
                       jnp.zeros((n,), jnp.float32), w, jnp.float32(shared["lambda"]), "magnitude", True,
                       bool(shared["normalize"]), False)
  if method == "pcb":
    return task_vectors.pcb(xs[bi], others, shared["ratio"], shared["lambda"], scope="tensor",
                            clamp_q=shared["clamp_q"])
  if method in ("iso_c", "iso_cts"):
    fn = subspace.iso_c if method == "iso_c" else subspace.iso_cts
    kw = {"common_fraction": shared["common_fraction"]} if method == "iso_cts" else {}
    return fn({name: xs[bi]}, [{name: o} for o in others], shared["alpha"], svd_exclude=shared["svd_exclude"],
              layout="torch", **kw)[name]
  if method == "dare_x":
    w = [per_input[i]["weight"] for i in range(len(xs)) if i != bi]
    return task_vectors.dare_merge(key, xs[bi], others, shared["density"], shared["lambda"], rescale=1.0 / shared["q"],
                                   weights=w)
  raise ValueError(f"merge_tensor: unknown method {method!r}.")


# ----------------------------------------------------------------------------------------------------------------
# the executor


def peak_rss_bytes() -> int:
  """Peak resident set size of this process (``VmHWM`` from ``/proc/self/status``, else ``ru_maxrss``)."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) * 1024
  except OSError:  # pragma: no cover - not Linux
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class MergeSummary(dict):
  """``tensors``, ``bytes_read``, ``bytes_written``, ``peak_rss_bytes``, ``seconds``, ``out_dir``, ``dry_run``."""

  def line(self) -> str:
    return (f"{self['tensors']} tensors, read {_human(self['bytes_read'])}, wrote {_human(self['bytes_written'])}, "
            f"peak RSS {_human(self['peak_rss_bytes'])}, {self['seconds']:.1f} s -> {self['out_dir']}")


def _human(n: float) -> str:
  for unit in ("B", "KB", "MB", "GB"):
    if abs(n) < 1000 or unit == "GB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
    n /= 1000
  return f"{n:.2f} TB"  # pragma: no cover


def _out_dtype(job: TensorJob, config: MergeConfig) -> np.dtype:
  if not _is_float(np.empty(0, job.in_dtype)):
    return np.dtype(job.in_dtype)
  name = config.out_dtype or config.dtype
  return _DTYPES[name] if name else np.dtype(job.in_dtype)


def _out_config(plan: MergePlan) -> dict | None:
  path = os.path.join(plan.donor, "config.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    cfg = json.load(f)
  name = plan.config.out_dtype or plan.config.dtype
  if name:
    cfg["dtype" if "dtype" in cfg and "torch_dtype" not in cfg else "torch_dtype"] = name
  if plan.num_layers is not None:
    for k in ("num_hidden_layers", "n_layer", "num_layers"):
      if k in cfg:
        cfg[k] = plan.num_layers
        break
  return cfg


def _tokenizer_files(config: MergeConfig, donor: str) -> list[str]:
  src = config.tokenizer_source
  src = config.base_model if src == "base" else (src or donor)
  if not os.path.isdir(src):
    return []
  return [os.path.join(src, f) for f in TOKENIZER_FILES if os.path.exists(os.path.join(src, f))]


def _delta_bits(base: np.ndarray, m: np.ndarray) -> np.ndarray:
  """``|m - base|`` in float32 as uint32 bit patterns (ordered like the values), subnormals flushed as XLA does."""
  d = np.abs(m.astype(np.float32) - base.astype(np.float32))
  d[d < np.finfo(np.float32).tiny] = 0
  return d.view(np.uint32).reshape(-1)


def _global_thresholds(plan: MergePlan, load: Callable[[TensorJob], list]) -> list[float]:
  """TIES with global scope (the paper's trim, arXiv:2306.01708, Sec. 4) over a model that does not fit in memory:
  per fine-tuned model the exact ``k = max(1, int(density n))``-th largest ``|delta|`` over all floating tensors,
  in two streaming passes: a histogram of the high 16 bits of the float32 bit patterns finds the bin holding the
  k-th largest, a histogram of the low 16 bits inside that bin finds the value (bit patterns of non-negative floats
  order like the floats)."""
  jobs = [j for j in plan.jobs if _is_float(np.empty(0, j.in_dtype))]
  bi = jobs[0].base_index
  n_models = len(jobs[0].sources) - 1
  n = sum(int(np.prod(j.shape)) for j in jobs)
  densities = {j.shared["density"] for j in jobs}
  if len(densities) != 1 or not 0 < jobs[0].shared["density"] <= 1:
    raise ValueError(f"ties_global needs one density in (0, 1] for the whole model, got {sorted(densities)}.")
  k = max(1, int(jobs[0].shared["density"] * n))
  high = np.zeros((n_models, 1 << 16), np.int64)
  for job in jobs:
    arrays = load(job)
    others = [a for i, a in enumerate(arrays) if i != bi]
    for j, m in enumerate(others):
      high[j] += np.bincount((_delta_bits(arrays[bi], m) >> 16).astype(np.int64), minlength=1 << 16)
  above_cum = np.cumsum(high[:, ::-1], axis=1)[:, ::-1]  # entries with high bits >= b
  bins = [int(np.nonzero(above_cum[j] >= k)[0].max()) for j in range(n_models)]
  above = [int(above_cum[j][b + 1]) if b + 1 < (1 << 16) else 0 for j, b in enumerate(bins)]
  low = np.zeros((n_models, 1 << 16), np.int64)
  for job in jobs:
    arrays = load(job)
    others = [a for i, a in enumerate(arrays) if i != bi]
    for j, m in enumerate(others):
      bits = _delta_bits(arrays[bi], m)
      low[j] += np.bincount((bits[(bits >> 16) == bins[j]] & 0xFFFF).astype(np.int64), minlength=1 << 16)
  out = []
  for j in range(n_models):
    cum = np.cumsum(low[j][::-1])[::-1] + above[j]
    lo_bits = int(np.nonzero(cum >= k)[0].max())
    out.append(float(np.array([(bins[j] << 16) | lo_bits], np.uint32).view(np.float32)[0]))
  return out


def run_merge(config: MergeConfig, out_dir: str | os.PathLike, *, shard_size: int | str = "5GB",
              device: str | None = None, seed: int = 0, dry_run: bool = False, overwrite: bool = False,
              progress: Callable[[int, int, str], None] | None = None, prefetch: int = 1) -> MergeSummary:
  """Run ``config`` (a mergekit configuration, arXiv:2403.13257) tensor by tensor into ``out_dir``: sharded
  safetensors with an index, ``config.json`` from the base model or the first model (``torch_dtype`` and, for
  slices, the layer count updated) and the tokenizer files of ``tokenizer_source`` / the base / the first model.
  Atomic: nothing appears at ``out_dir`` unless the whole merge succeeded. Peak memory is about (number of models
  + 2) x the largest tensor (in the merge dtype), plus the tensors read ahead (``prefetch``).

  Args:
    config: a parsed configuration (:func:`~paperlab.merge.mergekit_config.load_merge_config`).
    out_dir: output directory (must not exist or be empty unless ``overwrite``).
    shard_size: bytes per output shard (int or e.g. ``"5GB"``).
    device: ``"cpu"``, ``"gpu"`` or ``None`` (JAX's default backend) for the arithmetic.
    seed: seeds the random methods.
    dry_run: plan and check every input (names, shapes), write nothing.
    progress: called as ``progress(done, total, tensor_name)`` after each tensor.
    prefetch: output tensors whose inputs are read ahead in a background thread.

  Returns a :class:`MergeSummary`.
  """
  start = time.perf_counter()
  readers = {m: CheckpointReader(m) for m in config.referenced_models()}
  try:
    plan = plan_merge(config, readers)
    specs = [(j.out_name, j.shape, _out_dtype(j, config)) for j in plan.jobs]
    summary = MergeSummary(tensors=len(plan.jobs), bytes_read=0, bytes_written=0, out_dir=os.fspath(out_dir),
                           dry_run=dry_run, method=config.merge_method)
    if dry_run:
      summary.update(bytes_read=sum(readers[m].nbytes(n) for j in plan.jobs for m, n in j.sources),
                     bytes_written=sum(int(np.prod(s)) * np.dtype(d).itemsize for _, s, d in specs),
                     peak_rss_bytes=peak_rss_bytes(), seconds=time.perf_counter() - start)
      return summary
    dev = jax.devices(device)[0] if device else None
    root = jax.random.key(seed)
    cast = _DTYPES.get(config.dtype) if config.dtype else None

    def load(job: TensorJob):
      arrays = [readers[m].read(n) for m, n in job.sources]
      summary["bytes_read"] += sum(a.nbytes for a in arrays)
      if cast is not None:
        arrays = [a.astype(cast) if _is_float(a) and a.dtype != cast else a for a in arrays]
      return arrays

    if config.merge_method == "ties_global":
      thresholds = _global_thresholds(plan, load)
      summary["threshold_passes"] = 2
      for job in plan.jobs:
        job.shared["thresholds"] = thresholds
    ctx = jax.default_device(dev) if dev is not None else contextlib.nullcontext()
    with ctx, CheckpointWriter(out_dir, specs, shard_size=shard_size, overwrite=overwrite) as writer, \
        concurrent.futures.ThreadPoolExecutor(2) as pool:
      futures = [pool.submit(load, j) for j in plan.jobs[:prefetch]]
      pending = None
      for k, job in enumerate(plan.jobs):
        arrays = futures[k].result()
        if k + prefetch < len(plan.jobs):
          futures.append(pool.submit(load, plan.jobs[k + prefetch]))
        futures[k] = None
        key = jax.random.fold_in(root, zlib.crc32(job.out_name.encode()) & 0x7FFFFFFF)
        out = merge_tensor(config.merge_method, arrays, job.base_index, job.shared, job.per_input, key=key,
                           name=job.out_name, alias_inputs=True)
        del arrays
        dt = specs[k][2]
        host = np.asarray(jax.device_get(out.astype(dt) if hasattr(out, "astype") else out))
        if host.dtype != dt:
          host = host.astype(dt)
        if pending is not None:
          pending.result()
        pending = pool.submit(writer.write, job.out_name, host)
        if progress is not None:
          progress(k + 1, len(plan.jobs), job.out_name)
      if pending is not None:
        pending.result()
      cfg = _out_config(plan)
      if cfg is not None:
        with open(os.path.join(writer.tmp_dir, "config.json"), "w") as f:
          json.dump(cfg, f, indent=2)
      extras = _tokenizer_files(config, plan.donor)
      summary["bytes_written"] = writer.bytes_written
      writer.commit(extras)
  finally:
    for r in readers.values():
      r.close()
  summary.update(peak_rss_bytes=peak_rss_bytes(), seconds=time.perf_counter() - start)
  return summary

