"""Oscillation-free quantization (Liu et al., "Oscillation-free Quantization for Low-bit Vision Transformers",
arXiv:2302.02210), catalogue [7]: StatsQ + confidence-guided annealing (CGA) against LSQ at W2 on DIGITS-MLP.

Setting (the catalogue's): DIGITS-MLP 64-256-256-10 (ReLU), trained in float with Adam 1e-3 for 40 epochs (batch 64)
on scikit-learn digits split 70/15/15 (:mod:`paperlab.runner.digits_splits`); then 20 epochs of W2 quantization-aware
training from that float init, every Dense kernel fake-quantized per output channel with signed 2-bit levels
{-2, -1, 0, 1}, activations in float (W2A-FP). Arms, from the same float model of each seed:

* ``lsq``: :func:`paperlab.quant.lsq_quantize` with a learnable step per output channel (LSQ init
  ``2 mean|w| / sqrt(Q_P)``, LSQ's gradient scale), steps trained with the weights;
* ``statsq_cga``: :func:`paperlab.quant.statsq_quantize` (the step is the same statistic recomputed every step, no
  parameter) and, over the last ``cga_fraction`` of the steps, CGA: at every step the weights whose latent value is
  far from a rounding boundary (:func:`paperlab.quant.cga_freeze_mask`, confidence >= 0.4) are frozen for the rest
  of training (their Adam updates zeroed).

Both arms use Adam with a cosine learning rate to 0 over the 20 epochs and the same 3-point learning-rate grid, chosen
on validation accuracy. Oscillations are tracked at every step with :func:`paperlab.quant.oscillation_update`
(Nagel et al., arXiv:2203.11086: EMA momentum 0.01 of "the integer level changed opposite to its previous change");
a weight oscillates if its frequency exceeds 0.005 at the end of training (the EMA spans the last ~3.6 epochs at 19
steps per epoch: the "final-epoch" reading). Claim (on seed means): oscillating fraction of statsq_cga <= 0.5 x
LSQ's and test accuracy >= LSQ's - 0.3pt; control: LSQ passed as the method.

Measured at the default config (seeds 0-2, mean +- std over seeds; record experiments/records/7.json): float model
0.9665 test accuracy; both arms chose lr 1e-4 (the grid's lower end). LSQ: accuracy 0.9616 +- 0.0018, oscillating
fraction 0.00074 +- 0.00006; StatsQ+CGA: accuracy 0.9653 +- 0.0035 (+0.37pt: the accuracy part holds), oscillating
fraction 0.00072 +- 0.00010 with 60.3% of the weights frozen by CGA. The claim does not reproduce: StatsQ+CGA
oscillates as much as LSQ (ratio 0.97, claim <= 0.5). Earlier runs on the 2-point grid {3e-4, 1e-3} (both chose 3e-4):
0.00145 vs 0.00136 (ratio 1.07); with CGA over the last 50% of the steps at confidence >= 0.2 (80% frozen) 0.00141;
at hidden width 128: 0.0025 vs 0.0040 (ratio 0.64). A possible cause, not measured: a frozen weight can still change
level because StatsQ's step follows mean|W_c|, which the unfrozen weights move.
"""

from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from paperlab import data, papers, quant
from paperlab._tree import path_str
from paperlab.runner import digits_splits, protocol
from paperlab.runner.config import load_experiment

ptq_char = load_experiment(pathlib.Path(__file__).with_name("ptq_char.py"))  # the shared DIGITS-MLP substrate

PAPER_ID = 7
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = (
    "StatsQ's step is LSQ's initialization 2 mean|W_c| / sqrt(Q_P) recomputed every step (the catalogue marks the "
    "exact constant as unverified); QKR (query/key reparametrization) is ViT-specific and not used on an MLP",
    "CGA: over the last 25% of the steps, every step freezes the weights of confidence >= 0.4 "
    "(2 |w/s - floor(w/s) - 1/2|) for good; the paper's threshold schedule is not in the catalogue",
    "both arms train with Adam and a cosine learning rate to 0 (the paper's schedule) on a 3-point learning-rate "
    "grid {1e-4, 3e-4, 1e-3} chosen on validation accuracy (the catalogue gives no optimizer for the QAT phase)",
    "'final-epoch oscillating fraction' is read as the fraction of kernel weights whose oscillation-frequency EMA "
    "(momentum 0.01, threshold 0.005) exceeds the threshold after the last step",
    "every Dense kernel, the first and last included, is quantized to W2 per output channel; biases stay float",
)


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.widths = (256, 256)
  c.fp_epochs = 40
  c.fp_learning_rate = 1e-3
  c.batch_size = 64
  c.bits = 2
  c.qat_epochs = 20
  c.learning_rates = (1e-4, 3e-4, 1e-3)
  c.cga_fraction = 0.25
  c.cga_threshold = 0.4
  c.momentum = 0.01
  c.osc_threshold = 0.005
  return c


@functools.lru_cache(maxsize=4)
def fp_digits_mlps(seeds: tuple[int, ...], widths: tuple[int, ...], learning_rate: float, epochs: int,
                   batch_size: int) -> tuple:
  """ptq_char's float DIGITS-MLPs on digits_splits' fit split, memoized: the QAT reproductions (this one,
  efficientqat.py, qalora.py) start from the same float models, so one process trains (and compiles) them once.
  The models are shared: callers must not modify them."""
  (x, y), _, _ = digits_splits.fit_val_test()
  return tuple(ptq_char.train_digits_mlps(x, y, np.asarray(seeds), widths=widths, learning_rate=learning_rate,
                                          epochs=epochs, batch_size=batch_size))


def _kernels(params) -> list[str]:
  return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0] if path_str(p).endswith("kernel")]


def _map_kernels(fn, params, *rest):
  """``fn(path, w, *rest_leaves)`` on kernel leaves, identity elsewhere (``rest`` are ``{path: leaf}`` dicts)."""
  return jax.tree_util.tree_map_with_path(
      lambda p, w: fn(path_str(p), w, *(r[path_str(p)] for r in rest)) if path_str(p).endswith("kernel") else w,
      params)


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  c = config
  (x, y), val, test = digits_splits.fit_val_test()
  seeds = np.arange(c.seeds)
  fp_models = fp_digits_mlps(tuple(int(s) for s in seeds), tuple(c.widths), float(c.fp_learning_rate),
                             int(c.fp_epochs), int(c.batch_size))
  graphdef = nnx.split(fp_models[0])[0]
  fp_params = jax.tree.map(lambda *a: jnp.stack(a), *[nnx.split(m)[1] for m in fp_models])
  paths = _kernels(fp_params)
  bits = c.bits
  qn, qp = 2 ** (bits - 1), 2 ** (bits - 1) - 1
  steps = c.qat_epochs * (x.shape[0] // c.batch_size)
  cga_start = int(round((1.0 - c.cga_fraction) * steps))

  def statsq_step(w):
    s = quant.lsq_init_step(w, bits=bits, axis=0)
    return jnp.where(s > 0, s, 1.0)

  def quantized(params, steps_, method):
    if method == "lsq":
      return _map_kernels(lambda p, w, s: quant.lsq_quantize(w, s, bits=bits), params, steps_)
    return _map_kernels(lambda p, w: quant.statsq_quantize(w, bits=bits, axis=0), params)

  def levels(params, steps_, method):
    def one(p):
      w = _get(params, p)
      s = steps_[p] if method == "lsq" else statsq_step(w)
      return jnp.clip(jnp.round(w / s), -qn, qp)
    return {p: one(p) for p in paths}

  def scales(params, steps_, method):
    return {p: steps_[p] if method == "lsq" else statsq_step(_get(params, p)) for p in paths}

  def logits(params, xs):
    return nnx.merge(graphdef, params)(xs)

  def fit_one(params, key, lr, method):
    steps_ = {p: quant.lsq_init_step(_get(params, p), bits=bits, axis=0) for p in paths}
    tree = {"w": params, "s": steps_}
    tx = optax.adam(optax.cosine_decay_schedule(lr, steps))

    def loss_fn(tree, batch):
      xs, ys = batch
      out = logits(quantized(tree["w"], tree["s"], method), xs)
      return optax.softmax_cross_entropy_with_integer_labels(out, ys).mean()

    osc = {p: quant.oscillation_init(q) for p, q in levels(params, steps_, method).items()}
    frozen = {p: jnp.zeros(_get(params, p).shape, bool) for p in paths}
    data_key = jax.random.fold_in(key, 1)

    def body(carry, t):
      tree, opt, osc, frozen = carry
      g = jax.grad(loss_fn)(tree, data.batch_at((x, y), t, data_key, c.batch_size))
      upd, opt = tx.update(g, opt, tree)
      if method == "statsq_cga":
        s_now = scales(tree["w"], tree["s"], method)
        in_phase = t >= cga_start
        frozen = {p: frozen[p] | (in_phase & quant.cga_freeze_mask(_get(tree["w"], p), s_now[p], c.cga_threshold))
                  for p in paths}
        upd = {"w": _map_kernels(lambda p, u, f: jnp.where(f, 0.0, u), upd["w"], frozen), "s": upd["s"]}
      tree = optax.apply_updates(tree, upd)
      lv = levels(tree["w"], tree["s"], method)
      osc = {p: quant.oscillation_update(lv[p], osc[p], momentum=c.momentum) for p in paths}
      return (tree, opt, osc, frozen), None

    (tree, _, osc, frozen), _ = jax.lax.scan(body, (tree, tx.init(tree), osc, frozen), jnp.arange(steps))
    qparams = quantized(tree["w"], tree["s"], method)
    n = sum(osc[p].frequency.size for p in paths)
    osc_frac = sum(jnp.sum(osc[p].frequency > c.osc_threshold) for p in paths) / n
    frozen_frac = sum(jnp.sum(frozen[p]) for p in paths) / n
    acc = {k: jnp.mean(jnp.argmax(logits(qparams, s[0]), -1) == s[1]) for k, s in (("val", val), ("test", test))}
    return {**acc, "osc_frac": osc_frac, "frozen_frac": frozen_frac}

  runners = {m: jax.jit(jax.vmap(lambda p, k, lr, m=m: fit_one(p, k, lr, m), in_axes=(0, 0, None)))
             for m in ("lsq", "statsq_cga")}
  keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(s), 7))(jnp.asarray(seeds))

  def fit(arm, hparams, seeds_):
    out = runners[arm.name](fp_params, keys, jnp.float32(hparams["lr"]))
    return {k: np.asarray(v, np.float64) for k, v in out.items()}

  grid = [{"lr": lr} for lr in c.learning_rates]
  cmp = protocol.compare([protocol.Arm("lsq", grid), protocol.Arm("statsq_cga", grid)], seeds, fit,
                         validate=lambda out: out["val"],
                         test=lambda out: {"accuracy": out["test"], "osc_frac": out["osc_frac"],
                                           "frozen_frac": out["frozen_frac"]})
  verdict = cmp.judge(lambda m, b: m["osc_frac"] <= 0.5 * b["osc_frac"] and m["accuracy"] >= b["accuracy"] - 0.003,
                      method="statsq_cga", baseline="lsq")
  fp_acc = np.mean([float(ptq_char.accuracy(graphdef, nnx.split(m)[1], *test)) for m in fp_models])
  for step, name in enumerate(("lsq", "statsq_cga")):
    r = cmp[name]
    ctx.log(step, {f"{name}/{k}": v for k, v in r.means().items()})
    ctx.print(f"{name} (lr {r.chosen['lr']}): test acc {r.mean('accuracy'):.4f} +- {r.std('accuracy'):.4f}, "
              f"oscillating {r.mean('osc_frac'):.5f} +- {r.std('osc_frac'):.5f}, frozen {r.mean('frozen_frac'):.3f}")
  ctx.print(f"float model: test acc {fp_acc:.4f}")
  return {
      "protocol": cmp.to_json(),
      "claim": {
          "statement": CLAIM,
          "passed": bool(verdict["passed"]), "holds": bool(verdict["holds"]),
          "control_passes": bool(verdict["control_passes"]),
          "accuracy": {n: cmp[n].mean("accuracy") for n in cmp.arms},
          "accuracy_std": {n: cmp[n].std("accuracy") for n in cmp.arms},
          "oscillating_fraction": {n: cmp[n].mean("osc_frac") for n in cmp.arms},
          "oscillating_fraction_std": {n: cmp[n].std("osc_frac") for n in cmp.arms},
          "frozen_fraction_statsq_cga": cmp["statsq_cga"].mean("frozen_frac"),
          "chosen_lr": {n: cmp[n].chosen["lr"] for n in cmp.arms},
          "fp_accuracy": float(fp_acc),
      },
  }


def _get(tree, path: str):
  node = tree
  for k in path.split("/"):
    node = node[int(k)] if k.isdigit() and int(k) in node else node[k]
  return node
