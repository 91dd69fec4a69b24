"""muScaling (Yao et al., arXiv:2304.06875): tune at the proxy, transfer unchanged, fit L(N) = a N^-b + c on the small
widths and extrapolate (paperlab.scaling.mu_scaling / extrapolate_ladder)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paperlab import scaling

WIDTHS = (32, 64, 128, 256)
TARGET = 1024


def law(n, a=3.0, b=0.5, c=0.2):
  return c + a * np.asarray(n, np.float64) ** -b


def test_extrapolate_ladder_on_an_exact_law_predicts_the_closed_form():
  n = np.array(WIDTHS, np.float64)
  scales = np.array([1.0, 1.1, 0.9])  # three seeds, each an exact law of its own
  losses = law(n)[:, None] * scales
  target = law(TARGET) * scales * np.array([1.02, 1.0, 0.95])  # what was "measured" at the target
  ex = scaling.extrapolate_ladder(n, losses, TARGET, target)
  truth = law(TARGET) * scales.mean()  # the seed-mean rungs follow the law scaled by the mean
  assert ex.predicted == pytest.approx(truth, rel=1e-4)
  assert ex.observed == pytest.approx(target.mean(), rel=1e-12)
  assert ex.rel_error == pytest.approx(abs(truth - target.mean()) / target.mean(), rel=1e-3, abs=1e-6)
  np.testing.assert_allclose(ex.per_seed_predicted, law(TARGET) * scales, rtol=1e-4)
  np.testing.assert_allclose(ex.per_seed_rel_error, [0.02 / 1.02, 0.0, 0.05 / 0.95], rtol=1e-2, atol=1e-5)
  for k, v in {"a": 3.0, "b": 0.5, "c": 0.2}.items():
    assert ex.fit[k] == pytest.approx(v * (scales.mean() if k != "b" else 1.0), rel=1e-3), k


def test_extrapolate_ladder_without_per_seed_fits_leaves_them_nan():
  n = np.array(WIDTHS, np.float64)
  ex = scaling.extrapolate_ladder(n, law(n)[:, None] * np.ones(2), TARGET, law(TARGET) * np.ones(2),
                                  per_seed=False)
  assert np.isnan(ex.per_seed_predicted).all() and np.isnan(ex.per_seed_rel_error).all()
  assert ex.rel_error < 1e-4
  with pytest.raises(ValueError, match="per_seed must be a bool"):
    scaling.extrapolate_ladder(n, law(n), TARGET, law(TARGET), per_seed="no")


def test_extrapolate_ladder_sorts_rungs_with_their_seeds():
  n = np.array(WIDTHS, np.float64)
  losses = law(n)[:, None] * np.array([1.0, 1.2])
  order = [2, 0, 3, 1]
  a = scaling.extrapolate_ladder(n, losses, TARGET, law(TARGET) * np.array([1.0, 1.2]))
  b = scaling.extrapolate_ladder(n[order], losses[order], TARGET, law(TARGET) * np.array([1.0, 1.2]))
  np.testing.assert_allclose(b.per_seed_predicted, a.per_seed_predicted, rtol=1e-9)
  assert b.rel_error < 1e-4


def _quadratic_bowl(opt_log2_lr, calls, k=0.05):
  """A model of training: the final loss is the size law times a penalty for the log2 learning rate's distance from
  the width's optimum ``opt_log2_lr(width)``; three seeds differ by a fixed factor."""
  seeds = np.array([1.0, 1.01, 0.99])

  def train_fn(width, hp):
    calls.append((width, dict(hp)))
    return law(width) * (1.0 + k * (hp["log2_lr"] - opt_log2_lr(width)) ** 2) * seeds

  return train_fn


GRID = [{"log2_lr": k} for k in range(-10, -1)]


def test_mu_scaling_tunes_at_the_proxy_only_and_transfers_the_point_unchanged():
  calls = []
  result = scaling.mu_scaling(_quadratic_bowl(lambda w: -6, calls), WIDTHS, TARGET, grid=GRID)
  assert result.hparams == {"log2_lr": -6} and result.proxy_width == 32
  # every grid point at the proxy, then the chosen point once at each other width and the target
  assert calls == [(32, p) for p in GRID] + [(w, {"log2_lr": -6}) for w in (64, 128, 256, TARGET)]
  np.testing.assert_allclose(result.proxy_losses, [law(32) * (1 + 0.05 * (k + 6) ** 2) for k in range(-10, -1)],
                             rtol=1e-12)
  np.testing.assert_allclose(result.losses, law(np.array(WIDTHS))[:, None] * [1.0, 1.01, 0.99], rtol=1e-12)
  # the optimum does not move with width (muP's promise): the rungs are the exact law, the prediction exact
  assert result.extrapolation.rel_error < 1e-4
  assert result.target_losses.shape == (3,) and result.target_num_params == TARGET


def test_a_drifting_optimum_breaks_the_extrapolation():
  # SP's behaviour: the best log2 LR falls by one per doubling of width, so the proxy's point is ever further off
  drift = lambda w: -6 - np.log2(w / 32)
  result = scaling.mu_scaling(_quadratic_bowl(drift, []), WIDTHS, TARGET, grid=GRID)
  assert result.hparams == {"log2_lr": -6}
  observed = law(TARGET) * (1 + 0.05 * 5.0 ** 2)  # 5 doublings from 32 to 1024
  assert result.extrapolation.observed == pytest.approx(observed, rel=1e-12)
  stable = scaling.mu_scaling(_quadratic_bowl(lambda w: -6, []), WIDTHS, TARGET, grid=GRID)
  assert result.extrapolation.rel_error > 0.1 > 100 * stable.extrapolation.rel_error  # measured 0.155


def test_mu_scaling_reuses_the_proxy_rung_and_skips_diverged_points():
  calls = []
  inner = _quadratic_bowl(lambda w: -6, calls)

  def train_fn(width, hp):
    out = inner(width, hp)
    return np.where(hp["log2_lr"] == -6, np.array([1.0, np.nan, 1.0]), out) if width == 32 else out

  result = scaling.mu_scaling(train_fn, WIDTHS, TARGET, grid=GRID)
  assert result.hparams == {"log2_lr": -7}  # -6 diverged on a seed; -7 and -5 tie, the first in grid order wins
  assert np.isinf(result.proxy_losses[GRID.index({"log2_lr": -6})])
  assert sum(w == 32 for w, _ in calls) == len(GRID)  # the proxy rung is the tuning run, not trained again


def test_mu_scaling_with_a_proxy_outside_the_rungs_and_a_size_function():
  calls = []
  result = scaling.mu_scaling(_quadratic_bowl(lambda w: -6, calls), WIDTHS, TARGET, grid=GRID, proxy_width=16,
                              num_params=lambda w: 2.0 * w * w)
  assert [w for w, _ in calls] == [16] * len(GRID) + [32, 64, 128, 256, TARGET]
  np.testing.assert_array_equal(result.num_params, 2.0 * np.array(WIDTHS) ** 2)
  assert result.target_num_params == 2.0 * TARGET ** 2


def test_mu_scaling_accepts_a_jitted_train_fn():
  @jax.jit
  def losses(width, lr):
    return (0.2 + 3.0 * width ** -0.5) * (1.0 + 0.05 * (jnp.log2(lr) + 6.0) ** 2) * jnp.array([1.0, 1.01, 0.99])

  result = scaling.mu_scaling(lambda w, hp: losses(jnp.float32(w), jnp.float32(2.0 ** hp["log2_lr"])), WIDTHS,
                              TARGET, grid=GRID)
  assert result.hparams == {"log2_lr": -6}
  assert result.extrapolation.rel_error < 1e-3  # float32 losses of the exact law


@settings(max_examples=8, deadline=None)  # each L-BFGS fit takes about a CPU-second
@given(a=st.floats(0.5, 20.0), b=st.floats(0.2, 1.0), c=st.floats(0.05, 2.0), scale=st.floats(0.01, 100.0))
def test_extrapolation_is_scale_equivariant_and_exact_on_the_law(a, b, c, scale):
  n = np.array(WIDTHS, np.float64)
  losses = law(n, a, b, c) * np.array([1.0, 1.03, 0.98, 1.01])  # one seed, the law times a small wobble
  target = law(TARGET, a, b, c)
  ex = scaling.extrapolate_ladder(n, losses, TARGET, target)
  scaled = scaling.extrapolate_ladder(n, scale * losses, TARGET, scale * target)
  # the fit is Huber on log loss: multiplying every loss by `scale` shifts log L and scales the prediction
  assert scaled.predicted == pytest.approx(scale * ex.predicted, rel=1e-4)
  assert scaled.rel_error == pytest.approx(ex.rel_error, rel=1e-3, abs=1e-6)
  exact = scaling.extrapolate_ladder(n, law(n, a, b, c), TARGET, target)
  assert exact.rel_error < 1e-3  # on the law itself the prediction is the law's value


@pytest.mark.parametrize("kwargs, match", [
    ({"widths": (32, 32, 64)}, "distinct"),
    ({"widths": (32, 64)}, "at least 3 rungs"),
    ({"widths": (32, 64.0, 128)}, "widths\\[i\\] must be a positive int"),
    ({"widths": (0, 64, 128)}, "widths\\[i\\] must be a positive int"),
    ({"target_width": 256}, "target_width must be larger"),
    ({"grid": []}, "grid must be a non-empty sequence"),
    ({"grid": {"log2_lr": -6}}, "grid must be a non-empty sequence"),
    ({"grid": [-6, -5]}, "grid must be a non-empty sequence"),
    ({"proxy_width": -1}, "proxy_width must be a positive int"),
    ({"num_params": lambda w: -1.0}, "num_params must give positive"),
    ({"num_params": 3}, "num_params must be a callable"),
])
def test_mu_scaling_rejects_bad_arguments(kwargs, match):
  args = {"widths": WIDTHS, "target_width": TARGET, "grid": GRID, **kwargs}
  with pytest.raises(ValueError, match=match):
    scaling.mu_scaling(_quadratic_bowl(lambda w: -6, []), args.pop("widths"), args.pop("target_width"), **args)


def test_mu_scaling_rejects_train_fn_outputs_that_are_not_one_loss_per_seed():
  with pytest.raises(ValueError, match="must return the final loss of each seed"):
    scaling.mu_scaling(lambda w, hp: np.ones((2, 2)), WIDTHS, TARGET)
  seeds = iter([3, 3, 2, 3, 3])
  with pytest.raises(ValueError, match="of 3 values like the other calls"):
    scaling.mu_scaling(lambda w, hp: np.ones(next(seeds)), WIDTHS, TARGET)
  with pytest.raises(ValueError, match="every grid point diverged"):
    scaling.mu_scaling(lambda w, hp: np.full(3, np.nan), WIDTHS, TARGET, grid=GRID)


@pytest.mark.parametrize("target_n, target_losses, match", [
    (128.0, [1.0, 1.0], "target_num_params must be a positive size"),
    (-5.0, [1.0, 1.0], "target_num_params must be a positive size"),
    (1024.0, [1.0, 1.0, 1.0], "target_losses must hold 2"),
    (1024.0, [1.0, np.inf], "target_losses must hold 2"),
])
def test_extrapolate_ladder_rejects_bad_targets(target_n, target_losses, match):
  losses = law(np.array(WIDTHS))[:, None] * np.ones(2)
  with pytest.raises(ValueError, match=match):
    scaling.extrapolate_ladder(WIDTHS, losses, target_n, target_losses)
