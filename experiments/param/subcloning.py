"""Weight subcloning: a small transformer initialized from a larger trained one trains faster than from a random
init (Samragh et al., 2023, "Weight subcloning: direct initialization of transformers using larger pretrained
ones", arXiv:2312.09299), catalogue [163].

Data: sequences of a fixed random second-order Markov chain over 16 tokens (next-token logits ``3 N(0, 1)`` per
pair of previous tokens), 16 tokens long (17 with the target); 4096 training sequences, 256 validation and 256
test sequences. A teacher ``CharTransformer`` (4 blocks, d=64, 4 heads, MLP ratio 4) is trained per seed (Adam
3e-3, batch 32, 150 steps). The student (2 blocks, d=32, 2 heads of the teacher's size 16, MLP ratio 4) is initialized by
:func:`paperlab.param.subclone` (importances from :func:`paperlab.param.transformer_importance` on 64 training
sequences; the first and last blocks kept, LayerNorm gains times ``sqrt(2)``) or by Flax's default random init,
then trained 200 steps (Adam, batch 32). Both arms go through :mod:`paperlab.runner.protocol` with the same
learning-rate grid (``{3e-3}``: with ``{1e-3, 3e-3}`` both arms chose 3e-3, and one point keeps the
CI cost at ~37 CPU-s) chosen on the validation loss at step 200, 3 seeds, test read once per arm. The
claim: the test loss at step 200 of the subcloned student is below 0.9 times the random init's. Control: the
random arm in the subcloned arm's place must fail.

Measured (seeds 0-2, CPU): teachers' test loss 1.779; after 200 steps the subcloned student reaches test loss 1.575
vs random init 1.900 (ratio 0.829 < 0.9; before training 2.99 vs 3.21). Reproduced. An earlier run with a
400-step teacher on 32-token sequences and the two-point grid gave 1.323 vs 1.810 (ratio 0.731).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from paperlab import papers, param
from paperlab.models import CharTransformer
from paperlab.runner import protocol

PAPER_ID = 163
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = ()


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.vocab = 16
  c.seq_len = 16
  c.num_train, c.num_val, c.num_test = 4096, 256, 256
  c.teacher = ml_collections.ConfigDict(dict(d_model=64, num_layers=4, num_heads=4, steps=150, learning_rate=3e-3))
  c.student = ml_collections.ConfigDict(dict(d_model=32, num_layers=2, num_heads=2))
  c.batch_size = 32
  c.steps = 200
  c.learning_rates = (3e-3,)
  c.calibration = 64
  return c


def markov_sequences(key: jax.Array, n: int, length: int, vocab: int) -> jax.Array:
  """``n`` sequences of a fixed random second-order Markov chain (the chain is drawn from key 0)."""
  logits = 3.0 * jax.random.normal(jax.random.key(0), (vocab, vocab, vocab))

  def one(k):
    k0, ks = jax.random.split(k)
    start = jax.random.randint(k0, (2,), 0, vocab)

    def step(prev, kk):
      nxt = jax.random.categorical(kk, logits[prev[0], prev[1]])
      return jnp.stack([prev[1], nxt]), nxt

    return jnp.concatenate([start, jax.lax.scan(step, start, jax.random.split(ks, length - 2))[1]])

  return jax.vmap(one)(jax.random.split(key, n))


def _lm_loss(model, tokens):
  logits = model(tokens[:, :-1])
  return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


def _trainer(graphdef, rest, tx, data, batch_size, steps):
  def loss(params, tokens):
    return _lm_loss(nnx.merge(graphdef, params, rest), tokens)

  def train(params, key):
    def body(carry, k):
      p, o = carry
      batch = data[jax.random.randint(k, (batch_size,), 0, data.shape[0])]
      value, grads = jax.value_and_grad(loss)(p, batch)
      updates, o = tx.update(grads, o, p)
      return (optax.apply_updates(p, updates), o), value
    (params, _), losses = jax.lax.scan(body, (params, tx.init(params)), jax.random.split(key, steps))
    return params, losses

  return train, loss


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  c = config
  seqs = markov_sequences(jax.random.key(1), c.num_train + c.num_val + c.num_test, c.seq_len + 1, c.vocab)
  x_train, x_val, x_test = (seqs[:c.num_train], seqs[c.num_train:c.num_train + c.num_val],
                            seqs[c.num_train + c.num_val:])
  t_fn = lambda rngs: CharTransformer(c.vocab, c.teacher.d_model, c.teacher.num_layers, c.teacher.num_heads,
                                      c.seq_len, rngs=rngs)
  s_fn = lambda rngs: CharTransformer(c.vocab, c.student.d_model, c.student.num_layers, c.student.num_heads,
                                      c.seq_len, rngs=rngs)
  t_graphdef, _, t_rest = nnx.split(nnx.eval_shape(lambda: t_fn(nnx.Rngs(0))), nnx.Param, ...)
  s_graphdef, _, s_rest = nnx.split(nnx.eval_shape(lambda: s_fn(nnx.Rngs(0))), nnx.Param, ...)
  s_shapes = param.param_shapes(nnx.eval_shape(lambda: s_fn(nnx.Rngs(0))))
  t_train, t_loss = _trainer(t_graphdef, t_rest, optax.adam(c.teacher.learning_rate), x_train, c.batch_size,
                             c.teacher.steps)
  init_params = lambda fn, key: nnx.to_pure_dict(nnx.state(fn(nnx.Rngs(key)), nnx.Param))

  @jax.jit
  @jax.vmap
  def teachers(key):
    params, _ = t_train(init_params(t_fn, key), jax.random.fold_in(key, 1))
    model = nnx.merge(t_graphdef, params, t_rest)
    return params, param.transformer_importance(model, x_train[:c.calibration, :-1]), t_loss(params, x_test)

  @jax.jit
  @functools.partial(jax.vmap, in_axes=(0, 0, None))
  def trial(start, key, learning_rate):
    # one compiled program for both arms and every learning rate (the rate is traced)
    s_train, s_loss = _trainer(s_graphdef, s_rest, optax.adam(learning_rate), x_train, c.batch_size, c.steps)
    params, losses = s_train(start, jax.random.fold_in(key, 3))
    return {"val_loss": s_loss(params, x_val), "test_loss": s_loss(params, x_test),
            "init_test_loss": s_loss(start, x_test)}, losses

  cache = {}

  def fit(arm, hparams, seeds):
    keys = jax.vmap(jax.random.key)(jnp.asarray(seeds))
    if "teachers" not in cache:
      cache["teachers"] = teachers(keys)
    t_params, importance, _ = cache["teachers"]
    if arm.name in cache:  # the arm's starting points, shared by its learning rates
      starts = cache[arm.name]
    elif arm.name == "subclone":
      starts = [param.subclone(jax.tree.map(lambda a, i=i: a[i], t_params), s_shapes,
                               jax.tree.map(lambda a, i=i: a[i], importance), num_heads=c.teacher.num_heads)
                for i in range(len(seeds))]
      starts = cache[arm.name] = jax.tree.map(lambda *a: jnp.stack(a), *starts)
    else:  # one jitted program (an eager vmap compiles every operation of the initializers)
      starts = cache[arm.name] = jax.jit(jax.vmap(lambda k: init_params(s_fn, jax.random.fold_in(k, 2))))(keys)
    out, losses = trial(starts, keys, jnp.float32(hparams["learning_rate"]))
    losses = np.asarray(losses).mean(axis=0)
    for i in range(0, c.steps, 10):
      ctx.log(i, {f"{arm.name}/lr{hparams['learning_rate']:g}/train_loss": float(losses[i])})
    return jax.tree.map(np.asarray, out)

  grid = [{"learning_rate": lr} for lr in c.learning_rates]
  comparison = protocol.compare([protocol.Arm("subclone", grid), protocol.Arm("random", grid)], range(c.seeds), fit,
                                validate=lambda out: out["val_loss"], maximize=False,
                                test=lambda out: {"test_loss": out["test_loss"],
                                                  "init_test_loss": out["init_test_loss"]})
  for name in ("subclone", "random"):
    ctx.print(f"{name}: lr {comparison[name].chosen}, test loss at step {c.steps} "
              f"{comparison[name].mean('test_loss'):.4f} (init {comparison[name].mean('init_test_loss'):.4f})")
  verdict = comparison.judge(lambda m, b: m["test_loss"] < 0.9 * b["test_loss"], method="subclone",
                             baseline="random")
  teacher_loss = float(np.mean(np.asarray(cache["teachers"][2])))
  ratio = comparison["subclone"].mean("test_loss") / comparison["random"].mean("test_loss")
  results = {name: {k: v.tolist() for k, v in arm.test.items()} for name, arm in comparison.arms.items()}
  results["protocol"] = comparison.to_json()
  results["claim"] = {**verdict, "statement": CLAIM, "loss_ratio": float(ratio), "teacher_test_loss": teacher_loss,
                      **{f"test_loss_{n}": comparison[n].mean("test_loss") for n in ("subclone", "random")}}
  ctx.print(f"teacher test loss {teacher_loss:.4f}; ratio subclone/random {ratio:.3f}")
  return results
