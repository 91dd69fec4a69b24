"""TLDR token-loss dynamic reweighting against repetitive generation (Jiang et al., arXiv:2003.11963),
catalogue [48].

A character-level MLP language model (context of 3 characters, embedding 16, one hidden layer) is trained on
``paperlab.data.char_dataset()`` with plain CE and with TLDR weights ``cos(pi exp(-l)) + 1`` on the per-token
losses. From 200 test-set prompts we decode greedily and measure the 4-gram repetition rate (the fraction of 4-grams
of a continuation that already occurred earlier in it). Seeds are vmapped.

    paperlab run experiments/losses/tldr.py --config.num_steps=4000

Measured at CI scale (2 seeds): repetition rate 0.645 (CE) vs 0.730 (TLDR), train CE 0.78 vs 0.83: TLDR does not
reduce repetition for a context-3 character model, whose greedy decoding loops because of its short context, not
because easy tokens dominate training. The test is an honest strict xfail.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from paperlab import data, losses

PAPER_ID = 48
CLAIM = ("A context-3 character MLP LM trained with TLDR has a greedy-decoded 4-gram repetition rate <= CE's - 0.05 "
         "over 200 prompts (mean over seeds).")

CONTEXT = 3


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 2
  c.num_chars = 100_000
  c.embed = 16
  c.hidden = 128
  c.num_steps = 1500
  c.batch_size = 512
  c.learning_rate = 3e-3
  c.num_prompts = 200
  c.gen_length = 60
  return c


def _windows(ids):
  ids = np.asarray(ids)
  x = np.stack([ids[i:len(ids) - CONTEXT + i] for i in range(CONTEXT)], 1)
  return jnp.asarray(x, jnp.int32), jnp.asarray(ids[CONTEXT:], jnp.int32)


def _init(key, vocab, config):
  k1, k2, k3 = jax.random.split(key, 3)
  return {"emb": jax.random.normal(k1, (vocab, config.embed)),
          "w1": jax.random.normal(k2, (CONTEXT * config.embed, config.hidden)) / jnp.sqrt(CONTEXT * config.embed),
          "b1": jnp.zeros(config.hidden),
          "w2": jax.random.normal(k3, (config.hidden, vocab)) / jnp.sqrt(config.hidden), "b2": jnp.zeros(vocab)}


def _apply(p, ctx):
  h = p["emb"][ctx].reshape(*ctx.shape[:-1], -1)
  return jax.nn.relu(h @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


def _repetition_rate(seq):
  """Fraction of 4-grams in each row that occurred earlier in the same row."""
  grams = jnp.stack([seq[:, i:seq.shape[1] - 3 + i] for i in range(4)], -1)  # [B, G, 4]
  same = jnp.all(grams[:, :, None, :] == grams[:, None, :, :], -1)  # [B, G, G]
  earlier = jnp.tril(jnp.ones(same.shape[1:], bool), k=-1)
  return jnp.mean(jnp.any(same & earlier, axis=-1))


def _train_and_generate(config, key, x, y, prompts, vocab, use_tldr: bool):
  params = _init(key, vocab, config)
  opt = optax.adam(config.learning_rate)

  def loss_fn(p, xb, yb):
    l = optax.losses.softmax_cross_entropy_with_integer_labels(_apply(p, xb), yb)
    return jnp.mean(losses.tldr_weighted_loss(l)) if use_tldr else jnp.mean(l)

  def step(carry, t):
    p, s = carry
    idx = jax.random.randint(jax.random.fold_in(key, t), (config.batch_size,), 0, x.shape[0])
    g = jax.grad(loss_fn)(p, x[idx], y[idx])
    u, s = opt.update(g, s, p)
    return (optax.apply_updates(p, u), s), None

  (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), jnp.arange(config.num_steps))

  def gen(ctx, _):
    nxt = jnp.argmax(_apply(params, ctx), -1)
    return jnp.concatenate([ctx[:, 1:], nxt[:, None]], 1), nxt

  _, out = jax.lax.scan(gen, prompts, None, length=config.gen_length)
  test_ce = jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(_apply(params, x[:2000]), y[:2000]))
  return _repetition_rate(out.T), test_ce


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  text = data.char_dataset(num_chars=config.num_chars)
  vocab = text.tokenizer.vocab_size
  x, y = _windows(text.train)
  xt, _ = _windows(text.test)
  starts = np.random.default_rng(0).choice(xt.shape[0], config.num_prompts, replace=False)
  prompts = xt[starts]
  keys = jax.random.split(jax.random.key(0), config.seeds)
  out = {}
  for name, use in (("ce", False), ("tldr", True)):
    rep, ce = jax.jit(jax.vmap(lambda k: _train_and_generate(config, k, x, y, prompts, vocab, use)))(keys)
    out[name] = {"repetition_rate": float(np.mean(rep)), "train_ce": float(np.mean(ce)),
                 "repetition_per_seed": np.asarray(rep).tolist()}
    ctx.log(0, {f"{name}/repetition_rate": out[name]["repetition_rate"], f"{name}/train_ce": out[name]["train_ce"]})
  passed = out["tldr"]["repetition_rate"] <= out["ce"]["repetition_rate"] - 0.05
  return {"claim": {"passed": bool(passed), "statement": CLAIM, "ce_repetition_rate": out["ce"]["repetition_rate"],
                    "tldr_repetition_rate": out["tldr"]["repetition_rate"]}, "runs": out}
