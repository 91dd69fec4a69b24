"""Reproduction: lottery jackpots -- a mask searched on frozen pre-trained weights from the magnitude mask beats
the magnitude mask at 80% sparsity (catalogue [91])."""

from __future__ import annotations

import numpy as np
import pytest

from paperlab.runner.protocol import require_reproduced


@pytest.mark.slow
def test_jackpot_mask_beats_magnitude_mask_without_weight_updates(run_claim, tmp_path):
  result = run_claim("prune/lottery_jackpots", tmp_path, paper_id=91)
  claim = result["claim"]
  assert not claim["control_passes"], "the magnitude mask passed as the jackpot"
  assert claim["start_is_magnitude"]
  np.testing.assert_allclose(claim["kept_fraction"], 0.2, atol=1e-4)  # exact per-kernel density
  assert claim["changed_fraction"] > 0.0
  require_reproduced(claim)
