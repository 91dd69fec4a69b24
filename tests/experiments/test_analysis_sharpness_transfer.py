"""Reproduction: the learning-rate-scaled sharpness is width-independent under muP and grows with width under SP
(Noci et al., arXiv:2402.17457; catalogue [565])."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import require_reproduced


@pytest.mark.slow
def test_sharpness_is_super_consistent_under_mup_and_grows_under_sp(run_claim, tmp_path):
  result = run_claim("analysis/sharpness_transfer", tmp_path, paper_id=565)
  claim = result["claim"]
  assert not claim["control_passes"], "SP's sharpness in muP's place must fail the claim"
  assert len(result["protocol"]["seeds"]) >= 3
  assert claim["diverged_widths_mup"] == []
  # SP's growth does not rest on the divergence rule alone: at step 0 (finite everywhere) it already grows > 3x
  assert claim["growth_sp_step0"] > 3.0, claim["growth_sp_step0"]
  assert (tmp_path / "sharpness_by_width.png").exists()
  require_reproduced(claim)
