"""Reproduction: a subcloned 2-block half-width student trains faster than a random init (catalogue [163])."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import require_reproduced


@pytest.mark.slow
def test_subcloned_student_beats_random_init_at_step_200(run_claim, tmp_path):
  result = run_claim("param/subcloning", tmp_path, paper_id=163)
  claim = result["claim"]
  assert not claim["control_passes"], "the random init in the subcloned init's place must fail the claim"
  # the subcloned student starts from the teacher's function: its loss before training is below the random init's
  assert result["subclone"]["init_test_loss"][0] < result["random"]["init_test_loss"][0]
  require_reproduced(claim)
