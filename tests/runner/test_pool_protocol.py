"""pool_protocol: TaskPool.compare scores judged the protocol's way (seed means, spread, control)."""

from __future__ import annotations

import numpy as np
import pytest

from paperlab.merge import MethodScores
from paperlab.runner import pool_protocol


def _scores():
  return {"task_arithmetic": MethodScores([0.4, 0.5, 0.5], np.array([[0.6, 0.6], [0.5, 0.7], [0.6, 0.8]])),
          "method": MethodScores([1.0, 1.2, 1.0], np.array([[0.7, 0.9], [0.8, 0.8], [0.9, 0.7]]))}


def test_seed_means_spread_and_control():
  comparison = pool_protocol.comparison(_scores(), (0, 1, 2), extra={"method": {"kept": [0.1, 0.1, 0.1]},
                                                                     "task_arithmetic": {"kept": [1.0, 1.0, 1.0]}})
  acc = pool_protocol.MEAN_TASK_ACCURACY
  np.testing.assert_allclose(comparison["method"].test[acc], [0.8, 0.8, 0.8])
  np.testing.assert_allclose(comparison["task_arithmetic"].mean(acc), 0.6333333, rtol=1e-6)
  assert comparison["task_arithmetic"].std(acc) > 0 and comparison["method"].chosen == {"lam": [1.0, 1.2, 1.0]}
  verdict = comparison.judge(lambda m, b: m[acc] >= b[acc] + 0.1, method="method", baseline="task_arithmetic")
  assert verdict["passed"] and not verdict["control_passes"]
  vacuous = comparison.judge(lambda m, b: m[acc] >= b[acc] - 0.5, method="method", baseline="task_arithmetic")
  assert vacuous["holds"] and vacuous["vacuous"] and not vacuous["passed"]


def test_fixed_arms_join_and_shapes_are_checked():
  fixed = pool_protocol.fixed_arm("trained", np.full((3, 2), 0.9), {"loss": [1.0, 2.0, 3.0]})
  comparison = pool_protocol.comparison(_scores(), (0, 1, 2), fixed=(fixed,))
  assert comparison["trained"].mean("loss") == pytest.approx(2.0)
  with pytest.raises(ValueError, match="expected 4"):
    pool_protocol.comparison(_scores(), (0, 1, 2, 3))
  with pytest.raises(ValueError, match="one value per seed"):
    pool_protocol.fixed_arm("bad", np.ones((3, 2)), {"x": [1.0]})
  with pytest.raises(ValueError, match="duplicate"):
    pool_protocol.comparison(_scores(), (0, 1, 2), fixed=(pool_protocol.fixed_arm("method", np.ones((3, 2))),))
