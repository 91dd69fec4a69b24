"""Reproduction test for "A Unified View of Delta Parameter Editing" [272] on ROT-DIGITS."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_riemann_sign_matches_measured_loss_change_and_small_expo_helps(run_claim, tmp_path):
  result = run_claim("merge/delta_editing", tmp_path, paper_id=272)
  assert result["claim"]["passed"], result["claim"]
