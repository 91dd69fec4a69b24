"""Tests of paperlab.merge.streaming's fast TIES threshold: a guessed per-tensor threshold (from a sample, when
many |delta| values tie, as in bf16 fine-tunes) is verified by counting in the merge pass, so the merged tensor
is bit-for-bit the one the exact selection gives, whether the guess is right, wrong, or not made."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from paperlab.merge import streaming

SHARED = {"lambda": 1.0, "normalize": True, "rescale": False}
PER_INPUT = [{"weight": 1.0}, {"weight": 1.0, "density": 0.5}, {"weight": 0.7, "density": 0.3},
             {"weight": 0.4, "density": 0.7}]


def _bf16_models(shape=(384, 256), ulps=4, seed=0):
  """A bf16 base and three fine-tunes that move every weight by at most ``ulps`` bf16 ulps (|delta| ties a lot)."""
  rng = np.random.default_rng(seed)
  base = (rng.standard_normal(shape) * 0.02).astype(ml_dtypes.bfloat16)
  fts = [(base.view(np.uint16).astype(np.int32) + rng.integers(-ulps, ulps + 1, shape)).astype(np.uint16)
         .view(ml_dtypes.bfloat16) for _ in range(3)]
  return [base, *fts]


def _merge(xs, monkeypatch, guess=None):
  with monkeypatch.context() as m:
    if guess is not None:
      m.setattr(streaming, "_guess_thresholds", guess)
    return np.asarray(streaming.merge_tensor("ties", xs, 0, SHARED, PER_INPUT))


def _no_guess(base, ms, ks):
  return [None] * len(ms)


def test_a_guessed_threshold_gives_the_exact_selection_bit_for_bit(monkeypatch):
  xs = _bf16_models()
  made = []
  real = streaming._guess_thresholds

  def spy(base, ms, ks):
    made.append(real(base, ms, ks))
    return made[-1]

  guessed = _merge(xs, monkeypatch, spy)
  assert made and all(g is not None for g in made[0])  # the fast path was taken for every model
  exact = _merge(xs, monkeypatch, _no_guess)
  np.testing.assert_array_equal(guessed.view(np.uint16), exact.view(np.uint16))


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_a_wrong_guess_falls_back_to_the_exact_selection(monkeypatch, scale):
  xs = _bf16_models(seed=1)
  real = streaming._guess_thresholds
  wrong = lambda base, ms, ks: [g * scale for g in real(base, ms, ks)]
  fallbacks = []
  exact_lo = streaming._exact_lo
  monkeypatch.setattr(streaming, "_exact_lo", lambda *a: fallbacks.append(a) or exact_lo(*a))
  out = _merge(xs, monkeypatch, wrong)
  assert len(fallbacks) == 3  # every wrong guess was caught by the count and replaced
  np.testing.assert_array_equal(out.view(np.uint16), _merge(xs, monkeypatch, _no_guess).view(np.uint16))


def test_continuous_deltas_are_not_guessed():
  rng = np.random.default_rng(2)
  base = rng.standard_normal((384, 256)).astype(np.float32)
  ms = [base + 1e-3 * rng.standard_normal(base.shape).astype(np.float32) for _ in range(2)]
  assert streaming._guess_thresholds(base, ms, [base.size // 2, base.size // 3]) == [None, None]
