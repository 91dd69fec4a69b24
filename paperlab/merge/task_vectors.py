"""Task-vector merging and delta editing: task arithmetic, TIES, DARE (and DARE the Extreme's rescaling),
breadcrumbs, PCB, extrapolation (ExPO) and BitDelta-style sign compression.

A task vector is ``tau = theta_ft - theta_base`` (Ilharco et al., arXiv:2212.04089). Every merge here has the form
``theta = theta_base + lam * combine(edit(tau_1), ..., edit(tau_T))`` and runs leaf by leaf: one jitted kernel
per leaf reads the base leaf and the same leaf of every fine-tuned model, so a large model streams tensor by
tensor (memory O(n_models x largest leaf)). Leaves keep their dtype (arithmetic in float32, float64 stays
float64); leaves outside the path filter (``include``/``exclude`` regexes on ``/``-joined key paths) are copied
from the base. Integer and bool leaves are never merged: equal across base and fine-tunes -> kept, different ->
``ValueError`` naming the path, unless ``integer_leaves=`` says otherwise (see :mod:`paperlab.merge.averaging`).

Magnitude thresholds ("keep the top ``density`` fraction of |tau|") are exact by default: the k-th largest
magnitude with ``k = max(1, int(density * n))`` (mergekit's convention), so entries tied with the threshold are all
kept (``tie_break="index"`` keeps exactly ``k``, the tied ones in row-major order). TIES finds it without
sorting, by bracketing (:func:`_kth_largest_deltas`): a hashed sample of each task vector brackets the k-th
largest, one pass codes every entry as below / inside / above the bracket (4 models per byte), the ~0.7% inside
are gathered and the exact order statistic is selected among them; an exact fallback bisects over all entries if
the bracket missed (probability ~1e-9) -- about one extra pass over memory for all models together, where a sort
of 100M entries takes seconds. ``threshold="sample"`` stops at the sample's estimate (the kept fraction is then
within about ``sqrt(density (1 - density) / sample_size)`` of ``density``).

DARE's Bernoulli masks come by default from a keyed counter-based hash (``sampler="hash"``, see
:func:`random_mask`), ``sampler="threefry"`` gives ``jax.random.bernoulli`` exactly.
"""

from __future__ import annotations

import concurrent.futures
import decimal
import functools
import os
import warnings
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from paperlab import _checks
from paperlab._tree import check_same_structure
from paperlab.merge.averaging import (IntegerLeaves, _check_models, _check_weights,
                                     _compute_dtype, _integer_leaves, _is_float, _model_names, _put_integer_leaves,
                                     _scalars_as_arrays, _selected)

PyTree = Any

__all__ = [
    "task_vector", "apply_task_vector", "task_arithmetic", "magnitude_threshold", "trim_to_density",
    "elect_sign", "disjoint_merge", "ties", "random_mask", "dare", "dare_merge", "darex_q", "breadcrumbs",
    "pcb", "extrapolate", "bitdelta",
]

_SCOPES = ("tensor", "global")
_THRESHOLDS = ("exact", "sample")


# ----------------------------------------------------------------------------------------------------------------
# validation and leaf plumbing


def _check_density(name: str, value) -> float:
  _checks.check_range(name, value, 0.0, 1.0, low_inclusive=False)
  return value


def _split(base: PyTree, finetuned: Sequence[PyTree], include, exclude, integer_leaves: IntegerLeaves = "error"):
  """Flattened leaves: ``(treedef, base_leaves, [model_leaves...], selected_mask)``; the selected integer/bool
  leaves of ``base_leaves`` are already resolved by the ``integer_leaves`` policy (so :func:`_finish` returns
  them), see :mod:`paperlab.merge.averaging`."""
  base = _scalars_as_arrays(base)
  finetuned = _check_models(finetuned, "finetuned", base=base)
  treedef = jax.tree.structure(base)
  b = treedef.flatten_up_to(base)
  ms = [treedef.flatten_up_to(m) for m in finetuned]
  chosen = _selected(base, include, exclude)
  ints = _integer_leaves([base, *finetuned], _model_names(len(finetuned), "finetuned", "base"), integer_leaves,
                         has_base=True, selected=chosen)
  b = [ints.get(i, x) for i, x in enumerate(b)]
  sel = [s and _is_float(x) for s, x in zip(chosen, b)]
  return treedef, b, ms, sel


def _abs_bits(x: jax.Array) -> jax.Array:
  """|x| as int32 bit patterns: for non-negative float32 the integer order is the numeric order (and integer
  sorts are several times faster than float sorts on CPU)."""
  return jax.lax.bitcast_convert_type(jnp.abs(x.astype(jnp.float32)).reshape(-1), jnp.int32)


def _bits_to_float(b: jax.Array) -> jax.Array:
  return jax.lax.bitcast_convert_type(b, jnp.float32)


def _fmix32(h: jax.Array) -> jax.Array:
  """murmur3's 32-bit finalizer: a bijection of uint32 with full avalanche."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _hash_u32(i: jax.Array, seed: jax.Array) -> jax.Array:
  """A counter-based 32-bit hash: uniform-looking bits from ``(index, seed)`` at memory speed (sampling)."""
  return _fmix32(i.astype(jnp.uint32) * jnp.uint32(0x9E3779B1) + seed.astype(jnp.uint32))


def _keyed_hash_u32(n: int, key: jax.Array) -> jax.Array:
  """``n`` uniform 32-bit words from a JAX key: two keyed rounds of murmur3's finalizer over the counter,
  ``fmix(fmix(i * phi ^ k0) + k1)`` with ``(k0, k1)`` drawn from ``key`` by ``jax.random.bits``. Two rounds make
  the streams of different keys unrelated (with one round they would be shifted copies of each other)."""
  k = jax.random.bits(key, (2,), jnp.uint32)
  i = jnp.arange(n, dtype=jnp.uint32)
  return _fmix32(_fmix32((i * jnp.uint32(0x9E3779B1)) ^ k[0]) + k[1])


def _sample_bits(x: jax.Array, m: int, salt: int) -> jax.Array:
  n = x.size
  if m >= n:
    return _abs_bits(x)
  idx = _hash_u32(jnp.arange(m, dtype=jnp.uint32), jnp.uint32(salt)) % jnp.uint32(n)
  return _abs_bits(x.reshape(-1)[idx.astype(jnp.int32)])


def _kth_largest(bits: jax.Array, k) -> jax.Array:
  """The k-th largest of non-negative float bit patterns, exactly, by bisection on the 31 value bits: 31 counting
  passes, no sort (several times faster than ``jnp.sort`` on CPU, and it streams)."""

  def body(_, lohi):
    lo, hi = lohi
    mid = lo + (hi - lo + 1) // 2
    ok = jnp.sum(bits >= mid) >= k
    return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)

  lo, _ = jax.lax.fori_loop(0, 31, body, (jnp.int32(0), jnp.int32(0x7F800000)))
  return lo


@functools.partial(jax.jit, static_argnames=("threshold", "sample_size"))
def _order_stats(xs: tuple, ranks: jax.Array, threshold: str, sample_size: int) -> jax.Array:
  """Values of |concat(xs)| at ascending 0-based ``ranks`` (an int array, traced: no recompilation per density;
  ranks of the sample are scaled for ``"sample"``)."""
  n = sum(x.size for x in xs)
  ranks = jnp.clip(jnp.asarray(ranks, jnp.int32), 0, n - 1)
  if threshold == "exact" or n <= sample_size:
    bits = jnp.concatenate([_abs_bits(x) for x in xs]) if len(xs) > 1 else _abs_bits(xs[0])
    return jnp.stack([_bits_to_float(_kth_largest(bits, n - r)) for r in ranks])
  parts = [_sample_bits(x, max(1, -(-sample_size * x.size // n)), 7919 * i + 1) for i, x in enumerate(xs)]
  return _sample_order_stats(jnp.concatenate(parts), n, ranks)


def _sample_order_stats(bits: jax.Array, n: int, ranks: jax.Array) -> jax.Array:
  """The values at population ranks ``ranks`` (ascending, 0-based, out of ``n``) estimated from sampled bits."""
  m = bits.size
  rs = jnp.clip(jnp.round(ranks.astype(jnp.float32) * (m / n)).astype(jnp.int32), 0, m - 1)
  return jnp.stack([_bits_to_float(_kth_largest(bits, m - r)) for r in rs])


# ----------------------------------------------------------------------------------------------------------------
# exact k-th largest |delta| over leaves by bracketing (the default "exact" threshold of TIES)

_BRACKET_SAMPLE = 1 << 19  # sampled entries per model (per leaf for the tensor scope)
_BRACKET_Z = 6.0  # bracket half-width in binomial standard deviations: a miss (then the fallback runs) ~1e-9
_TINY = float(np.finfo(np.float32).tiny)


def _delta_bits(b: jax.Array, m: jax.Array) -> jax.Array:
  return _abs_bits(m.astype(jnp.float32) - b.astype(jnp.float32))


def _bisect_bits(count_ge: Callable[[jax.Array], jax.Array], k, lo, hi) -> jax.Array:
  """Largest bit pattern ``v`` in ``[lo, hi]`` with ``count_ge(v) >= k`` (needs ``count_ge(lo) >= k``): the k-th
  largest value when ``count_ge`` counts the entries ``>= v``. ``log2(hi - lo)`` counting steps."""

  def body(lohi):
    lo, hi = lohi
    mid = lo + (hi - lo + 1) // 2
    ok = count_ge(mid) >= k
    return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)

  return jax.lax.while_loop(lambda lohi: lohi[0] < lohi[1], body, (jnp.int32(lo), jnp.int32(hi)))[0]


def _bracket_ranks(n: int, k: int, s: int) -> tuple[int, int]:
  """1-based ranks (from the top) in a uniform sample of ``s`` out of ``n`` whose values bracket the population's
  k-th largest with probability ~1 - 1e-9 (``_BRACKET_Z`` binomial standard deviations plus slack)."""
  q = k / n
  half = _BRACKET_Z * float(np.sqrt(s * q * (1 - q))) + 2
  return int(np.floor(q * s - half)), int(np.ceil(q * s + half))


_GROUP = 4  # models per uint8 code of the host path: bit j marks model j inside its bracket, bit 4 + j above it


def _flush(x: np.ndarray) -> np.ndarray:
  """Zero subnormals in place, as XLA does on CPU to its inputs and results (so host bits match its |m - b|)."""
  x[np.abs(x) < _TINY] = 0
  return x


def _host_leaf(code, b, ms) -> tuple[list[int], list[np.ndarray]]:
  """Host compaction of one leaf for a group of models: per model the number of entries above its bracket and the
  |delta| bits of the entries inside it. numpy's ``flatnonzero`` compacts at memory speed where XLA's CPU
  ``nonzero`` needs a slow cumulative sum; numpy releases the GIL, so leaves run in parallel threads."""
  code = np.asarray(code)
  above = [int(np.count_nonzero(code & np.uint8(16 << j))) for j in range(len(ms))]
  nz = np.flatnonzero((code & np.uint8(15)) != 0)  # on bool: 3x faster than on uint8
  sub = code[nz]
  bz = np.asarray(b).reshape(-1)
  cands = []
  for j, m in enumerate(ms):
    idx = nz[(sub & np.uint8(1 << j)) != 0]
    d = _flush(np.asarray(m).reshape(-1)[idx].astype(np.float32)) - _flush(bz[idx].astype(np.float32))
    cands.append(_flush(np.abs(d)).view(np.int32))
  return above, cands


@jax.jit
def _kth_largest_delta_small(bs: tuple, ms: tuple, k: jax.Array) -> jax.Array:
  """The k-th largest of ``|m - b|`` over small leaves by plain bisection (``k`` traced: one compilation)."""
  count_ge = lambda v: sum(jnp.sum(_delta_bits(b, m) >= v, dtype=jnp.int32) for b, m in zip(bs, ms))
  return _bits_to_float(_bisect_bits(count_ge, k, 0, 0x7F800000))


def _bracket_setup(n: int, k: int, sample_size: int) -> tuple[int, int, int]:
  s = sample_size
  r_hi, r_lo = _bracket_ranks(n, k, s)
  cap = int(min(n, 2 * (r_lo - max(r_hi, 0)) * n // s + 4096))
  return r_hi, r_lo, cap


def _sample_positions(size: int, cnt: int, leaf: int) -> jax.Array:
  return (_hash_u32(jnp.arange(cnt, dtype=jnp.uint32), jnp.uint32(7919 * leaf + 1)) % jnp.uint32(size)).astype(
      jnp.int32)


@functools.partial(jax.jit, static_argnames=("sample_size",))
def _bracket_sample(bs: tuple, mss: tuple, sample_size: int) -> jax.Array:
  """Step 1 of :func:`_kth_largest_deltas`: ``(n_models, s)`` |delta| bits at hashed positions (the same positions
  for every model, about ``sample_size`` of them, spread over the leaves in proportion to their sizes)."""
  sizes = [b.size for b in bs]
  n = sum(sizes)
  parts = [[] for _ in mss]
  for i, (b, size) in enumerate(zip(bs, sizes)):
    cnt = max(1, -(-sample_size * size // n))
    if cnt >= size:
      for j, ms in enumerate(mss):
        parts[j].append(_delta_bits(b, ms[i]))
      continue
    idx = _sample_positions(size, cnt, i)
    bi = b.reshape(-1)[idx]
    for j, ms in enumerate(mss):
      parts[j].append(_delta_bits(bi, ms[i].reshape(-1)[idx]))
  return jnp.stack([jnp.concatenate(p) for p in parts])


def _bracket_bounds(sample: jax.Array, n: int, k: int) -> tuple[jax.Array, jax.Array]:
  """The sample order statistics ``(lo, hi)`` (bits) that bracket the population's k-th largest (traceable)."""
  s = sample.shape[-1]
  r_hi, r_lo = _bracket_ranks(n, k, s)
  inf_bits = jnp.int32(0x7F800000)
  count_sample = lambda v: jnp.sum(sample >= v, dtype=jnp.int32)
  hi = _bisect_bits(count_sample, r_hi, 0, inf_bits) if r_hi >= 1 else inf_bits
  lo = _bisect_bits(count_sample, r_lo, 0, hi) if r_lo <= s else jnp.int32(0)
  return lo, hi


def _bracket_bounds_host(sample: np.ndarray, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
  """:func:`_bracket_bounds` for every row of a host ``(n_models, s)`` sample, by ``np.partition``."""
  s = sample.shape[-1]
  r_hi, r_lo = _bracket_ranks(n, k, s)
  kth = [s - r for r in (r_lo, r_hi) if 1 <= r <= s]
  part = np.partition(sample, kth, axis=-1) if kth else sample
  hi = part[:, s - r_hi] if r_hi >= 1 else np.full(len(sample), 0x7F800000, np.int32)
  lo = part[:, s - r_lo] if r_lo <= s else np.zeros(len(sample), np.int32)
  return lo.astype(np.int32), hi.astype(np.int32)


@jax.jit
def _code_leaf(b: jax.Array, ms: tuple, lo: jax.Array, hi: jax.Array) -> jax.Array:
  """Step 2 of the host path: one pass over a leaf codes, for up to 4 models at once, which entries lie inside
  model j's bracket (bit j) or above it (bit 4 + j)."""
  code = jnp.zeros((b.size,), jnp.uint8)
  for j, m in enumerate(ms):
    d = _delta_bits(b, m)
    inside = ((d >= lo[j]) & (d <= hi[j])).astype(jnp.uint8)
    code = code | (inside << j) | ((d > hi[j]).astype(jnp.uint8) << (4 + j))
  return code


@functools.partial(jax.jit, static_argnames=("k", "sample_size"))
def _bracket_codes(bs: tuple, ms: tuple, k: int, sample_size: int):
  """Steps 1-2 of the XLA path for one model: the bracket ``(lo, hi)`` (bits) and per-leaf uint8 codes (0 below,
  1 inside, 2 above)."""
  n = sum(b.size for b in bs)
  lo, hi = _bracket_bounds(_bracket_sample(bs, (ms,), sample_size)[0], n, k)
  codes = tuple((_delta_bits(b, m) >= lo).astype(jnp.uint8) + (_delta_bits(b, m) > hi).astype(jnp.uint8)
                for b, m in zip(bs, ms))
  return lo, hi, codes


@functools.partial(jax.jit, static_argnames=("k",))
def _select_in_bracket(bs: tuple, ms: tuple, cand, n_in, n_above, lo, hi, k: int) -> jax.Array:
  """Step 3 of :func:`_kth_largest_delta`: the exact answer from the bracket's candidates, or the fallback."""

  def count_ge(v):
    return sum(jnp.sum(_delta_bits(b, m) >= v, dtype=jnp.int32) for b, m in zip(bs, ms))

  fits = (n_in <= cand.size) & (n_above < k) & (k <= n_above + n_in)
  pick = lambda: _bisect_bits(lambda v: jnp.sum(cand >= v, dtype=jnp.int32), k - n_above, lo, hi)
  full = lambda: _bisect_bits(count_ge, k, 0, 0x7F800000)
  return _bits_to_float(jax.lax.cond(fits, pick, full))


@functools.partial(jax.jit, static_argnames=("k", "sample_size"))
def _kth_largest_delta_xla(bs: tuple, ms: tuple, k: int, sample_size: int) -> jax.Array:
  lo, hi, codes = _bracket_codes(bs, ms, k, sample_size)
  _, _, cap = _bracket_setup(sum(b.size for b in bs), k, sample_size)
  cands, n_in, n_above = [], 0, 0
  for code, b, m in zip(codes, bs, ms):
    (idx,) = jnp.nonzero(code.reshape(-1) == 1, size=min(cap, code.size), fill_value=-1)
    j = jnp.maximum(idx, 0)
    cands.append(jnp.where(idx >= 0, _delta_bits(b.reshape(-1)[j], m.reshape(-1)[j]), -1))
    n_in = n_in + jnp.sum(code == 1, dtype=jnp.int32)
    n_above = n_above + jnp.sum(code == 2, dtype=jnp.int32)
  return _select_in_bracket(bs, ms, jnp.concatenate(cands), n_in, n_above, lo, hi, k)


def _scope_sample_size(n: int, sample_size: int) -> int:
  """Sampled entries for a scope of ``n`` entries: ``sample_size``, but at most ~3% of a scope (a small scope, such
  as one tensor of mergekit's per-tensor trim, needs no more to keep its bracket at a few percent of its
  entries) and at least 4096."""
  return min(sample_size, max(n // 32, 1 << 12))


def _kth_largest_host(bs: tuple, mss: Sequence[tuple], scopes: Sequence[Sequence[int]], ks: Sequence[int],
                      sample_size: int) -> np.ndarray:
  """The host path of :func:`_kth_largest_deltas` for several disjoint scopes (lists of leaf indices, each with
  its own ``k``; every scope must take the bracketing path): a ``(n_scopes, n_models)`` float32 array.

  Per group of 4 models, one jitted pass per leaf writes uint8 codes (bit j: inside model j's bracket, bit 4 + j:
  above it) and a thread pool compacts leaf ``i`` with numpy while XLA codes the next leaves (numpy releases the
  GIL); the selections run in the pool too."""
  out = np.empty((len(scopes), len(mss)), np.float32)
  sizes = [sum(bs[i].size for i in scope) for scope in scopes]
  leaf_scope = {i: si for si, scope in enumerate(scopes) for i in scope}
  order = sorted(leaf_scope)
  with concurrent.futures.ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
    for g in range(0, len(mss), _GROUP):
      group = tuple(mss[g:g + _GROUP])
      samples = [_bracket_sample(tuple(bs[i] for i in scope), tuple(tuple(ms[i] for i in scope) for ms in group),
                                 _scope_sample_size(n, sample_size)) for scope, n in zip(scopes, sizes)]
      bounds = [tuple(map(jnp.asarray, _bracket_bounds_host(np.asarray(smp), n, k)))
                for smp, n, k in zip(samples, sizes, ks)]
      codes = {i: _code_leaf(bs[i], tuple(ms[i] for ms in group), *bounds[leaf_scope[i]]) for i in order}  # async
      found = dict(zip(order, pool.map(lambda i: _host_leaf(codes[i], bs[i], [ms[i] for ms in group]), order)))

      def select(task):
        si, j = task
        above = sum(found[i][0][j] for i in scopes[si])
        cand = np.concatenate([found[i][1][j] for i in scopes[si]])
        r = ks[si] - above  # the answer is the r-th largest candidate when the bracket holds it
        if 1 <= r <= cand.size:
          return np.partition(cand, cand.size - r)[cand.size - r].view(np.float32)
        return None  # the bracket missed (probability ~1e-9)

      tasks = [(si, j) for si in range(len(scopes)) for j in range(len(group))]
      for (si, j), v in zip(tasks, pool.map(select, tasks)):
        if v is None:  # on a miss, exact bisection over all entries of the scope
          scope = scopes[si]
          v = _kth_largest_delta_small(tuple(bs[i] for i in scope), tuple(group[j][i] for i in scope),
                                       jnp.int32(ks[si]))
        out[si, g + j] = v
  return out


def _kth_largest_deltas(bs: tuple, mss: Sequence[tuple], k: int, sample_size: int = _BRACKET_SAMPLE,
                        compaction: str = "auto") -> jax.Array:
  """Exactly the k-th largest of ``|m - b|`` over all leaves (float32) for every model ``ms`` of ``mss``: a
  ``(n_models,)`` array, in about one pass over memory for all models together (plus the sample).

  1. Sample ``sample_size`` entries (hashed positions, shared by the models; fewer for a small scope, see
     :func:`_scope_sample_size`) and take the sample order statistics that bracket the population's k-th largest
     with overwhelming probability: ``[lo, hi]`` (see :func:`_bracket_ranks`).
  2. One pass codes every entry as below / inside / above the bracket; the entries inside (about
     ``12 / sqrt(sample_size)`` of them) are gathered and the number above is counted.
  3. If ``above < k <= above + inside``, the answer is the ``(k - above)``-th largest of the gathered entries;
     otherwise an exact fallback bisects over all entries (31 counting passes). Either way the result is exact.

  ``compaction="host"`` is :func:`_kth_largest_host` (concrete CPU arrays only: host steps between jitted steps);
  ``"xla"`` runs per model inside one jitted function with ``jnp.nonzero`` into a fixed-capacity buffer and a
  ``lax.cond`` fallback (traceable, any backend). ``"auto"`` takes the host path for concrete arrays on CPU, where
  XLA's ``nonzero`` is slow.
  """
  n = sum(b.size for b in bs)
  s = _scope_sample_size(n, sample_size)
  if n <= 4 * s:  # small: plain bisection is cheaper than bracketing
    return jnp.stack([_kth_largest_delta_small(bs, ms, jnp.int32(k)) for ms in mss])
  if _compaction(compaction, (*bs, *(x for ms in mss for x in ms))) == "xla":
    return jnp.stack([_kth_largest_delta_xla(bs, ms, k, s) for ms in mss])
  return jnp.asarray(_kth_largest_host(bs, mss, [range(len(bs))], [k], sample_size)[0])


def _compaction(compaction: str, arrays) -> str:
  if compaction != "auto":
    return compaction
  concrete = not any(isinstance(x, jax.core.Tracer) for x in arrays)
  return "host" if concrete and jax.default_backend() == "cpu" else "xla"


def _kth_largest_delta(bs: tuple, ms: tuple, k: int, sample_size: int = _BRACKET_SAMPLE,
                       compaction: str = "auto") -> jax.Array:
  """:func:`_kth_largest_deltas` for one model (a scalar)."""
  return _kth_largest_deltas(bs, (ms,), k, sample_size, compaction)[0]


def _topk_rank(n: int, density: float) -> int:
  """Ascending rank of the smallest kept magnitude when keeping the top ``density`` fraction."""
  return n - max(1, int(density * n))


def magnitude_threshold(x: jax.Array | Sequence[jax.Array], density: float, *, threshold: str = "exact",
                        sample_size: int = 1 << 16) -> jax.Array:
  """Smallest magnitude among the top ``density`` fraction of ``|x|`` (over all arrays when given a sequence).

  Keeping ``|x| >= magnitude_threshold(x, density)`` is the "trim" step of TIES (Yadav et al., arXiv:2306.01708,
  Sec. 4, step 1) with ``k = max(1, int(density * n))``. ``threshold="sample"`` estimates it from
  ``sample_size`` entries (see the module docstring)."""
  _check_density("density", density)
  _checks.check_choice("threshold", threshold, _THRESHOLDS)
  xs = tuple(x) if isinstance(x, (list, tuple)) else (x,)
  n = sum(int(np.prod(jnp.shape(a))) for a in xs)
  if n == 0:
    raise ValueError("x must hold at least one element, got empty arrays.")
  return _order_stats(tuple(map(jnp.asarray, xs)), jnp.array([_topk_rank(n, density)]), threshold,
                      int(sample_size))[0]


def trim_to_density(x: jax.Array, density: float, *, threshold: str = "exact",
                    sample_size: int = 1 << 16) -> jax.Array:
  """Zero all but the ``density`` fraction of largest-magnitude entries of ``x`` (TIES trim, arXiv:2306.01708,
  Sec. 4). ``density=1`` returns ``x``."""
  if density >= 1:
    _check_density("density", density)
    return x
  thr = magnitude_threshold(x, density, threshold=threshold, sample_size=sample_size)
  return jnp.where(jnp.abs(x) >= thr.astype(x.dtype), x, jnp.zeros_like(x))


_TIE_BREAKS = ("keep", "index", "torch")
_TIE_BLOCK = 4096  # entries per row when locating the m-th tied entry (rows are counted, one row is scanned)


def _check_tie_break(tie_break: str, scope: str, sizes: Sequence[int], leaves: Sequence[Any] = ()) -> None:
  _checks.check_choice("tie_break", tie_break, _TIE_BREAKS)
  if tie_break in ("index", "torch") and scope != "tensor":
    raise ValueError(f"tie_break={tie_break!r} orders tied entries within one tensor, so it needs "
                     f"scope='tensor', got scope={scope!r}.")
  if tie_break == "torch":
    if any(isinstance(x, jax.core.Tracer) for x in leaves):
      raise ValueError("tie_break='torch' sorts concrete arrays on the host with torch and cannot run under "
                       "jax.jit; use tie_break='index' (traceable) or call the merge outside jit.")
    try:
      import torch  # noqa: F401
    except ImportError as e:
      raise ImportError("tie_break='torch' needs PyTorch (pip install torch); use tie_break='index' or 'keep' "
                        "without it.") from e
  if tie_break == "index" and sizes and max(sizes) >= 2 ** 31:
    raise ValueError(f"tie_break='index' counts positions in int32; a leaf of {max(sizes)} entries is too large "
                     f"(use tie_break='keep').")


def _rows(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """A flat view of ``x`` as rows of :data:`_TIE_BLOCK` entries and the remaining tail."""
  flat = x.reshape(-1)
  width = min(_TIE_BLOCK, flat.size)
  rows = flat.size // width
  return flat[: rows * width].reshape(rows, width), flat[rows * width:]


def _count(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-row counts of a boolean ``x`` (see :func:`_rows`) and the total. Row reductions over the same operands
  fuse into one pass on XLA, where a full reduction would be a separate (and on CPU slower) pass."""
  main, tail = _rows(x)
  per_row = jnp.sum(main, axis=1, dtype=jnp.int32)
  return per_row, jnp.sum(per_row) + jnp.sum(tail, dtype=jnp.int32)


def _tie_boundary(tie: jax.Array, m: jax.Array, per_row: jax.Array | None = None) -> jax.Array:
  """Flat (row-major) index just past the ``m``-th ``True`` of ``tie`` (``0`` when ``m <= 0``, ``tie.size`` when
  there are fewer): the first ``m`` tied entries are exactly those at flat index below it. Rows of
  :data:`_TIE_BLOCK` entries are counted (``per_row``, from :func:`_count`, when the caller has it) and only the
  row holding the ``m``-th tie is scanned, so no prefix sum over the whole tensor is materialized."""
  n = tie.size
  if n == 0:
    return jnp.zeros((), jnp.int32)
  main, tail = _rows(tie)
  rows, width = main.shape
  cnt = jnp.sum(main, axis=1, dtype=jnp.int32) if per_row is None else per_row
  cum = jnp.cumsum(cnt)
  m = jnp.asarray(m, jnp.int32)
  r = jnp.minimum(jnp.searchsorted(cum, m, side="left"), rows - 1)
  row = jax.lax.dynamic_index_in_dim(main, r, 0, keepdims=False)
  j = jnp.searchsorted(jnp.cumsum(row, dtype=jnp.int32), m - (cum[r] - cnt[r]), side="left")
  found = r * width + j + 1
  if tail.size:
    jt = jnp.searchsorted(jnp.cumsum(tail, dtype=jnp.int32), m - cum[-1], side="left")
    found = jnp.where(m > cum[-1], rows * width + jt + 1, found)
  else:
    found = jnp.where(m > cum[-1], n, found)
  return jnp.where(m <= 0, 0, jnp.minimum(found, n))


def _flat_index(shape) -> jax.Array:
  return jax.lax.broadcasted_iota(jnp.int32, (int(np.prod(shape)),), 0).reshape(shape)


def _edge_keep(a: jax.Array, lo: jax.Array, hi: jax.Array, e: jax.Array) -> jax.Array:
  """Keep mask of an exact-count selection: entries strictly inside ``(lo, hi)``, entries equal to ``lo`` at flat
  index in ``[e[0], e[1])`` and entries equal to ``hi`` at flat index in ``[e[2], e[3])`` (from
  :func:`_edges_traced` or :func:`_index_edges_host`)."""
  idx = _flat_index(a.shape)
  e = jnp.asarray(e, jnp.int32)
  return (((a > lo) & (a < hi)) | ((a == lo) & (idx >= e[0]) & (idx < e[1]))
          | ((a == hi) & (idx >= e[2]) & (idx < e[3])))


def _edges_traced(a: jax.Array, lo: jax.Array, hi: jax.Array, start, stop, descending: bool) -> jax.Array:
  """:func:`_edge_keep`'s index ranges inside a traced computation. ``descending``: the first ``stop`` entries of a
  stable descending sort (TIES' top ``k``, ``lo`` its ``k``-th largest, ``hi = inf``); else the positions
  ``[start, stop)`` of a stable ascending sort (``lo``/``hi`` the values at ``start`` and ``stop - 1``). An entry
  equal to an edge ``v`` sits at position (entries before it in that order) + (its rank among the entries equal to
  ``v``, in flat index order)."""
  start, stop = jnp.asarray(start, jnp.int32), jnp.asarray(stop, jnp.int32)
  tie_lo, tie_hi = a == lo, a == hi
  rows_lo, _ = _count(tie_lo)
  if descending:
    _, n_gt = _count(a > lo)
    return jnp.stack([0, _tie_boundary(tie_lo, stop - n_gt, rows_lo), 0, 0]).astype(jnp.int32)
  rows_hi, _ = _count(tie_hi)
  _, below_lo = _count(a < lo)
  _, below_hi = _count(a < hi)
  return jnp.stack([_tie_boundary(tie_lo, start - below_lo, rows_lo), _tie_boundary(tie_lo, stop - below_lo, rows_lo),
                    _tie_boundary(tie_hi, start - below_hi, rows_hi),
                    _tie_boundary(tie_hi, stop - below_hi, rows_hi)]).astype(jnp.int32)


def _index_top_k(a: jax.Array, thr: jax.Array, k) -> jax.Array:
  """Keep mask of exactly the ``k`` largest ``a`` given ``thr``, the ``k``-th largest: everything above it and the
  first ``k - #(a > thr)`` entries equal to it in flat index order (the first ``k`` of a stable descending sort,
  e.g. ``torch.sort(stable=True)``)."""
  inf = jnp.asarray(jnp.inf, a.dtype)
  return _edge_keep(a, thr, inf, _edges_traced(a, thr, inf, 0, k, True))


def _index_band(a: jax.Array, lo: jax.Array, hi: jax.Array, start, stop) -> jax.Array:
  """Keep mask of the entries at positions ``[start, stop)`` of a stable ascending sort of ``a``, given ``lo`` and
  ``hi``, the values at positions ``start`` and ``stop - 1``."""
  return _edge_keep(a, lo, hi, _edges_traced(a, lo, hi, start, stop, False))


@jax.jit
def _edge_counts(b: jax.Array, ms: tuple, lo: jax.Array, hi: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per model ``j`` with ``a = |m_j - b|``: ``#(a < lo_j)``, ``#(a < hi_j)`` (shape ``(n_models, 2)``) and the
  per-row counts of ``a == lo_j`` and ``a == hi_j``, the tail as a last row (``(n_models, 2, rows + 1)``). Only
  reductions: cheap to compile for every tensor shape."""
  ct = _compute_dtype(b.dtype)
  bc = b.astype(ct)
  below, rows = [], []
  for j, m in enumerate(ms):
    a = jnp.abs(m.astype(ct) - bc)
    edges = (lo[j].astype(ct), hi[j].astype(ct))
    below.append(jnp.stack([_count(a < v)[1] for v in edges]))
    per_row = []
    for v in edges:
      main, tail = _rows(a == v)
      per_row.append(jnp.concatenate([jnp.sum(main, axis=1, dtype=jnp.int32), jnp.sum(tail, dtype=jnp.int32)[None]]))
    rows.append(jnp.stack(per_row))
  return jnp.stack(below), jnp.stack(rows)


@jax.jit
def _segment_ties(b: jax.Array, m: jax.Array, v: jax.Array) -> jax.Array:
  ct = _compute_dtype(b.dtype)
  return jnp.abs(m.astype(ct) - b.astype(ct)) == v.astype(ct)


def _host_boundary(per_row: np.ndarray, m: int, n: int, row_ties: Callable[[int, int], np.ndarray]) -> int:
  """Host side of :func:`_tie_boundary`: ``per_row`` counts the tied entries per row of :data:`_TIE_BLOCK` entries
  (the tail as a last row); ``row_ties(start, stop)`` gives the tie mask of flat entries ``[start, stop)``."""
  if m <= 0:
    return 0
  cum = np.cumsum(per_row)
  if m > cum[-1]:
    return n
  width = min(_TIE_BLOCK, max(n, 1))
  r = int(np.searchsorted(cum, m, side="left"))
  start = r * width  # the tail row starts where the full rows end, also at r * width
  ties = np.asarray(row_ties(start, min(n, start + width)))
  return start + int(np.flatnonzero(ties)[m - (cum[r] - per_row[r]) - 1]) + 1


def _index_edges_host(b, ms: Sequence, lo, hi, spans: np.ndarray, descending: bool,
                      counts: list | None = None) -> np.ndarray:
  """:func:`_edges_traced` for concrete arrays: one jitted pass of counts (:func:`_edge_counts`), then on the host
  the row holding each boundary, and its ties from a :data:`_TIE_BLOCK`-entry slice of the inputs. Returns
  ``(n_models, 4)`` int32 ranges for :func:`_edge_keep`; ``counts``, when given, receives per model
  ``(#(a >= lo), #(a > lo))`` (what verifies a guessed top-k threshold: ``ge >= k > gt``)."""
  n = int(b.size)
  lo, hi = jnp.asarray(lo, jnp.float32), jnp.asarray(hi, jnp.float32)
  below, rows = (np.asarray(x, np.int64) for x in _edge_counts(b, tuple(ms), lo, hi))
  flat_b = b.reshape(-1)
  out = np.zeros((len(ms), 4), np.int64)

  def boundary(j, e, m):
    return _host_boundary(rows[j, e], m, n, lambda s, t: _segment_ties(flat_b[s:t], ms[j].reshape(-1)[s:t],
                                                                       (lo, hi)[e][j]))

  if counts is not None:
    counts.extend((n - below[j, 0], n - below[j, 0] - rows[j, 0].sum()) for j in range(len(ms)))
  for j in range(len(ms)):
    start, stop = int(spans[j][0]), int(spans[j][1])
    if descending:
      n_gt = n - below[j, 0] - rows[j, 0].sum()
      out[j] = (0, boundary(j, 0, stop - n_gt), 0, 0)
    else:
      out[j] = (boundary(j, 0, start - below[j, 0]), boundary(j, 0, stop - below[j, 0]),
                boundary(j, 1, start - below[j, 1]), boundary(j, 1, stop - below[j, 1]))
  return out.astype(np.int32)


def _torch_tensor(x: Any) -> Any:
  """A torch view of ``x`` (read only in practice: :func:`_torch_keep` never writes it), bf16 through int16."""
  import torch

  x = np.ascontiguousarray(x)
  if x.dtype not in (ml_dtypes.bfloat16, np.float16, np.float32, np.float64):
    x = x.astype(np.float32)
  with warnings.catch_warnings():  # arrays from JAX are not writable; nothing here writes to them
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    if x.dtype == ml_dtypes.bfloat16:
      return torch.from_numpy(x.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(x)


def _torch_keep(b: Any, ms: Sequence[Any], spans: np.ndarray, descending: bool) -> np.ndarray:
  """Keep masks ``(n_models, *b.shape)`` of ``tie_break="torch"``: mergekit's own selection
  (``mergekit/sparsify.py`` ``magnitude`` / ``magnitude_outliers``), computed the way mergekit computes it: the
  delta ``m - b`` in the inputs' dtype (bf16 deltas rounded to bf16, as torch does), ``|delta|`` as float32, then
  positions ``spans[j] = [start, stop)`` of ``torch.argsort(descending=True)`` (TIES' trim) or of
  ``torch.sort(descending=False).indices`` (breadcrumbs' band). Which of the entries tied at a boundary survive
  is torch's unspecified sort order, so the masks equal mergekit's when both run the same torch build on the same
  kind of device. Host side, one full sort per model and tensor (mergekit's own cost)."""
  import torch

  bt = _torch_tensor(b)
  out = np.zeros((len(ms), int(np.prod(np.shape(b)))), bool)
  for j, m in enumerate(ms):
    start, stop = int(spans[j][0]), int(spans[j][1])
    if stop <= start:
      continue
    w = (_torch_tensor(m) - bt).abs().reshape(-1).float()
    if start == 0 and stop >= w.numel():
      out[j] = True
      continue
    order = torch.argsort(w, descending=True) if descending else torch.sort(w, descending=False).indices
    out[j, order[start:stop].numpy()] = True
  return out.reshape(len(ms), *np.shape(b))


def elect_sign(deltas: Sequence[jax.Array]) -> jax.Array:
  """TIES sign election (arXiv:2306.01708, Sec. 4, step 2): ``+1`` where ``sum_t delta_t >= 0``, else ``-1``
  (the total mass decides; a zero sum elects ``+1`` as mergekit does)."""
  total = sum(d for d in deltas)
  return jnp.where(total >= 0, 1, -1).astype(total.dtype)


def disjoint_merge(deltas: Sequence[jax.Array], sign: jax.Array, weights: Sequence[float] | None = None, *,
                   merge: str = "mean") -> jax.Array:
  """TIES disjoint merge (arXiv:2306.01708, Sec. 4, step 3): combine only entries whose sign agrees with the
  elected ``sign``. ``merge="mean"``: ``sum_t w_t d_t [agree] / sum_t w_t [agree]`` (the paper's disjoint mean,
  mergekit's normalized form; an entry with no agreeing task is 0); ``merge="sum"``: the sum of agreeing entries
  (FusionBench's ``merge_func=sum``). ``deltas`` are already weighted."""
  _checks.check_choice("merge", merge, ("mean", "sum"))
  weights = [1.0] * len(deltas) if weights is None else weights
  num = sum(jnp.where(jnp.sign(d) == sign, d, 0) for d in deltas)
  if merge == "sum":
    return num
  den = sum(jnp.where(jnp.sign(d) == sign, jnp.asarray(w, d.dtype), 0) for d, w in zip(deltas, weights))
  return num / jnp.where(den == 0, 1, den)


def _finish(treedef, base_leaves, sel, fn):
  return jax.tree.unflatten(treedef, [fn(i) if s else b for i, (b, s) in enumerate(zip(base_leaves, sel))])


# ----------------------------------------------------------------------------------------------------------------
# task arithmetic


def task_vector(base: PyTree, finetuned: PyTree, *, integer_leaves: IntegerLeaves = "error") -> PyTree:
  """``tau = theta_ft - theta_base`` (Ilharco et al., "Editing Models with Task Arithmetic", arXiv:2212.04089,
  Sec. 2). Integer/bool leaves are not subtracted: equal in both -> the shared value (so
  :func:`apply_task_vector` keeps it), different -> ``ValueError`` naming the path, unless ``integer_leaves``
  (``"first"``/``"base"``: the base's, ``"last"``: the fine-tune's, or a callable) says otherwise."""
  base, finetuned = _scalars_as_arrays(base), _scalars_as_arrays(finetuned)
  check_same_structure([base, finetuned], ["base", "finetuned"])
  ints = _integer_leaves([base, finetuned], ["base", "finetuned"], integer_leaves, has_base=True)
  return _put_integer_leaves(jax.tree.map(lambda b, f: (f - b) if _is_float(b) else b, base, finetuned), ints)


def apply_task_vector(base: PyTree, tau: PyTree, scale: float | jax.Array = 1.0, *,
                      integer_leaves: IntegerLeaves = "error") -> PyTree:
  """``theta_base + scale * tau`` (arXiv:2212.04089, Sec. 2: addition, negation with ``scale < 0``). Integer/bool
  leaves of ``base`` and ``tau`` (which :func:`task_vector` fills with the shared value) must be equal, unless
  ``integer_leaves`` (``"base"``/``"first"``: the base's, ``"last"``: ``tau``'s, or a callable) says otherwise."""
  base, tau = _scalars_as_arrays(base), _scalars_as_arrays(tau)
  check_same_structure([base, tau], ["base", "tau"])
  ints = _integer_leaves([base, tau], ["base", "tau"], integer_leaves, has_base=True)

  def leaf(b, t):
    if not _is_float(b):
      return b
    ct = _compute_dtype(b.dtype)
    return (b.astype(ct) + jnp.asarray(scale, ct) * t.astype(ct)).astype(b.dtype)

  return _put_integer_leaves(jax.tree.map(leaf, base, tau), ints)


@jax.jit
def _ta_leaf(b, ms, w, lam):
  ct = _compute_dtype(b.dtype)
  bc = b.astype(ct)
  tot = sum(w[i].astype(ct) * (m.astype(ct) - bc) for i, m in enumerate(ms))
  return (bc + lam.astype(ct) * tot).astype(b.dtype)


def task_arithmetic(base: PyTree, finetuned: Sequence[PyTree], lam: float | jax.Array = 0.3, *,
                    weights: Sequence[float] | jax.Array | None = None, include: str | None = None,
                    exclude: str | None = None, integer_leaves: IntegerLeaves = "error") -> PyTree:
  """Task arithmetic: ``theta = theta_base + lam * sum_t w_t (theta_t - theta_base)`` (Ilharco et al., "Editing
  Models with Task Arithmetic", arXiv:2212.04089, Sec. 2 "addition").

  Args:
    base: the pre-trained parameters.
    finetuned: non-empty list of fine-tuned parameters (same structure and shapes as ``base``).
    lam: scaling coefficient; the paper picks it on validation data from {0, 0.05, ..., 1}; 0.3 is FusionBench's
      default for 8 tasks. ``lam=0`` returns the base.
    weights: optional per-model weights ``w_t`` (default 1), as in mergekit's ``weight``.
    include, exclude: path filters; unselected leaves are the base's.
    integer_leaves: integer/bool leaves are never merged: equal in base and fine-tunes -> kept, different ->
      ``ValueError`` naming the path (default ``"error"``); or ``"first"``, ``"last"``, ``"base"`` or a callable
      ``(path, leaves) -> leaf`` (see :mod:`paperlab.merge.averaging`).
  """
  treedef, b, ms, sel = _split(base, finetuned, include, exclude, integer_leaves)
  w = _check_weights(weights, len(ms))
  w = jnp.ones((len(ms),)) if w is None else jnp.asarray(w, jnp.float32)
  lam_a = jnp.asarray(_checks.check_finite("lam", lam), jnp.float32)
  return _finish(treedef, b, sel, lambda i: _ta_leaf(b[i], tuple(m[i] for m in ms), w, lam_a))


# ----------------------------------------------------------------------------------------------------------------
# TIES


def _agreeing_merge(ts, ws, merge):
  """Disjoint merge of weighted, trimmed deltas ``ts`` written for one fused loop (no sign() calls)."""
  pos = sum(ts) >= 0
  agree = [jnp.where(pos, t > 0, t < 0) for t in ts]
  num = sum(jnp.where(a, t, 0) for a, t in zip(agree, ts))
  if merge == "sum":
    return num
  den = sum(jnp.where(a, w, 0) for a, w in zip(agree, ws))
  return num / jnp.where(den == 0, 1, den)


@functools.partial(jax.jit, static_argnames=("merge", "tie_break"))
def _ties_leaf(b, ms, thr, w, lam, merge, ks=None, tie_break="keep", edges=None, masks=None):
  ct = _compute_dtype(b.dtype)
  bc = b.astype(ct)
  ts = []
  for i, m in enumerate(ms):
    d = m.astype(ct) - bc
    a, t = jnp.abs(d), thr[i].astype(ct)
    if masks is not None:  # tie_break="torch": selected on the host
      keep = masks[i]
    elif tie_break == "index" and edges is None:  # traced: the boundary is found in-graph
      keep = _index_top_k(a, t, ks[i])
    elif tie_break == "index":
      keep = _edge_keep(a, t, jnp.asarray(jnp.inf, ct), edges[i])
    else:
      keep = a >= t
    ts.append(jnp.where(keep, w[i].astype(ct) * d, 0))
  merged = _agreeing_merge(ts, [w[i].astype(ct) for i in range(len(ms))], merge)
  return (bc + lam.astype(ct) * merged).astype(b.dtype)


def _thresholds(bs: tuple, ms: Sequence[tuple], density: float, threshold: str, sample_size: int) -> jax.Array:
  """Per model, the smallest kept |delta| over the leaves ``bs``/``ms[j]`` (one scope: a leaf or the model)."""
  n = sum(b.size for b in bs)
  if threshold == "exact":
    return _kth_largest_deltas(bs, tuple(ms), max(1, int(density * n)), _BRACKET_SAMPLE)
  rank = jnp.array([_topk_rank(n, density)])
  return jnp.stack([_delta_order_stats(bs, m, rank, threshold, sample_size)[0] for m in ms])


def _tensor_thresholds(bs: Sequence[jax.Array], mss: Sequence[Sequence[jax.Array]], density: float,
                       threshold: str, sample_size: int) -> dict[int, jax.Array]:
  """:func:`_thresholds` of every leaf on its own (mergekit's per-tensor trim): leaf index -> ``(n_models,)``. With
  exact thresholds on concrete CPU arrays, all leaves that take the bracketing path share one pipelined pass."""
  out = {}
  if threshold == "exact":
    big = [i for i, b in enumerate(bs) if b.size > 4 * _scope_sample_size(b.size, _BRACKET_SAMPLE)]
    if big and _compaction("auto", (*(bs[i] for i in big), *(ms[i] for ms in mss for i in big))) == "host":
      ks = [max(1, int(density * bs[i].size)) for i in big]
      thr = _kth_largest_host(tuple(bs), [tuple(ms) for ms in mss], [[i] for i in big], ks, _BRACKET_SAMPLE)
      out = {i: jnp.asarray(t) for i, t in zip(big, thr)}
  for i, b in enumerate(bs):
    if i not in out:
      out[i] = _thresholds((b,), [(ms[i],) for ms in mss], density, threshold, sample_size)
  return out


@functools.partial(jax.jit, static_argnames=("threshold", "sample_size"))
def _delta_order_stats(bs: tuple, ms: tuple, ranks: jax.Array, threshold: str, sample_size: int) -> jax.Array:
  """:func:`_order_stats` of ``|m - b|`` with the deltas formed inside the jitted function (never materialized
  when sampling)."""
  n = sum(b.size for b in bs)
  if threshold == "exact" or n <= sample_size:
    return _order_stats(tuple(m.astype(jnp.float32) - b.astype(jnp.float32) for b, m in zip(bs, ms)), ranks,
                        threshold, sample_size)
  parts = []  # the positions of _order_stats's sample, gathered before subtracting
  for i, (b, m) in enumerate(zip(bs, ms)):
    cnt = max(1, -(-sample_size * b.size // n))
    if cnt >= b.size:
      parts.append(_delta_bits(b, m))
      continue
    idx = _sample_positions(b.size, cnt, i)
    parts.append(_delta_bits(b.reshape(-1)[idx], m.reshape(-1)[idx]))
  return _sample_order_stats(jnp.concatenate(parts), n, jnp.clip(jnp.asarray(ranks, jnp.int32), 0, n - 1))


def ties(base: PyTree, finetuned: Sequence[PyTree], density: float = 0.2, lam: float | jax.Array = 1.0, *,
         scope: str = "global", merge: str = "mean", weights: Sequence[float] | jax.Array | None = None,
         threshold: str = "exact", sample_size: int = 1 << 16, tie_break: str = "keep",
         include: str | None = None, exclude: str | None = None,
         integer_leaves: IntegerLeaves = "error") -> PyTree:
  """TIES-Merging: trim, elect sign, disjoint merge (Yadav et al., "TIES-Merging: Resolving Interference When
  Merging Models", arXiv:2306.01708, Sec. 4 and Alg. 1).

  For each task vector keep the top ``density`` fraction of entries by magnitude (trim), elect per entry the sign
  with the larger total mass, then average the entries that agree with it:
  ``theta = theta_base + lam * disjoint_mean_t(trim(w_t tau_t))``.

  Args:
    base, finetuned: the pre-trained model and a non-empty list of fine-tunes of it.
    density: fraction of each task vector kept, in (0, 1] (the paper's k = 20%).
    lam: scaling of the merged task vector (the paper tunes it on validation data; 1 when there is none).
    scope: ``"global"`` ranks magnitudes over the whole (selected) task vector, as the paper and FusionBench do;
      ``"tensor"`` ranks within each leaf, as mergekit does.
    merge: ``"mean"`` (the paper's disjoint mean) or ``"sum"`` (FusionBench's ``merge_func=sum``; with
      ``density=1`` and no sign conflicts this equals :func:`task_arithmetic`).
    weights: optional per-model weights applied after trimming (mergekit's ``weight``).
    threshold: ``"exact"`` (default; the exact k-th largest by bracketing, one extra pass over the models; for
      concrete arrays on CPU its gather is a numpy host step between jitted steps, under ``jax.jit`` or on
      accelerators it is ``jnp.nonzero``) or ``"sample"`` (the estimate from ``sample_size``
      hashed entries; see the module docstring).
    sample_size: entries drawn per threshold when ``threshold="sample"``.
    tie_break: entries whose magnitude equals the threshold: ``"keep"`` keeps them all (default; the official
      code's ``|tau| >= kthvalue``, github.com/prateeky2806/ties-merging ``src/utils/merge_utils.py``
      ``topk_values_mask`` at 641600e), so a little more than ``k`` may survive when magnitudes tie (bf16 deltas
      often do); ``"index"`` keeps exactly ``k`` per leaf, the tied ones in row-major order (the first ``k`` of a stable
      descending sort; needs ``scope="tensor"`` and ``threshold="exact"``). mergekit keeps exactly ``k`` with
      ``torch.argsort``, whose order among ties is unspecified; ``"torch"`` reproduces that selection by running
      the same ``torch.argsort`` on the host (``scope="tensor"``; needs PyTorch; not under ``jax.jit``; one full sort
      per model and leaf, mergekit's cost): mergekit's masks exactly, on the same torch build and device kind.
    include, exclude: path filters; unselected leaves are the base's.
    integer_leaves: integer/bool leaves are never merged: equal in base and fine-tunes -> kept, different ->
      ``ValueError`` naming the path (default ``"error"``); or ``"first"``, ``"last"``, ``"base"`` or a callable
      ``(path, leaves) -> leaf`` (see :mod:`paperlab.merge.averaging`).
  """
  _check_density("density", density)
  _checks.check_choice("scope", scope, _SCOPES)
  _checks.check_choice("merge", merge, ("mean", "sum"))
  _checks.check_choice("threshold", threshold, _THRESHOLDS)
  treedef, b, ms, sel = _split(base, finetuned, include, exclude, integer_leaves)
  _check_tie_break(tie_break, scope, [int(x.size) for x in b], [*b, *(x for m in ms for x in m)])
  if tie_break == "index" and threshold != "exact":
    raise ValueError(f"tie_break='index' needs the exact threshold, got threshold={threshold!r}.")
  w = _check_weights(weights, len(ms))
  w = jnp.ones((len(ms),)) if w is None else jnp.asarray(w, jnp.float32)
  lam_a = jnp.asarray(_checks.check_finite("lam", lam), jnp.float32)
  keep_all = jnp.full((len(ms),), -jnp.inf)
  if density < 1 and scope == "global" and any(sel):
    idx = [i for i, s in enumerate(sel) if s]
    thr_g = _thresholds(tuple(b[i] for i in idx), [tuple(m[i] for i in idx) for m in ms], density, threshold,
                        int(sample_size))
  if density < 1 and scope == "tensor" and any(sel) and tie_break != "torch":
    idx = [i for i, s in enumerate(sel) if s]
    thr_t = _tensor_thresholds([b[i] for i in idx], [[m[i] for i in idx] for m in ms], density, threshold,
                               int(sample_size))
    thr_t = {i: thr_t[pos] for pos, i in enumerate(idx)}

  def leaf(i):
    leaves = tuple(m[i] for m in ms)
    if tie_break == "torch" and density < 1:
      spans = np.tile(np.array([0, max(1, int(density * b[i].size))]), (len(ms), 1))
      masks = jnp.asarray(_torch_keep(b[i], leaves, spans, True))
      return _ties_leaf(b[i], leaves, keep_all, w, lam_a, merge, masks=masks)
    if density >= 1:
      thr = keep_all
    elif scope == "global":
      thr = thr_g
    else:
      thr = thr_t[i]
    if tie_break == "index":
      k = max(1, int(density * b[i].size)) if density < 1 else b[i].size
      ks = jnp.full((len(ms),), k, jnp.int32)
      edges = None
      if _compaction("auto", (b[i], *leaves)) == "host":
        spans = np.tile(np.array([0, k]), (len(ms), 1))
        edges = jnp.asarray(_index_edges_host(b[i], leaves, thr, np.full(len(ms), np.inf, np.float32), spans, True))
      return _ties_leaf(b[i], leaves, thr, w, lam_a, merge, ks, "index", edges)
    return _ties_leaf(b[i], leaves, thr, w, lam_a, merge)

  return _finish(treedef, b, sel, leaf)


# ----------------------------------------------------------------------------------------------------------------
# DARE


_SAMPLERS = ("hash", "threefry")


def _draw_mask(key, density, shape, sampler):
  """Bernoulli(density) keep-mask of ``shape`` (traceable; fused into the merge kernels)."""
  if sampler == "threefry":
    return jax.random.bernoulli(key, density, shape)
  u = _keyed_hash_u32(int(np.prod(shape)), key)
  # compare the top 24 bits with density * 2^24 (exact in float32), so density=1 keeps every entry
  return ((u >> 8).astype(jnp.float32) < density * float(1 << 24)).reshape(shape)


_mask_leaf = jax.jit(_draw_mask, static_argnames=("shape", "sampler"))


def random_mask(key: jax.Array, like: PyTree, density: float | jax.Array, *, sampler: str = "hash") -> PyTree:
  """Boolean pytree shaped like ``like`` with entries kept independently with probability ``density``
  (DARE's Bernoulli mask, Yu et al., arXiv:2311.03099, eq. 1). Leaf ``j`` uses ``jax.random.fold_in(key, j)``.

  ``sampler="hash"`` (default) is a counter-based generator keyed from ``key``: two keyed rounds of murmur3's
  finalizer over each entry's index (:func:`_keyed_hash_u32`), its top 24 bits compared with
  ``density * 2^24``. It runs at memory speed (threefry is ~30x slower on CPU) and is tested for what DARE needs:
  the kept count is within binomial bounds, the rescaled delta is unbiased in expectation over keys, and masks of
  different leaves, models and keys are uncorrelated. It is not a cryptographic or a jax.random stream; densities
  are resolved to 2^-24. ``sampler="threefry"`` draws ``jax.random.bernoulli(key_j, density, shape)`` exactly."""
  _checks.check_choice("sampler", sampler, _SAMPLERS)
  _checks.check_range("density", density, 0.0, 1.0)
  leaves, treedef = jax.tree.flatten(like)
  d = jnp.asarray(density, jnp.float32)
  return jax.tree.unflatten(treedef, [_mask_leaf(jax.random.fold_in(key, j), d, tuple(jnp.shape(x)), sampler)
                                      for j, x in enumerate(leaves)])


def _check_rescale(rescale) -> None:
  if rescale is None or (isinstance(rescale, str) and rescale in ("inverse", "l1")):
    return
  if isinstance(rescale, jax.Array) and jnp.ndim(rescale) == 0:
    return  # a traced or device scalar factor: not checked
  if isinstance(rescale, str) or _checks._concrete(rescale) is None:
    raise ValueError(f"rescale must be 'inverse', 'l1', None or a positive number, got {rescale!r}.")
  _checks.check_positive("rescale", rescale)


@functools.partial(jax.jit, static_argnames=("mode", "sign_consensus", "merge", "sampler"))
def _dare_merge_leaf(b, ms, keys, density, w, lam, factor, mode, sign_consensus, merge, sampler):
  ct = _compute_dtype(b.dtype)
  bc = b.astype(ct)
  ds = []
  for i, m in enumerate(ms):
    keep = _draw_mask(keys[i], density, b.shape, sampler)
    d = m.astype(ct) - bc
    kept = jnp.where(keep, d, 0)
    if mode == "scale":
      kept = kept * factor.astype(ct)
    elif mode == "l1":
      # mergekit's rescale: match the L1 norm of the unmasked delta (skipped when either norm is ~0)
      before, after = jnp.sum(jnp.abs(d)), jnp.sum(jnp.abs(kept))
      ok = (before >= 1e-7) & (after >= 1e-7)
      kept = jnp.where(ok, kept * (before / jnp.where(ok, after, 1)), kept)
    ds.append(w[i].astype(ct) * kept)
  if sign_consensus:
    merged = _agreeing_merge(ds, [w[i].astype(ct) for i in range(len(ms))], merge)
  else:
    merged = sum(ds)
  return (bc + lam.astype(ct) * merged).astype(b.dtype)


def dare_merge(key: jax.Array, base: PyTree, finetuned: Sequence[PyTree], density: float = 0.1,
               lam: float | jax.Array = 1.0, *, rescale: str | float | None = "inverse", sign_consensus: bool = False,
               merge: str = "mean", weights: Sequence[float] | jax.Array | None = None, sampler: str = "hash",
               include: str | None = None, exclude: str | None = None,
               integer_leaves: IntegerLeaves = "error") -> PyTree:
  """DARE: drop and rescale each task vector, then merge (Yu et al., "Language Models are Super Mario: Absorbing
  Abilities from Homologous Models as a Free Lunch", arXiv:2311.03099, eq. 1-2).

  ``tau'_t = m_t * tau_t * r`` with ``m_t ~ Bernoulli(density)`` (``density = 1 - p``, drop rate ``p``) and
  ``r = 1 / density``; then task arithmetic ``theta_base + lam * sum_t w_t tau'_t`` (mergekit ``dare_linear``),
  or with ``sign_consensus=True`` TIES' sign election and disjoint mean (``dare_ties``).

  Args:
    key: PRNG key; model ``t`` uses ``jax.random.fold_in(key, t)`` and :func:`random_mask` on its task vector.
    density: keep probability ``1 - p`` in (0, 1] (the paper drops p = 0.9 of the delta).
    lam: scaling of the merged delta.
    rescale: ``"inverse"`` (1/density, unbiased: E[tau'] = tau), a positive float factor (DARE the Extreme's
      ``1/q``, arXiv:2410.09344), ``"l1"`` (mergekit: match the L1 norm of the unmasked leaf) or ``None``.
    sign_consensus: TIES sign election + disjoint merge instead of a plain sum.
    merge: with ``sign_consensus``, ``"mean"`` (TIES' disjoint mean) or ``"sum"`` of agreeing entries
      (mergekit's ``dare_ties``, which does not normalize).
    weights: per-model weights; sampler: ``"hash"`` (default) or ``"threefry"`` (see :func:`random_mask`).
    include, exclude: path filters; unselected leaves are the base's.
    integer_leaves: integer/bool leaves are never merged: equal in base and fine-tunes -> kept, different ->
      ``ValueError`` naming the path (default ``"error"``); or ``"first"``, ``"last"``, ``"base"`` or a callable
      ``(path, leaves) -> leaf`` (see :mod:`paperlab.merge.averaging`).
  """
  _check_density("density", density)
  _check_rescale(rescale)
  _checks.check_choice("merge", merge, ("mean", "sum"))
  _checks.check_choice("sampler", sampler, _SAMPLERS)
  treedef, b, ms, sel = _split(base, finetuned, include, exclude, integer_leaves)
  w = _check_weights(weights, len(ms))
  w = jnp.ones((len(ms),)) if w is None else jnp.asarray(w, jnp.float32)
  model_keys = [jax.random.fold_in(key, t) for t in range(len(ms))]
  dens = jnp.asarray(density, jnp.float32)
  lam_a = jnp.asarray(_checks.check_finite("lam", lam), jnp.float32)
  if rescale is None or rescale == "l1":
    mode, factor = rescale, jnp.ones(())
  else:
    mode = "scale"
    factor = 1.0 / jnp.asarray(density, jnp.float32) if rescale == "inverse" else jnp.asarray(rescale, jnp.float32)
  return _finish(treedef, b, sel, lambda i: _dare_merge_leaf(
      b[i], tuple(m[i] for m in ms), tuple(jax.random.fold_in(k, i) for k in model_keys), dens, w, lam_a, factor,
      mode, sign_consensus, merge, sampler))


def dare(key: jax.Array, base: PyTree, finetuned: PyTree, density: float = 0.1, *,
         rescale: str | float | None = "inverse", sampler: str = "hash", include: str | None = None,
         exclude: str | None = None, integer_leaves: IntegerLeaves = "error") -> PyTree:
  """DARE on one model: ``theta_base + m * (theta_ft - theta_base) * r`` (arXiv:2311.03099, eq. 1), the
  "competitive" delta edit of Tang et al. (arXiv:2410.13841): unbiased, ``E_m[result] = theta_ft`` when
  ``rescale="inverse"``. ``rescale`` as in :func:`dare_merge` (a float ``1/q`` gives DAREx-q); integer/bool
  leaves follow ``integer_leaves`` (equal -> kept, different -> ``ValueError``)."""
  return dare_merge(key, base, [finetuned], density, 1.0, rescale=rescale,
                    sampler=sampler, include=include, exclude=exclude, integer_leaves=integer_leaves)


def darex_q(key: jax.Array, base: PyTree, finetuned: PyTree, density: float, q_grid: Sequence[float],
            score_fn: Callable[[PyTree], float], *, sampler: str = "hash",
            integer_leaves: IntegerLeaves = "error") -> tuple[PyTree, float]:
  """DARE the Extreme's DAREx-q (Deng et al., "DARE the Extreme: Revisiting Delta-Parameter Pruning For
  Fine-Tuned Models", arXiv:2410.09344, Sec. 4.1): replace DARE's ``1/(1-p)`` by ``1/q`` and pick ``q`` from
  ``q_grid`` maximizing ``score_fn`` (e.g. validation accuracy). Host loop; every candidate shares one mask.

  Returns ``(params, q)`` for the best ``q``. Integer/bool leaves follow ``integer_leaves`` as in :func:`dare`."""
  q_grid = [float(q) for q in q_grid]
  if not q_grid:
    raise ValueError("q_grid must hold at least one value, got an empty sequence.")
  for q in q_grid:
    _checks.check_positive("q_grid[i]", q)
  best = None
  for q in q_grid:
    cand = dare(key, base, finetuned, density, rescale=1.0 / q, sampler=sampler, integer_leaves=integer_leaves)
    s = float(score_fn(cand))
    if best is None or s > best[0]:
      best = (s, q, cand)
  return best[2], best[1]


# ----------------------------------------------------------------------------------------------------------------
# breadcrumbs


def _kept_density(beta: float, gamma: float) -> float:
  """``1 - beta - gamma`` computed in decimal on the shortest reprs of ``beta`` and ``gamma`` (what the user
  wrote), then rounded once to float: the density a mergekit config would state."""
  return float(decimal.Decimal(1) - decimal.Decimal(repr(float(beta))) - decimal.Decimal(repr(float(gamma))))


def _band_ranks(n: int, density: float, gamma: float) -> tuple[int, int, int]:
  """(first kept ascending rank, last kept rank, number kept): drop the top ``int(gamma n)`` and enough of the
  smallest to keep ``int(density n)`` (mergekit's ``magnitude_outliers`` convention)."""
  n_keep = int(density * n)
  n_top = int(gamma * n)
  n_bot = max(0, n - n_keep - n_top)
  return n_bot, n_bot + n_keep - 1, n_keep


@functools.partial(jax.jit, static_argnames=("sign_consensus", "tie_break"))
def _bc_leaf(b, ms, lo, hi, w, lam, sign_consensus, span=None, tie_break="keep", edges=None, masks=None):
  ct = _compute_dtype(b.dtype)
  bc = b.astype(ct)
  ds = []
  for i, m in enumerate(ms):
    d = m.astype(ct) - bc
    a, l, h = jnp.abs(d), lo[i].astype(ct), hi[i].astype(ct)
    if masks is not None:  # tie_break="torch": selected on the host
      keep = masks[i]
    elif tie_break == "index" and edges is None:  # traced: the boundary is found in-graph
      keep = _index_band(a, l, h, span[0], span[1])
    elif tie_break == "index":
      keep = _edge_keep(a, l, h, edges[i])
    else:
      keep = (a >= l) & (a <= h)
    ds.append(w[i].astype(ct) * jnp.where(keep, d, 0))
  merged = _agreeing_merge(ds, None, "sum") if sign_consensus else sum(ds)
  return (bc + lam.astype(ct) * merged).astype(b.dtype)


def breadcrumbs(base: PyTree, finetuned: Sequence[PyTree], beta: float = 0.85, gamma: float = 0.01,
                lam: float | jax.Array = 0.3, *, scope: str = "tensor", sign_consensus: bool = False,
                weights: Sequence[float] | jax.Array | None = None, tie_break: str = "keep",
                include: str | None = None,
                exclude: str | None = None, integer_leaves: IntegerLeaves = "error") -> PyTree:
  """Model Breadcrumbs (Davari & Belilovsky, "Model Breadcrumbs: Scaling Multi-Task Model Merging with Sparse
  Masks", arXiv:2312.06795, Sec. 3): per layer, drop the ``gamma`` fraction of largest-magnitude entries of each
  task vector (outliers) and the smallest ones so that ``1 - beta - gamma`` are kept, then
  ``theta = theta_base + lam * sum_t w_t m_t * tau_t``.

  Counts follow mergekit's ``breadcrumbs`` (``sparsify.magnitude_outliers``) with ``density = 1 - beta - gamma``:
  ``int(density n)`` kept, ``int(gamma n)`` dropped from the top. ``density`` is computed in decimal from the
  shortest repr of ``beta`` and ``gamma`` (``1 - 0.89 - 0.01`` is ``0.1``, where binary floating point gives
  ``0.0999...`` and would keep ``n/10 - 1``), so ``beta = 1 - d - gamma`` keeps what mergekit keeps for
  ``density: d``. ``sign_consensus=True`` adds TIES' sign election (mergekit's ``breadcrumbs_ties``: sum of
  agreeing entries). Exact thresholds; entries tied with a band edge are kept.

  Args:
    beta: fraction dropped from the bottom (0.85 in the paper's typical masks); gamma: fraction dropped from the
      top (0.01); both >= 0 with ``beta + gamma < 1``. ``beta = gamma = 0`` is task arithmetic.
    lam: scaling (the paper tunes it once on validation data, ~0.3).
    scope: ``"tensor"`` (per layer, the paper and mergekit) or ``"global"``.
    tie_break: entries equal to a band edge: ``"keep"`` keeps them all (default); ``"index"`` keeps exactly the
      positions ``[n_bot, n_bot + n_keep)`` of a stable ascending sort of ``|tau|`` per leaf (ties in row-major
      order; ``scope="tensor"`` only), mergekit's ``magnitude_outliers`` with a stable ``torch.sort``;
      ``"torch"`` runs mergekit's own ``torch.sort`` on the host and keeps exactly mergekit's entries (PyTorch
      needed, not under ``jax.jit``; see :func:`ties`).
    include, exclude: path filters; unselected leaves are the base's.
    integer_leaves: integer/bool leaves are never merged: equal in base and fine-tunes -> kept, different ->
      ``ValueError`` naming the path (default ``"error"``); or ``"first"``, ``"last"``, ``"base"`` or a callable
      ``(path, leaves) -> leaf`` (see :mod:`paperlab.merge.averaging`).
  """
  _checks.check_range("beta", beta, 0.0, 1.0, high_inclusive=False)
  _checks.check_range("gamma", gamma, 0.0, 1.0, high_inclusive=False)
  if beta + gamma >= 1:
    raise ValueError(f"beta + gamma must be < 1 so that some entries are kept, got beta={beta}, gamma={gamma}.")
  _checks.check_choice("scope", scope, _SCOPES)
  density = _kept_density(beta, gamma)
  treedef, b, ms, sel = _split(base, finetuned, include, exclude, integer_leaves)
  _check_tie_break(tie_break, scope, [int(x.size) for x in b], [*b, *(x for m in ms for x in m)])
  w = _check_weights(weights, len(ms))
  w = jnp.ones((len(ms),)) if w is None else jnp.asarray(w, jnp.float32)
  lam_a = jnp.asarray(_checks.check_finite("lam", lam), jnp.float32)

  def band(deltas, n):
    lo_r, hi_r, n_keep = _band_ranks(n, density, gamma)
    if beta == 0 and gamma == 0:
      return -jnp.inf, jnp.inf
    if n_keep <= 0:
      return jnp.inf, -jnp.inf
    lo, hi = _order_stats(deltas, jnp.array([lo_r, hi_r]), "exact", 1)
    return lo, hi

  def bands(idx):
    n = sum(b[i].size for i in idx)
    lohi = [band(tuple(m[i].astype(jnp.float32) - b[i].astype(jnp.float32) for i in idx), n) for m in ms]
    return jnp.stack([jnp.asarray(l, jnp.float32) for l, _ in lohi]), jnp.stack([jnp.asarray(h, jnp.float32)
                                                                                for _, h in lohi])

  if scope == "global" and any(sel):
    g = bands([i for i, s in enumerate(sel) if s])

  def leaf(i):
    if tie_break == "torch" and not (beta == 0 and gamma == 0):
      lo_r, _, n_keep = _band_ranks(b[i].size, density, gamma)
      spans = np.tile(np.array([lo_r, lo_r + max(n_keep, 0)]), (len(ms), 1))
      leaves = tuple(m[i] for m in ms)
      inf = jnp.full((len(ms),), jnp.inf, jnp.float32)
      return _bc_leaf(b[i], leaves, -inf, inf, w, lam_a, sign_consensus,
                      masks=jnp.asarray(_torch_keep(b[i], leaves, spans, False)))
    lo, hi = g if scope == "global" else bands([i])
    if tie_break == "index" and not (beta == 0 and gamma == 0):
      lo_r, _, n_keep = _band_ranks(b[i].size, density, gamma)
      span = np.array([lo_r, lo_r + max(n_keep, 0)])
      leaves = tuple(m[i] for m in ms)
      edges = None
      if _compaction("auto", (b[i], *leaves)) == "host":
        edges = jnp.asarray(_index_edges_host(b[i], leaves, lo, hi, np.tile(span, (len(ms), 1)), False))
      return _bc_leaf(b[i], leaves, lo, hi, w, lam_a, sign_consensus, jnp.asarray(span, jnp.int32), "index", edges)
    return _bc_leaf(b[i], tuple(m[i] for m in ms), lo, hi, w, lam_a, sign_consensus)

  return _finish(treedef, b, sel, leaf)


# ----------------------------------------------------------------------------------------------------------------
# PCB


def _minmax(x, axis):
  lo = jnp.min(x, axis=axis, keepdims=True)
  hi = jnp.max(x, axis=axis, keepdims=True)
  return (x - lo) / jnp.where(hi > lo, hi - lo, 1)


def _clamp_quantiles(x, low_q, high_q):
  """Per row, clamp to the values at sorted positions ``int(d * low_q)`` and ``int(d * (1 - high_q)) - 1``."""
  d = x.shape[1]
  s = jnp.sort(x, axis=1)
  lo = s[:, int(d * low_q)][:, None]
  hi = s[:, max(int(d * (1 - high_q)) - 1, 0)][:, None]
  return jnp.clip(x, lo, hi)


@functools.partial(jax.jit, static_argnames=("ratio", "clamp_q"))
def _pcb_flat(tau, ratio, clamp_q):
  """PCB on stacked flat task vectors ``tau`` of shape (n, d): merged (d,) task vector."""
  n = tau.shape[0]
  mag = _clamp_quantiles(jnp.abs(tau), clamp_q, clamp_q)
  clamped = jnp.sign(tau) * mag
  intra = jnp.exp(n * _minmax(mag, 1) ** 2)  # intra-balancing: emphasize large entries within a task
  inter = jnp.tanh(tau * jnp.sum(tau, axis=0, keepdims=True))  # inter-balancing: agreement with the others
  score = intra * inter
  scale = _minmax(_clamp_quantiles(score, 1 - ratio, 0.0), 1)  # drop all but the top `ratio` per task
  return jnp.sum(clamped * scale, axis=0) / jnp.maximum(jnp.sum(scale, axis=0), 1e-12)


def pcb(base: PyTree, finetuned: Sequence[PyTree], ratio: float = 0.1, lam: float | jax.Array = 1.0, *,
        scope: str = "global", clamp_q: float = 1e-4, include: str | None = None,
        exclude: str | None = None, integer_leaves: IntegerLeaves = "error") -> PyTree:
  """PCB-merging (Du et al., "Parameter Competition Balancing for Model Merging", arXiv:2410.02396, Sec. 3,
  eq. 2-6), following the authors' ``PCB_merge`` on stacked flat task vectors ``tau`` (n, d):

  ``|tau|`` clamped to its ``clamp_q`` / ``1 - clamp_q`` quantiles; intra-balancing
  ``exp(n * minmax(|tau_i|)^2)``; inter-balancing ``tanh(tau_i * sum_j tau_j)``; their product is the score;
  scores below each task's top-``ratio`` quantile are clamped and min-max normalized to 0, giving weights
  ``s_i``; ``tau = sum_i s_i tau_i / sum_i s_i`` and ``theta = theta_base + lam * tau``.

  Args:
    ratio: fraction of entries kept per task, in (0, 1] (0.1 default; 0.05 in the authors' search script).
    lam: scaling (searched on validation data in the paper).
    scope: ``"global"`` (the whole selected model is one flat vector, as in the paper) or ``"tensor"``.
      ``"global"`` concatenates the model: for models that fit in memory n times.
    clamp_q: outlier clamping quantile (1e-4).
    include, exclude: path filters; unselected leaves are the base's.
    integer_leaves: integer/bool leaves are never merged: equal in base and fine-tunes -> kept, different ->
      ``ValueError`` naming the path (default ``"error"``); or ``"first"``, ``"last"``, ``"base"`` or a callable
      ``(path, leaves) -> leaf`` (see :mod:`paperlab.merge.averaging`).
  """
  _check_density("ratio", ratio)
  _checks.check_range("clamp_q", clamp_q, 0.0, 0.5, high_inclusive=False)
  _checks.check_choice("scope", scope, _SCOPES)
  treedef, b, ms, sel = _split(base, finetuned, include, exclude, integer_leaves)
  lam_a = jnp.asarray(_checks.check_finite("lam", lam), jnp.float32)

  def tau_of(i):
    return jnp.stack([(m[i].astype(jnp.float32) - b[i].astype(jnp.float32)).reshape(-1) for m in ms])

  def put(i, merged):
    ct = _compute_dtype(b[i].dtype)
    return (b[i].astype(ct) + lam_a.astype(ct) * merged.reshape(b[i].shape).astype(ct)).astype(b[i].dtype)

  if scope == "tensor":
    return _finish(treedef, b, sel, lambda i: put(i, _pcb_flat(tau_of(i), float(ratio), float(clamp_q))))
  idx = [i for i, s in enumerate(sel) if s]
  if not idx:
    return jax.tree.unflatten(treedef, b)
  flat = _pcb_flat(jnp.concatenate([tau_of(i) for i in idx], axis=1), float(ratio), float(clamp_q))
  offsets = np.cumsum([0] + [b[i].size for i in idx])
  pieces = {i: flat[offsets[j]:offsets[j + 1]] for j, i in enumerate(idx)}
  return _finish(treedef, b, sel, lambda i: put(i, pieces[i]))


# ----------------------------------------------------------------------------------------------------------------
# other delta edits


def extrapolate(base: PyTree, finetuned: PyTree, alpha: float | jax.Array = 0.3, *, include: str | None = None,
                exclude: str | None = None, integer_leaves: IntegerLeaves = "error") -> PyTree:
  """ExPO / model extrapolation: ``theta_base + (1 + alpha) (theta_ft - theta_base)`` (Zheng et al., "Weak-to-Strong
  Extrapolation Expedites Alignment", arXiv:2404.16792, eq. 3; the "improved" edit class of Tang et al.,
  arXiv:2410.13841). ``alpha=0`` returns the fine-tune. Integer/bool leaves follow ``integer_leaves``."""
  return task_arithmetic(base, [finetuned], 1.0 + alpha, include=include, exclude=exclude,
                         integer_leaves=integer_leaves)


@functools.partial(jax.jit, static_argnames=("axis",))
def _bitdelta_leaf(b, f, axis):
  ct = _compute_dtype(b.dtype)
  d = f.astype(ct) - b.astype(ct)
  if axis is None:
    scale = jnp.mean(jnp.abs(d))
  else:
    red = tuple(a for a in range(d.ndim) if a != axis % d.ndim)
    scale = jnp.mean(jnp.abs(d), axis=red, keepdims=True)
  return (b.astype(ct) + scale * jnp.sign(d)).astype(b.dtype)


def bitdelta(base: PyTree, finetuned: PyTree, *, axis: int | None = None, include: str | None = None,
             exclude: str | None = None, integer_leaves: IntegerLeaves = "error") -> PyTree:
  """BitDelta-style 1-bit delta: ``theta_base + alpha * sign(theta_ft - theta_base)`` with ``alpha = mean |delta|``
  per leaf (or per slice along ``axis``, e.g. ``-1`` = per output unit of a Flax kernel): the L2-optimal scale
  for a sign code (Liu et al., "BitDelta: Your Fine-Tune May Only Be Worth One Bit", arXiv:2402.10193, eq. 2;
  a "competitive" edit in Tang et al., arXiv:2410.13841). Returns the reconstructed parameters; 0-d floating
  leaves are the fine-tune's exactly. Integer/bool leaves follow ``integer_leaves`` (equal -> kept, different ->
  ``ValueError``)."""
  base, finetuned = _scalars_as_arrays(base), _scalars_as_arrays(finetuned)
  check_same_structure([base, finetuned], ["base", "finetuned"])
  mask = _selected(base, include, exclude)
  ints = _integer_leaves([base, finetuned], ["base", "finetuned"], integer_leaves, has_base=True, selected=mask)
  leaves_b, treedef = jax.tree.flatten(base)
  leaves_f = treedef.flatten_up_to(finetuned)
  out = []
  for m, x, y in zip(mask, leaves_b, leaves_f):
    if not (m and _is_float(x)) or jnp.ndim(x) == 0:
      out.append(y if (m and _is_float(x)) else x)
    else:
      out.append(_bitdelta_leaf(x, y, axis if jnp.ndim(x) >= 2 else None))
  return _put_integer_leaves(jax.tree.unflatten(treedef, out), ints)
