"""Reproduction: the post-quantization integral vs the second-order Taylor estimate of the W3 RTN loss change, and
ReQuant's detach ranked by PQI vs by magnitude and Taylor, on DIGITS-MLP (catalogue [40])."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import ClaimNotReproduced, require_reproduced


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced,
                   reason="CI scale (5 epochs, N = 16): |sum PQI - dL| / dL 0.0004 < 0.05 holds, but the 2nd-order "
                   "Taylor error is 0.300 (not > 0.5); detach test loss PQI 0.1467 < Taylor 0.1479 < magnitude "
                   "0.1491. Full scale: Taylor error 0.468, detach PQI 0.1271 > Taylor 0.1259")
def test_pqi_matches_loss_change_and_its_detach_beats_magnitude_and_taylor(run_claim, tmp_path):
  result = run_claim("quant/pqi_requant", tmp_path, paper_id=40)
  claim = result["claim"]
  assert not claim["control_passes"], "the magnitude ranking passed as PQI must fail the claim"
  assert not claim["random_control_passes"], "a random ranking passed as PQI must fail the claim"
  assert all(d > 0 for d in claim["dl_true"])  # W3 RTN raises the loss on every seed: the relative errors are defined
  assert claim["pqi_rel_err"] < 0.05  # the part that holds: the integral matches the loss change
  require_reproduced(claim)
