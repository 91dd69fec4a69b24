"""Closed forms and errors of paperlab.losses.robust (normalized, active-passive, comp-sum, LDR-KL,
ALDR-KL)."""

from __future__ import annotations

import functools

import jax
import numpy as np
import optax
import pytest

import paperlab.losses as pl

RNG = np.random.default_rng(1)
LOGITS = (2.0 * RNG.normal(size=(10, 5))).astype(np.float32)
LABELS = RNG.integers(0, 5, size=10).astype(np.int32)
P = np.asarray(jax.nn.softmax(LOGITS.astype(np.float64)))
P_Y = P[np.arange(10), LABELS]
CE = np.asarray(optax.softmax_cross_entropy_with_integer_labels(LOGITS, LABELS))


def test_nce_is_log_py_over_sum_of_log_p_and_normalised_over_labels():
  nce = np.asarray(pl.normalized_cross_entropy_with_integer_labels(LOGITS, LABELS))
  np.testing.assert_allclose(nce, np.log(P_Y) / np.log(P).sum(-1), rtol=1e-5)
  assert np.all((nce >= 0) & (nce <= 1))
  total = sum(pl.normalized_cross_entropy_with_integer_labels(LOGITS, np.full(10, k, np.int32)) for k in range(5))
  np.testing.assert_allclose(total, 1.0, rtol=1e-5)


def test_rce_is_minus_a_times_one_minus_py_and_mae_is_the_reduced_form():
  rce = pl.reverse_cross_entropy_with_integer_labels(LOGITS, LABELS, log_zero=-4.0)
  floored = np.maximum(P, 1e-7) * (1 - np.eye(5)[LABELS])  # the official code floors p at 1e-7
  np.testing.assert_allclose(rce, 4.0 * floored.sum(-1), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(pl.reverse_cross_entropy_with_integer_labels(LOGITS, LABELS),
                             -np.log(1e-4) * floored.sum(-1), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(2.0 * pl.mae_with_integer_labels(LOGITS, LABELS),
                             np.abs(P - np.eye(5)[LABELS]).sum(-1), rtol=1e-5, atol=1e-6)


def test_normalized_focal_with_gamma_zero_is_nce():
  np.testing.assert_allclose(pl.normalized_focal_loss_with_integer_labels(LOGITS, LABELS, gamma=0.0),
                             pl.normalized_cross_entropy_with_integer_labels(LOGITS, LABELS), rtol=1e-6)
  focal = -(1 - P) ** 0.5 * np.log(P)
  np.testing.assert_allclose(pl.normalized_focal_loss_with_integer_labels(LOGITS, LABELS, gamma=0.5),
                             focal[np.arange(10), LABELS] / focal.sum(-1), rtol=1e-4)


def test_active_passive_is_a_weighted_sum():
  rce = functools.partial(pl.reverse_cross_entropy_with_integer_labels, log_zero=-4.0)
  apl = pl.active_passive(pl.normalized_cross_entropy_with_integer_labels, rce, alpha=10.0, beta=0.1)
  expected = (10.0 * pl.normalized_cross_entropy_with_integer_labels(LOGITS, LABELS)
              + 0.1 * pl.reverse_cross_entropy_with_integer_labels(LOGITS, LABELS, log_zero=-4.0))
  np.testing.assert_allclose(apl(LOGITS, LABELS), expected, rtol=1e-6)
  np.testing.assert_allclose(pl.nce_rce_with_integer_labels(LOGITS, LABELS, alpha=10.0, beta=0.1, log_zero=-4.0),
                             expected, rtol=1e-6)
  mask = np.arange(10) < 6
  np.testing.assert_allclose(apl(LOGITS, LABELS, where=mask), np.where(mask, expected, 0.0), rtol=1e-6)


def test_comp_sum_special_cases():
  comp = lambda tau: np.asarray(pl.comp_sum_loss_with_integer_labels(LOGITS, LABELS, tau=tau))
  np.testing.assert_allclose(comp(1.0), CE, rtol=1e-6)
  np.testing.assert_allclose(comp(2.0), 1 - P_Y, rtol=1e-5, atol=1e-6)
  h_y = LOGITS[np.arange(10), LABELS][:, None]
  sum_exp = np.where(np.eye(5)[LABELS] > 0, 0.0, np.exp(LOGITS - h_y)).sum(-1)
  np.testing.assert_allclose(comp(0.0), sum_exp, rtol=1e-4)
  np.testing.assert_allclose(comp(1.0 + 1e-5), CE, rtol=1e-4, atol=1e-4)  # continuous at tau = 1
  np.testing.assert_allclose(comp(1.7), (1 - P_Y ** 0.7) / 0.7, rtol=1e-4)


def test_generalized_cross_entropy_is_comp_sum_with_tau_one_plus_q():
  np.testing.assert_allclose(pl.generalized_cross_entropy_with_integer_labels(LOGITS, LABELS, q=0.7),
                             pl.comp_sum_loss_with_integer_labels(LOGITS, LABELS, tau=1.7), rtol=1e-6)


def test_comp_sum_with_traced_tau_matches_python_tau():
  traced = jax.jit(lambda tau: pl.comp_sum_loss_with_integer_labels(LOGITS, LABELS, tau=tau))
  np.testing.assert_allclose(traced(1.0), CE, rtol=1e-5)
  np.testing.assert_allclose(traced(1.5), pl.comp_sum_loss_with_integer_labels(LOGITS, LABELS, tau=1.5), rtol=1e-5)


def test_ldr_kl_closed_forms():
  lam = 0.5
  scaled_ce = optax.softmax_cross_entropy_with_integer_labels(LOGITS / lam, LABELS)
  np.testing.assert_allclose(pl.ldr_kl_loss_with_integer_labels(LOGITS, LABELS, lam=lam),
                             lam * scaled_ce - lam * np.log(5), rtol=1e-4, atol=1e-5)
  margin = 1.0
  delta = margin * (1 - np.eye(5)[LABELS])
  hinge = (delta + LOGITS - LOGITS[np.arange(10), LABELS][:, None]).max(-1)
  small = pl.ldr_kl_loss_with_integer_labels(LOGITS, LABELS, lam=1e-3, margin=margin)
  np.testing.assert_allclose(small, hinge, atol=5e-3)


@pytest.mark.parametrize("loss", [
    pl.normalized_cross_entropy_with_integer_labels, pl.reverse_cross_entropy_with_integer_labels,
    pl.mae_with_integer_labels, pl.normalized_focal_loss_with_integer_labels, pl.nce_rce_with_integer_labels,
    pl.generalized_cross_entropy_with_integer_labels, pl.ldr_kl_loss_with_integer_labels,
    pl.aldr_kl_loss_with_integer_labels,
])
def test_gradients_are_finite_at_extreme_logits(loss):
  logits = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 3.0], [0.0, 0.0, -1e4]], np.float32)
  labels = np.array([1, 1, 2], np.int32)
  value, grad = jax.value_and_grad(lambda z: loss(z, labels).sum())(logits)
  assert np.isfinite(value) and np.all(np.isfinite(grad))


def test_bad_inputs_raise_clear_errors():
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
    pl.normalized_cross_entropy_with_integer_labels(LOGITS, LABELS + 5)
  with pytest.raises(ValueError, match="labels must have shape"):
    pl.reverse_cross_entropy_with_integer_labels(LOGITS, LABELS[:, None])
  with pytest.raises(ValueError, match="log_zero"):
    pl.reverse_cross_entropy_with_integer_labels(LOGITS, LABELS, log_zero=1.0)
  with pytest.raises(ValueError, match="gamma"):
    pl.normalized_focal_loss_with_integer_labels(LOGITS, LABELS, gamma=-0.5)
  with pytest.raises(ValueError, match="tau"):
    pl.comp_sum_loss_with_integer_labels(LOGITS, LABELS, tau=-1.0)
  with pytest.raises(ValueError, match="q must lie"):
    pl.generalized_cross_entropy_with_integer_labels(LOGITS, LABELS, q=0.0)
  with pytest.raises(ValueError, match="lam"):
    pl.ldr_kl_loss_with_integer_labels(LOGITS, LABELS, lam=0.0)
  with pytest.raises(ValueError, match="alpha"):
    pl.aldr_kl_loss_with_integer_labels(LOGITS, LABELS, alpha=1.0)
  with pytest.raises(ValueError, match="lam0"):
    pl.aldr_kl_loss_with_integer_labels(LOGITS, LABELS, lam0=-1.0)
  with pytest.raises(ValueError, match="num_iters"):
    pl.aldr_kl_lambda(LOGITS, LABELS, num_iters=-1)
  with pytest.raises(ValueError, match="beta"):
    pl.active_passive(pl.mae_with_integer_labels, pl.mae_with_integer_labels, beta=-1.0)


# ---------------------------------------------------------------------------------------------------------
# ALDR-KL: LDR-KL with a per-example temperature.


def _np_aldr_objective(v, lam, lam0, alpha):
  """The objective maximised over lambda (grid [G, 1, 1] x examples [1, N, K]): lam * log mean exp(v / lam) - penalty."""
  k = v.shape[-1]
  ldr = lam[..., 0] * (np.logaddexp.reduce(v / lam, axis=-1) - np.log(k))
  return ldr - alpha * np.log(k) / (2 * lam0) * (lam[..., 0] - lam0) ** 2


def _margins(logits, labels, margin):
  delta = margin * (1 - np.eye(logits.shape[-1])[labels])
  return (delta + logits - logits[np.arange(len(labels)), labels][:, None]).astype(np.float64)


def test_aldr_kl_lambda_is_the_fixed_point_and_lies_in_its_interval():
  lam0, alpha, margin = 2.0, 3.0, 0.3
  lam = np.asarray(pl.aldr_kl_lambda(LOGITS, LABELS, lam0=lam0, alpha=alpha, margin=margin, num_iters=50))
  v = _margins(LOGITS, LABELS, margin)
  p = np.asarray(jax.nn.softmax(v / lam[:, None]))
  kl = np.sum(p * np.log(5 * p), -1)
  np.testing.assert_allclose(lam, lam0 * (1 - kl / (alpha * np.log(5))), rtol=1e-5)
  assert np.all((lam >= lam0 * (1 - 1 / alpha) - 1e-6) & (lam <= lam0 + 1e-6))
  # The default number of iterations has converged.
  np.testing.assert_allclose(pl.aldr_kl_lambda(LOGITS, LABELS, lam0=lam0, alpha=alpha, margin=margin), lam,
                             rtol=1e-5)


def test_aldr_kl_is_the_maximum_over_lambda_of_the_penalised_ldr_kl():
  lam0, alpha, margin = 1.0, 2.0, 0.1
  ours = np.asarray(pl.aldr_kl_loss_with_integer_labels(LOGITS, LABELS, lam0=lam0, alpha=alpha, margin=margin))
  v = _margins(LOGITS, LABELS, margin)
  grid = np.linspace(1e-3, 3.0, 3001)[:, None, None]
  best = _np_aldr_objective(v[None], grid, lam0, alpha).max(0)
  np.testing.assert_allclose(ours, best, rtol=1e-4, atol=1e-4)


def test_aldr_kl_with_a_stiff_penalty_is_ldr_kl_at_lam0():
  ldr = pl.ldr_kl_loss_with_integer_labels(LOGITS, LABELS, lam=0.7, margin=0.2)
  aldr = pl.aldr_kl_loss_with_integer_labels(LOGITS, LABELS, lam0=0.7, alpha=1e7, margin=0.2)
  np.testing.assert_allclose(aldr, ldr, rtol=1e-4, atol=1e-5)


def test_aldr_kl_of_uniform_logits_without_margin_is_zero_at_lam0():
  logits = np.zeros((3, 4), np.float32)
  labels = np.array([0, 1, 3], np.int32)
  np.testing.assert_allclose(pl.aldr_kl_lambda(logits, labels, lam0=1.5, margin=0.0), 1.5, rtol=1e-6)
  np.testing.assert_allclose(pl.aldr_kl_loss_with_integer_labels(logits, labels, lam0=1.5, margin=0.0), 0.0,
                             atol=1e-6)


def test_aldr_kl_gradient_is_the_ldr_kl_gradient_at_the_adaptive_lambda():
  # d/df [lam * log mean exp(v / lam)] at fixed lam is softmax(v / lam) - onehot(y) (Danskin: lam* is constant).
  lam = np.asarray(pl.aldr_kl_lambda(LOGITS, LABELS))
  p = np.asarray(jax.nn.softmax(_margins(LOGITS, LABELS, 0.1) / lam[:, None]))
  aldr = jax.grad(lambda z: pl.aldr_kl_loss_with_integer_labels(z, LABELS).sum())(LOGITS)
  np.testing.assert_allclose(aldr, p - np.eye(5)[LABELS], rtol=1e-4, atol=1e-6)


def test_aldr_kl_confident_examples_get_a_smaller_lambda():
  logits = np.array([[8.0, 0.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 8.0]], np.float32)
  labels = np.array([0, 0, 0], np.int32)
  lam = np.asarray(pl.aldr_kl_lambda(logits, labels, lam0=1.0, alpha=2.0, margin=0.0))
  assert lam[0] < lam[1] and lam[2] < lam[1]  # low-entropy worst case either way: right or confidently wrong
  np.testing.assert_allclose(jax.jit(pl.aldr_kl_loss_with_integer_labels)(LOGITS, LABELS),
                             pl.aldr_kl_loss_with_integer_labels(LOGITS, LABELS), rtol=1e-6)
