"""Vmapped train step over 8 trials vs 8 jitted steps in a Python loop (same process)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from benchmarks import harness
from paperlab import data, train
from paperlab.models import MLP


def run(quick: bool = False) -> list[dict]:
  trials, width = (4, 64) if quick else (8, 256)
  ds = data.digits()
  batch = (jnp.asarray(ds.x_train[:128]), jnp.asarray(ds.y_train[:128]))
  opt = optax.adam(1e-3)
  graphdef, init = train.make_init(lambda rngs: MLP(64, [width, width], 10, rngs=rngs), opt)
  step = jax.jit(train.make_train_step(graphdef, train.classification_loss, opt))
  vstep = jax.jit(jax.vmap(train.make_train_step(graphdef, train.classification_loss, opt), in_axes=(0, None, 0)))
  keys = jax.random.split(jax.random.key(0), trials)
  stacked = jax.vmap(init)(keys)
  singles = [init(k) for k in keys]
  return [harness.compare(
      "train_step_vmap", lambda: vstep(stacked, batch, keys), lambda: [step(s, batch, k) for s, k in zip(singles, keys)],
      sizes={"trials": trials, "width": width, "batch": 128}, op_name=f"vmap({trials})",
      baseline_name=f"{trials} x jit", repeats=3 if quick else 20)]
