"""The Step Law of optimal hyperparameters (Li et al., "Predictable Scale: Part I", arXiv:2503.04715)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paperlab import scaling


def test_step_law_spot_check_against_the_published_constants():
  """The catalogue's spot check: N = 1e9, D = 1e11, computed from the paper's formula."""
  lr, bs = scaling.step_law(1e9, 1e11)
  assert float(lr) == pytest.approx(1.79 * 1e9 ** -0.713 * 1e11 ** 0.307, rel=1e-5)
  assert float(bs) == pytest.approx(0.58 * 1e11 ** 0.571, rel=1e-5)


def test_step_law_larger_models_want_smaller_lr_and_more_data_larger_batches():
  lr, bs = scaling.step_law(jnp.array([1e8, 1e9]), jnp.array([1e10, 1e10]))
  assert lr[1] < lr[0] and bs[0] == bs[1]
  lr2, bs2 = jax.jit(scaling.step_law)(jnp.float32(1e9), jnp.array([1e10, 1e11], jnp.float32))
  assert lr2[1] > lr2[0] and bs2[1] > bs2[0] and lr2.dtype == jnp.float32


def test_fit_hparam_law_recovers_the_step_law_exactly_on_its_points():
  N, D = np.meshgrid(np.geomspace(1e7, 1e10, 4), np.geomspace(1e9, 1e12, 3))
  N, D = N.ravel(), D.ravel()
  lr, bs = (np.asarray(a, np.float64) for a in scaling.step_law(N, D))
  fit = scaling.fit_hparam_law(N, D, lr, bs, bootstrap=20)
  for k, v in scaling.STEP_LAW._asdict().items():
    assert fit[k] == pytest.approx(v, rel=1e-3), k
  assert fit.objective < 1e-5 and fit.ci["lr_n_exp"][0] - 1e-9 <= -0.713 <= fit.ci["lr_n_exp"][1] + 1e-9


def test_fit_hparam_law_errors():
  with pytest.raises(ValueError, match="too few points to fit 3"):
    scaling.fit_hparam_law([1e7, 1e8], [1e9, 1e9], [1e-3, 5e-4])
  with pytest.raises(ValueError, match="^lr_opt must be finite and > 0"):
    scaling.fit_hparam_law([1e7, 1e8, 1e9], [1e9, 1e9, 1e9], [1e-3, 0.0, 5e-4])
  with pytest.raises(ValueError, match="same length"):
    scaling.fit_hparam_law([1e7, 1e8, 1e9], [1e9, 1e9], [1e-3, 1e-3, 5e-4])
  with pytest.raises(ValueError, match="^N must be finite"):
    scaling.step_law(-1.0, 1e9)
