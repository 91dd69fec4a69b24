"""Post-quantization integral and ReQuant's detach (Hu et al., "Identifying Sensitive Weights via Post-quantization
Integral", arXiv:2503.01901), catalogue [40], on DIGITS-MLP at W3 per-channel RTN.

Substrate: the DIGITS-MLP 64-256-256-10 of ``experiments/quant/adaround.py`` (ReLU, Adam 1e-3, 40 epochs, batch
64, scikit-learn digits split 70/15/15 by ``paperlab.runner.digits_splits``), one model per seed; every Dense
kernel quantized weight-only by RTN at 3 bits per output channel (asymmetric min-max grid,
``paperlab.quant.fake_quantize_rtn``), biases in float.

1. The loss change. On a fixed batch of the first 256 training images (the loss is their mean cross-entropy),
   ``dL_true = L(w_hat) - L(w)`` against the sum of the post-quantization integral (:func:`paperlab.quant.pqi`,
   midpoint rule with N = 32 points) and the sum of the second-order Taylor estimate ``g.dw + 1/2 dw.H.dw``
   (:func:`paperlab.quant.taylor_sensitivity`, order 2). Claimed: ``|sum PQI - dL| / dL < 0.05`` and the Taylor
   relative error ``> 0.5``.
2. The detach. ReQuant's step-wise detach (:func:`paperlab.quant.requant`, 4 steps, ``sparse_frac = 0.005`` of
   the model's parameters kept in float, re-quantizing the rest after every step) ranked by ``|PQI|`` (recomputed
   on the current quantized model before every step, the same 256-image batch, N = 32), by ``|w|``, or by the
   ``|Taylor|`` term (recomputed before every step like PQI): every ranking gets the same budget and steps. Metric:
   test cross-entropy. Claimed: the PQI ranking's test loss is below both baselines'. Reported beside it (not
   claimed): the signed ranking ``max(PQI, 0)`` (only weights whose rounding raised the loss).

Arms are compared through :mod:`paperlab.runner.protocol` (3 seeds; nothing is tuned, so every arm has the same
budget: one point; the test split is read once per arm; the claim judged on seed means). Controls that must fail:
the protocol's (magnitude ranking passed as PQI) and a random ranking passed as PQI, with the Taylor sum passed as
the PQI sum.

Measured at the default config (seeds 0-2; per-seed values in ``experiments/records/40.json``):

* loss change on the 256-image batch, N = 32: dL_true per seed 0.00032 / 0.00028 / 0.00058 (W3 per-channel RTN
  costs little here); ``|sum PQI - dL| / dL`` = 0.0002 on seed means (per seed 0.00004, 0.0016, 0.0005): holds;
  second-order Taylor 0.468 (per seed 0.443, 0.464, 0.484): *not* above 0.5 -- the Taylor estimate is off by
  about half, not by orders of magnitude, at this scale.
* test cross-entropy after detaching 0.5% (seed means; per seed in the record): RTN alone 0.1307, by |PQI|
  0.1271, by |w| 0.1340, by |Taylor| 0.1259, random 0.1297 (signed PQI, reported: 0.1305). PQI beats magnitude on
  every seed (0.1185 / 0.1130 / 0.1497 vs 0.1227 / 0.1234 / 0.1558) but not Taylor (0.1161 / 0.1147 / 0.1470:
  PQI lower on seed 1 only), so the detach part fails as well.

Not reproduced: both parts fail at full scale (the Taylor error 0.468 <= 0.5; PQI's detach loss above Taylor's).
Both controls fail, as they must. Full run 26-43 CPU-s (22-75 s wall, by the load of the shared 2 cores).

CI scale (CI_CONFIG: 5 training epochs, N = 16, the signed arm left out); at it: dL_true 0.0007 / 0.0057 / 0.0086,
Taylor error 0.300 on seed means (per seed 0.763, 0.216, 0.317; PQI 0.0004) fails, while the detach part holds
(PQI 0.1467 < Taylor 0.1479 < magnitude 0.1491; RTN 0.1480, random 0.1480): not reproduced, strict xfail;
28 CPU-s (pytest -n 0, load ~5.5 on 2 cores).
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from paperlab import papers, quant
from paperlab.runner import digits_splits, protocol
from paperlab.runner.config import load_experiment

ptq_char = load_experiment(pathlib.Path(__file__).with_name("ptq_char.py"))  # the shared DIGITS-MLP trainer

PAPER_ID = 40
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = (
    "the integral uses N = 32 midpoint points (the catalogue marks the paper's N as unverified, 'e.g. 8-32') on one "
    "batch of 256 training images; the paper's calibration data and N are not in the catalogue",
    "ReQuant: only the step-wise significant-weight detach (4 steps, one global 0.5% budget over all parameters, "
    "biases never detached); the self-adaptive outlier selection is not implemented, the sparse residual is kept "
    "in float32 (paper: FP16)",
    "the Taylor baseline ranks by |g_i dw_i + 1/2 dw_i (H dw)_i| (the per-weight share of the second-order "
    "estimate), recomputed before every detach step like PQI; the magnitude baseline ranks by |w_i|",
)
# the test suite's scale: fewer training epochs and integration points, the reported signed arm left out; the claimed
# arms, controls and seeds are the same
CI_CONFIG = {"epochs": 5, "n_steps": 16, "signed_arm": False}


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.widths = (256, 256)
  c.epochs = 40
  c.batch_size = 64
  c.learning_rate = 1e-3
  c.bits = 3
  c.calib = 256  # the batch the loss, PQI and Taylor are taken on
  c.n_steps = 32  # midpoint points N of the integral
  c.sparse_frac = 0.005
  c.detach_steps = 4
  c.max_pqi_err = 0.05
  c.min_taylor_err = 0.5
  c.signed_arm = True  # report the max(PQI, 0) ranking beside the claim
  return c


_ARMS = ("rtn", "detach_pqi", "detach_magnitude", "detach_taylor", "detach_random")


def _is_kernel(path) -> bool:
  return any(getattr(k, "key", None) == "kernel" for k in path)


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  (x, y), val, test = digits_splits.fit_val_test()
  seeds = np.arange(config.seeds)
  fp_models = ptq_char.train_digits_mlps(x, y, seeds, widths=config.widths, learning_rate=config.learning_rate,
                                         epochs=config.epochs, batch_size=config.batch_size)
  calib = (x[:config.calib], y[:config.calib])
  graphdef = nnx.split(fp_models[0])[0]
  n = config.n_steps

  def loss(params, batch):
    logits = nnx.merge(graphdef, params)(batch[0])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

  loss_jit = jax.jit(loss)

  @jax.jit
  def rtn(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, w: quant.fake_quantize_rtn(w, bits=config.bits) if _is_kernel(path) else w, params)

  def kernels_only(fn):
    return lambda params: jax.tree_util.tree_map_with_path(lambda p, w: fn(w) if _is_kernel(p) else None, params)

  total = lambda tree: float(sum(jnp.sum(v) for v in jax.tree.leaves(tree)))

  def fit(arm, hparams, arm_seeds):
    out = {"val": [], "test": []}
    for seed, m in zip(arm_seeds, fp_models):
      params = nnx.split(m)[1]
      hat = rtn(params)
      if arm.name == "rtn":
        out.setdefault("dl_true", []).append(float(loss_jit(hat, calib) - loss_jit(params, calib)))
        out.setdefault("dl_pqi", []).append(total(quant.pqi(loss, params, hat, calib, n_steps=n)))
        out.setdefault("dl_taylor", []).append(total(quant.taylor_sensitivity(loss, params, hat, calib, order=2)))
      else:
        key = jax.random.key(500 + int(seed))
        sens = {"detach_pqi": lambda ph: quant.pqi(loss, params, ph, calib, n_steps=n),
                "detach_pqi_signed": lambda ph: jax.tree.map(lambda v: jnp.maximum(v, 0.0),
                                                             quant.pqi(loss, params, ph, calib, n_steps=n)),
                "detach_taylor": lambda ph: quant.taylor_sensitivity(loss, params, ph, calib, order=2),
                # static rankings: computed once, from the full-precision weights
                "detach_magnitude": lambda: kernels_only(jnp.abs)(params),
                "detach_random": lambda: kernels_only(lambda w: jax.random.uniform(key, w.shape))(params),
                }[arm.name]
        if arm.name in ("detach_magnitude", "detach_random"):
          sens = sens()
        hat, _ = quant.requant(params, rtn, sens, sparse_frac=config.sparse_frac, steps=config.detach_steps)
      out["val"].append(float(loss_jit(hat, val)))
      out["test"].append(float(loss_jit(hat, test)))
    return {k: np.asarray(v) for k, v in out.items()}

  arms = _ARMS + (("detach_pqi_signed",) if config.signed_arm else ())
  cmp = protocol.compare([protocol.Arm(a) for a in arms], seeds, fit, validate=lambda out: out["val"],
                         maximize=False,
                         test=lambda out: {"loss": out["test"],
                                           **{k: v for k, v in out.items() if k.startswith("dl_")}})
  dl = {k: np.asarray(cmp["rtn"].test[k], dtype=np.float64) for k in ("dl_true", "dl_pqi", "dl_taylor")}
  # relative errors of the seed-mean sums (the claim on seed means) and per seed (reported)
  true_m = float(dl["dl_true"].mean())
  pqi_err = abs(float(dl["dl_pqi"].mean()) - true_m) / true_m
  taylor_err = abs(float(dl["dl_taylor"].mean()) - true_m) / true_m
  losses = {a: cmp[a].mean("loss") for a in arms}

  def claim_fn(pqi_e, taylor_e):
    return lambda m, b: (pqi_e < config.max_pqi_err and taylor_e > config.min_taylor_err
                         and m["loss"] < b["loss"] and m["loss"] < losses["detach_taylor"])

  verdict = cmp.judge(claim_fn(pqi_err, taylor_err), method="detach_pqi", baseline="detach_magnitude")
  # the second control: a random ranking presented as PQI, and the Taylor sum presented as the PQI sum
  random_control = bool(claim_fn(taylor_err, taylor_err)(cmp["detach_random"].means(), cmp["detach_magnitude"].means()))
  verdict["random_control_passes"] = random_control
  verdict["passed"] = bool(verdict["passed"] and not random_control)

  per_seed = lambda a: [float(v) for v in cmp[a].test["loss"]]
  claim = {**verdict, "statement": CLAIM, "n_steps": int(n), "loss_batch": f"first {config.calib} training images",
           "dl_true": [float(v) for v in dl["dl_true"]], "dl_pqi": [float(v) for v in dl["dl_pqi"]],
           "dl_taylor": [float(v) for v in dl["dl_taylor"]],
           "pqi_rel_err": pqi_err, "taylor_rel_err": taylor_err,
           "pqi_rel_err_per_seed": [float(v) for v in np.abs(dl["dl_pqi"] - dl["dl_true"]) / dl["dl_true"]],
           "taylor_rel_err_per_seed": [float(v) for v in np.abs(dl["dl_taylor"] - dl["dl_true"]) / dl["dl_true"]],
           "test_loss": losses, "test_loss_std": {a: cmp[a].std("loss") for a in arms},
           "test_loss_per_seed": {a: per_seed(a) for a in arms}}
  ctx.log(0, {f"{a}/test_loss": v for a, v in losses.items()})
  ctx.log(0, {"pqi_rel_err": pqi_err, "taylor_rel_err": taylor_err})
  ctx.print(f"W{config.bits} RTN, N = {n}: |sum PQI - dL| / dL = {pqi_err:.4f}, 2nd-order Taylor {taylor_err:.4f}; "
            "test loss " + ", ".join(f"{a} {v:.4f}" for a, v in losses.items()))
  ctx.print(json.dumps({k: v for k, v in claim.items() if k not in ("statement", "mean", "std")}, indent=1))
  return {"protocol": cmp.to_json(), "claim": claim}
