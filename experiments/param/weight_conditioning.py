"""Weight conditioning lets a coordinate MLP fit a signal to a lower error (Saratchandran, Wang & Lucey, 2024,
"Weight Conditioning for Smooth Optimization of Neural Networks", arXiv:2409.03424), catalogue [126].

A NeRF-style coordinate MLP fits a 1D signal: inputs ``x`` in [0, 1) with the positional encoding
``(x, sin(2^l pi x), cos(2^l pi x))``, ``l = 0..5``; four linear layers ``13 -> 128 -> 128 -> 128 -> 1`` (ReLU);
the target a fixed signal with a discontinuity -- a square wave of 2.5 periods (amplitude 0.5) plus eight sines
with non-integer frequencies drawn uniformly in [1, 20] and random phases and amplitudes (data seed 0) -- sampled
at 128 points; Adam (lr 1e-3), full batch, 500 steps. ``plain``: the kernels trained as they are.
``conditioned``: every kernel trained raw and used through :func:`paperlab.param.weight_condition` (row
equilibration, the conditioner recomputed at every step). Both arms start from the same Flax init and go through
:mod:`paperlab.runner.protocol` (one grid point each, 3 seeds; the held-out "test" read once per arm is the signal
at the 128 midpoints). The claim: on the seed means the conditioned run's final MSE on the fitted points is below
0.9x the plain one's. Control: the plain arm in the conditioned arm's place must fail.

Measured (seeds 0-2): final MSE on the fitted points 5.16e-6 (conditioned) vs 2.32e-7 (plain), ratio 22.2
(claim: < 0.9). Not reproduced: with every kernel row-equilibrated (weight normalization with unit gains, the
readout included) the fit is worse, not better.

Re-run on the CI machine of 2026-12-05 (the record, experiments/records/126.json): final MSE conditioned 2.78e-6 vs
plain 1.38e-5: the claim holds there (reproduced with deviations); final MSEs near 1e-6 are dominated by float
rounding, so the verdict changes with the machine.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from paperlab import papers, param
from paperlab.models import MLP
from paperlab.runner import protocol

PAPER_ID = 126
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = (
    "the signal (a sum of four sines at 128 points), the encoding (6 frequencies), the learning rate (Adam 1e-3, "
    "the same for both arms) and full-batch training are not in the catalogue and were fixed before the run; one "
    "grid point per arm",
    "the first signal tried (four sines of integer frequencies 1, 3, 7, 13) was fit to float32 precision by both "
    "arms (final MSE 5.0e-14 conditioned vs 1.7e-14 plain), which compares rounding noise; it was replaced, "
    "before any other run, by the signal with a discontinuity and non-integer frequencies described above",
)


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.points = 128
  c.sines = 8
  c.max_frequency = 20.0
  c.encoding_levels = 6
  c.width = 128
  c.hidden_layers = 3  # + the readout: 4 layers
  c.steps = 500
  c.learning_rate = 1e-3
  c.kind = "row"
  return c


def _signal(config, x):
  rng = np.random.default_rng(0)
  freqs = rng.uniform(1.0, config.max_frequency, config.sines)
  amps = rng.uniform(0.2, 0.6, config.sines)
  phases = rng.uniform(0, 2 * np.pi, config.sines)
  square = 0.5 * np.sign(np.sin(2 * np.pi * 2.5 * x + 0.3))
  return square + sum(a * np.sin(2 * np.pi * f * x + p) for a, f, p in zip(amps, freqs, phases))


def _encode(config, x):
  levels = 2.0 ** np.arange(config.encoding_levels) * np.pi
  return np.concatenate([x[:, None], np.sin(x[:, None] * levels), np.cos(x[:, None] * levels)], 1).astype(np.float32)


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  x_fit = np.arange(config.points) / config.points
  x_mid = x_fit + 0.5 / config.points
  inputs, targets = jnp.asarray(_encode(config, x_fit)), jnp.asarray(_signal(config, x_fit), jnp.float32)[:, None]
  inputs_mid = jnp.asarray(_encode(config, x_mid))
  targets_mid = jnp.asarray(_signal(config, x_mid), jnp.float32)[:, None]
  model_fn = lambda seed: MLP(inputs.shape[1], [config.width] * config.hidden_layers, 1, rngs=nnx.Rngs(seed))
  graphdef, _, rest = nnx.split(model_fn(0), nnx.Param, ...)
  tx = optax.adam(config.learning_rate)

  def predict(raw, arm, x):
    params = param.reparametrize(raw, lambda w: param.weight_condition(w, kind=config.kind)) \
        if arm == "conditioned" else raw
    return nnx.merge(graphdef, params, rest)(x)

  def fit(arm, hparams, seeds):
    del hparams
    stacked = jax.tree.map(lambda *a: jnp.stack(a),
                           *[nnx.to_pure_dict(nnx.state(model_fn(int(s)), nnx.Param)) for s in seeds])

    @jax.jit
    @jax.vmap
    def trial(raw):
      loss = lambda raw: jnp.mean(jnp.square(predict(raw, arm.name, inputs) - targets))

      def body(carry, _):
        raw, opt_state = carry
        value, grads = jax.value_and_grad(loss)(raw)
        updates, opt_state = tx.update(grads, opt_state, raw)
        return (optax.apply_updates(raw, updates), opt_state), value

      (raw, _), losses = jax.lax.scan(body, (raw, tx.init(raw)), None, length=config.steps)
      return {"final_mse": loss(raw), "midpoint_mse": jnp.mean(jnp.square(predict(raw, arm.name, inputs_mid)
                                                                           - targets_mid))}, losses

    out, losses = trial(stacked)
    ctx.log_curve(f"{arm.name}/mse", np.asarray(losses).mean(0), every=10)
    return jax.tree.map(np.asarray, out)

  comparison = protocol.compare([protocol.Arm("conditioned"), protocol.Arm("plain")], range(config.seeds), fit,
                                validate=lambda out: np.zeros(config.seeds),  # one point per arm: nothing to pick
                                test=lambda out: out)
  for name in ("conditioned", "plain"):
    arm = comparison[name]
    ctx.print(f"{name}: final MSE {arm.mean('final_mse'):.3e} (+- {arm.std('final_mse'):.1e}), midpoint MSE "
              f"{arm.mean('midpoint_mse'):.3e}")
  verdict = comparison.judge(lambda m, b: m["final_mse"] < 0.9 * b["final_mse"], method="conditioned",
                             baseline="plain")
  results = {name: {k: v.tolist() for k, v in arm.test.items()} for name, arm in comparison.arms.items()}
  results["protocol"] = comparison.to_json()
  cond, plain = comparison["conditioned"].mean("final_mse"), comparison["plain"].mean("final_mse")
  results["claim"] = {**verdict, "statement": CLAIM, "mse_ratio": cond / plain, "final_mse_conditioned": cond,
                      "final_mse_plain": plain}
  return results
