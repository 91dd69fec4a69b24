"""Weight compander narrows the train-test gap of an MLP trained on a small digits subset and leaves fewer weights
near zero (Cakaj, Mehnert & Yang, 2023, arXiv:2306.16993), catalogue [5].

An MLP ``64 -> 128 -> 128 -> 10`` (ReLU) trained on a stratified 20% of the digits training split (269 examples)
for 300 epochs, full batch (one step per epoch), Adam (lr 1e-3), no dropout, no weight decay. ``plain``: the
kernels trained as they are (Flax's LeCun-normal init). ``compander``: every kernel trained raw and used through
:func:`paperlab.param.compander` (``w_eff = a tanh(b w / a)``, ``a = 0.5``, ``b = 2``), the raw kernels started at
:func:`paperlab.param.compander_inverse` of the same init, so both arms start from the same function. Both arms go
through :mod:`paperlab.runner.protocol` (one grid point each, 3 seeds, test read once per arm). The claim: on the
seed means the compander's train-test accuracy gap is smaller than the plain one's, and so is the fraction of
effective kernel entries with ``|w_eff| < 1e-2``. Control: the plain arm in the compander's place must fail.

Measured (seeds 0-2): train accuracy 1.000 in both arms; train-test gap 0.0578 (compander) vs 0.0548 (plain), so
the compander's test accuracy is 0.3 pt lower; fraction of ``|w_eff| < 1e-2`` 0.0646 vs 0.0663 (lower, as claimed).
Not reproduced: the gap part fails.
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
from paperlab.runner import protocol

PAPER_ID = 5
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = (
    "the compander function is a * tanh(b * w / a): the paper's equation could not be read in this workplace (no "
    "code released, full text not in the stored corpora), so a function with the properties the paper states "
    "(odd, bounded by a, slope b > 1 at zero) stands in for it; its (a, b) = (0.5, 2) are chosen, not the paper's",
    "the raw kernels start at the inverse compander of the plain init (both arms start from the same function); "
    "the catalogue does not say how the paper initializes the raw weights",
    "optimizer, width and batch are not in the catalogue: Adam lr 1e-3, two hidden layers of 128, full batch (one "
    "step per epoch), the same for both arms; one grid point per arm (no tuning, equal budget)",
)


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.train_fraction = 0.2
  c.width = 128
  c.epochs = 300
  c.learning_rate = 1e-3
  c.a = 0.5
  c.b = 2.0
  c.small = 1e-2
  return c


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  ds = data.digits()
  _, keep = data.stratified_split(ds.y_train, config.train_fraction, 0)  # the held-out part of this split: 20%
  x, y = jnp.asarray(ds.x_train[keep]), jnp.asarray(ds.y_train[keep])
  xt, yt = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)
  model_fn = lambda seed: MLP(64, [config.width] * 2, 10, rngs=nnx.Rngs(seed))
  graphdef, _, rest = nnx.split(model_fn(0), nnx.Param, ...)
  tx = optax.adam(config.learning_rate)
  wc = lambda w: param.compander(w, a=config.a, b=config.b)

  def effective(raw, arm):
    return param.reparametrize(raw, wc) if arm == "compander" else raw

  def accuracy(params, inputs, labels):
    return jnp.mean(jnp.argmax(nnx.merge(graphdef, params, rest)(inputs), -1) == labels)

  def fit(arm, hparams, seeds):
    del hparams
    inits = []
    for s in seeds:
      p = nnx.to_pure_dict(nnx.state(model_fn(int(s)), nnx.Param))
      if arm.name == "compander":
        p = param.reparametrize(p, lambda w: param.compander_inverse(w, a=config.a, b=config.b))
      inits.append(p)
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *inits)

    @jax.jit
    @jax.vmap
    def trial(raw):
      def loss(raw):
        logits = nnx.merge(graphdef, effective(raw, arm.name), rest)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

      def body(carry, _):
        raw, opt_state = carry
        value, grads = jax.value_and_grad(loss)(raw)
        updates, opt_state = tx.update(grads, opt_state, raw)
        return (optax.apply_updates(raw, updates), opt_state), value

      (raw, _), losses = jax.lax.scan(body, (raw, tx.init(raw)), None, length=config.epochs)
      params = effective(raw, arm.name)
      kernels = [w for path, w in jax.tree_util.tree_leaves_with_path(params) if w.ndim >= 2]
      frac_small = sum(jnp.sum(jnp.abs(w) < config.small) for w in kernels) / sum(w.size for w in kernels)
      train_acc, test_acc = accuracy(params, x, y), accuracy(params, xt, yt)
      return {"train_accuracy": train_acc, "test_accuracy": test_acc, "gap": train_acc - test_acc,
              "frac_small": frac_small, "max_abs_weight": jnp.max(jnp.stack([jnp.max(jnp.abs(w)) for w in kernels]))
              }, losses

    out, losses = trial(stacked)
    ctx.log_curve(f"{arm.name}/train_loss", np.asarray(losses).mean(0), every=10)
    return jax.tree.map(np.asarray, out)

  comparison = protocol.compare([protocol.Arm("compander"), protocol.Arm("plain")], range(config.seeds), fit,
                                validate=lambda out: np.zeros(config.seeds),  # one point per arm: nothing to pick
                                test=lambda out: out)
  for name in ("compander", "plain"):
    arm = comparison[name]
    ctx.print(f"{name}: train acc {arm.mean('train_accuracy'):.4f}, test acc {arm.mean('test_accuracy'):.4f} "
              f"(+- {arm.std('test_accuracy'):.4f}), gap {arm.mean('gap'):.4f}, frac |w|<{config.small:g} "
              f"{arm.mean('frac_small'):.5f}, max |w| {arm.mean('max_abs_weight'):.3f}")
  verdict = comparison.judge(lambda m, b: m["gap"] < b["gap"] and m["frac_small"] < b["frac_small"],
                             method="compander", baseline="plain")
  results = {name: {k: v.tolist() for k, v in arm.test.items()} for name, arm in comparison.arms.items()}
  results["protocol"] = comparison.to_json()
  results["claim"] = {**verdict, "statement": CLAIM,
                      "gap_compander": comparison["compander"].mean("gap"),
                      "gap_plain": comparison["plain"].mean("gap"),
                      "frac_small_compander": comparison["compander"].mean("frac_small"),
                      "frac_small_plain": comparison["plain"].mean("frac_small")}
  return results
