"""Reproduction test for DAM, "Merging in a Bottle" [347], on ROT-DIGITS."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_dam_beats_task_arithmetic(run_claim, tmp_path):
  result = run_claim("merge/dam", tmp_path, paper_id=347)
  assert result["claim"]["passed"], result["claim"]
