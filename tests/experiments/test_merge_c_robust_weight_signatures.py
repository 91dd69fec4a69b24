"""Reproduction test for "Robust Weight Signatures" [3] on digits with Gaussian input noise."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import ClaimNotReproduced, require_reproduced


@pytest.fixture(scope="module")
def rws(run_claim, tmp_path_factory):
  return run_claim("merge/robust_weight_signatures", tmp_path_factory.mktemp("rws"), paper_id=3)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason="does not reproduce at CI scale (sigma 1.0, seeds 0-8): first-layer patch "
                   "recovers 0.684 +- 0.14 < 0.70 of the full delta's noisy gain (+4.6 of +6.8 points); clean cost "
                   "0.00 pt and first-layer energy 43.6% > 31.9% params hold")
def test_first_layer_signature_recovers_noise_robustness(rws):
  require_reproduced(rws["claim"])


@pytest.mark.slow
def test_first_layer_holds_the_delta_energy_at_no_clean_cost(rws):
  c = rws["claim"]
  assert c["first_layer_energy_share"] > c["first_layer_param_share"]
  assert c["clean_cost"] <= c["max_clean_cost"] and c["patch_removal_max_abs_error"] < 1e-5


@pytest.mark.slow
def test_rws_control_a_patch_that_does_nothing_fails(rws):
  assert not rws["claim"]["control_passes"]
