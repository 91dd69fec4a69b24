"""muP for K-FAC: the best K-FAC learning rate of a digits MLP transfers across width under the muP-K-FAC spec, not
under SP (Ishikawa & Karakida, 2024, "On the Parameterization of Second-Order Optimization Effective Towards the
Infinite Width", arXiv:2312.12226, Table 1 / Sec. 5), catalogue [268].

An MLP ``64 -> w -> w -> 10`` (ReLU) on the digits training split, trained with K-FAC on minibatches for a fixed
number of steps. Every layer's kernel and bias form one matrix ``[W; b]`` (the bias on a homogeneous input
coordinate, Martens & Grosse, arXiv:1503.05671, Sec. 3) updated by
:func:`paperlab.param.kronecker_precondition`, ``Delta = -eta_l (A + rho_A I)^{-1} G (B + rho_B I)^{-1}``, with
explicit Kronecker factors: ``A`` the exponential moving average of ``E[h h^T]`` over the layer's (augmented)
inputs, ``B`` that of ``E[delta delta^T]`` over the per-example gradients of its outputs for labels sampled from
the model (the Fisher's K-FAC, as ``kfac_jax``), both bias-corrected, recomputed and inverted at every step. Two
parametrizations against the narrowest width (identical at it):

* ``mup``: :func:`paperlab.param.second_order_mup` (``method="kfac"``): muP init (readout ``sqrt(base)/fan_in``,
  not zero), width-independent learning rates (Table 1) and damping multipliers ``rho_A * m_in``,
  ``rho_B / m_out``;
* ``sp``: the standard fan-in init (:func:`paperlab.param.parametrize`, ``kind="sp"``), one global learning rate
  and width-independent damping -- the catalogue's baseline.

Each (parametrization, width) is an arm of :mod:`paperlab.runner.protocol` (via :mod:`paperlab.runner.lr_transfer`,
as muTransfer [359]) whose grid is the learning-rate grid ``2^k`` (the same grid for both): every grid point is
trained on the same seeds; the point with the lowest seed-mean training loss on the whole training split after the
last step is the arm's best learning rate; the test split is read once per arm. The claim: muP-K-FAC's argmin moves
by at most one grid step across the widths, SP's by at least two. Control (the protocol's rule): the claim with
SP's sweep in muP's place must fail. A PNG of training loss vs learning rate per width goes to the workdir.

Status: unfinished, no record and no test, not listed in paperlab/papers.json. The sweep's XLA program hangs on
the shared 2-core CPU: every thread of the process waits on a futex after compilation, the main thread in
``np.asarray`` of the vmapped result (gdb), at widths 64/512, at 16/64/128 and at 16/64 under ``paperlab reproduce``,
also with ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false``. The pattern matches the XLA CPU thread-pool stall on
vmapped programs described in PyAutoLabs/PyAutoFit#1530. One run finished (driven directly, widths 16/64, 50
steps, grid 2^-4..2^0, damping 1, 33 CPU-s): the final training loss fell with the learning rate up to the edge
of the grid in both arms (best 2^0 at both widths, SP and muP), so the grid has to reach higher; that run measured
nothing about the claim. Damping 1e-2 diverged (loss > 5e4 after 5 steps at 2^-2).
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
from paperlab.runner import lr_transfer

PAPER_ID = 268
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = (
    "widths 16 and 64 (muP base 16) instead of 64..512: a 4x range instead of 8x, because sweeps with explicit "
    "K-FAC factors at widths 128 and 512 (36 vmapped trials, Cholesky solves per layer and step) stalled on the "
    "shared 2-core CPU (widths 64/512: 14 CPU-s in 18 min; widths 16/64/128: 42 CPU-s in 5 min, then no progress)",
    "50 K-FAC steps of batch 32, learning-rate grid 2^-2..2^3 (6 points), damping rho_A = rho_B = 1 at the base "
    "width, factor EMA decay 0.95, Fisher factors from labels sampled from the model: the catalogue leaves these "
    "open; damping 1e-2 diverged at every rate >= 2^-2 after 5 steps",
    "the best learning rate is chosen on the training loss over the whole training split after the last step "
    "(as [359]); SP is the fan-in init with width-independent LR and damping",
)

_KINDS = ("mup", "sp")


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.widths = (16, 64)
  c.base_width = 16
  c.log2_lrs = tuple(range(-2, 4))  # 2^-2 .. 2^3
  c.steps = 50
  c.batch_size = 32
  c.damping_a = 1.0
  c.damping_b = 1.0
  c.factor_decay = 0.95
  return c


def _shapes(width: int):
  return nnx.eval_shape(lambda: MLP(64, [width, width], 10, rngs=nnx.Rngs(0)))


def _specs(width: int, config) -> list[dict]:
  """Per parametrization: init rule, LR multipliers and damping multipliers of each layer's augmented matrix."""
  model, base = _shapes(width), _shapes(config.base_width)
  mup = param.second_order_mup(model, base, method="kfac")
  sp = param.parametrize(model, base, kind="sp")
  ones = jax.tree.map(lambda _: 1.0, mup.damping_in)
  return [{"p": mup.parametrization, "lr": _layers(mup.lr_multipliers), "din": _layers(mup.damping_in),
           "dout": _layers(mup.damping_out)},
          {"p": sp, "lr": _layers(sp.lr_multipliers), "din": _layers(ones), "dout": _layers(ones)}]


def _layers(tree):
  return [tree["hidden"][0], tree["hidden"][1], tree["head"]]


def _forward(layers, x, shifts):
  """Logits and each layer's augmented input ``[h, 1]``; ``shifts`` (zeros) expose the per-example output
  gradients ``delta`` to ``jax.vjp``."""
  h, inputs = x, []
  for i, (w, s) in enumerate(zip(layers, shifts)):
    h = jnp.concatenate([h, jnp.ones((h.shape[0], 1), h.dtype)], axis=1)
    inputs.append(h)
    h = h @ w + s
    h = jax.nn.relu(h) if i < len(layers) - 1 else h
  return h, inputs


def _augment(layer):
  return jnp.concatenate([layer["kernel"], layer["bias"][None]], axis=0)


def _trial(width: int, config, ds):
  specs = _specs(width, config)
  shapes = param.param_shapes(_shapes(width))
  x_all, y_all = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
  xt, yt = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)
  pick = lambda kind, field: lr_transfer.select(kind, [s[field] for s in specs])

  def trial(kind, lr, key):
    init_key, data_key, fisher_key = jax.random.split(key, 3)
    params = lr_transfer.select(kind, [param.init_params(init_key, shapes, s["p"]) for s in specs])
    ws = [_augment(l) for l in _layers(params)]
    lrm = [l["kernel"] for l in pick(kind, "lr")]
    din = [config.damping_a * l["kernel"] for l in pick(kind, "din")]
    dout = [config.damping_b * l["kernel"] for l in pick(kind, "dout")]
    factors = [(jnp.zeros((w.shape[0],) * 2), jnp.zeros((w.shape[1],) * 2)) for w in ws]

    def step(carry, t):
      ws, factors = carry
      x, y = data.batch_at((x_all, y_all), t, data_key, config.batch_size)
      n = x.shape[0]
      shifts = [jnp.zeros((n, w.shape[1])) for w in ws]
      logits, vjp, inputs = jax.vjp(lambda s: _forward(ws, x, s), shifts, has_aux=True)
      p = jax.nn.softmax(logits)
      (deltas,) = vjp(p - jax.nn.one_hot(y, 10))  # per-example dloss_i/ds (the mean's gradient times n)
      sampled = jax.random.categorical(jax.random.fold_in(fisher_key, t), jax.lax.stop_gradient(logits))
      (fisher,) = vjp(p - jax.nn.one_hot(sampled, 10))
      corr = 1.0 - config.factor_decay ** (t + 1).astype(jnp.float32)
      new_ws, new_factors = [], []
      for i, w in enumerate(ws):
        a = config.factor_decay * factors[i][0] + (1 - config.factor_decay) * inputs[i].T @ inputs[i] / n
        b = config.factor_decay * factors[i][1] + (1 - config.factor_decay) * fisher[i].T @ fisher[i] / n
        g = inputs[i].T @ deltas[i] / n
        u = param.kronecker_precondition(g, a / corr, b / corr, damping_a=din[i], damping_b=dout[i])
        new_ws.append(w - lr * lrm[i] * u)
        new_factors.append((a, b))
      return (new_ws, new_factors), None

    (ws, _), _ = jax.lax.scan(step, (ws, factors), jnp.arange(config.steps))
    zeros = lambda m: [jnp.zeros((m, w.shape[1])) for w in ws]
    logits, _ = _forward(ws, x_all, zeros(x_all.shape[0]))
    logits_t, _ = _forward(ws, xt, zeros(xt.shape[0]))
    return {"train_loss": optax.softmax_cross_entropy_with_integer_labels(logits, y_all).mean(),
            "test_loss": optax.softmax_cross_entropy_with_integer_labels(logits_t, yt).mean(),
            "test_accuracy": jnp.mean(jnp.argmax(logits_t, -1) == yt)}

  return trial


def _sweep(width: int, config, ds) -> dict:
  return lr_transfer.sweep_program(_trial(width, config, ds), _KINDS, config.log2_lrs, config.seeds,
                                   compiler_options=lr_transfer.fast_compile_options())


def _diverged_as_worst(loss) -> np.ndarray:
  return np.nan_to_num(np.asarray(loss, np.float64), nan=1e30, posinf=1e30, neginf=1e30)


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  ds = data.digits()
  grids = {kind: config.log2_lrs for kind in _KINDS}
  comparison, sweeps, best = lr_transfer.compare_lrs(
      lambda width: _sweep(width, config, ds), _KINDS, config.widths, grids, config.seeds, sep="_w",
      validate=_diverged_as_worst)
  steps = {kind: int(max(b) - min(b)) for kind, b in best.items()}
  lr_transfer.log_sweeps(ctx, sweeps, grids, "_w")
  ctx.print(f"best log2 lr by width {list(config.widths)}: muP-K-FAC {best['mup']} ({steps['mup']} grid steps), "
            f"SP {best['sp']} ({steps['sp']} grid steps)")
  lr_transfer.plot_loss_vs_lr(sweeps, grids, config.widths, ctx.workdir / "second_order_mup_loss_vs_lr.png",
                              panels=("sp", "mup"), size_label=lambda w: f"width {w}",
                              title=lambda kind: f"{kind.upper()}: training loss after {config.steps} K-FAC steps")

  def claim(method, baseline):
    return steps[method] <= 1 and steps[baseline] >= 2
  holds = claim("mup", "sp")
  control = claim("sp", "sp")  # SP in muP's place must fail
  results = {"protocol": comparison.to_json(),
             "train_loss_by_lr": {f"{k}_w{w}": s["train_loss"].tolist() for (k, w), s in sweeps.items()}}
  results["claim"] = {
      "passed": bool(holds and not control), "holds": bool(holds), "control_passes": bool(control),
      "vacuous": bool(control), "statement": CLAIM, "widths": list(config.widths),
      "best_log2_lr_mup": best["mup"], "best_log2_lr_sp": best["sp"],
      "grid_steps_mup": steps["mup"], "grid_steps_sp": steps["sp"],
      "test_accuracy": {name: arm.mean("test_accuracy") for name, arm in comparison.arms.items()}}
  return results
