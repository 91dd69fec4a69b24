"""Reproduction: the SDE model of unnormalized SAM (catalogue [444])."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import ClaimNotReproduced, require_reproduced


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason=(
    "(b) does not reproduce with the catalogue's 4096 Monte-Carlo paths: weak error 1.29e-3 at eta=0.1 (stderr "
    "8.7e-4) vs 8.93e-4 at eta/4 (stderr 4.4e-4), ratio 1.44 < 2.5; the closed-form moments give ratio 3.02 and "
    "65536 paths gave 3.99. (a) holds: |x_neg| USAM 7.3e-12, GD 3.9e10."))
def test_usam_is_attracted_to_saddles_and_its_sde_is_a_first_order_weak_approximation(run_claim, tmp_path):
  result = run_claim("optim/sam_sde", tmp_path, paper_id=444)
  claim = result["claim"]
  assert claim["usam_x_neg"] <= 1e-3 and claim["gd_x_neg"] >= 10
  assert claim["closed_form_error_ratio"] >= 2.5   # the exact moments are order 1
  assert not claim["control_passes"], claim["control_error_ratio"]  # SGD's SDE in USAM's place must fail
  require_reproduced(claim)  # (b): error ratio >= 2.5 with the catalogue's paths
