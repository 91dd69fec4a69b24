"""Spectral regularization keeps a network trainable across tasks (Lewandowski et al., 2024, arXiv:2406.06811),
catalogue [146].

Setting (the catalogue's): continual permuted digits, 10 tasks x 200 steps. Task 0 is scikit-learn digits as is,
task t > 0 applies a fixed random permutation of the 64 pixels (per seed). One MLP 64-256-256-10 (ReLU,
``paperlab.models.MLP``) trains on the tasks in sequence with Adam (batch 64; the Adam state carries over task
boundaries, as in the paper's continual setting). Arms: ``plain`` (cross-entropy) and ``spectral`` (cross-entropy
+ ``paperlab.param.spectral_penalty``: lambda sum_l (sigma_1(W_l)^2 - 1)^2 over the three kernels, one power
iteration per step with persistent vectors). Both arms tune the Adam learning rate over the same grid
{1e-3, 3e-3, 1e-2} on the final task's validation accuracy (a held-out 20% of the training split); the test split
is read once per arm. 3 seeds (init, permutations, batches). Claim on seed means: final-task test accuracy of
``spectral`` >= ``plain`` + 5 points, and every layer's sigma_1 (exact SVD at the end) of ``spectral`` lies in
[0.5, 2]. Control (protocol): the method replaced by the baseline must fail. ``plain``'s first-task accuracy is
reported beside its final-task accuracy (loss of plasticity is the drop between them).

Measured (seeds 0-2, both arms chose lr 3e-3): final-task test accuracy spectral 0.973 +- 0.005 vs plain
0.949 +- 0.007, gain +2.4 points < 5: NOT reproduced. plain loses 2.3 points from task 0 (0.972) to task 9 (0.949)
while its sigma_1 grows to 2.1..13.3; spectral keeps sigma_1 in [1.65, 1.86] (in [0.5, 2], that part holds) and
ends higher than it started (0.955 -> 0.973). The plasticity loss of plain is too small at 10 x 200 steps on digits
for a 5-point gap. Cost: ~220 CPU-s.
CI scale (CI_CONFIG): 3 tasks x 100 steps, widths (64, 64), learning-rate grid {3e-3} (both arms' choice in the
record); at it: final-task accuracy spectral 0.954 vs plain 0.950 (+0.4 points < 5, not reproduced, as the record),
spectral's sigma_1 in [1.61, 1.90], seeds 0-2, ~37 CPU-s (two compiles are most of it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from paperlab import data, models, papers, param
from paperlab.runner import protocol

PAPER_ID = 146
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = (
    "lambda is fixed at 1e-2 (not tuned); only the learning rate is tuned, over the same grid for both arms",
    "the paper's bias-norm term of the regularizer is not used (kernels only)",
)
CI_CONFIG = {"num_tasks": 3, "steps_per_task": 100, "widths": (64, 64), "learning_rates": (3e-3,)}


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.num_tasks = 10
  c.steps_per_task = 200
  c.batch_size = 64
  c.widths = (256, 256)
  c.learning_rates = (1e-3, 3e-3, 1e-2)
  c.lam = 1e-2
  c.k = 2.0
  return c


def _splits():
  ds = data.digits()
  rng = np.random.default_rng(0)
  order = rng.permutation(len(ds.x_train))
  n_val = len(order) // 5
  val, train = order[:n_val], order[n_val:]
  as_j = lambda a: jnp.asarray(a)
  return ((as_j(ds.x_train[train]), as_j(ds.y_train[train])), (as_j(ds.x_train[val]), as_j(ds.y_train[val])),
          (as_j(ds.x_test), as_j(ds.y_test)))


def _continual(config, lam: float, seeds, lr: float):
  (xt, yt), (xv, yv), (xs, ys) = _splits()
  make = lambda key: models.MLP(64, list(config.widths), 10, rngs=nnx.Rngs(key))
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: make(jax.random.key(0))))

  def logits(params, x):
    return nnx.merge(graphdef, params)(x)

  def acc(params, x, y, perm):
    return jnp.mean(jnp.argmax(logits(params, x[:, perm]), -1) == y)

  @jax.jit
  @jax.vmap
  def run(seed):
    key = jax.random.key(seed)
    params = nnx.state(make(key), nnx.Param)
    perms = jnp.concatenate([jnp.arange(64)[None], jax.vmap(lambda k: jax.random.permutation(k, 64))(
        jax.random.split(jax.random.fold_in(key, 1), config.num_tasks - 1))])
    reg_state = param.spectral_reg_init(params, jax.random.fold_in(key, 2))
    tx = optax.adam(lr)

    def loss_fn(p, reg, x, y):
      ce = optax.softmax_cross_entropy_with_integer_labels(logits(p, x), y).mean()
      penalty, reg = param.spectral_penalty(p, reg, lam=lam, k=config.k)
      return ce + penalty, reg

    def task(carry, inputs):
      perm, tkey = inputs

      def step(carry, skey):
        p, opt, reg = carry
        idx = jax.random.randint(skey, (config.batch_size,), 0, xt.shape[0])
        grads, reg = jax.grad(loss_fn, has_aux=True)(p, reg, xt[idx][:, perm], yt[idx])
        updates, opt = tx.update(grads, opt, p)
        return (optax.apply_updates(p, updates), opt, reg), None

      carry, _ = jax.lax.scan(step, carry, jax.random.split(tkey, config.steps_per_task))
      p = carry[0]
      return carry, (acc(p, xv, yv, perm), acc(p, xs, ys, perm))

    init = (params, tx.init(params), reg_state)
    (params, _, _), (val_acc, test_acc) = jax.lax.scan(
        task, init, (perms, jax.random.split(jax.random.fold_in(key, 3), config.num_tasks)))
    kernels = [leaf for leaf in jax.tree.leaves(params) if leaf.ndim == 2]
    return val_acc, test_acc, jnp.stack([jnp.linalg.norm(w, ord=2) for w in kernels])

  return run(jnp.asarray(seeds))


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  lams = {"plain": 0.0, "spectral": float(config.lam)}

  def fit(arm, hparams, seeds):
    val_acc, test_acc, sigmas = (np.asarray(a, np.float64) for a in _continual(config, lams[arm.name], seeds,
                                                                                  hparams["lr"]))
    out = {"final_val_accuracy": val_acc[:, -1], "final_task_accuracy": test_acc[:, -1],
           "first_task_accuracy": test_acc[:, 0], "sigma_min": sigmas.min(1), "sigma_max": sigmas.max(1)}
    for t in range(config.num_tasks):
      out[f"task{t}_accuracy"] = test_acc[:, t]
    return out

  grid = [{"lr": lr} for lr in config.learning_rates]
  comparison = protocol.compare([protocol.Arm("plain", grid), protocol.Arm("spectral", grid)],
                                np.arange(config.seeds), fit, validate=lambda out: out["final_val_accuracy"],
                                test=lambda out: {k: v for k, v in out.items() if k != "final_val_accuracy"})
  claim = lambda m, b: (m["final_task_accuracy"] >= b["final_task_accuracy"] + 0.05
                        and m["sigma_min"] >= 0.5 and m["sigma_max"] <= 2.0)
  verdict = comparison.judge(claim, method="spectral", baseline="plain")
  # sigma bounds must hold for every seed, not only on the mean
  spectral = comparison["spectral"].test
  sigma_every_seed = bool(np.all(spectral["sigma_min"] >= 0.5) and np.all(spectral["sigma_max"] <= 2.0))
  for name in comparison.arms:
    means = comparison[name].means()
    ctx.print(f"{name} (lr {comparison[name].chosen['lr']}): final-task acc {means['final_task_accuracy']:.4f} "
              f"+- {comparison[name].std('final_task_accuracy'):.4f}, first-task {means['first_task_accuracy']:.4f}, "
              f"sigma_1 in [{means['sigma_min']:.2f}, {means['sigma_max']:.2f}]; per task " +
              ", ".join(f"{means[f'task{t}_accuracy']:.3f}" for t in range(config.num_tasks)))
    ctx.log(0 if name == "plain" else 1, {f"{name}/task_accuracy": [means[f"task{t}_accuracy"]
                                                                   for t in range(config.num_tasks)]})
  m, b = comparison["spectral"].means(), comparison["plain"].means()
  results = {name: {k: np.asarray(v).tolist() for k, v in arm.test.items()} for name, arm in comparison.arms.items()}
  results["protocol"] = comparison.to_json()
  results["claim"] = {**verdict, "passed": bool(verdict["passed"] and sigma_every_seed), "statement": CLAIM,
                      "control": "the method arm replaced by the baseline arm",
                      "accuracy_gain": m["final_task_accuracy"] - b["final_task_accuracy"],
                      "plain_plasticity_drop": b["first_task_accuracy"] - b["final_task_accuracy"],
                      "sigma_in_range_every_seed": sigma_every_seed,
                      "sigma_range_spectral": [m["sigma_min"], m["sigma_max"]],
                      "sigma_range_plain": [b["sigma_min"], b["sigma_max"]],
                      "per_seed": {name: comparison[name].test["final_task_accuracy"].tolist()
                                   for name in comparison.arms}}
  return results

