"""Depth-muP: with residual branches scaled by ``1/sqrt(L)`` the best SGD learning rate of a residual MLP transfers
across depth; with unit branches it does not (Bordelon et al., 2024, "Depthwise Hyperparameter Transfer in Residual
Networks: Dynamics and Scaling Limit", arXiv:2309.16620, Eq. 1 and Fig. 1), catalogue [361].

A residual MLP on the digits training split: ``h^0 = W^in x``, ``h^{l+1} = h^l + b_L W^l relu(h^l)`` for ``l < L``,
``f = W^out relu(h^L)``, width 64, trained with SGD on minibatches for a fixed number of steps. Both arms are muP in
width (:func:`paperlab.param.parametrize`, ``kind="mup"``, ``optimizer="sgd"``, against a base of width 16 so the
readout multiplier ``1/m`` and the SGD learning-rate multipliers of TP5's table are active; init std
``1/sqrt(fan_in)``, zero biases) and differ only in the branch multiplier ``b_L``:

* ``depth_mup``: :func:`paperlab.param.depth_mup` with ``base_blocks=1``, so ``b_L = 1/sqrt(L)`` on every branch
  (kernel and bias; SGD's learning rate is depth-independent, Bordelon et al.);
* ``unit``: ``b_L = 1``, the standard residual network.

Each (arm, depth) is an arm of :mod:`paperlab.runner.protocol` with the same learning-rate grid ``2^k`` (equal
budget, same seeds); the grid point with the lowest seed-mean training loss on the whole training split after the
last step is the arm's best learning rate (Bordelon et al. Fig. 1 plots training loss), and the test split is read
once per arm. Both arms of one depth share shapes, so they run as one vmapped program (arm x learning rate x seed).
The claim: the argmin learning rate of depth-muP moves by at most one grid step across depths; with unit branches it
moves by at least 3 steps, or the deepest net diverges at the shallowest net's best learning rate (its final
training loss is non-finite or above the untrained loss ``ln 10``). Control (the protocol's rule): the claim with
the unit arm's sweep in depth-muP's place must fail.

Measured (seeds 0-2, width 64, depths 2/8/16, 300 steps of batch 32): best log2 learning rate depth-muP
-1/-1/-1 (0 grid steps), unit branches -1/-3/-5 (4 steps), and the depth-16 unit-branch net diverges (NaN) at
the depth-2 optimum 2^-1 while depth-muP's reaches a training loss of 0.0016 there; unit branches in depth-muP's
place fail (control off). Reproduced with the deviations below. The catalogue's width 128 and depths up to 32 cost
110 CPU-s (the depth-32 unit-branch net diverges at every rate of the grid). Explore without a record with

    paperlab run experiments/param/depth_mup.py --config.depths='(2, 4, 8, 16, 32)' --config.width=128 \\
        --config.base_width=32
"""

from __future__ import annotations

import math

import jax
import ml_collections
import numpy as np
from flax import nnx

from paperlab import data, papers, param
from paperlab.runner import lr_transfer

PAPER_ID = 361
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = (
    "width 64 (muP base 16) instead of 128 and depths 2, 8, 16 instead of 2, 4, 8, 16, 32: an 8x depth range that "
    "fits the CI budget (compiling one program per depth is most of the cost; width 128 with depths 2..32 costs 110 "
    "CPU-s, and depths 2, 4, 8, 16 at width 64 gave depth-muP -1/-1/-1/-1 and unit branches -1/-2/-3/-5)",
    "the catalogue leaves the batch size and grid range open: minibatches of 32, learning-rate grid 2^-4..2^0 "
    "(5 points, for time; a 7-point grid 2^-6..2^0 gave the same depth-muP optima and unit-branch optima "
    "-1/-2/-3/-5); the best learning rate is chosen on the final training loss over the whole training split",
    "'the deep nets diverge at the shallow-optimal LR' is measured on the deepest net: final training loss "
    "non-finite or above the untrained loss ln(10)",
)

_ARMS = ("depth_mup", "unit")


class ResidualMLP(nnx.Module):
  """``h = W_in x``; ``h <- h + W_l relu(h)`` for each of ``depth`` blocks; ``W_out relu(h)`` (Bordelon et al.'s
  residual network with one-layer branches; the branch multiplier comes from the parametrization)."""

  def __init__(self, in_features: int, width: int, depth: int, out_features: int, *, rngs: nnx.Rngs):
    self.inp = nnx.Linear(in_features, width, rngs=rngs)
    self.blocks = nnx.List([nnx.Linear(width, width, rngs=rngs) for _ in range(depth)])
    self.head = nnx.Linear(width, out_features, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.inp(x)
    for block in self.blocks:
      h = h + block(jax.nn.relu(h))
    return self.head(jax.nn.relu(h))


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.width = 64
  c.base_width = 16
  c.depths = (2, 8, 16)
  c.log2_lrs = tuple(range(-6, 1))
  c.steps = 300
  c.batch_size = 32
  return c


def _shapes(width: int, depth: int):
  return nnx.eval_shape(lambda: ResidualMLP(64, width, depth, 10, rngs=nnx.Rngs(0)))


def _parametrization(arm: str, config, depth: int) -> param.Parametrization:
  p = param.parametrize(_shapes(config.width, depth), _shapes(config.base_width, depth), kind="mup",
                        optimizer="sgd")
  if arm == "depth_mup":
    p = param.depth_mup(p, num_blocks=depth, base_blocks=1, branch=r"^blocks/")
  return p


def _sweep(depth: int, config, ds) -> dict:
  """Both arms x every learning rate x every seed at one depth, one vmapped program: ``(grid, seeds)`` per arm."""
  ps = [_parametrization(arm, config, depth) for arm in _ARMS]
  trial = lr_transfer.classification_trial(lambda rngs: ResidualMLP(64, config.width, depth, 10, rngs=rngs), ps,
                                           param.mu_sgd, ds, batch_size=config.batch_size, steps=config.steps,
                                           shared_init=True)  # same init in both arms
  return lr_transfer.sweep_program(trial, _ARMS, config.log2_lrs, config.seeds,
                                   compiler_options=lr_transfer.fast_compile_options())


def _diverged_as_worst(loss) -> np.ndarray:
  """A diverged run (non-finite loss) scores worse than any finite loss but stays comparable, so an arm whose every
  grid point diverges (deep unit-branch nets) still gets a point (its smallest learning rate) instead of none."""
  return np.nan_to_num(np.asarray(loss, np.float64), nan=1e30, posinf=1e30, neginf=1e30)


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  ds = data.digits()
  grids = {a: config.log2_lrs for a in _ARMS}
  comparison, sweeps, best = lr_transfer.compare_lrs(
      lambda depth: _sweep(depth, config, ds), _ARMS, config.depths, grids, config.seeds, sep="_L",
      validate=_diverged_as_worst)
  steps = {a: int(max(b) - min(b)) for a, b in best.items()}  # grid steps of 2x

  def deep_diverges(a):
    """The deepest net's seed-mean final loss at the shallowest net's best learning rate: non-finite or > ln 10."""
    i = list(config.log2_lrs).index(best[a][0])
    loss = float(np.mean(sweeps[(a, max(config.depths))]["train_loss"][i]))
    return (not math.isfinite(loss)) or loss > math.log(10.0), loss

  diverges = {a: deep_diverges(a) for a in _ARMS}
  lr_transfer.log_sweeps(ctx, sweeps, grids, "_L")
  ctx.print(f"best log2 lr by depth {list(config.depths)}: depth-muP {best['depth_mup']} ({steps['depth_mup']} "
            f"steps), unit branches {best['unit']} ({steps['unit']} steps); deepest at the shallow optimum: "
            f"{ {a: round(d[1], 4) for a, d in diverges.items()} }")
  lr_transfer.plot_loss_vs_lr(sweeps, grids, config.depths, ctx.workdir / "depth_mup_loss_vs_lr.png",
                              panels=("unit", "depth_mup"), size_label=lambda d: f"L = {d}",
                              title=lambda arm: f"{arm}: training loss after {config.steps} SGD steps")

  def claim(method, baseline):
    return steps[method] <= 1 and (steps[baseline] >= 3 or diverges[baseline][0])
  holds = claim("depth_mup", "unit")
  control = claim("unit", "unit")  # unit branches in depth-muP's place must fail
  results = {"protocol": comparison.to_json(),
             "train_loss_by_lr": {f"{a}_L{d}": s["train_loss"].tolist() for (a, d), s in sweeps.items()}}
  results["claim"] = {
      "passed": bool(holds and not control), "holds": bool(holds), "control_passes": bool(control),
      "vacuous": bool(control), "statement": CLAIM, "depths": list(config.depths),
      "best_log2_lr_depth_mup": best["depth_mup"], "best_log2_lr_unit": best["unit"],
      "grid_steps_depth_mup": steps["depth_mup"], "grid_steps_unit": steps["unit"],
      "deepest_loss_at_shallow_optimum": {a: d[1] for a, d in diverges.items()},
      "deepest_diverges_at_shallow_optimum": {a: bool(d[0]) for a, d in diverges.items()},
      "test_accuracy": {name: arm.mean("test_accuracy") for name, arm in comparison.arms.items()}}
  return results
