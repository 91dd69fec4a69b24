"""FedProx vs FedAvg on the paper's Synthetic(1, 1) federated data with 90% stragglers (Li et al., 2020).

Synthetic(alpha, beta) follows Sec. 5.1 of arXiv:1812.06127: device ``k`` draws ``u_k ~ N(0, alpha)``,
``B_k ~ N(0, beta)``, a softmax-regression teacher ``W_k, b_k ~ N(u_k, 1)`` and inputs
``x ~ N(v_k, Sigma)`` with ``v_k ~ N(B_k, 1)`` and ``Sigma_jj = j^-1.2``; labels are the teacher's argmax.
Device sizes follow a power law (log-normal). Each round 10 devices are sampled proportionally to their sizes
and run E local epochs of minibatch SGD on multinomial logistic regression; 90% of them are stragglers that
stop after a random number of epochs in [1, E]. FedAvg drops stragglers; FedProx (mu = 1) aggregates their partial
work and adds the proximal term. The server takes the plain mean of the returned models
(``paperlab.merge.aggregate``).

The catalogue's setting (30 devices, 60-D, 10 classes, 10 devices per round, E = 20, 100 rounds, batch 10, lr 0.01)
with device sizes capped at 400 (the one deviation: uncapped takes ~255 s), 3 seeds (each its own Synthetic(1, 1)
draw and device sampling); the claim is the catalogue's, judged on seed means
(:class:`paperlab.runner.protocol.Comparison`); control: FedAvg passed as the method must fail.

Measured (seeds 0-2, sizes capped at 400): final train loss FedProx 0.611 vs FedAvg 1.289, test accuracy 82.1% vs
65.0% (per seed 82.5/82.4/81.4 vs 69.0/62.8/63.2), loss std over the last 20 rounds 0.026 vs 0.098: reproduces.
Uncapped (the paper's generator, ~255 s): 0.504 vs 1.277, 82.6% vs 72.2%, 0.020 vs 0.090.

CI scale (CI_CONFIG): 40 rounds, device sizes capped at 100; at it: train loss FedProx 0.931 vs FedAvg 1.502, test
accuracy 70.2% vs 51.7%, loss std over the last 8 rounds 0.042 vs 0.070 (seeds 0-2): reproduces, control fails;
~39 CPU-s.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from paperlab import merge, papers
from paperlab.runner import protocol

PAPER_ID = 385
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = (
    "device sizes capped at 400 examples (the generator's log-normal tail reaches 3388 on seed 2, and every client "
    "runs the largest device's number of local steps): uncapped, the 3 seeds take ~255 s on 2 CPU cores, over the "
    "CI budget. Uncapped (--config.max_size=0) the claim was measured to hold as well: final train loss FedProx "
    "0.504 vs FedAvg 1.277, test accuracy 82.6% vs 72.2%, loss std over the last 20 rounds 0.020 vs 0.090",
)

# the test suite's scale (paperlab.runner.config.ci_config); the record is made at the defaults below
CI_CONFIG = {"rounds": 40, "max_size": 100}


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.alpha = 1.0
  c.beta = 1.0
  c.num_devices = 30
  c.dim = 60
  c.num_classes = 10
  c.max_size = 400  # cap on device sizes (0: none, the paper's generator; see DEVIATIONS)
  c.rounds = 100
  c.clients_per_round = 10
  c.local_epochs = 20
  c.batch_size = 10
  c.learning_rate = 0.01
  c.mu = 1.0
  c.straggler_fraction = 0.9
  c.seeds = (0, 1, 2)
  return c


def synthetic(config, seed: int):
  """Synthetic(alpha, beta) of arXiv:1812.06127, Sec. 5.1, as NumPy arrays padded to the largest device."""
  rng = np.random.default_rng(seed)
  k, d, c = config.num_devices, config.dim, config.num_classes
  sizes = rng.lognormal(4, 2, k).astype(int) + 50
  if config.max_size:
    sizes = np.minimum(sizes, config.max_size)
  sigma = np.arange(1, d + 1) ** -1.2
  xs = np.zeros((k, sizes.max(), d), np.float32)
  ys = np.zeros((k, sizes.max()), np.int32)
  for i in range(k):
    u, b = rng.normal(0, np.sqrt(config.alpha)), rng.normal(0, np.sqrt(config.beta))
    w_t, b_t = rng.normal(u, 1, (d, c)), rng.normal(u, 1, c)
    v = rng.normal(b, 1, d)
    x = rng.normal(v, np.sqrt(sigma), (sizes[i], d))
    xs[i, :sizes[i]] = x
    ys[i, :sizes[i]] = np.argmax(x @ w_t + b_t, -1)
  return xs, ys, sizes


def _loss(params, x, y, where=None):
  ce = optax.softmax_cross_entropy_with_integer_labels(x @ params["w"] + params["b"], y)
  return ce.mean() if where is None else jnp.sum(ce * where) / jnp.maximum(jnp.sum(where), 1.0)


def _one_seed(config: ml_collections.ConfigDict, seed: int) -> dict:
  xs_np, ys_np, sizes_np = synthetic(config, seed)
  # 80/20 train/test split per device, as in the paper
  n_train = np.maximum((0.8 * sizes_np).astype(int), 1)
  xs, ys = jnp.asarray(xs_np), jnp.asarray(ys_np)
  n_tr, sizes = jnp.asarray(n_train), jnp.asarray(sizes_np)
  pos = jnp.arange(xs_np.shape[1])[None, :]
  train_mask = (pos < n_tr[:, None]).astype(jnp.float32)
  test_mask = ((pos >= n_tr[:, None]) & (pos < sizes[:, None])).astype(jnp.float32)
  steps_per_epoch = -(-n_train // config.batch_size)
  max_steps = int(config.local_epochs * steps_per_epoch.max())
  spe = jnp.asarray(steps_per_epoch)

  def local(global_params, k, epochs, key, mu):
    obj = merge.prox_loss(lambda p, x, y: _loss(p, x, y), mu)

    def body(p, s):
      idx = jax.random.randint(jax.random.fold_in(key, s), (config.batch_size,), 0, n_tr[k])
      g = jax.grad(obj)(p, global_params, xs[k, idx], ys[k, idx])
      active = s < epochs * spe[k]
      return jax.tree.map(lambda a, b: jnp.where(active, a - config.learning_rate * b, a), p, g), None

    return jax.lax.scan(body, global_params, jnp.arange(max_steps))[0]

  def global_metrics(p):
    per = jax.vmap(lambda x, y, m: (_loss(p, x, y, m), jnp.sum((jnp.argmax(x @ p["w"] + p["b"], -1) == y) * m)))(
        xs, ys, train_mask)
    train_loss = jnp.sum(per[0] * n_tr) / jnp.sum(n_tr)
    correct = jax.vmap(lambda x, y, m: jnp.sum((jnp.argmax(x @ p["w"] + p["b"], -1) == y) * m))(xs, ys, test_mask)
    return train_loss, jnp.sum(correct) / jnp.sum(test_mask)

  def make_round(mu, drop_stragglers):
    def one_round(p, key):
      k_sel, k_str, k_ep, k_loc = jax.random.split(key, 4)
      probs = n_tr / jnp.sum(n_tr)
      chosen = jax.random.choice(k_sel, config.num_devices, (config.clients_per_round,), p=probs)
      straggler = jax.random.uniform(k_str, (config.clients_per_round,)) < config.straggler_fraction
      epochs = jnp.where(straggler, jax.random.randint(k_ep, (config.clients_per_round,), 1,
                                                       config.local_epochs + 1), config.local_epochs)
      clients = jax.vmap(local, in_axes=(None, 0, 0, 0, None))(
          p, chosen, epochs, jax.random.split(k_loc, config.clients_per_round), mu)
      if drop_stragglers:  # FedAvg: only devices that finished all E epochs are averaged
        keep = (~straggler).astype(jnp.float32)
        new = merge.aggregate(clients, keep + 1e-12)
        new = jax.tree.map(lambda a, b: jnp.where(jnp.sum(keep) > 0, a, b), new, p)
      else:
        new = merge.aggregate(clients)
      return new, global_metrics(new)
    return one_round

  init = {"w": jnp.zeros((config.dim, config.num_classes)), "b": jnp.zeros(config.num_classes)}
  keys = jax.random.split(jax.random.key(seed), config.rounds)
  out = {}
  for name, mu, drop in (("fedavg", 0.0, True), ("fedprox", config.mu, False)):
    _, (loss, acc) = jax.jit(lambda p, ks: jax.lax.scan(make_round(mu, drop), p, ks))(init, keys)
    out[name] = {"loss": np.asarray(loss), "acc": np.asarray(acc)}
  return out


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  t0 = time.time()
  seeds = [int(s) for s in config.seeds]
  curves = [_one_seed(config, s) for s in seeds]
  for r in range(0, config.rounds, max(config.rounds // 10, 1)):
    ctx.log(r, {f"{n}_{m}": float(np.mean([c[n][m][r] for c in curves])) for n in curves[0] for m in ("loss", "acc")})
  tail = max(config.rounds // 5, 1)
  per_seed = {n: {"train_loss": np.asarray([c[n]["loss"][-1] for c in curves]),
                  "test_acc": np.asarray([c[n]["acc"][-1] for c in curves]),
                  "loss_std_last": np.asarray([np.std(c[n]["loss"][-tail:]) for c in curves])}
              for n in ("fedavg", "fedprox")}
  comparison = protocol.Comparison({n: protocol.ArmResult(n, {}, [], v) for n, v in per_seed.items()}, tuple(seeds))
  verdict = comparison.judge(
      lambda m, b: (m["train_loss"] < b["train_loss"] and m["test_acc"] >= b["test_acc"] + 0.05
                    and m["loss_std_last"] <= b["loss_std_last"]), method="fedprox", baseline="fedavg")
  fp, fa = comparison["fedprox"].means(), comparison["fedavg"].means()
  if not ctx.quiet:
    for n in ("fedavg", "fedprox"):
      a = comparison[n]
      ctx.print(f"{n:>8s}: final train loss {a.mean('train_loss'):.3f} +- {a.std('train_loss'):.3f}, test acc "
                f"{a.mean('test_acc'):.4f} +- {a.std('test_acc'):.4f}, loss std last {tail} rounds "
                f"{a.mean('loss_std_last'):.3f}")
  return {
      "claim": {**verdict, "statement": CLAIM, "fedprox_train_loss": fp["train_loss"],
                "fedavg_train_loss": fa["train_loss"], "fedprox_test_acc": fp["test_acc"],
                "fedavg_test_acc": fa["test_acc"], "fedprox_loss_std": fp["loss_std_last"],
                "fedavg_loss_std": fa["loss_std_last"]},
      "per_seed": {n: {k: v.tolist() for k, v in d.items()} for n, d in per_seed.items()},
      "seconds": time.time() - t0,
  }
