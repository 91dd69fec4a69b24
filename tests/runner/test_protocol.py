"""The reproduction protocol: same budget, selection on validation, one test read per arm, falsifiable claims."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from paperlab.runner import protocol


def _toy(val_of, test_of):
  """fit returns (arm, point); validate/test look the point up; counts test reads per arm."""
  reads = {}

  def fit(arm, point, seeds):
    return arm.name, point.get("h", 0), len(seeds)

  def validate(trained):
    name, h, n = trained
    return np.full(n, val_of(name, h))

  def test(trained):
    name, h, n = trained
    reads[name] = reads.get(name, 0) + 1
    return {"acc": np.full(n, test_of(name, h)), "h": np.full(n, float(h))}

  return fit, validate, test, reads


def test_the_point_is_chosen_on_validation_and_test_is_read_once_per_arm():
  # validation prefers h=1, test would prefer h=2: the protocol must pick on validation.
  fit, validate, test, reads = _toy(lambda n, h: [0.5, 0.9, 0.7][h], lambda n, h: [0.5, 0.6, 0.99][h])
  arms = [protocol.Arm("a", [{"h": 0}, {"h": 1}, {"h": 2}]), protocol.Arm("b", [{"h": 0}, {"h": 1}, {"h": 2}])]
  comparison = protocol.compare(arms, (0, 1, 2), fit, validate=validate, test=test)
  assert comparison["a"].chosen == {"h": 1} and comparison["a"].mean("acc") == pytest.approx(0.6)
  assert comparison["a"].validation == pytest.approx([0.5, 0.9, 0.7])
  assert reads == {"a": 1, "b": 1}


def test_minimize_picks_the_smallest_validation_loss():
  fit, validate, test, _ = _toy(lambda n, h: [3.0, 1.0, 2.0][h], lambda n, h: float(h))
  arms = [protocol.Arm("a", [{"h": 0}, {"h": 1}, {"h": 2}])]
  assert protocol.compare(arms, (0, 1, 2), fit, validate=validate, test=test, maximize=False)["a"].chosen == {"h": 1}


def test_non_finite_validation_points_are_never_chosen():
  fit, validate, test, _ = _toy(lambda n, h: [float("nan"), 0.2][h], lambda n, h: float(h))
  arms = [protocol.Arm("a", [{"h": 0}, {"h": 1}])]
  assert protocol.compare(arms, (0, 1, 2), fit, validate=validate, test=test)["a"].chosen == {"h": 1}
  fit, validate, test, _ = _toy(lambda n, h: float("nan"), lambda n, h: 0.0)
  with pytest.raises(ValueError, match="non-finite validation"):
    protocol.compare(arms, (0, 1, 2), fit, validate=validate, test=test)


def test_unequal_budgets_and_too_few_seeds_are_refused():
  fit, validate, test, _ = _toy(lambda n, h: 0.0, lambda n, h: 0.0)
  arms = [protocol.Arm("base"), protocol.Arm("method", [{"h": 0}, {"h": 1}])]
  with pytest.raises(ValueError, match="same tuning budget"):
    protocol.compare(arms, (0, 1, 2), fit, validate=validate, test=test)
  protocol.compare(arms, (0, 1, 2), fit, validate=validate, test=test, equal_budget=False)
  with pytest.raises(ValueError, match=">= 3 seeds"):
    protocol.compare(arms[:1], (0, 1), fit, validate=validate, test=test)
  with pytest.raises(ValueError, match="unique"):
    protocol.compare([protocol.Arm("a"), protocol.Arm("a")], (0, 1, 2), fit, validate=validate, test=test)
  with pytest.raises(ValueError, match="one value per seed"):
    protocol.compare(arms[:1], (0, 1, 2), fit, validate=lambda t: [0.0], test=test)
  with pytest.raises(ValueError, match="at least one point"):
    protocol.Arm("a", [])


def test_a_claim_that_its_control_satisfies_is_vacuous():
  fit, validate, test, _ = _toy(lambda n, h: 0.0, lambda n, h: {"base": 0.80, "method": 0.85}[n])
  arms = [protocol.Arm("base"), protocol.Arm("method")]
  comparison = protocol.compare(arms, (0, 1, 2), fit, validate=validate, test=test)
  strict = comparison.judge(lambda m, b: m["acc"] >= b["acc"] + 0.02, method="method", baseline="base")
  assert strict["passed"] and strict["holds"] and not strict["control_passes"]
  weak = comparison.judge(lambda m, b: m["acc"] >= b["acc"] - 0.01, method="method", baseline="base")
  assert weak["holds"] and weak["control_passes"] and weak["vacuous"] and not weak["passed"]
  assert strict["mean"]["method"]["acc"] == pytest.approx(0.85) and strict["std"]["base"]["acc"] == pytest.approx(0.0, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-10, 10), min_size=1, max_size=6), st.booleans())
def test_the_chosen_point_is_the_best_seed_mean_on_validation(vals, maximize):
  fit, validate, test, reads = _toy(lambda n, h: vals[h], lambda n, h: float(h))
  arms = [protocol.Arm("a", [{"h": i} for i in range(len(vals))])]
  chosen = protocol.compare(arms, (0, 1, 2), fit, validate=validate, test=test, maximize=maximize)["a"].chosen["h"]
  assert vals[chosen] == (max(vals) if maximize else min(vals)) and reads == {"a": 1}


def test_require_reproduced_raises_its_own_assertion_type():
  protocol.require_reproduced({"passed": True})
  with pytest.raises(protocol.ClaimNotReproduced, match="ratio"):
    protocol.require_reproduced({"passed": False, "ratio": 1.2, "statement": "s"})
  assert issubclass(protocol.ClaimNotReproduced, AssertionError)


@pytest.mark.xfail(strict=True, raises=protocol.ClaimNotReproduced)
def test_an_expected_non_reproduction_is_an_xfail():
  protocol.require_reproduced({"passed": False})


def test_a_failed_precondition_is_not_hidden_by_an_expected_non_reproduction(pytester):
  pytester.makepyfile("""
      import pytest
      from paperlab.runner.protocol import ClaimNotReproduced, require_reproduced

      @pytest.mark.xfail(strict=True, raises=ClaimNotReproduced)
      def test_claim():
        assert False, "the control passed"
        require_reproduced({"passed": False})
      """)
  pytester.runpytest("-p", "no:xdist", "-p", "no:cacheprovider").assert_outcomes(failed=1)
