"""AdamP vs Adam on scale-invariant weights (Heo et al., 2021, arXiv:2006.08217), catalogue [17].

A digits MLP whose hidden Dense layers (no bias) are each followed by LayerNorm, so those kernels are
scale-invariant: their gradient is orthogonal to them and momentum keeps growing their norm, which shrinks the
effective step size (the paper's Sec. 2-3). AdamP removes the radial component of the step. The catalogue's setting:
both optimizers at lr 1e-3, no weight decay, 40 epochs, the same seeds (0-2) and batches, compared through
:mod:`paperlab.runner.protocol` (one fixed point per arm, test read once per arm, seed means, and the control: Adam
passed as the method must fail the claim). The claim's unit-test part is checked on the trained network: AdamP's
projection of a random step against the true gradient at the final weights leaves ``<w, p> ~ 0`` (|cos| <= 1e-4)
in the view it projected (every channel, or the whole kernel, which is the view LayerNorm makes scale-invariant).

Measured (seeds 0-2): norm growth Adam +0.098% (per seed 0.160/0.119/0.014%), AdamP +0.073% (0.074/0.070/0.073%),
ratio 0.74 > 0.5; test accuracy 0.9689 vs Adam 0.9681; |cos(w, p)| after projection <= 7.4e-7. At lr 1e-3 the
kernels barely move on digits, so there is little norm growth for AdamP to remove: the claim does not reproduce.
The earlier record passed at lr 1e-2 and 25 epochs (Adam +24%, AdamP +2.2%), a setting chosen after this one
failed. Explore other settings without a record with

    paperlab run experiments/optim/adamp.py --config.learning_rate=1e-2 --config.epochs=25

CI scale (CI_CONFIG): 20 epochs, XLA's fast CPU compile; at it: norm growth Adam +0.127%, AdamP +0.072% (ratio 0.57
> 0.5), test accuracy 0.9652 both, |cos(w, p)| <= 1.2e-6 (seeds 0-2; not reproduced, as the record; at 10 epochs the
ratio is 0.37 and the claim would hold), 27 CPU-s on a heavily loaded 2-core machine (about 33 before the fast
compile).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from paperlab import data, models, optim, papers, train
from paperlab.runner import protocol
from paperlab.runner.lr_transfer import fast_compile_options

PAPER_ID = 17
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = (
    "the unit check <w, p> ~ 0 is made in the view AdamP projected: with LayerNorm after the layer a kernel is "
    "scale-invariant as a whole (AdamP's layer view), not per channel, so the channel-wise inner products need "
    "not vanish",
)
CI_CONFIG = {"epochs": 20, "fast_compile": True}


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.epochs = 40
  c.batch_size = 64
  c.learning_rate = 1e-3
  c.widths = (128, 128)
  c.fast_compile = False  # True: XLA's cheaper CPU compile (paperlab.runner.trainer.FAST_COMPILE_CPU), CI scale only
  return c


def _kernel_norms(params) -> jax.Array:
  return jnp.stack([jnp.linalg.norm(layer["kernel"]) for layer in params["hidden"].values()])


def _max_cosine_after_projection(graphdef, state, x, y, key) -> jax.Array:
  """max over hidden kernels of |cos(w, p)| after AdamP's projection of a random step ``p`` (true gradient at the
  final weights for the cosine test), in the view AdamP used: per output channel, or the whole kernel."""
  grads = jax.grad(lambda p: train.classification_loss(nnx.merge(graphdef, p, state.model_state), (x, y), key)[0])(
      state.params)
  kernels = {k: v["kernel"] for k, v in state.params["hidden"].items()}
  g = {k: v["kernel"] for k, v in grads["hidden"].items()}
  steps = {k: jax.random.normal(jax.random.fold_in(key, i), w.shape) for i, (k, w) in enumerate(kernels.items())}
  projected, flags = optim.projection_direction(steps, g, kernels)
  cos = []
  for k, w in kernels.items():
    p = projected[k]
    channel = jnp.max(jnp.abs(jnp.sum(w * p, 0)) / (jnp.linalg.norm(w, axis=0) * jnp.linalg.norm(p, axis=0)))
    layer = jnp.abs(jnp.vdot(w, p)) / (jnp.linalg.norm(w) * jnp.linalg.norm(p))
    cos.append(jnp.where(flags[k], jnp.minimum(channel, layer), jnp.inf))  # inf: a kernel left unprojected
  return jnp.max(jnp.stack(cos))


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  ds = data.digits()
  x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
  steps = config.epochs * (x.shape[0] // config.batch_size)
  model_fn = lambda rngs: models.MLP(64, list(config.widths), ds.num_classes, norm="layer", use_bias=False, rngs=rngs)
  optimizers = {"adam": optax.adam(config.learning_rate), "adamp": optim.adamp(config.learning_rate)}

  def fit(arm, hparams, seeds):
    tx = optimizers[arm.name]
    graphdef, init = train.make_init(model_fn, tx)
    step = train.make_train_step(graphdef, train.classification_loss, tx)

    @functools.partial(jax.jit, compiler_options=fast_compile_options() if config.fast_compile else None)
    @jax.vmap
    def trial(key):
      state = init(key)
      norms0 = _kernel_norms(state.params)
      state, metrics = train.run_steps(step, state, (x, y), key, batch_size=config.batch_size, num_steps=steps)
      growth = jnp.mean(_kernel_norms(state.params) / norms0 - 1.0)
      test = train.evaluate(graphdef, state, jnp.asarray(ds.x_test), jnp.asarray(ds.y_test))
      cosine = _max_cosine_after_projection(graphdef, state, x, y, key)
      return {"norm_growth": growth, "test_accuracy": test["accuracy"], "max_cosine_after_projection": cosine}, metrics["loss"]

    out, losses = trial(jax.vmap(jax.random.key)(jnp.asarray(seeds)))
    losses = np.asarray(losses)
    for i in range(0, steps, max(1, steps // 10)):
      ctx.log(i, {f"{arm.name}/train_loss": float(losses[:, i].mean())})
    return jax.tree.map(np.asarray, out)

  comparison = protocol.compare([protocol.Arm("adam"), protocol.Arm("adamp")], range(config.seeds), fit,
                                validate=lambda out: np.zeros(config.seeds),  # one point per arm: nothing to pick
                                test=lambda out: out)
  for name in ("adam", "adamp"):
    ctx.print(f"{name}: norm growth {comparison[name].mean('norm_growth'):.4f}, "
              f"test acc {comparison[name].mean('test_accuracy'):.4f}")
  verdict = comparison.judge(
      lambda m, b: m["norm_growth"] <= 0.5 * b["norm_growth"] and m["test_accuracy"] >= b["test_accuracy"] - 0.01,
      method="adamp", baseline="adam")
  cosine = float(np.max(comparison["adamp"].test["max_cosine_after_projection"]))
  g_adam, g_adamp = comparison["adam"].mean("norm_growth"), comparison["adamp"].mean("norm_growth")
  results = {name: {k: v.tolist() for k, v in arm.test.items()} for name, arm in comparison.arms.items()}
  results["protocol"] = comparison.to_json()
  results["claim"] = {**verdict, "passed": bool(verdict["passed"] and cosine <= 1e-4), "statement": CLAIM,
                      "norm_growth_adam": g_adam, "norm_growth_adamp": g_adamp,
                      "growth_ratio": g_adamp / g_adam if g_adam else float("nan"),
                      "max_cosine_after_projection": cosine,
                      "test_accuracy_adam": comparison["adam"].mean("test_accuracy"),
                      "test_accuracy_adamp": comparison["adamp"].mean("test_accuracy")}
  return results
