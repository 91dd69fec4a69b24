"""Is oracle pruning the true oracle? (Feng, Tao & Wang, 2024, arXiv:2412.00143), catalogue [87].

DIGITS-MLP (64-64-64-10, ReLU, Adam 1e-3, batch 64, 20 epochs, seeds 0-2) pre-trained, then pruned to 90% of
every kernel with 40 masks of four kinds (10 each):

* random structured: each kernel keeps a random 10% of its input rows (whole neurons' fan-out);
* per-layer magnitude and global magnitude: :func:`paperlab.prune.magnitude_masks` (90%) of ``|w|`` jittered by a
  log-normal factor ``exp(0.5 z)`` (one draw per mask: ten distinct masks around the magnitude criterion);
* random unstructured: :func:`paperlab.prune.random_masks` at density 10% per kernel.

Every pruned model is retrained 5 epochs (Adam 1e-3, pruned weights held at zero). Per seed, Kendall's tau
(:func:`paperlab.prune.kendall_tau`) between the train loss right after pruning and the test accuracy after
retraining; oracle pruning is valid when tau is strongly negative. Arms:

* ``digits``: clean digits (split 70/15/15);
* ``noisy``: the harder variant, the same split with 50% symmetric label noise on the fit and validation labels
  (pre-training, pruned loss and retraining on noisy labels; test labels clean).

Claim (catalogue): report tau(loss_before, acc_after); pipeline invariants (tau in [-1, 1], reproducible under a
seed); ``|tau_hard| <= |tau_digits| + 0.1`` on seed means. Control: the hard arm with an outcome that keeps the
pre-retraining ranking (tau = -1, oracle pruning valid there), which must fail the claim. Replacing the method by
the baseline cannot serve: ``|tau_d| <= |tau_d| + 0.1`` always holds.

Measured (seeds 0-2, 40 masks each, all at 90.15% kernel sparsity): digits tau = -0.658 +- 0.034 (rho -0.843),
noisy tau = -0.494 +- 0.025 (rho -0.680); within one mask kind tau is weaker (digits -0.328, noisy -0.258). Mean
test accuracy after 5 retraining epochs 0.460 (digits) and 0.305 (noisy). |tau_hard| 0.494 <= |tau_digits| + 0.1 =
0.758 holds; the control (0.1 + 0.658 < 1) fails: reproduced with deviations. As the paper reports for its
smallest settings (LeNet on MNIST), the pruned loss still ranks the retrained models on this small MLP; label noise
weakens the correlation (-0.66 -> -0.49).
CI scale (CI_CONFIG): 10 pre-training epochs, 3 retraining epochs per mask (still 40 masks per seed); at it: digits
tau -0.622 +- 0.042, noisy tau -0.570 +- 0.028, |tau_hard| 0.570 <= 0.722 holds, control (tau -1) fails:
reproduced, as the record (seeds 0-2); 34 CPU-s in pytest at load ~20.
"""

from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from paperlab import papers, prune
from paperlab.runner import protocol
from paperlab.runner.config import load_experiment

substrate = load_experiment(pathlib.Path(__file__).with_name("digits_mlp.py"))

PAPER_ID = 87
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = (
    "DIGITS-MLP width 128-128, pre-trained 20 epochs, retrained 5 epochs with Adam 1e-3 (not fixed by the catalogue)",
    "the magnitude mask kinds are drawn as magnitude masks of |w| jittered by exp(0.5 z) (one draw per mask): a "
    "deterministic criterion gives one mask, the study needs ten of each kind",
    "random structured masks remove input rows of each kernel (a neuron's fan-out into that layer), 10% kept per "
    "kernel, so every kind sits at exactly 90% sparsity per kernel",
    "the harder variant is DIGITS with 50% symmetric label noise (the catalogue's first option); its splits are "
    "noisy_digits' (validation 20% of the training split)",
    "the control is the noisy arm read before retraining (the claim compares |tau|, so replacing the method by the "
    "baseline always satisfies it; a control has to be an arm where the correlation is known to be strong)",
)
CI_CONFIG = {"epochs": 10, "retrain_epochs": 3}  # the test suite's scale (paperlab reproduce 87 --ci)
ARMS = ("digits", "noisy")
KINDS = ("random_structured", "layer_magnitude", "global_magnitude", "random_unstructured")


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.widths = (64, 64)
  c.epochs = 20
  c.retrain_epochs = 5
  c.learning_rate = 1e-3
  c.sparsity = 0.9
  c.masks_per_kind = 10
  c.noise_rate = 0.5
  c.jitter = 0.5
  return c


def _masks(seed: int, layers, config):
  """The ``4 * masks_per_kind`` keep-masks of one model's ``layers``, stacked (kind-major order). Built eagerly
  (host loop): under ``jit(vmap)`` the sorts of the magnitude masks cost seconds of compilation."""
  density = 1.0 - config.sparsity
  rng = np.random.default_rng(seed)
  key = jax.random.key(seed)
  out = []
  for j in range(config.masks_per_kind):
    k = jax.random.fold_in(key, j)
    out.append([{"kernel": jnp.broadcast_to(prune.random_structured_masks(jax.random.fold_in(k, i), l["kernel"].shape[0],
                                                                          round(density * l["kernel"].shape[0]), 1)[0][:, None],
                                            l["kernel"].shape), "bias": jnp.ones(l["bias"].shape, bool)}
                 for i, l in enumerate(layers)])
  for scope in ("layer", "global"):
    for _ in range(config.masks_per_kind):
      jittered = jax.tree.map(lambda a: np.abs(np.asarray(a)) * np.exp(config.jitter * rng.normal(size=a.shape)), layers)
      out.append(prune.magnitude_masks(jittered, config.sparsity, scope=scope))
  for j in range(config.masks_per_kind):
    out.append(prune.random_masks(jax.random.fold_in(key, 1000 + j), layers, density))
  return jax.tree.map(lambda *m: jnp.stack(m), *out)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _per_seed(dense, masks, keys, data, *, cfg):
  """Per seed: pruned loss, retrained accuracies of every mask and the rank correlations (one vmapped program)."""
  config = dict(cfg)
  (x, y), (xv, yv), (xt, yt) = data

  def per_seed(layers, masks, key):
    def one(m, k):
      pruned = prune.apply_masks(layers, m)
      before = substrate.cross_entropy(pruned, x, y)
      after = substrate.train(pruned, k, x, y, epochs=config["retrain_epochs"],
                              learning_rate=config["learning_rate"], masks=m)
      return before, substrate.accuracy(after, xv, yv), substrate.accuracy(after, xt, yt), prune.sparsity(
          m, prune.prunable(m))

    n = config["masks_per_kind"] * len(KINDS)
    before, val, test, sp = jax.vmap(one)(masks, jax.random.split(key, n))
    kinds = config["masks_per_kind"]
    within = jnp.stack([prune.kendall_tau(before[i * kinds:(i + 1) * kinds], test[i * kinds:(i + 1) * kinds])
                        for i in range(len(KINDS))])
    return {"loss_before": before, "val_after": val, "test_after": test, "sparsity": sp,
            "tau": prune.kendall_tau(before, test), "rho": prune.spearman_rho(before, test),
            "tau_within_kind": within}

  return jax.vmap(per_seed)(dense, masks, keys)


def _noisy_labels(y: jax.Array, rate: float, seed: int) -> jax.Array:
  """Symmetric noise: a ``rate`` fraction of the labels moved uniformly to another class."""
  rng = np.random.default_rng(seed)
  flip = rng.random(y.shape[0]) < rate
  shift = rng.integers(1, 10, y.shape[0])
  return jnp.asarray(np.where(flip, (np.asarray(y) + shift) % 10, np.asarray(y)), y.dtype)


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  seeds = list(range(config.seeds))
  (x, y), (xv, yv), test = substrate.splits()
  data = {"digits": ((x, y), (xv, yv), test),
          "noisy": ((x, _noisy_labels(y, config.noise_rate, 1)), (xv, _noisy_labels(yv, config.noise_rate, 2)), test)}
  cfg = tuple(sorted((k, tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in config.items()))
  tables, used = {}, {}

  def fit(arm, hparams, seeds_):
    del hparams
    (xa, ya), _, _ = data[arm.name]
    dense = substrate.pretrain(seeds_, config.widths, xa, ya, epochs=config.epochs, learning_rate=config.learning_rate)
    masks = [_masks(int(sd), jax.tree.map(lambda a, i=i: a[i], dense), config) for i, sd in enumerate(seeds_)]
    if arm.name == "digits":
      used.update(dense=dense, masks=masks[0])
    masks = jax.tree.map(lambda *m: jnp.stack(m), *masks)
    keys = jax.vmap(lambda sd: jax.random.fold_in(jax.random.key(sd), 2))(jnp.asarray(seeds_))
    out = jax.tree.map(np.asarray, _per_seed(dense, masks, keys, data[arm.name], cfg=cfg))
    tables[arm.name] = out
    ctx.log(0, {f"{arm.name}/tau": float(out["tau"].mean()), f"{arm.name}/rho": float(out["rho"].mean())})
    return out

  comparison = protocol.compare(
      [protocol.Arm(a) for a in ARMS], seeds, fit, validate=lambda out: out["val_after"].mean(axis=1),
      test=lambda out: {"tau": out["tau"], "abs_tau": np.abs(out["tau"]), "rho": out["rho"],
                        "tau_within_kind": out["tau_within_kind"].mean(axis=1),
                        "mean_test_after": out["test_after"].mean(axis=1),
                        "sparsity": out["sparsity"].mean(axis=1)})
  tau = {a: comparison[a].mean("tau") for a in ARMS}
  for a in ARMS:
    ctx.print(f"{a}: tau {tau[a]:+.3f} +- {comparison[a].std('tau'):.3f}, rho {comparison[a].mean('rho'):+.3f}, "
              f"mean test acc {comparison[a].mean('mean_test_after'):.4f}")
  # reproducible under a seed: seed 0's masks drawn again from its pre-trained weights are the ones used
  again = _masks(seeds[0], jax.tree.map(lambda a: a[0], used["dense"]), config)
  reproducible = all(bool(jnp.array_equal(a, b)) for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(used["masks"])))
  in_range = all(bool(np.all(np.abs(comparison[a].test["tau"]) <= 1.0)) for a in ARMS)

  claim = lambda hard, easy: abs(hard["tau"]) <= abs(easy["tau"]) + 0.1
  means = {a: comparison[a].means() for a in ARMS}
  holds = bool(claim(means["noisy"], means["digits"]) and in_range and reproducible)
  # control: the hard task with a retraining that kept the pre-retraining ranking (oracle pruning valid there)
  oracle_valid = {"tau": float(np.mean([float(prune.kendall_tau(b, -b)) for b in tables["noisy"]["loss_before"]]))}
  control = bool(claim(oracle_valid, means["digits"]))
  results = {name: {k: v.tolist() for k, v in arm.test.items()} for name, arm in comparison.arms.items()}
  results["protocol"] = comparison.to_json()
  results["tables"] = {a: {k: np.asarray(v).tolist() for k, v in t.items() if k in ("loss_before", "test_after")}
                       for a, t in tables.items()}
  results["claim"] = {"passed": holds and not control, "holds": holds, "control_passes": control,
                      "vacuous": control, "statement": CLAIM, "tau": tau,
                      "tau_std": {a: comparison[a].std("tau") for a in ARMS}, "control_tau": oracle_valid["tau"],
                      "tau_within_kind": {a: comparison[a].mean("tau_within_kind") for a in ARMS},
                      "rho": {a: comparison[a].mean("rho") for a in ARMS},
                      "tau_in_range": in_range, "masks_reproducible": reproducible,
                      "sparsity": {a: comparison[a].mean("sparsity") for a in ARMS}}
  return results
