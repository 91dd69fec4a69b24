"""TIES and DARE over a ~100M-parameter pytree x 4 models, against (a) one read+write pass over the same trees and
(b) mergekit's functions on the same tensors (mergekit is LGPL; it is only called here, as a baseline).

The pass baseline reads every leaf of the base and of the 4 models once and writes one output leaf
(``base + m1 + m2 + m3 + m4``, jitted per leaf): the memory traffic any merge must pay. Targets from issue 7:
TIES/DARE <= 4x one pass, and >= 10x faster than mergekit (ratio <= 0.1).

``quick`` uses a ~4M-parameter tree. Records report ``ratio = op_seconds / baseline_seconds``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.harness import device_info, time_call

N_MODELS = 4


def _trees(n_leaves: int, rows: int, cols: int):
  rng = np.random.default_rng(0)
  base = {f"layer{i}": {"kernel": rng.standard_normal((rows, cols), dtype=np.float32),
                        "bias": rng.standard_normal((cols,), dtype=np.float32)} for i in range(n_leaves)}
  models = [jax.tree.map(lambda x: x + 0.01 * rng.standard_normal(x.shape, dtype=np.float32), base)
            for _ in range(N_MODELS)]
  return jax.tree.map(jnp.asarray, base), [jax.tree.map(jnp.asarray, m) for m in models]


def _mergekit_fn(name: str, base, models, params: dict):
  import torch
  from mergekit.merge_methods import registry
  from mergekit.merge_methods.base import TensorGroup

  method = registry.get(name)
  base_np = [np.asarray(x) for x in jax.tree.leaves(base)]
  models_np = [[np.asarray(x) for x in jax.tree.leaves(m)] for m in models]

  def run():
    torch.manual_seed(0)
    out = []
    for j, b in enumerate(base_np):  # mergekit merges tensor by tensor, as in its graph executor
      group = TensorGroup.from_tensors([torch.from_numpy(b)] + [torch.from_numpy(m[j]) for m in models_np],
                                       base_index=0)
      out.append(method([group], parameters=params)[0])
    return out

  return run


def _record(name, op_name, t_op, baseline_name, t_base, sizes, target):
  return {"name": name, "op": op_name, "baseline": baseline_name, "sizes": sizes, "device": device_info(),
          "op_seconds": t_op, "baseline_seconds": t_base, "ratio": t_op / t_base, "target": target,
          "meets_target": bool(t_op / t_base <= target)}


def run(quick: bool = False) -> list[dict]:
  import paperlab.merge as pm

  n_leaves, rows, cols = (4, 1000, 1000) if quick else (25, 2000, 2000)
  base, models = _trees(n_leaves, rows, cols)
  n_params = sum(x.size for x in jax.tree.leaves(base))
  sizes = {"params_per_model": int(n_params), "models": N_MODELS, "leaves": len(jax.tree.leaves(base))}
  repeats = 3 if quick else 2
  warmup = 1

  one_pass_leaf = jax.jit(lambda b, *ms: b + sum(ms))
  one_pass = lambda: jax.tree.map(one_pass_leaf, base, *models)
  key = jax.random.key(0)
  density = 0.2
  ops = {
      "ties_tensor_sample": lambda: pm.ties(base, models, density, 1.0, scope="tensor", threshold="sample"),
      "ties_global_sample": lambda: pm.ties(base, models, density, 1.0, scope="global", threshold="sample"),
      "dare_hash": lambda: pm.dare_merge(key, base, models, density, 1.0, sampler="hash"),
      "dare_prng": lambda: pm.dare_merge(key, base, models, density, 1.0, sampler="prng"),
  }
  if quick:  # exact sorting thresholds: reported at the small size only (a sort per leaf and model)
    ops["ties_tensor_exact"] = lambda: pm.ties(base, models, density, 1.0, scope="tensor")
  weights = {i + 1: 1.0 for i in range(N_MODELS)}
  dens = {i + 1: density for i in range(N_MODELS)}
  mk = {
      "ties": _mergekit_fn("ties", base, models, {"weight": weights, "density": dens}),
      "dare_linear": _mergekit_fn("dare_linear", base, models, {"weight": weights, "density": dens, "rescale": False}),
  }
  t_pass = time_call(one_pass, warmup=warmup, repeats=repeats)
  t_mk = {k: time_call(f, warmup=0, repeats=1 if not quick else 2) for k, f in mk.items()}
  records = [_record("merge/mergekit_vs_pass", f"mergekit_{k}", t, "one_pass", t_pass, sizes, float("inf"))
             for k, t in t_mk.items()]
  for name, op in ops.items():
    t = time_call(op, warmup=warmup, repeats=repeats)
    mk_name = "ties" if name.startswith("ties") else "dare_linear"
    records.append(_record(f"merge/{name}", name, t, "one_pass", t_pass, sizes, 4.0))
    records.append(_record(f"merge/{name}", name, t, f"mergekit_{mk_name}", t_mk[mk_name], sizes, 0.1))
  return records


if __name__ == "__main__":
  for r in run(quick=True):
    print(f"{r['op']:>22s} vs {r['baseline']:<22s} ratio {r['ratio']:.3f} (target <= {r['target']})")
