"""Cost of paperlab.quant's kernels against plain-memory and plain-matmul baselines, all jitted, in the same process.

* ``mx_quantize_<fmt>_vs_read_write``: ``quantize(x, "mx...")`` (block amax, E8M0 scale, element rounding, dense
  packing; called eagerly, i.e. its two jitted programs) of a float32 matrix vs one fused read+write pass over the
  same matrix (``x * 2``), the memory floor of any elementwise quantizer. The ratio says how many plain passes MX
  quantization costs.
* ``dequantize_<fmt>_vs_read_write``: ``QArray.dequantize`` (unpack + decode + scale) vs the same pass.
* ``qdot_<fmt>_vs_bf16_matmul``: weight-only quantized matmul ``paperlab.quant.dot(x, qw)`` (dequantize inside the
  jitted kernel) vs ``x @ w`` with ``x`` and ``w`` in bfloat16 (and a float32 record), same shapes.
* ``df11_decode_vs_copy``: host DFloat11 decode vs ``np.copy`` of the bfloat16 array (host-side both), with the
  measured compression ratio in ``sizes``.
* ``df11_decode_jax_vs_read_write``: the jitted DFloat11 decoder on device vs one jitted read+write pass over the
  bfloat16 array.

The issue gives no numeric targets for these (they are reported as fractions), so no record carries ``target``.

Measured (full sizes: 2048x2048 quantize, (128, 2048) @ (2048, 2048) matmul; 2-core CPU shared with ~7 other jobs,
load average ~16, so single ratios are noisy; two runs): MX quantize 1.3-1.8x a read+write pass for MXFP8, 3.2-4.4x
MXINT8, 3.4-4.7x MXFP4, 4.2-12.8x MXFP6; dequantize 0.7-2.7x (MXFP8), 1.1x (MXINT8), 3.9x (MXFP4), 4.8-5.1x (MXFP6);
weight-only quantized matmul vs bfloat16 matmul: int8 0.7-1.0x, MXFP8 1.1x, MXFP4 1.4-1.9x, int4 g128 2.2-2.4x
(vs float32: 1.1-1.7x, 1.1x, 1.75-2.0x, 2.4x); host DFloat11 decode of 4M weights 2.6 s.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from benchmarks import harness
from paperlab import quant

MX_FORMATS = ("mxfp8_e4m3", "mxfp6_e3m2", "mxfp4_e2m1", "mxint8")  # quick runs take every other one


def _host_time(fn, repeats: int) -> float:
  fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def run(quick: bool = False) -> list[dict]:
  n = 512 if quick else 2048
  m, k, o = (32, 256, 256) if quick else (128, 2048, 2048)
  repeats = 3 if quick else 10
  records = []
  x = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  read_write = jax.jit(lambda a: a * 2.0)
  for fmt in (MX_FORMATS[::2] if quick else MX_FORMATS):
    q = functools.partial(quant.quantize, fmt=fmt, axis=-1)  # eager call: two jitted programs (encode, pack)
    records.append(harness.compare(f"mx_quantize_{fmt}_vs_read_write", lambda q=q: q(x), lambda: read_write(x),
                                   sizes={"shape": [n, n]}, op_name=f"paperlab.quant.quantize({fmt!r})",
                                   baseline_name="jit(x * 2) float32", repeats=repeats))
    qa = q(x)
    deq = jax.jit(lambda a: a.dequantize(jnp.float32))
    records.append(harness.compare(f"dequantize_{fmt}_vs_read_write", lambda qa=qa: deq(qa),
                                   lambda: read_write(x), sizes={"shape": [n, n], "qarray_nbytes": qa.nbytes},
                                   op_name=f"QArray({fmt!r}).dequantize", baseline_name="jit(x * 2) float32",
                                   repeats=repeats))

  kx, kw = jax.random.split(jax.random.key(1))
  xa = jax.random.normal(kx, (m, k), jnp.float32)
  w = jax.random.normal(kw, (k, o), jnp.float32) * 0.02
  mm = jax.jit(lambda a, b: a @ b)
  xb, wb = xa.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
  qdot = jax.jit(quant.dot)
  weights = (("int4_g128", {"fmt": "int4", "group_size": 128}), ("mxfp4_e2m1", {"fmt": "mxfp4_e2m1"}),
             ("int8", {"fmt": "int8"}), ("mxfp8_e4m3", {"fmt": "mxfp8_e4m3"}))
  for fmt, kwargs in (weights[:2] if quick else weights):
    qw = quant.quantize(w, axis=0, **kwargs)
    sizes = {"x": [m, k], "w": [k, o], "qw_nbytes": qw.nbytes, "bf16_w_nbytes": int(wb.nbytes)}
    records.append(harness.compare(f"qdot_{fmt}_vs_bf16_matmul", lambda qw=qw: qdot(xb, qw), lambda: mm(xb, wb),
                                   sizes=sizes, op_name=f"paperlab.quant.dot(x_bf16, {fmt})",
                                   baseline_name="jit(x @ w) bfloat16", repeats=repeats))
    records.append(harness.compare(f"qdot_{fmt}_vs_f32_matmul", lambda qw=qw: qdot(xa, qw), lambda: mm(xa, w),
                                   sizes=sizes, op_name=f"paperlab.quant.dot(x_f32, {fmt})",
                                   baseline_name="jit(x @ w) float32", repeats=repeats))

  wh = (np.asarray(w) * 1.0).astype(ml_dtypes.bfloat16)
  d = quant.df11_encode(wh)
  t_dec = _host_time(lambda: quant.df11_decode(d), max(1, repeats // 4))
  t_copy = _host_time(lambda: np.copy(wh), repeats)
  records.append({"name": "df11_decode_vs_copy", "op": "paperlab.quant.df11_decode (host NumPy)",
                  "baseline": "np.copy (host)", "sizes": {"shape": list(wh.shape), "df11_nbytes": d.nbytes,
                                                          "bf16_nbytes": int(wh.nbytes),
                                                          "size_ratio": d.nbytes / wh.nbytes},
                  "device": harness.device_info(), "op_seconds": t_dec, "baseline_seconds": t_copy,
                  "ratio": t_dec / t_copy})
  dj = jax.device_put(d)
  decode = jax.jit(quant.df11_decode_jax)
  copy = jax.jit(lambda a: a * jnp.bfloat16(1))
  whj = jnp.asarray(wh)
  records.append(harness.compare("df11_decode_jax_vs_read_write", lambda: decode(dj), lambda: copy(whj),
                                 sizes={"shape": list(wh.shape), "size_ratio": d.nbytes / wh.nbytes},
                                 op_name="jit(paperlab.quant.df11_decode_jax)", baseline_name="jit(x * 1) bfloat16",
                                 repeats=repeats))
  return records
