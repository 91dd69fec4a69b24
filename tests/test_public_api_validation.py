"""Bad values at the public boundary are clear errors naming the argument, never NaN parameters or an empty sweep.

Issue 13's Python-API list: ``merge.task_arithmetic(lam=nan)`` / ``ties(lam=nan)`` returned NaN parameters,
``sweeps.log_uniform(n=-1)`` returned ``[]``, ``optim.adamp(learning_rate="0.1")`` failed inside JAX.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import pytest

from paperlab import merge, optim
from paperlab.runner import sweeps

BASE = {"w": jnp.zeros((4,))}
EXPERTS = [{"w": jnp.ones((4,))}, {"w": -jnp.ones((4,))}]


@pytest.mark.parametrize("lam", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "breadcrumbs", "pcb"])
def test_merges_refuse_a_non_finite_lam(method, lam):
  with pytest.raises(ValueError, match="lam must"):
    getattr(merge, method)(BASE, EXPERTS, lam=lam)


def test_dare_merge_refuses_a_non_finite_lam():
  import jax

  with pytest.raises(ValueError, match="lam must"):
    merge.dare_merge(jax.random.key(0), BASE, EXPERTS, lam=math.nan)


def test_finite_lam_still_merges():
  out = merge.task_arithmetic(BASE, EXPERTS, lam=0.5)
  assert bool(jnp.all(jnp.isfinite(out["w"])))


@pytest.mark.parametrize("fn", [sweeps.log_uniform, sweeps.uniform])
@pytest.mark.parametrize("n", [0, -1, 2.5, True])
def test_random_sweeps_refuse_a_bad_count(fn, n):
  with pytest.raises(ValueError, match="n must be an integer >= 1"):
    fn("optim.learning_rate", 1e-4, 1e-2, n)


def test_seeds_refuses_a_bad_count():
  with pytest.raises(ValueError, match="n must be an integer >= 1"):
    sweeps.seeds(0)


@pytest.mark.parametrize("make", [lambda: optim.adamp(learning_rate="0.1"), lambda: optim.sgdp("0.1"),
                                  lambda: optim.adamp(1e-3, weight_decay="0.01")])
def test_a_string_where_a_number_is_expected_is_a_type_error_naming_it(make):
  with pytest.raises(TypeError, match="(learning_rate|weight_decay) must be a number"):
    make()
