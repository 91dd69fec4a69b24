"""Logits-shaped ``where`` (a mask over classes) against optax.losses, the reference for its semantics.

Oracle: ``optax.losses.softmax_cross_entropy(_with_integer_labels)`` and ``poly_loss_cross_entropy`` (optax 0.2.8)
with the same ``where``: masked classes leave the softmax; an example with no kept class gives 0. For the
normalized losses the oracle is NumPy on the kept classes only (the loss of the sub-problem without the masked
classes). Tolerance 1e-5 relative.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import optax
import pytest

import paperlab.losses as pl

N, C = 8, 6
RNG = np.random.default_rng(0)
LOGITS = (3.0 * RNG.normal(size=(N, C))).astype(np.float32)
LABELS = (np.arange(N) % C).astype(np.int32)
MASK = RNG.random((N, C)) < 0.6
MASK[np.arange(N), LABELS] = True
MASK[-1] = False  # no kept class: loss 0
ONE_HOT = np.eye(C, dtype=np.float32)[LABELS]


def _ce(z, y, where):
  return optax.losses.softmax_cross_entropy_with_integer_labels(z, y, where=where)


CE_LIKE = {  # ours with modulating terms off -> optax cross-entropy with the same class mask
    "focal_int": functools.partial(pl.softmax_focal_loss_with_integer_labels, gamma=0.0),
    "focal": lambda z, y, where: pl.softmax_focal_loss(z, np.eye(C, dtype=np.float32)[y], gamma=0.0, where=where),
    "poly_int_eps0": functools.partial(pl.poly_loss_cross_entropy_with_integer_labels, epsilon=0.0),
    "comp_sum_tau1": pl.comp_sum_loss_with_integer_labels,
    "weighted_ce_uniform": functools.partial(pl.weighted_softmax_cross_entropy_with_integer_labels,
                                             class_weights=np.ones(C, np.float32)),
    "logit_adjusted_uniform": functools.partial(pl.logit_adjusted_softmax_cross_entropy_with_integer_labels,
                                                log_priors=np.full(C, -np.log(C), np.float32)),
}


@pytest.mark.parametrize("name", sorted(CE_LIKE))
def test_class_mask_matches_optax_cross_entropy(name):
  ours = CE_LIKE[name](LOGITS, LABELS, where=MASK)
  np.testing.assert_allclose(ours, _ce(LOGITS, LABELS, MASK), rtol=1e-5, atol=1e-6)
  g = jax.grad(lambda z: CE_LIKE[name](z, LABELS, where=MASK).sum())(LOGITS)
  g_ref = jax.grad(lambda z: _ce(z, LABELS, MASK).sum())(LOGITS)
  np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-6)


def test_poly_int_matches_optax_poly_loss_with_the_class_mask():
  ours = pl.poly_loss_cross_entropy_with_integer_labels(LOGITS, LABELS, epsilon=2.0, where=MASK)
  ref = optax.losses.poly_loss_cross_entropy(LOGITS, ONE_HOT, epsilon=2.0, where=MASK)
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def _kept_log_p(i):
  z = LOGITS[i, MASK[i]].astype(np.float64)
  return z - np.log(np.exp(z - z.max()).sum()) - z.max(), int(np.flatnonzero(MASK[i]).tolist().index(LABELS[i]))


@pytest.mark.parametrize("name", ["nce", "rce", "mae", "nfl"])
def test_normalized_losses_with_a_class_mask_are_the_losses_of_the_kept_classes(name):
  fn = {"nce": pl.normalized_cross_entropy_with_integer_labels, "rce": pl.reverse_cross_entropy_with_integer_labels,
        "mae": pl.mae_with_integer_labels, "nfl": pl.normalized_focal_loss_with_integer_labels}[name]
  ours = np.asarray(fn(LOGITS, LABELS, where=MASK))
  for i in range(N - 1):
    log_p, y = _kept_log_p(i)
    p = np.exp(log_p)
    if name == "nce":
      ref = log_p[y] / log_p.sum() if len(p) > 1 else 0.0
    elif name == "rce":
      ref = -np.log(1e-4) * (np.maximum(p, 1e-7).sum() - max(p[y], 1e-7))
    elif name == "mae":
      ref = 1.0 - p[y]
    else:
      f = -(1 - p) ** 0.5 * log_p
      ref = f[y] / f.sum() if len(p) > 1 else 0.0
    np.testing.assert_allclose(ours[i], ref, rtol=1e-5, atol=1e-6)
  assert ours[-1] == 0.0
