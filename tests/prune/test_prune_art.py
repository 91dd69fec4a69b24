"""Unit tests of prune.art_train (ART, HyperSparse arXiv:2308.07163) and prune.l1_penalty: exact sparsity, pruned
weights zero after fine-tuning, epoch cap, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from paperlab import prune

RNG = np.random.default_rng(0)
X = RNG.standard_normal((64, 8)).astype(np.float32)
Y = (X[:, :4] @ RNG.standard_normal((4, 3)).astype(np.float32)).argmax(-1)
PARAMS = {"w": (0.3 * RNG.standard_normal((8, 3))).astype(np.float32), "b": np.zeros(3, np.float32)}


def _loss(p, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(x @ p["w"] + p["b"], y).mean()


def _acc(p, x, y):
  return jnp.mean(jnp.argmax(x @ p["w"] + p["b"], -1) == y)


def _art(**kw):
  args = dict(loss_fn=_loss, accuracy_fn=_acc, optimizer=optax.sgd(0.1, momentum=0.9), prune_rate=0.75,
              batch_size=16, warmup_epochs=2, max_art_epochs=3, finetune_epochs=2, lam0=1e-2, eta=1.1)
  args.update(kw)
  return prune.art_train(jax.random.key(0), PARAMS, (X, Y), **args)


def test_art_train_prunes_exactly_and_keeps_pruned_weights_zero():
  out = jax.jit(lambda: _art())()
  assert out.masks["w"].sum() == 6 and bool(out.masks["b"].all())  # 75% of the 24 kernel entries, biases kept
  assert not np.any(np.asarray(out.params["w"])[~np.asarray(out.masks["w"])])
  assert 1 <= int(out.art_epochs) <= 3
  assert 0.0 <= float(out.pruned_train_acc) <= 1.0


def test_l1_penalty_is_the_sum_of_kernel_magnitudes():
  assert float(prune.l1_penalty(PARAMS)) == pytest.approx(float(np.abs(PARAMS["w"]).sum()), rel=1e-6)


def test_art_train_errors():
  with pytest.raises(ValueError, match="regularizer"):
    _art(regularizer="l2")
  with pytest.raises(ValueError, match="batch_size=100 exceeds"):
    _art(batch_size=100)
  with pytest.raises(ValueError, match="max_art_epochs"):
    _art(max_art_epochs=0)
  with pytest.raises(ValueError, match="prune_rate"):
    _art(prune_rate=1.0)
