"""Classic KD and normalized KD (NKD)."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

import paperlab.losses as pl

RNG = np.random.default_rng(6)
STUDENT = (2.0 * RNG.normal(size=(6, 5))).astype(np.float32)
TEACHER = (2.0 * RNG.normal(size=(6, 5))).astype(np.float32)
LABELS = RNG.integers(0, 5, size=6).astype(np.int32)


def _np_softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_nkd_matches_its_equation():
  gamma, lam = 1.5, 2.0
  s, t = STUDENT.astype(np.float64), TEACHER.astype(np.float64)
  expected = []
  for i, y in enumerate(LABELS):
    t_t = _np_softmax(t[i])[y]
    log_s_t = np.log(_np_softmax(s[i])[y])
    ts, ss = _np_softmax(t[i] / lam), _np_softmax(s[i] / lam)
    keep = np.arange(5) != y
    n_t, n_s = ts[keep] / (1 - ts[y]), ss[keep] / (1 - ss[y])
    expected.append(-t_t * log_s_t - gamma * lam ** 2 * np.sum(n_t * np.log(n_s)))
  ours = pl.normalized_kd_loss_with_integer_labels(STUDENT, TEACHER, LABELS, gamma=gamma, temperature=lam)
  np.testing.assert_allclose(ours, expected, rtol=1e-4)


def test_nkd_non_target_term_is_stationary_when_the_renormalised_distributions_agree():
  # Non-target student logits equal to the teacher's up to a shift (any target logit): N(S) = N(T), so the
  # non-target cross-entropy is at its minimum and only the target term has a gradient.
  student = TEACHER + 3.0
  student[np.arange(6), LABELS] = 7.0
  t_t = np.exp(-optax.softmax_cross_entropy_with_integer_labels(TEACHER, LABELS))
  target_term = lambda s: (t_t * optax.softmax_cross_entropy_with_integer_labels(s, LABELS)).sum()
  nkd = lambda s: pl.normalized_kd_loss_with_integer_labels(s, TEACHER, LABELS, gamma=1.0).sum()
  np.testing.assert_allclose(jax.grad(nkd)(student) - jax.grad(target_term)(student), 0.0, atol=1e-5)
  perturbed = student + 0.5 * RNG.normal(size=student.shape).astype(np.float32)
  assert not np.allclose(jax.grad(nkd)(perturbed) - jax.grad(target_term)(perturbed), 0.0, atol=1e-3)


def test_nkd_with_a_confident_teacher_is_ce_plus_the_non_target_term():
  teacher = TEACHER.copy()
  teacher[np.arange(6), LABELS] = 60.0  # T_t = 1
  nkd = pl.normalized_kd_loss_with_integer_labels(STUDENT, teacher, LABELS, gamma=0.0)
  np.testing.assert_allclose(nkd, optax.softmax_cross_entropy_with_integer_labels(STUDENT, LABELS), rtol=1e-5)


def test_teacher_gets_no_gradient():
  g_nkd = jax.grad(lambda t: pl.normalized_kd_loss_with_integer_labels(STUDENT, t, LABELS).sum())(TEACHER)
  g_kd = jax.grad(lambda t: pl.kd_loss(STUDENT, t).sum())(TEACHER)
  assert np.all(g_nkd == 0) and np.all(g_kd == 0)


def test_kd_loss_is_zero_for_identical_logits_and_scaled_by_t_squared():
  np.testing.assert_allclose(pl.kd_loss(TEACHER, TEACHER), 0.0, atol=1e-6)
  kl = optax.losses.kl_divergence(jax.nn.log_softmax(STUDENT / 2.0), jax.nn.softmax(TEACHER / 2.0))
  np.testing.assert_allclose(pl.kd_loss(STUDENT, TEACHER, temperature=2.0), 4.0 * kl, rtol=1e-4, atol=1e-6)


def test_bad_inputs_raise_clear_errors():
  with pytest.raises(ValueError, match="same shape"):
    pl.kd_loss(STUDENT, TEACHER[:, :3])
  with pytest.raises(ValueError, match="temperature"):
    pl.kd_loss(STUDENT, TEACHER, temperature=0.0)
  with pytest.raises(ValueError, match="labels must lie"):
    pl.normalized_kd_loss_with_integer_labels(STUDENT, TEACHER, LABELS + 5)
  with pytest.raises(ValueError, match="gamma"):
    pl.normalized_kd_loss_with_integer_labels(STUDENT, TEACHER, LABELS, gamma=-1.0)
