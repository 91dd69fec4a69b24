"""Reproduction: under the NTK parametrization the tangent kernel freezes as the width grows (catalogue [564])."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import require_reproduced


@pytest.mark.slow
def test_ntk_kernel_change_decays_with_width_and_its_init_variance_like_one_over_width(run_claim, tmp_path):
  result = run_claim("param/ntk", tmp_path, paper_id=564)
  claim = result["claim"]
  assert not claim["control_passes"], "muP (feature learning) in NTK's place must fail the claim"
  assert claim["change_slope_mup"] > -0.2, "under muP the kernel must keep moving at every width"
  require_reproduced(claim)
