"""Reproduction: WeLore non-uniform ranks vs a uniform rank on a GaLore-trained MLP (catalogue [60])."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import ClaimNotReproduced, require_reproduced


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason=(
    "does not reproduce at the CI scale (CI_CONFIG: 300 steps, seeds 0-2: WeLore raises the test loss by 0.173 vs "
    "0.153 for the uniform rank, rank-fraction std 0.23 vs uniform 0.32) nor at the full run (paperlab reproduce 60, "
    "the record, 1000 steps): at 50% of kernel parameters WeLore's global threshold raises the GaLore "
    "model's test loss by 0.131 (mean of 3 seeds) vs 0.102 for one uniform rank (27-28) under the same budget. "
    "The rank-fraction std (0.25 >= 0.1) does not discriminate: the uniform rank scores 0.32 (the 128x10 head "
    "caps at 10), so the control passes too. On an Adam-trained model WeLore wins (0.035 vs 0.039), not asserted."))
def test_welore_compression_beats_uniform_rank(run_claim, tmp_path):
  result = run_claim("optim/galore_welore", tmp_path, paper_id=60)
  claim = result["claim"]
  assert len(result["galore"]["per_seed"]["delta_welore"]) == 3
  assert claim["rank_fraction_std"] >= 0.1
  # Recorded finding: uniform ranks in WeLore's place also pass the std part, so that part cannot discriminate.
  assert claim["control_passes"] and claim["vacuous"]
  require_reproduced(claim)
