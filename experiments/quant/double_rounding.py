"""Double Rounding with ALRS (Huang et al., "Nearly Lossless Adaptive Bit Switching", arXiv:2502.01199), catalogue
[528], on DIGITS-MLP.

Setting: an MLP 64-128-128-10 (ReLU) trained in float (Adam 1e-3, 30 epochs, batch 64) on scikit-learn digits
(fit / validation / test 70/15/15, :mod:`paperlab.runner.digits_splits`), then fine-tuned with quantized weights
(every Dense kernel, per output channel, signed LSQ grid; biases and activations in float) for 15 epochs, Adam 1e-3
on the weights and the steps. Arms:

* ``joint`` (the method): one model, INT8 steps shared by all precisions, the summed loss over {8, 6, 4, 2} bits
  with every precision derived by double rounding (:func:`paperlab.quant.multi_bit_qat_grads`), ALRS
  (:func:`paperlab.quant.scale_by_alrs`) before Adam; evaluated at each bit width by switching the stored codes.
* ``separate`` (the baseline): four models, each LSQ-QAT at one bit width (:func:`paperlab.quant.lsq_quantize`
  with its own LSQ init), the same steps and optimizer.
* ``switch8`` (control, "a method that does nothing"): LSQ-QAT at 8 bits only, then switched by double rounding.

Claim (catalogue): the switched 8/6/4-bit models within 0.5pt of the separately trained ones and 2-bit within 3pt
(test accuracy, seed means over 3 seeds; 270 test images, one image is 0.37pt); the control must fail it.

Measured at the default config (seeds 0-2, test accuracy mean +- std; record experiments/records/528.json):

| arm | W8 | W6 | W4 | W2 |
|---|---|---|---|---|
| fp (no quantization) | 0.9678 | 0.9678 | 0.9678 | 0.9678 |
| separate (4 LSQ models) | 0.9690 +- 0.0035 | 0.9740 +- 0.0053 | 0.9690 +- 0.0076 | 0.9690 +- 0.0046 |
| joint (one INT8 model, switched) | 0.9678 +- 0.0046 | 0.9690 +- 0.0018 | 0.9665 +- 0.0030 | 0.9467 +- 0.0063 |
| switch8 (control) | 0.9690 +- 0.0035 | 0.9665 +- 0.0053 | 0.9095 +- 0.0018 | 0.1053 +- 0.0063 |

joint - separate: -0.12 / -0.50 / -0.25 / -2.23pt: the claim holds (W6 at the edge of its 0.5pt tolerance);
the control fails (W4 -5.9pt, W2 collapses).
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from paperlab import data, papers, quant
from paperlab.runner import digits_splits, protocol

PAPER_ID = 528
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = (
    "weights only: activations stay in float (the paper quantizes weights and activations at each precision)",
    "ALRS rule: the shared step's gradient from the b-bit loss is multiplied by 2^(b - 8) (the inverse of the "
    "amplification s_b = s_8 2^(8 - b)); the catalogue marks the paper's exact rule unverified",
    "no tuning grid: every arm trains at one point (Adam 1e-3 for weights and steps, 15 fine-tuning epochs from the "
    "same float model) so the run fits the CI budget; MLP widths 128 (catalogue DIGITS-MLP: 256)",
    "digits split 70/15/15 by paperlab.runner.digits_splits",
)
BITS = (8, 6, 4, 2)


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.widths = (128, 128)
  c.fp_epochs = 30
  c.qat_epochs = 15
  c.batch_size = 64
  c.learning_rate = 1e-3
  c.claim = ml_collections.ConfigDict(dict(tol_high=0.005, tol_2bit=0.03))
  return c


def _init(key, widths):
  sizes = (64,) + tuple(widths) + (10,)
  keys = jax.random.split(key, len(sizes) - 1)
  return {f"l{i}": {"kernel": jax.random.normal(k, (a, b)) * jnp.sqrt(2.0 / a), "bias": jnp.zeros((b,))}
          for i, (k, a, b) in enumerate(zip(keys, sizes[:-1], sizes[1:]))}


def _logits(params, x):
  n = len(params)
  for i in range(n):
    x = x @ params[f"l{i}"]["kernel"] + params[f"l{i}"]["bias"]
    if i < n - 1:
      x = jax.nn.relu(x)
  return x


def _ce(params, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(_logits(params, x), y).mean()


def _kernel_paths(params):
  return [f"l{i}/kernel" for i in range(len(params))]


def _init_steps(params, bits):
  return {p: quant.lsq_init_step(params[p.split("/")[0]]["kernel"], bits=bits, axis=0) for p in _kernel_paths(params)}


def _train(tree, grad_fn, tx, xy, key, steps, batch_size):
  def body(carry, s):
    tree, opt = carry
    batch = data.batch_at(xy, s, key, batch_size)
    g = grad_fn(tree, batch)
    upd, opt = tx.update(g, opt, tree)
    return (optax.apply_updates(tree, upd), opt), None

  (tree, _), _ = jax.lax.scan(body, (tree, tx.init(tree)), jnp.arange(steps))
  return tree


@functools.partial(jax.jit, static_argnames=("fp_steps", "batch_size", "widths", "lr"))
def _fit_fp(keys, xy, *, fp_steps, batch_size, widths, lr):
  """Per seed (vmapped): the float model every arm starts from (trained once, shared by the arms' QAT programs)."""

  def one(key):
    return _train(_init(key, widths), lambda p, b: jax.grad(_ce)(p, *b), optax.adam(lr), xy,
                  jax.random.fold_in(key, 1), fp_steps, batch_size)

  return jax.vmap(one)(keys)


@functools.partial(jax.jit, static_argnames=("arm", "bits", "qat_steps", "batch_size", "lr"))
def _fit_qat(fp_params, keys, xy, *, arm, bits, qat_steps, batch_size, lr):
  """Per seed (vmapped): the arm's QAT from the seed's float model; returns ``(params, steps)``."""

  def one(params, key):
    qkey = jax.random.fold_in(key, 2)
    if arm == "fp":
      return params, _init_steps(params, 8)
    if arm == "joint":
      tree = {"params": params, "steps": _init_steps(params, 8)}
      grad_fn = lambda t, b: quant.multi_bit_qat_grads(_ce, t["params"], t["steps"], *b, bit_set=BITS)[1]
      tx = optax.chain(quant.scale_by_alrs(BITS), optax.adam(lr))
    else:  # one precision, LSQ (double_rounding_quantize at bits == bits_hi is lsq_quantize)
      tree = {"params": params, "steps": _init_steps(params, bits)}
      grad_fn = lambda t, b: jax.grad(
          lambda t: _ce(quant.double_rounding_params(t["params"], t["steps"], bits, bits_hi=bits), *b))(t)
      tx = optax.adam(lr)
    tree = _train(tree, grad_fn, tx, xy, qkey, qat_steps, batch_size)
    return tree["params"], tree["steps"]

  return jax.vmap(one)(fp_params, keys)


@functools.partial(jax.jit, static_argnames=("bits", "bits_hi"))
def _accuracy(params, steps, x, y, *, bits, bits_hi):
  def one(p, s):
    q = p if bits is None else quant.double_rounding_params(p, s, bits, bits_hi=bits_hi)
    return jnp.mean(jnp.argmax(_logits(q, x), -1) == y)
  return jax.vmap(one)(params, steps)


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  (x, y), val, test = digits_splits.fit_val_test()
  splits = {"val": val, "test": test}
  seeds = np.arange(config.seeds)
  keys = jax.vmap(jax.random.key)(jnp.asarray(seeds))
  per_epoch = x.shape[0] // config.batch_size
  fp_params = _fit_fp(keys, (x, y), fp_steps=config.fp_epochs * per_epoch, batch_size=config.batch_size,
                      widths=tuple(config.widths), lr=float(config.learning_rate))
  common = dict(qat_steps=config.qat_epochs * per_epoch, batch_size=config.batch_size, lr=float(config.learning_rate))

  def fit(arm, hparams, seeds):
    out = {"val": [], **{f"acc_w{b}": [] for b in BITS}}
    if arm.name == "separate":  # one model per precision
      for b in BITS:
        p, s = _fit_qat(fp_params, keys, (x, y), arm="lsq", bits=b, **common)
        out[f"acc_w{b}"] = _accuracy(p, s, *test, bits=b, bits_hi=b)
        out["val"].append(_accuracy(p, s, *val, bits=b, bits_hi=b))
    else:
      qat_arm = {"joint": "joint", "switch8": "lsq", "fp": "fp"}[arm.name]
      p, s = _fit_qat(fp_params, keys, (x, y), arm=qat_arm, bits=8, **common)
      for b in BITS:
        q_bits = None if arm.name == "fp" else b
        out[f"acc_w{b}"] = _accuracy(p, s, *splits["test"], bits=q_bits, bits_hi=8)
        out["val"].append(_accuracy(p, s, *splits["val"], bits=q_bits, bits_hi=8))
    out["val"] = np.mean(np.stack([np.asarray(v) for v in out["val"]]), axis=0)
    return {k: np.asarray(v) for k, v in out.items()}

  names = ["fp", "separate", "joint", "switch8"]
  comparison = protocol.compare([protocol.Arm(n) for n in names], seeds, fit, validate=lambda out: out["val"],
                                test=lambda out: {k: v for k, v in out.items() if k != "val"})
  sep = comparison["separate"].means()
  tol = {b: config.claim.tol_2bit if b == 2 else config.claim.tol_high for b in BITS}
  # the claim: every switched precision of the joint model within tol_b of the separately trained model
  verdict = comparison.judge(lambda m, b: all(m[f"acc_w{k}"] >= sep[f"acc_w{k}"] - tol[k] for k in BITS),
                             method="joint", baseline="switch8")
  acc = {n: comparison[n].means() for n in names}
  for n in names:
    ctx.print(f"{n}: " + ", ".join(f"w{b} {acc[n][f'acc_w{b}']:.4f} +- {comparison[n].std(f'acc_w{b}'):.4f}"
                                   for b in BITS))
  ctx.log(0, {f"{n}/test_acc_w{b}": acc[n][f"acc_w{b}"] for n in names for b in BITS})
  claim = {**verdict, "statement": CLAIM, "accuracy": acc,
           "accuracy_std": {n: {k: comparison[n].std(k) for k in acc[n]} for n in names},
           "joint_minus_separate": {b: acc["joint"][f"acc_w{b}"] - sep[f"acc_w{b}"] for b in BITS},
           "tolerance": tol}
  ctx.print(json.dumps({k: v for k, v in claim.items() if k not in ("statement", "mean", "std")}, indent=1))
  return {"protocol": {"digits": comparison.to_json()}, "claim": claim}
