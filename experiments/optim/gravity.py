"""Gravity optimizer with its default hyperparameters on a digits MLP (Bahrami et al., 2021, arXiv:2101.09192),
catalogue [157].

The catalogue's setting: an unregularised digits MLP trained for 30 epochs with Gravity at the paper's defaults
(``l = 0.1, α = 0.01, β = 0.9``, untuned) and with RMSProp (``lr = 1e-3``), compared through
:mod:`paperlab.runner.protocol` (each arm one fixed point, as the catalogue fixes both: the same budget; seeds 0-2
with the same initialisation and batches per seed; the test split read once per arm; seed means with their spread).
The closed-form part is checked on random tensors: ``|ζ| <= |g|`` and ``ζ(-g) = -ζ(g)``.

Control: the claim is non-inferiority (Gravity no worse than RMSProp - 0.02), which RMSProp passed as the method
satisfies trivially, so the control is an arm that does nothing (``optax.set_to_zero()``: the network stays at its
initialisation); the claim judged with it as the method must fail.

Measured (seeds 0-2): test accuracy Gravity 0.9689 +- 0.0083 (per seed 0.9667/0.9800/0.9600), RMSProp 0.9726 +-
0.0028 (0.9733/0.9756/0.9689), so Gravity >= 0.90 and >= RMSProp - 0.02; the arm that does nothing 0.079 fails the
claim; ``max(|ζ| - |g|) = 0`` and ``ζ(-g) + ζ(g) = 0`` exactly: reproduced.

    paperlab run experiments/optim/gravity.py --config.epochs=60

CI scale (CI_CONFIG): the default config with XLA's fast CPU compile; at it: the same numbers (test accuracy Gravity
0.9689, RMSProp 0.9726, the arm that does nothing 0.079; seeds 0-2), 27 CPU-s (31 before).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from paperlab import data, optim, papers, train
from paperlab.models import MLP
from paperlab.runner import protocol
from paperlab.runner.lr_transfer import fast_compile_options

PAPER_ID = 157
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = ()
CI_CONFIG = {"fast_compile": True}


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.widths = (64,)
  c.epochs = 30
  c.batch_size = 32
  c.gravity = ml_collections.ConfigDict({"learning_rate": 0.1, "alpha": 0.01, "beta": 0.9})
  c.rmsprop_learning_rate = 1e-3
  c.scale = 1  # multiplies the epochs
  c.fast_compile = False  # True: XLA's cheaper CPU compile (paperlab.runner.trainer.FAST_COMPILE_CPU), CI scale only
  return c


def _zeta_properties(key) -> dict:
  """max(|ζ| - |g|) (<= 0 when bounded) and max|ζ(-g) + ζ(g)| (0 when odd) over random tensors of mixed scale."""
  gs = [s * jax.random.normal(k, (37, 19)) for k, s in zip(jax.random.split(key, 6), (1e-4, 1e-2, 1.0, 10.0, 1e3, 1.0))]
  bound = max(float(jnp.max(jnp.abs(optim.gravity_zeta(g)) - jnp.abs(g))) for g in gs)
  odd = max(float(jnp.max(jnp.abs(optim.gravity_zeta(-g) + optim.gravity_zeta(g)))) for g in gs)
  return {"zeta_bound_excess": bound, "zeta_odd_error": odd}


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  ds = data.digits()
  g = config.gravity
  makers = {"rmsprop": lambda key: optax.rmsprop(config.rmsprop_learning_rate),
            "gravity": lambda key: optim.gravity(g.learning_rate, g.alpha, g.beta, key=key),
            "nothing": lambda key: optax.set_to_zero()}
  train_data = (jnp.asarray(ds.x_train), jnp.asarray(ds.y_train))
  num_steps = config.epochs * config.scale * ds.x_train.shape[0] // config.batch_size

  def fit(arm, hparams, seeds):
    def trial(key):
      optimizer = makers[arm.name](jax.random.fold_in(key, 1))
      graphdef, init = train.make_init(lambda rngs: MLP(64, tuple(config.widths), 10, rngs=rngs), optimizer)
      step = train.make_train_step(graphdef, train.classification_loss, optimizer)
      state, metrics = train.run_steps(step, init(key), train_data, key, batch_size=config.batch_size,
                                       num_steps=num_steps)
      return train.evaluate(graphdef, state, ds.x_test, ds.y_test)["accuracy"], metrics["loss"]

    program = jax.jit(jax.vmap(trial), compiler_options=fast_compile_options() if config.fast_compile else None)
    acc, curves = program(jax.vmap(jax.random.key)(jnp.asarray(seeds)))
    curve = np.asarray(curves).mean(axis=0)
    for s in range(0, len(curve), max(1, len(curve) // 10)):
      ctx.log(s, {f"{arm.name}/train_loss": float(curve[s])})
    return {"test_accuracy": np.asarray(acc)}

  comparison = protocol.compare([protocol.Arm(n) for n in makers], range(config.seeds), fit,
                                validate=lambda out: np.zeros(config.seeds),  # one fixed point per arm: nothing to pick
                                test=lambda out: out)
  claim = lambda m, b: m["test_accuracy"] >= 0.90 and m["test_accuracy"] >= b["test_accuracy"] - 0.02
  verdict = comparison.judge(claim, method="gravity", baseline="rmsprop")
  control = comparison.judge(claim, method="nothing", baseline="rmsprop")["holds"]
  zeta = _zeta_properties(jax.random.key(0))
  zeta_ok = zeta["zeta_bound_excess"] <= 0.0 and zeta["zeta_odd_error"] == 0.0
  grav, rms = comparison["gravity"].mean("test_accuracy"), comparison["rmsprop"].mean("test_accuracy")
  ctx.print(f"test accuracy: gravity {grav:.4f}, rmsprop {rms:.4f}, nothing "
            f"{comparison['nothing'].mean('test_accuracy'):.4f}; zeta {zeta}")
  results = {name: {k: v.tolist() for k, v in arm.test.items()} for name, arm in comparison.arms.items()}
  results["protocol"] = comparison.to_json()
  results["claim"] = {**verdict, "passed": bool(verdict["holds"] and zeta_ok and not control),
                      "control_passes": bool(control), "vacuous": bool(control),
                      "control": "the claim with an arm that does nothing (set_to_zero) as the method",
                      "baseline_as_method_passes": verdict["control_passes"], "statement": CLAIM,
                      "gravity_test_accuracy": grav, "rmsprop_test_accuracy": rms, **zeta}
  return results
