"""Reproduction test for DAM, "Merging in a Bottle" [347], on ROT-DIGITS."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import require_reproduced


@pytest.fixture(scope="module")
def dam(run_claim, tmp_path_factory):
  return run_claim("merge/dam", tmp_path_factory.mktemp("dam"), paper_id=347)


@pytest.mark.slow
def test_dam_beats_task_arithmetic(dam):
  # measured: DAM 87.2 +- 0.9 vs TA(best lambda) 60.3 +- 1.5 on seeds 0-2
  require_reproduced(dam["claim"])


@pytest.mark.slow
def test_dam_control_task_arithmetic_as_the_method_fails(dam):
  assert not dam["claim"]["control_passes"] and not dam["claim"]["vacuous"]
