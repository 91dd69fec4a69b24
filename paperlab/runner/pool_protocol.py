"""The reproduction protocol (:mod:`paperlab.runner.protocol`) for merge methods scored on a task pool.

:meth:`paperlab.merge.TaskPool.compare` already runs the protocol's first three steps for merges: every method's
task vector is scaled by a ``lam`` from ONE grid (the same tuning budget for the method and its baselines), picked
per seed on validation, and the test split is read once, at the picked scale. This module turns its scores into a
:class:`~paperlab.runner.protocol.Comparison` so that a claim is judged the protocol's way: on seed means, with the
spread reported, and with the control (the baseline passed as the method must fail the claim).

    scores = pool.compare({"task_arithmetic": ta, "ties": ties}, lams)
    comparison = pool_protocol.comparison(scores, config.pool.seeds)
    verdict = comparison.judge(lambda m, b: m["mean_task_accuracy"] >= b["mean_task_accuracy"] + 0.01,
                               method="ties", baseline="task_arithmetic")

Methods that are not a scaled task vector (trained merges, a fixed lambda) enter as :func:`fixed_arm` results.
Host-side orchestration only.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from paperlab.runner import protocol

__all__ = ["comparison", "fixed_arm", "MEAN_TASK_ACCURACY"]

MEAN_TASK_ACCURACY = "mean_task_accuracy"


def _arm(name: str, chosen: dict, accuracy, extra: Mapping[str, Any] | None) -> protocol.ArmResult:
  accuracy = np.asarray(accuracy, dtype=np.float64)
  if accuracy.ndim != 2:
    raise ValueError(f"arm {name!r}: accuracy must be (seeds, tasks), got shape {accuracy.shape}.")
  test = {MEAN_TASK_ACCURACY: accuracy.mean(axis=1)}
  for k, v in (extra or {}).items():
    v = np.asarray(v, dtype=np.float64)
    if v.shape != (accuracy.shape[0],):
      raise ValueError(f"arm {name!r}: extra metric {k!r} must hold one value per seed, got shape {v.shape}.")
    test[k] = v
  return protocol.ArmResult(name, chosen, [], test)


def fixed_arm(name: str, accuracy, extra: Mapping[str, Any] | None = None, **chosen) -> protocol.ArmResult:
  """An arm without a tuned scale: per-task test accuracy ``(S, T)`` and optional per-seed ``extra`` metrics."""
  return _arm(name, dict(chosen), accuracy, extra)


def comparison(scores: Mapping[str, Any], seeds, extra: Mapping[str, Mapping[str, Any]] | None = None,
               fixed: tuple[protocol.ArmResult, ...] = ()) -> protocol.Comparison:
  """A :class:`~paperlab.runner.protocol.Comparison` of :meth:`TaskPool.compare` ``scores`` (name ->
  ``MethodScores``) on the pool's ``seeds``, each arm's test metrics being ``mean_task_accuracy`` per seed plus
  ``extra[name]`` (metric -> per-seed values), and the ``fixed`` arms appended."""
  extra = extra or {}
  arms = {name: _arm(name, {"lam": list(s.lam)}, s.accuracy, extra.get(name)) for name, s in scores.items()}
  for arm in fixed:
    if arm.name in arms:
      raise ValueError(f"duplicate arm name {arm.name!r}.")
    arms[arm.name] = arm
  seeds = tuple(int(s) for s in seeds)
  for arm in arms.values():
    if len(arm.test[MEAN_TASK_ACCURACY]) != len(seeds):
      raise ValueError(f"arm {arm.name!r} holds {len(arm.test[MEAN_TASK_ACCURACY])} seeds, expected {len(seeds)}.")
  return protocol.Comparison(arms, seeds)
