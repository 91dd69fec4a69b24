"""Optimizer step cost against its optax baseline, both jitted, measured in the same process.

* AdamP (``paperlab.optim.adamp``) vs ``optax.adamw`` (issue 20: target <= 1.5x on both trees; the official
  PyTorch AdamP runs at about 2.2x PyTorch's AdamW):
  - ``adamp_vs_adamw_mixed``: 4 conv kernels 3x3x256x256 + 4 dense kernels 1024x1024, each with its bias (6.6M);
  - ``adamp_vs_adamw_dense``: 6 dense kernels 1024x1024 with biases (6.3M);
  - ``adamp_vs_adamw``: a VGG-like ~4.2M-parameter tree of conv and dense kernels of several widths.
  Floor on XLA:CPU (both steps are memory-bound): ``optax.adamw`` + ``apply_updates`` compiles to three fusions per
  leaf (``m'``: reads ``g, m``; ``v'``: reads ``g, v``; ``w'``: reads ``w, m', v'``), 7 full-size reads and 3 writes =
  10 leaf-sized transfers. AdamP needs the four per-channel sums ``<w,w>, <g,g>, <w,g>, <w,u>`` of the *new* step
  before any element of it can be written, so it adds one reduction pass reading ``w, g, m, v`` (4) whose 8-row
  partial sums are written and read back (4 x 1/8, twice: 1), then the same three fusions: 15 transfers, **1.5x**
  (1.4x without the partial sums; ``tests/optim/test_adamp_memory_passes.py`` pins the 11 reads / 3 writes). Going
  lower needs the reduction pass to also write ``m', v'`` (10 transfers, 1.0x), which XLA:CPU cannot fuse: a
  variadic reduce's outputs share one shape, a full-size multi-output loop fusion (``reduce`` over a padded size-2
  axis) cannot hold the partial sums and, for ``m', v'`` alone, measured slower (1.64-1.69x vs 1.58-1.61x); a
  ``fori_loop`` over row blocks (no faster than the two passes on the same sub-step), YNNPACK's fused
  ``sum(a * b, 0)`` (2.4-2.5x), blocks of 16/32 rows (1.8x) and per-leaf coefficient arithmetic (no change) were
  measured too. Measured medians (60-100 interleaved rounds, 2-core shared VM, load average 2-15): mixed
  1.57-1.81x (CPU-time ratio 1.57-1.73), dense 1.45-1.68x (1.49-1.67); with only two of the four sums (not AdamP:
  a lower bound for this pass structure) 1.40-1.59x. The 1.5x goal of issue 20 is at this floor: not met reliably
  on XLA:CPU.
* SGDP (Nesterov) vs ``optax.sgd(nesterov=True)``: target <= 2.0x.
* A full SAM step (both gradients + base update) vs a base step (one gradient + update) on an MLP: target <= 2.1x.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import optax

from benchmarks import harness
from paperlab import optim

_CONV = [(3, 3, 64, 64), (3, 3, 64, 128), (3, 3, 128, 128), (3, 3, 128, 128), (3, 3, 128, 256), (3, 3, 256, 256),
         (3, 3, 256, 256)]
_DENSE = [(4096, 256), (256, 1024), (1024, 1000)]


def kernel_pytree(scale: int = 1, key: jax.Array = jax.random.key(0)) -> dict:
  """Conv kernels (H, W, in, out) and Dense kernels (in, out) with biases; ~4.2M parameters at ``scale=1``
  (``scale`` divides the channel counts, for quick runs)."""
  shapes = {f"conv{i}": s[:2] + (s[2] // scale, s[3] // scale) for i, s in enumerate(_CONV)}
  shapes.update({f"dense{i}": (s[0] // scale, s[1] // scale) for i, s in enumerate(_DENSE)})
  keys = jax.random.split(key, 2 * len(shapes))
  tree = {}
  for (name, shape), k1, k2 in zip(shapes.items(), keys[::2], keys[1::2]):
    tree[name] = {"kernel": jax.random.normal(k1, shape) * 0.05, "bias": jax.random.normal(k2, shape[-1:]) * 0.01}
  return tree


def issue_tree(kind: str, scale: int = 1, key: jax.Array = jax.random.key(0)) -> dict:
  """The trees of issue 20: ``"mixed"`` (4 conv 3x3x256x256 + 4 dense 1024x1024 kernels, with biases) or
  ``"dense"`` (6 dense 1024x1024 kernels with biases); ``scale`` divides the widths."""
  if kind == "mixed":
    shapes = {**{f"conv{i}": (3, 3, 256 // scale, 256 // scale) for i in range(4)},
              **{f"dense{i}": (1024 // scale, 1024 // scale) for i in range(4)}}
  elif kind == "dense":
    shapes = {f"dense{i}": (1024 // scale, 1024 // scale) for i in range(6)}
  else:
    raise ValueError(f"kind must be 'mixed' or 'dense', got {kind!r}.")
  tree = {}
  for i, (name, shape) in enumerate(shapes.items()):
    k1, k2 = jax.random.split(jax.random.fold_in(key, i))
    tree[name] = {"kernel": jax.random.normal(k1, shape) * 0.05, "bias": jax.random.normal(k2, shape[-1:]) * 0.01}
  return tree


def _update_fn(tx, params):
  state = tx.init(params)
  grads = jax.tree.map(lambda p: jnp.cos(p) * 0.1, params)

  @jax.jit
  def step(grads, state, params):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  jax.block_until_ready(step(grads, state, params))
  return lambda: step(grads, state, params)


def _mlp_step(tx, width: int, batch: int, sam_step: bool):
  key = jax.random.key(1)
  k1, k2, k3, kx = jax.random.split(key, 4)
  params = {"w1": jax.random.normal(k1, (256, width)) * 0.05, "w2": jax.random.normal(k2, (width, width)) * 0.05,
            "w3": jax.random.normal(k3, (width, 10)) * 0.05}
  x = jax.random.normal(kx, (batch, 256))
  y = jnp.arange(batch) % 10

  def loss(p):
    h = jax.nn.relu(jax.nn.relu(x @ p["w1"]) @ p["w2"])
    return optax.softmax_cross_entropy_with_integer_labels(h @ p["w3"], y).mean()

  state = tx.init(params)

  @jax.jit
  def step(params, state):
    grads = jax.grad(loss)(params)
    if sam_step:
      updates, state = tx.update(grads, state, params, grad_fn=jax.grad(loss))
    else:
      updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  jax.block_until_ready(step(params, state))
  n = sum(p.size for p in jax.tree.leaves(params))
  return (lambda: step(params, state)), n


def _compare_interleaved(name: str, op, baseline, *, sizes: dict, op_name: str, baseline_name: str, target: float,
                         rounds: int, warmup: int = 3) -> dict:
  """``harness.compare``'s record, timed with ``op`` and ``baseline`` interleaved call by call.

  On a shared CPU the load drifts over seconds; timing all baseline calls and then all op calls (the harness)
  lets that drift land on one side of the ratio. Here each round times both (alternating which goes first), so
  the medians ``op_seconds`` / ``baseline_seconds`` (``ratio`` is their quotient, as in the harness) and the
  minima (``*_min``: the least disturbed estimate of the intrinsic cost) see the same conditions. ``ratio_cpu`` is
  the quotient of the median process CPU times (all of XLA's threads): the work done, which other processes'
  load on a shared machine disturbs far less than wall time.
  """
  for _ in range(warmup):
    jax.block_until_ready(op())
    jax.block_until_ready(baseline())
  times = {"op": [], "baseline": []}
  cpu = {"op": [], "baseline": []}
  for i in range(rounds):
    order = (("op", op), ("baseline", baseline)) if i % 2 == 0 else (("baseline", baseline), ("op", op))
    for key, fn in order:
      t0, c0 = time.perf_counter(), time.process_time()
      jax.block_until_ready(fn())
      times[key].append(time.perf_counter() - t0)
      cpu[key].append(time.process_time() - c0)
  t_op, t_base = statistics.median(times["op"]), statistics.median(times["baseline"])
  best_op, best_base = min(times["op"]), min(times["baseline"])
  c_op, c_base = statistics.median(cpu["op"]), statistics.median(cpu["baseline"])
  return {"op_cpu_seconds": c_op, "baseline_cpu_seconds": c_base, "ratio_cpu": c_op / c_base, "name": name, "op": op_name, "baseline": baseline_name, "sizes": sizes, "device": harness.device_info(),
          "op_seconds": t_op, "baseline_seconds": t_base, "ratio": t_op / t_base, "target": target,
          "meets_target": bool(t_op / t_base <= target), "op_seconds_min": best_op,
          "baseline_seconds_min": best_base, "ratio_min": best_op / best_base,
          "meets_target_min": bool(best_op / best_base <= target)}


def run(quick: bool = False) -> list[dict]:
  scale = 4 if quick else 1
  rounds = 3 if quick else 100
  params = kernel_pytree(scale)
  n = sum(p.size for p in jax.tree.leaves(params))
  sizes = {"params": n, "leaves": len(jax.tree.leaves(params))}
  pairs = [
      ("adamp_vs_adamw", optim.adamp(1e-3, weight_decay=1e-2), optax.adamw(1e-3, weight_decay=1e-2),
       "paperlab.optim.adamp", "optax.adamw", 1.5),
      ("sgdp_vs_sgd_nesterov", optim.sgdp(0.1, momentum=0.9, nesterov=True),
       optax.sgd(0.1, momentum=0.9, nesterov=True), "paperlab.optim.sgdp(nesterov)", "optax.sgd(nesterov)", 2.0),
  ]
  records = []
  for kind in ("mixed", "dense"):
    tree = issue_tree(kind, scale)
    op_fn = _update_fn(optim.adamp(1e-3, weight_decay=1e-2), tree)
    base_fn = _update_fn(optax.adamw(1e-3, weight_decay=1e-2), tree)
    tree_sizes = {"params": sum(p.size for p in jax.tree.leaves(tree)), "leaves": len(jax.tree.leaves(tree))}
    records.append(_compare_interleaved(f"adamp_vs_adamw_{kind}", op_fn, base_fn, sizes=tree_sizes,
                                        op_name="paperlab.optim.adamp", baseline_name="optax.adamw", target=1.5,
                                        rounds=rounds))
  for name, tx, base, op_name, base_name, target in pairs:
    op_fn, base_fn = _update_fn(tx, params), _update_fn(base, params)
    records.append(_compare_interleaved(name, op_fn, base_fn, sizes=sizes, op_name=op_name,
                                        baseline_name=base_name, target=target, rounds=rounds))
  width, batch = (128, 64) if quick else (1024, 128)
  sam_fn, m = _mlp_step(optim.sam(optax.sgd(0.1, momentum=0.9)), width, batch, True)
  base_fn, _ = _mlp_step(optax.sgd(0.1, momentum=0.9), width, batch, False)
  records.append(_compare_interleaved("sam_step_vs_base_step", sam_fn, base_fn, sizes={"params": m, "batch": batch},
                                      op_name="paperlab.optim.sam(sgd) step", baseline_name="sgd step", target=2.1,
                                      rounds=rounds))
  return records
