"""Parity of the oracle-pruning rank correlations with scipy (the maintained implementation):
``paperlab.prune.kendall_tau`` against ``scipy.stats.kendalltau`` (tau-b, the default variant) and
``paperlab.prune.spearman_rho`` against ``scipy.stats.spearmanr``, with and without ties, to 1e-6 absolute."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from scipy import stats

import paperlab.prune as pr

_tau, _rho = jax.jit(pr.kendall_tau), jax.jit(pr.spearman_rho)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kendall_and_spearman_match_scipy(seed, ties):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=40)
  y = 0.3 * x + rng.normal(size=40)
  if ties:
    x, y = np.round(x, 0), np.round(y, 0)  # many tied values in both
  np.testing.assert_allclose(float(_tau(x, y)), stats.kendalltau(x, y).statistic, atol=1e-6)
  np.testing.assert_allclose(float(_rho(x, y)), stats.spearmanr(x, y).statistic, atol=1e-6)
