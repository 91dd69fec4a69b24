"""NeuralNDCG (Pobrotyn & Bialobrzeski, 2021): a listwise loss that optimises a relaxed NDCG directly.

Synthetic learning to rank, the catalogue's data: 500 queries of 20 documents with 10-d Gaussian features, a
document's graded relevance (0-4) thresholds a noisy linear function of its features. (``query_shift_scale > 0``
adds a query-level offset to all documents' features of a query, large in some directions as query-dependent
features such as BM25 are; the earlier version of this experiment used 3.0, not in the catalogue.) A linear scorer is
trained full-batch with Adam under NeuralNDCG, optax's listwise ``ranking_softmax_loss`` and pointwise MSE on the
grades; the metric is the exact NDCG@10 on held-out queries. Seeds (initialisations) run as one vmapped program.

The catalogue's setting and claim, compared through the shared protocol (:mod:`paperlab.runner.protocol`: one fixed
point per arm (Adam 5e-2, 100 full-batch steps), so the same budget; 3 seeds; the test queries read once per arm; seed
means). Control: pointwise MSE passed as the method must fail the claim.

Measured (seeds 0-2): test NDCG@10 NeuralNDCG 0.8962 (0.8959/0.8962/0.8966), softmax 0.8921 (0.8914/0.8921/0.8929),
pointwise MSE 0.8979 (0.8971/0.8973/0.8992): NeuralNDCG - softmax = +0.004 holds, NeuralNDCG - MSE = -0.002 fails
(claim >= +0.01): not reproduced. With the earlier version's query offsets (``--config.query_shift_scale=3.0``) MSE
falls to 0.794 while both listwise losses, blind to a per-query shift of a linear score, are unchanged (passes by
+0.102): that data, not the catalogue's, carried the old record.

CI scale (CI_CONFIG): 40 Adam steps instead of 100; at it: test NDCG@10 NeuralNDCG 0.8957, softmax 0.8899, MSE 0.8907
(NeuralNDCG - MSE = +0.005 < +0.01, seeds 0-2: not reproduced, as the record), 35.5 CPU-s (measured under heavy load;
the full config 56 in the loaded profile).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

import paperlab.losses as pl
from paperlab import models, papers, train
from paperlab.runner import protocol

PAPER_ID = 151
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = ()
CI_CONFIG = {"num_steps": 40}  # the full run (the record): 100


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # the data
  config.num_queries = 500
  config.docs_per_query = 20
  config.num_features = 10
  config.test_fraction = 0.2
  config.query_shift_scale = 0.0  # largest per-direction std of a query-level offset; 0: none (the catalogue)
  config.label_noise = 0.5
  config.thresholds = (0.5, 1.0, 1.5, 2.0)  # latent relevance -> grades 0..4
  config.num_steps = 100
  config.learning_rate = 5e-2
  config.seeds = 3
  config.temperature = 1.0
  config.sinkhorn_iters = 50
  config.train_k = 10
  config.eval_k = 10
  config.softmax_slack = 0.01
  config.mse_margin = 0.01
  return config


def make_data(config):
  """``(features [Q, D, F], grades [Q, D])`` as float32 / int32 numpy arrays."""
  rng = np.random.default_rng(config.seed)
  q, n, f = config.num_queries, config.docs_per_query, config.num_features
  w = rng.normal(size=f)
  w /= np.linalg.norm(w)
  shift_std = np.linspace(0.5, config.query_shift_scale, f) if config.query_shift_scale > 0 else np.zeros(f)
  offsets = rng.normal(size=(q, 1, f)) * shift_std
  docs = rng.normal(size=(q, n, f))
  latent = docs @ w + config.label_noise * rng.normal(size=(q, n))
  grades = np.searchsorted(np.asarray(config.thresholds), latent)
  return (offsets + docs).astype(np.float32), grades.astype(np.int32)


def ndcg_at_k(scores: jax.Array, grades: jax.Array, k: int) -> jax.Array:
  """Exact NDCG@k per query (0 for queries without a relevant document)."""
  gains = jnp.exp2(grades.astype(scores.dtype)) - 1.0
  discounts = jnp.where(jnp.arange(scores.shape[-1]) < k, 1.0 / jnp.log2(jnp.arange(scores.shape[-1]) + 2.0), 0.0)
  ranked = jnp.take_along_axis(gains, jnp.argsort(-scores, axis=-1), axis=-1)
  ideal = -jnp.sort(-gains, axis=-1)
  dcg, idcg = jnp.sum(ranked * discounts, -1), jnp.sum(ideal * discounts, -1)
  return jnp.where(idcg > 0, dcg / jnp.where(idcg > 0, idcg, 1.0), 0.0)


def _losses(config):
  return {
      "neural_ndcg": lambda s, g: pl.neural_ndcg_loss(s, g, temperature=config.temperature,
                                                      sinkhorn_iters=config.sinkhorn_iters, k=config.train_k),
      "softmax": lambda s, g: optax.losses.ranking_softmax_loss(s, g.astype(s.dtype), reduce_fn=None),
      "mse": lambda s, g: jnp.mean((s - g) ** 2, axis=-1),
  }


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  start = time.time()
  x, grades = make_data(config)
  n_test = int(round(config.test_fraction * config.num_queries))
  x_train, g_train = jnp.asarray(x[n_test:]), jnp.asarray(grades[n_test:])
  x_test, g_test = jnp.asarray(x[:n_test]), jnp.asarray(grades[:n_test])
  model_fn = lambda rngs: models.MLP(config.num_features, [], 1, rngs=rngs)

  def test_ndcg(graphdef, state):
    model = nnx.merge(graphdef, state.params, state.model_state)
    return jnp.mean(ndcg_at_k(model(x_test)[..., 0], g_test, config.eval_k))

  losses = _losses(config)

  def fit(arm, hparams, seeds):
    loss = losses[arm.name]
    loss_fn = lambda model, batch, rng: jnp.mean(loss(model(batch[0])[..., 0], batch[1]))
    keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.PRNGKey(config.seed), s))(jnp.asarray(seeds))
    ndcg, metrics = train.fit_full_batch(model_fn, optax.adam(config.learning_rate), loss_fn, (x_train, g_train),
                                         keys, num_steps=config.num_steps, evaluate_fn=test_ndcg)
    ctx.log_curve(f"{arm.name}/train_loss", np.asarray(metrics["loss"]).mean(0), every=max(config.num_steps // 5, 1))
    return {"test_ndcg": np.asarray(ndcg)}

  comparison = protocol.compare([protocol.Arm(n) for n in ("mse", "softmax", "neural_ndcg")], range(config.seeds),
                                fit, validate=lambda out: np.zeros(config.seeds),  # one point per arm
                                test=lambda out: out)
  for name in losses:
    ndcg = comparison[name].test["test_ndcg"]
    ctx.print(f"{name}: test NDCG@{config.eval_k} {ndcg.mean():.4f} (seeds {np.round(ndcg, 4).tolist()})")
  nn_, sm, mse = (comparison[k].mean("test_ndcg") for k in ("neural_ndcg", "softmax", "mse"))
  verdict = comparison.judge(lambda m, b: m["test_ndcg"] >= sm - config.softmax_slack
                             and m["test_ndcg"] >= b["test_ndcg"] + config.mse_margin, method="neural_ndcg",
                             baseline="mse")
  return {
      "claim": {**verdict, "statement": CLAIM, "neural_ndcg": nn_, "softmax": sm, "mse": mse,
                "minus_softmax": nn_ - sm, "minus_mse": nn_ - mse},
      "losses": {name: {k: v.tolist() for k, v in arm.test.items()} for name, arm in comparison.arms.items()},
      "protocol": comparison.to_json(),
      "seconds": time.time() - start,
  }


if __name__ == "__main__":
  import tempfile

  from paperlab.runner import Context

  print(run(get_config(), Context(tempfile.mkdtemp()))["claim"])
