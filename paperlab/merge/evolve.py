"""Evolutionary search of merge coefficients (parameter-space merging by CMA-ES).

Akiba et al., "Evolutionary Optimization of Model Merging Recipes" (Nature Machine Intelligence 2025,
arXiv:2403.13187), Sec. 3.1: the merge recipe is parametrised by per-model (and per-layer) coefficients, and
CMA-ES maximises a held-out fitness over them. The CMA-ES itself is the ``cma`` package (Hansen's pycma).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from paperlab._checks import check_positive
from paperlab._tree import check_same_structure, path_str
from paperlab.merge.averaging import (IntegerLeaves, _integer_leaves, _is_float, _model_names, _put_integer_leaves,
                                     _scalars_as_arrays)

__all__ = ["evolve_merge", "task_arithmetic_recipe"]

PyTree = Any


def task_arithmetic_recipe(base: PyTree, finetuned: Sequence[PyTree], groups: Sequence[str] | None = None, *,
                           integer_leaves: IntegerLeaves = "error") -> Callable[[jax.Array], PyTree]:
  """Per-model, per-group task arithmetic as a function of a flat genome (the PS space of arXiv:2403.13187).

  ``recipe(c)`` with ``c`` of size ``len(finetuned) * len(groups)`` (model-major) returns
  ``theta_0 + sum_i c[i, g(leaf)] * (theta_i - theta_0)``, where ``g(leaf)`` is the first regex in ``groups``
  that the leaf path matches (searched). With ``groups=None`` there is one coefficient per model; a genome of all
  equal values ``lam`` is task arithmetic with scale ``lam``. The recipe is jittable in ``c``. Integer/bool
  leaves are resolved once, when the recipe is built: equal in base and fine-tunes -> kept, different ->
  ``ValueError`` naming the path, unless ``integer_leaves`` (``"first"``, ``"last"``, ``"base"`` or a callable; see
  :mod:`paperlab.merge.averaging`) says otherwise.
  """
  base = _scalars_as_arrays(base)
  finetuned = [_scalars_as_arrays(f) for f in finetuned]
  if not finetuned:
    raise ValueError("finetuned must hold at least one model, got an empty sequence.")
  check_same_structure([base] + finetuned, ["base"] + [f"finetuned[{i}]" for i in range(len(finetuned))])
  ints = _integer_leaves([base, *finetuned], _model_names(len(finetuned), "finetuned", "base"), integer_leaves,
                         has_base=True)
  groups = [".*"] if groups is None else list(groups)
  if not groups:
    raise ValueError("groups must hold at least one regex (or be None).")
  regexes = [re.compile(g) for g in groups]

  def group_of(path):
    s = path_str(path)
    for i, r in enumerate(regexes):
      if r.search(s):
        return i
    raise ValueError(f"leaf {s!r} matches none of groups {groups}; add a catch-all '.*'.")

  gid = jax.tree_util.tree_map_with_path(lambda p, _: group_of(p), base)
  taus = [jax.tree.map(lambda f, b: f.astype(jnp.float32) - b.astype(jnp.float32), f, base) for f in finetuned]
  n, k = len(finetuned), len(groups)

  def recipe(genome: jax.Array) -> PyTree:
    c = jnp.asarray(genome, jnp.float32)
    if c.shape != (n * k,):
      raise ValueError(f"genome must have shape ({n * k},) = (models * groups,), got {c.shape}.")
    c = c.reshape(n, k)
    return _put_integer_leaves(jax.tree.map(
        lambda b, g, *ts: (b.astype(jnp.float32) + sum(c[i, g] * t for i, t in enumerate(ts))).astype(b.dtype),
        base, gid, *taus), ints)

  return recipe


def evolve_merge(recipe: Callable[[np.ndarray], PyTree], fitness: Callable[[PyTree], float],
                 x0: Sequence[float] | np.ndarray, *, sigma0: float = 0.1, popsize: int | None = None,
                 generations: int = 50, seed: int = 0, bounds: tuple[float, float] | None = None
                 ) -> tuple[np.ndarray, list[dict]]:
  """Maximise ``fitness(recipe(x))`` over merge coefficients ``x`` with CMA-ES (arXiv:2403.13187, Sec. 3.1).

  Host-side loop: ``cma.CMAEvolutionStrategy`` asks for a population, every candidate is turned into a model by
  ``recipe`` (jit it) and scored by ``fitness`` (a float, higher is better, e.g. held-out accuracy), and the
  negated scores are told back. Deterministic for a given ``seed``.

  Args:
    recipe: genome -> parameter pytree (e.g. :func:`task_arithmetic_recipe`).
    fitness: parameter pytree -> float, higher is better.
    x0: initial genome.
    sigma0: initial step size ``> 0``.
    popsize: population size (CMA-ES default ``4 + 3 ln(d)`` when None).
    generations: number of generations ``>= 1``.
    seed: CMA-ES seed.
    bounds: optional ``(low, high)`` box for every coordinate.

  Returns:
    ``(x_best, history)``: the best genome evaluated and, per generation, ``{"generation", "best", "mean"}``
    fitness values.
  """
  try:
    import cma
  except ImportError as e:  # an optional extra: only this search needs it
    raise ImportError("evolve_merge needs the 'cma' package (pycma): pip install 'paperlab[evolve]' "
                      "(or pip install cma).") from e

  x0 = np.asarray(x0, np.float64).ravel()
  if x0.size == 0:
    raise ValueError("x0 must have at least one coordinate.")
  check_positive("sigma0", sigma0)
  if int(generations) != generations or generations < 1:
    raise ValueError(f"generations must be a positive integer, got {generations!r}.")
  opts = {"seed": int(seed) + 1, "verbose": -9, "verb_log": 0, "verb_disp": 0}  # cma treats seed 0 as "random"
  if popsize is not None:
    if int(popsize) != popsize or popsize < 2:
      raise ValueError(f"popsize must be an integer >= 2, got {popsize!r}.")
    opts["popsize"] = int(popsize)
  if bounds is not None:
    lo, hi = bounds
    if not lo < hi:
      raise ValueError(f"bounds must be (low, high) with low < high, got {bounds!r}.")
    opts["bounds"] = [lo, hi]
  if x0.size == 1:
    raise ValueError("CMA-ES needs at least 2 coordinates; for one coefficient use a grid search.")
  es = cma.CMAEvolutionStrategy(x0, sigma0, opts)
  best_x, best_f = x0.copy(), -np.inf
  history = []
  for g in range(int(generations)):
    xs = es.ask()
    scores = [float(fitness(recipe(np.asarray(x, np.float32)))) for x in xs]
    es.tell(xs, [-s for s in scores])
    i = int(np.argmax(scores))
    if scores[i] > best_f:
      best_f, best_x = scores[i], np.asarray(xs[i], np.float64)
    history.append({"generation": g, "best": float(np.max(scores)), "mean": float(np.mean(scores))})
  return best_x, history
