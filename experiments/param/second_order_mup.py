"""muP for K-FAC: does the best K-FAC learning rate of a digits MLP transfer across width under the muP-K-FAC spec and
not under SP? (Ishikawa & Karakida, 2024, "On the Parameterization of Second-Order Optimization Effective Towards the
Infinite Width", arXiv:2312.12226, Table 1), catalogue [268].

An MLP ``64 -> w -> w -> 10`` (ReLU; three weight layers) on the digits training split, trained with K-FAC on
minibatches for a fixed number of steps. Every layer's kernel and bias form one matrix ``[W; b]`` (the bias on a
homogeneous input coordinate, Martens & Grosse, arXiv:1503.05671, Sec. 3) updated by
:func:`paperlab.param.kronecker_precondition`, ``Delta = -eta_l (A + rho_A I)^{-1} G (B + rho_B I)^{-1}``, with
explicit Kronecker factors: ``A`` the exponential moving average of ``E[h h^T]`` over the layer's augmented inputs,
``B`` that of ``E[delta delta^T]`` over the per-example gradients of its outputs for labels sampled from the model
(the Fisher's K-FAC, as ``kfac_jax``), both bias-corrected, recomputed and inverted at every step. Two
parametrizations against the narrowest width (identical at it):

* ``mup``: :func:`paperlab.param.second_order_mup` (``method="kfac"``): muP init (readout ``sqrt(base)/fan_in``,
  not zero), width-independent learning rates (Table 1) and damping multipliers ``rho_A * m_in``,
  ``rho_B / m_out``;
* ``sp``: the standard fan-in init (:func:`paperlab.param.parametrize`, ``kind="sp"``), one global learning rate
  and width-independent damping -- the catalogue's baseline.

Each (parametrization, width) is an arm of :mod:`paperlab.runner.protocol` whose grid is the learning-rate grid
``2^k``, the same for both: every grid point is trained on the same seeds on 80% of the digits training split; the
point with the lowest seed-mean validation loss (the other 20%, stratified) after the last step is the arm's best
learning rate, and the test split is read once per arm. All trials of one width (2 parametrizations x grid x seeds)
are one jitted program: a ``lax.scan`` over the steps, vmapped over the trials. The claim: muP-K-FAC's argmin moves
by at most one grid step across the widths, SP's by at least two. Control (the protocol's rule): the claim with SP's
sweep in muP's place must fail. A PNG of validation loss vs learning rate per width goes to the workdir.

Measured (seeds 0-2, widths 64/128/256/512, 100 K-FAC steps of batch 32, grid 2^-1..2^4, damping 1): best log2
learning rate (seed-mean validation loss) muP-K-FAC 1/0/1/1 (1 grid step), SP 1/0/1/0 (1 grid step); per seed
(0, 1, 2) muP 1,1,0 / 1,0,0 / 1,1,1 / 1,1,1, SP 1,1,0 / -1,0,0 / 0,1,1 / 0,1,-1. Validation loss at the optimum muP
0.133/0.076/0.065/0.069, SP 0.133/0.111/0.098/0.104; rates 2^3 and above diverge (loss > 30) in both; test
accuracy at the chosen points 0.968-0.979 in both. SP in muP's place fails (control off). 240 CPU-s (400 s wall).
Not reproduced: SP's argmin moves by one grid step too. A likely reason (not tested here): K-FAC's preconditioner
undoes most of a layer-wise rescaling of the weights, so what SP lacks is mainly the damping's width scaling, and at
these widths that costs SP validation loss (0.104 vs 0.069 at width 512) more than it moves its optimum.

CI scale (CI_CONFIG): widths 16 / 64 (muP base 16), 40 steps; at it: not reproduced either, best log2 learning
rate muP 1/1, SP 1/1 (0 grid steps each; per seed muP and SP 1,2,1 / 0,1,1), seeds 0-2, ~26 CPU-s at load 6 on 2 cores
(XLA backend optimization level 0 there, ``xla_opt_level``: the two compiles are most of it; 29 CPU-s at level 1).

The draft of this experiment "hung": the sweep never returned. Its cause (gdb, jaxlib 0.10.2): vmapped, the
preconditioner's solves become batched LAPACK calls, which jaxlib splits over XLA's CPU thread pool and then blocks
the calling pool thread until the pieces finish; two of them at once on a 2-thread pool wait for each other forever.
:func:`_precondition` loops over the trials instead (``jax.custom_batching.sequential_vmap``: unbatched calls run
inline), and ``run`` limits scipy's OpenBLAS to one thread (its threads spin-wait on a loaded CPU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from paperlab import data, papers, param
from paperlab.models import MLP
from paperlab.runner import lr_transfer, protocol

PAPER_ID = 268
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = (
    "the argmin is chosen on the seed-mean validation loss after the last step, on a stratified 20% of the digits "
    "training split held out from training (the catalogue names no metric); the models train on the other 80%",
    "the catalogue leaves the K-FAC settings open: 100 steps of batch 32, learning-rate grid 2^-1..2^4 (6 points; "
    "every width's optimum is inside it, 2^3 and above diverge), damping rho_A = rho_B = 1 at the base width (1e-2 "
    "diverged), factor EMA decay 0.95 with bias correction, factors inverted at every step, the Fisher factor from "
    "labels sampled from the model, biases folded into the homogeneous coordinate",
    "SP is taken as the fan-in init (std 1/sqrt(fan_in), zero biases) with one global learning rate and "
    "width-independent damping; the muP base width is the narrowest, 64, where both parametrizations coincide",
)

CI_CONFIG = {"widths": (16, 64), "base_width": 16, "steps": 40, "xla_opt_level": 0}

_KINDS = ("mup", "sp")


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.widths = (64, 128, 256, 512)
  c.base_width = 64
  c.log2_lrs = tuple(range(-1, 5))  # 2^-1 .. 2^4
  c.steps = 100
  c.batch_size = 32
  c.damping_a = 1.0
  c.damping_b = 1.0
  c.factor_decay = 0.95
  c.val_fraction = 0.2
  c.xla_opt_level = 1  # XLA's CPU backend optimization level for the sweep programs (CI: 0, compiling is most of it)
  return c


def _shapes(width: int):
  return nnx.eval_shape(lambda: MLP(64, [width, width], 10, rngs=nnx.Rngs(0)))


def _layers(tree) -> list:
  return [tree["hidden"][0], tree["hidden"][1], tree["head"]]


def _specs(width: int, config) -> list[dict]:
  """Per parametrization: init rule, and the LR and damping multipliers of each layer's augmented matrix ``[W; b]``
  (its kernel's: K-FAC folds the bias into the kernel's homogeneous coordinate)."""
  model, base = _shapes(width), _shapes(config.base_width)
  mup = param.second_order_mup(model, base, method="kfac")
  sp = param.parametrize(model, base, kind="sp")
  ones = jax.tree.map(lambda _: 1.0, mup.damping_in)
  kernels = lambda tree: [l["kernel"] for l in _layers(tree)]
  return [{"p": mup.parametrization, "lr": kernels(mup.lr_multipliers), "din": kernels(mup.damping_in),
           "dout": kernels(mup.damping_out)},
          {"p": sp, "lr": kernels(sp.lr_multipliers), "din": kernels(ones), "dout": kernels(ones)}]


def _forward(ws, x, shifts):
  """Logits and each layer's augmented input ``[h, 1]``; ``shifts`` (zeros) expose the per-example gradients of the
  layers' outputs to ``jax.vjp``."""
  h, inputs = x, []
  for i, (w, s) in enumerate(zip(ws, shifts)):
    h = jnp.concatenate([h, jnp.ones((h.shape[0], 1), h.dtype)], axis=1)
    inputs.append(h)
    h = h @ w + s
    h = jax.nn.relu(h) if i < len(ws) - 1 else h
  return h, inputs


def _logits(ws, x):
  return _forward(ws, x, [jnp.zeros((x.shape[0], w.shape[1]), x.dtype) for w in ws])[0]


def _augment(layer) -> jax.Array:
  return jnp.concatenate([layer["kernel"], layer["bias"][None]], axis=0)


@jax.custom_batching.sequential_vmap
def _precondition(g, a, b, damping_a, damping_b):
  """:func:`paperlab.param.kronecker_precondition`, looped (not batched) over the vmapped trials: jaxlib 0.10's batched
  LAPACK kernels split a batch over XLA's CPU thread pool and block a pool thread until it is done, and two of them
  running at once on a 2-thread pool wait for each other forever (the draft's "hang"); unbatched calls run inline."""
  return param.kronecker_precondition(g, a, b, damping_a=damping_a, damping_b=damping_b)


def _splits(config):
  """Fit / validation (a stratified ``val_fraction`` of the digits training split) / test, as float32 arrays."""
  ds = data.digits()
  fit_idx, val_idx = data.stratified_split(ds.y_train, config.val_fraction, 0)
  return {"fit": (jnp.asarray(ds.x_train[fit_idx]), jnp.asarray(ds.y_train[fit_idx])),
          "val": (jnp.asarray(ds.x_train[val_idx]), jnp.asarray(ds.y_train[val_idx])),
          "test": (jnp.asarray(ds.x_test), jnp.asarray(ds.y_test))}


def _trial(width: int, config, splits):
  """``trial(kind, lr, key)``: ``config.steps`` K-FAC steps of the width-``width`` MLP under ``_KINDS[kind]``."""
  specs = _specs(width, config)
  shapes = param.param_shapes(_shapes(width))
  (x_fit, y_fit), decay = splits["fit"], config.factor_decay
  pick = lambda kind, field: lr_transfer.select(kind, [s[field] for s in specs])

  def trial(kind, lr, key):
    init_key, data_key, fisher_key = jax.random.split(key, 3)
    params = lr_transfer.select(kind, [param.init_params(init_key, shapes, s["p"]) for s in specs])
    ws = [_augment(l) for l in _layers(params)]
    lrm, din, dout = pick(kind, "lr"), pick(kind, "din"), pick(kind, "dout")
    factors = [(jnp.zeros((w.shape[0],) * 2), jnp.zeros((w.shape[1],) * 2)) for w in ws]
    batches = data.batch_indices(data_key, 0, config.steps, x_fit.shape[0], config.batch_size)

    def step(carry, t):
      ws, factors = carry
      x, y = jnp.take(x_fit, batches[t], axis=0), jnp.take(y_fit, batches[t], axis=0)
      n = x.shape[0]
      shifts = [jnp.zeros((n, w.shape[1])) for w in ws]
      logits, vjp, inputs = jax.vjp(lambda s: _forward(ws, x, s), shifts, has_aux=True)
      p = jax.nn.softmax(logits)
      (deltas,) = vjp(p - jax.nn.one_hot(y, 10))  # per-example gradients of the per-example losses
      sampled = jax.random.categorical(jax.random.fold_in(fisher_key, t), jax.lax.stop_gradient(logits))
      (fisher,) = vjp(p - jax.nn.one_hot(sampled, 10))  # the same for labels sampled from the model (Fisher)
      corr = 1.0 - decay ** (t + 1).astype(jnp.float32)  # EMA bias correction
      new_ws, new_factors = [], []
      for i, w in enumerate(ws):
        a = decay * factors[i][0] + (1 - decay) * inputs[i].T @ inputs[i] / n
        b = decay * factors[i][1] + (1 - decay) * fisher[i].T @ fisher[i] / n
        g = inputs[i].T @ deltas[i] / n
        u = _precondition(g, a / corr, b / corr, config.damping_a * din[i], config.damping_b * dout[i])
        new_ws.append(w - lr * lrm[i] * u)
        new_factors.append((a, b))
      return (new_ws, new_factors), None

    (ws, _), _ = jax.lax.scan(step, (ws, factors), jnp.arange(config.steps))
    out = {}
    for split in ("fit", "val", "test"):
      x, y = splits[split]
      logits = _logits(ws, x)
      out[f"{split}_loss"] = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      out[f"{split}_accuracy"] = jnp.mean(jnp.argmax(logits, -1) == y)
    return out

  return trial


def _sweep(width: int, config, splits) -> dict:
  """Both parametrizations x every learning rate x every seed at one width: one jitted program (a ``lax.scan`` over
  the steps, vmapped over the flattened 2 x grid x seeds trials, so the preconditioner's loop is one level deep),
  ``{kind: {metric: (grid, seeds)}}``."""
  shape = (len(_KINDS), len(config.log2_lrs), config.seeds)
  kind, log2_lr, seed = (a.ravel() for a in np.meshgrid(np.arange(shape[0]), np.asarray(config.log2_lrs),
                                                         np.arange(shape[2]), indexing="ij"))
  options = lr_transfer.fast_compile_options()
  if options is not None:
    options["xla_backend_optimization_level"] = config.xla_opt_level
  run = jax.jit(jax.vmap(lambda k, lr, s: _trial(width, config, splits)(k, lr, jax.random.key(s))),
                compiler_options=options)
  out = run(jnp.asarray(kind), 2.0 ** jnp.asarray(log2_lr, jnp.float32), jnp.asarray(seed))
  out = {k: np.asarray(v).reshape(shape) for k, v in out.items()}
  return {name: {k: v[i] for k, v in out.items()} for i, name in enumerate(_KINDS)}


def _diverged_as_worst(loss) -> np.ndarray:
  """A diverged run (non-finite loss) scores worse than any finite loss but stays comparable."""
  return np.nan_to_num(np.asarray(loss, np.float64), nan=1e30, posinf=1e30, neginf=1e30)


def _compare(config, splits) -> tuple[protocol.Comparison, dict, dict]:
  """The protocol over arms ``f"{kind}_w{width}"`` with grids ``{"log2_lr": k}``: the lowest seed-mean validation
  loss wins; the test split is read once per arm. One program per width trains every arm of that width."""
  sweeps = {}

  def fit(arm, hparams, seeds):
    kind, width = arm.name.split("_w")
    if (kind, int(width)) not in sweeps:
      for k, result in _sweep(int(width), config, splits).items():
        sweeps[(k, int(width))] = result
    i = list(config.log2_lrs).index(hparams["log2_lr"])
    return {k: v[i] for k, v in sweeps[(kind, int(width))].items()}

  arms = [protocol.Arm(f"{kind}_w{w}", [{"log2_lr": k} for k in config.log2_lrs])
          for kind in _KINDS for w in config.widths]
  comparison = protocol.compare(
      arms, range(config.seeds), fit, validate=lambda out: _diverged_as_worst(out["val_loss"]),
      test=lambda out: {k: out[k] for k in ("test_loss", "test_accuracy", "fit_loss")}, maximize=False)
  best = {kind: [comparison[f"{kind}_w{w}"].chosen["log2_lr"] for w in config.widths] for kind in _KINDS}
  return comparison, sweeps, best


def _plot(sweeps, config, path) -> None:
  """Seed-mean validation loss vs log2 learning rate, one line per width, SP and muP-K-FAC side by side."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  fig = Figure(figsize=(10, 4))
  for ax, kind in zip(fig.subplots(1, 2, sharey=True), ("sp", "mup")):
    for w in config.widths:
      loss = sweeps[(kind, w)]["val_loss"].mean(axis=1)
      ax.plot(config.log2_lrs, np.where(np.isfinite(loss), loss, np.nan), marker="o", label=f"width {w}")
    ax.set(yscale="log", xlabel="log2 learning rate", ylabel="validation loss (mean of seeds)",
           title=f"{kind.upper()}: after {config.steps} K-FAC steps")
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  # jaxlib's LAPACK calls go through scipy's OpenBLAS, whose own threads spin-wait for a core on a loaded CPU
  # (a 65 x 65 triangular solve took 8 ms instead of 0.06 ms on the shared 2-core machine): one BLAS thread.
  import scipy.linalg  # pylint: disable=g-import-not-at-top,unused-import  (loads the OpenBLAS that is limited)
  import threadpoolctl  # pylint: disable=g-import-not-at-top

  with threadpoolctl.threadpool_limits(1, user_api="blas"):
    comparison, sweeps, best = _compare(config, _splits(config))
  steps = {kind: int(max(b) - min(b)) for kind, b in best.items()}
  grid = list(config.log2_lrs)
  per_seed = {kind: [[grid[i] for i in np.argmin(_diverged_as_worst(sweeps[(kind, w)]["val_loss"]), axis=0)]
                     for w in config.widths] for kind in _KINDS}  # [width][seed]
  for (kind, w), sweep in sorted(sweeps.items()):
    for k, loss in zip(grid, sweep["val_loss"].mean(axis=1)):
      ctx.log(k, {f"{kind}_w{w}/val_loss": float(loss)})
  ctx.print(f"best log2 lr by width {list(config.widths)}: muP-K-FAC {best['mup']} ({steps['mup']} grid steps), "
            f"SP {best['sp']} ({steps['sp']} grid steps); per seed muP {per_seed['mup']}, SP {per_seed['sp']}")
  _plot(sweeps, config, ctx.workdir / "second_order_mup_loss_vs_lr.png")

  def claim(method, baseline):
    return steps[method] <= 1 and steps[baseline] >= 2
  holds = claim("mup", "sp")
  control = claim("sp", "sp")  # SP in muP's place must fail
  results = {"protocol": comparison.to_json(),
             "val_loss_by_lr": {f"{k}_w{w}": s["val_loss"].tolist() for (k, w), s in sweeps.items()},
             "fit_loss_by_lr": {f"{k}_w{w}": s["fit_loss"].tolist() for (k, w), s in sweeps.items()}}
  results["claim"] = {
      "passed": bool(holds and not control), "holds": bool(holds), "control_passes": bool(control),
      "vacuous": bool(control), "statement": CLAIM, "widths": list(config.widths), "log2_lr_grid": grid,
      "best_log2_lr_mup": best["mup"], "best_log2_lr_sp": best["sp"],
      "grid_steps_mup": steps["mup"], "grid_steps_sp": steps["sp"],
      "best_log2_lr_per_seed_mup": per_seed["mup"], "best_log2_lr_per_seed_sp": per_seed["sp"],
      "test_accuracy": {name: arm.mean("test_accuracy") for name, arm in comparison.arms.items()}}
  return results
