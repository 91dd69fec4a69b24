"""EVA: explained-variance adaptation -- LoRA's ``A`` initialized from the top principal directions of each layer's
inputs, with ranks redistributed across layers by explained variance.

Paischer et al., "One Initialization to Rule them All: Fine-tuning via Explained Variance Adaptation",
arXiv:2410.07170, Sec. 3: (1) PCA of a layer's input activations (peft runs incremental PCA over batches until the
components converge, cosine similarity >= tau = 0.99; here the PCA of the activations given, computed exactly with
an SVD of the centred matrix); (2) ``lora_A`` = the top right-singular vectors, ``lora_B`` = 0; (3) the rank budget
``L r`` is redistributed: the explained-variance ratios of all layers' first ``round(rho r)`` components are pooled
and the top ``L r`` kept (``rho = 2``; ``rho = 1`` gives uniform ranks). Conventions follow Hugging Face ``peft``'s
``EvaConfig`` / ``get_eva_state_dict`` (0.21). Host-side orchestration over layers; the per-layer PCA is jittable.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from paperlab import _checks
from paperlab.peft.adapters import Adapters

PyTree = Any

__all__ = ["eva_components", "eva_rank_distribution", "eva_init"]


def eva_components(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """``(components (k, in), explained_variance_ratio (k,))`` of the PCA of ``x (N, in)`` (rows are examples):
  the top ``k`` right-singular vectors of the centred ``x`` and ``S_i^2 / sum_j S_j^2`` (scikit-learn's /
  peft's ``IncrementalPCA`` convention).

  Raises:
    ValueError: ``x`` not 2-D or ``k`` outside ``[1, min(N, in)]``.
  """
  if jnp.ndim(x) != 2:
    raise ValueError(f"x must be 2-D (examples, features), got shape {jnp.shape(x)}.")
  if not isinstance(k, int) or not 1 <= k <= min(x.shape):
    raise ValueError(f"k must be an int in [1, min(N, in)={min(x.shape)}], got {k!r}.")
  xc = x.astype(jnp.float32) - jnp.mean(x.astype(jnp.float32), axis=0)
  _, s, vt = jnp.linalg.svd(xc, full_matrices=False)
  return vt[:k], (s ** 2 / jnp.sum(s ** 2))[:k]


def eva_rank_distribution(ratios: Mapping[str, Any], r: int, rho: float = 2.0) -> dict[str, int]:
  """EVA's rank redistribution (peft ``_get_rank_distribution``): pool the first ``round(rho r)`` explained-variance
  ratios of every layer, keep the top ``r * len(ratios)`` and count them per layer. Host-side.

  Raises:
    ValueError: ``rho < 1`` or ``r < 1``.
  """
  _checks.check_range("rho", rho, 1.0, None)
  if not isinstance(r, int) or r < 1:
    raise ValueError(f"r must be a positive int, got {r!r}.")
  cap = round(r * rho)
  keys, values = [], []
  for name in ratios:
    for v in np.asarray(ratios[name])[:cap]:
      keys.append(name)
      values.append(float(v))
  order = np.argsort(-np.asarray(values), kind="stable")[: r * len(ratios)]
  counts = {name: 0 for name in ratios}
  for i in order:
    counts[keys[i]] += 1
  return counts


def eva_init(activations: Mapping[str, jax.Array], params: PyTree, *, r: int, rho: float = 2.0
             ) -> tuple[Adapters, dict[str, int]]:
  """EVA-initialized LoRA adapters ``{kernel path: {"lora_A": (r_l, in), "lora_B": zeros (out, r_l)}}`` and the
  ranks ``{path: r_l}`` (summing to ``r * len(activations)``; layers given rank 0 get no adapter).

  Args:
    activations: ``{kernel path: inputs of that layer (N, in)}`` collected on a few batches.
    params: the parameter pytree (for the kernels' output widths).
    r: the average rank.
    rho: the per-layer cap factor (max rank ``round(rho r)``).

  Raises:
    ValueError: a path that is not a 2-D leaf of ``params`` or whose activations do not have ``in`` features.
  """
  from paperlab._tree import path_str  # pylint: disable=g-import-not-at-top

  kernels = {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0] if jnp.ndim(x) == 2}
  comps, ratios = {}, {}
  for path, x in activations.items():
    if path not in kernels:
      raise ValueError(f"activations name {path!r}, which is not a 2-D kernel of params; kernels are "
                       f"{sorted(kernels)}.")
    if x.shape[-1] != kernels[path].shape[0]:
      raise ValueError(f"activations[{path!r}] have {x.shape[-1]} features, the kernel has {kernels[path].shape[0]} "
                       "inputs.")
    k = min(round(r * rho), *x.shape, kernels[path].shape[1])
    comps[path], ratios[path] = eva_components(x, k)
  ranks = eva_rank_distribution(ratios, r, rho)
  adapters = {path: {"lora_A": comps[path][:rank].astype(kernels[path].dtype),
                     "lora_B": jnp.zeros((kernels[path].shape[1], rank), kernels[path].dtype)}
              for path, rank in ranks.items() if rank > 0}
  return adapters, ranks
