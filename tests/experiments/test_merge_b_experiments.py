"""Reproductions of merge part B at CI scale (each <= 60 s on one core)."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import ClaimNotReproduced, require_reproduced


@pytest.mark.slow
def test_weight_matching_cuts_the_midpoint_barrier(run_claim, tmp_path):
  # measured (TWO-SEED, H=512, 3 pairs): barrier 0.430 -> 0.063, alignment 3.1x / 5.9x, L2 ratio 0.875
  result = run_claim("merge/rebasin", tmp_path, paper_id=22)
  require_reproduced(result["claim"])
  assert not result["claim"]["control_passes"], "the identity permutation in WM's place must fail the claim"


@pytest.fixture(scope="module")
def opcm_result(run_claim, tmp_path_factory):
  return run_claim("merge/opcm", tmp_path_factory.mktemp("opcm"), paper_id=506)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason="does not reproduce at CI scale (ROT-DIGITS, seeds 0-2 x 3 orderings): OPCM's "
                   "std over orderings 1.9 points > continual TA's 0 (a sum: order-invariant); the accuracy parts hold "
                   "(OPCM 55.4 +- 1.4 vs average 37.9 + 2 and TA(0.3) 52.3 - 1)")
def test_opcm_claim(opcm_result):
  require_reproduced(opcm_result["claim"])


@pytest.mark.slow
def test_opcm_beats_continual_averaging_and_keeps_up_with_task_arithmetic(opcm_result):
  c = opcm_result["claim"]
  assert c["beats_average"] and c["near_task_arithmetic"], c
  assert not c["control_passes"], "the weight average in OPCM's place must fail the claim"


@pytest.fixture(scope="module")
def fisher_result(run_claim, tmp_path_factory):
  return run_claim("merge/fisher", tmp_path_factory.mktemp("fisher"), paper_id=460)


@pytest.mark.slow
def test_fisher_merging_beats_simple_averaging_and_the_base(fisher_result):
  # Measured (ROT-DIGITS, seeds 0-2): Fisher 53.9% vs uniform average 37.9% and base 23.9%.
  claim = fisher_result["claim"]
  assert not claim["control_passes"], "the uniform average passed as the method must fail"
  assert len(fisher_result["accuracy_per_seed"]["fisher"]) == 3
  require_reproduced(claim)


@pytest.mark.slow
def test_regmean_beats_simple_averaging(fisher_result):
  acc = fisher_result["accuracy_mean_over_seeds"]
  assert fisher_result["regmean_beats_average"], acc


@pytest.mark.slow
def test_fedprox_beats_fedavg_with_stragglers(run_claim, tmp_path):
  # Measured (seeds 0-2): train loss 0.611 vs 1.289, test acc 82.1% vs 65.0%, loss std 0.026 vs 0.098. At the CI
  # scale (40 rounds, sizes capped at 100): 0.931 vs 1.502, 70.2% vs 51.7%, 0.042 vs 0.070.
  result = run_claim("merge/fedprox", tmp_path, paper_id=385)
  assert not result["claim"]["control_passes"], "FedAvg passed as the method must fail"
  assert len(result["per_seed"]["fedprox"]["test_acc"]) == 3
  require_reproduced(result["claim"])


@pytest.fixture(scope="module")
def repair_result(run_claim, tmp_path_factory):
  return run_claim("merge/rebasin_repair", tmp_path_factory.mktemp("rebasin_repair"), paper_id=331)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason="does not reproduce at the CI scale (H=256, 10 epochs, 3 pairs): midpoint std "
                   "ratio 0.738, not < 0.7; pruned 80% 90.1% -> renormalised 90.9% (+0.7, needs +5); the barriers "
                   "hold (REPAIR 0.050 <= WM 0.147, rescale 0.051 <= reshift 0.146). Nor does the full run "
                   "(paperlab reproduce 331, the record; TWO-SEED H=512): std ratio 0.725, pruning +1.4; barriers hold")
def test_repair_lowers_the_barrier_after_weight_matching(repair_result):
  require_reproduced(repair_result["claim"])


@pytest.mark.slow
def test_repair_and_rescale_orderings_hold(repair_result):
  c = repair_result["claim"]
  assert c["repair_ok"] and c["rescale_ok"], c
  assert not c["control_passes"], "a repair that does nothing must fail the claim"


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason="does not reproduce at the CI scale (H=64, 5 epochs, star 3 epochs, seeds 0-2): "
                   "star barrier 0.386 +- 0.046 vs 0.5 x source 0.509 (ratio 0.76; star acc 87.6% vs sources 84.0% "
                   "holds). Nor does the full run (paperlab reproduce 99, the record; H=256, 20 epochs): star barrier "
                   "0.044 +- 0.008 vs 0.5 x source 0.085 (ratio 0.52) and star acc 96.4% < sources 97.7% - 1")
def test_starlight_star_is_connected_to_held_out_solutions(run_claim, tmp_path):
  result = run_claim("merge/star_domain", tmp_path, paper_id=99)
  assert not result["claim"]["control_passes"], "an ordinary solution in the star's place must fail the claim"
  require_reproduced(result["claim"])


@pytest.mark.slow
def test_evolved_coefficients_beat_the_best_task_arithmetic_scale(run_claim, tmp_path):
  # Measured (ROT-DIGITS, seeds 0-2): evolved 66.1% vs best-scale task arithmetic 60.2% (same 240-evaluation budget).
  result = run_claim("merge/evolve", tmp_path, paper_id=305)
  assert not result["claim"]["control_passes"], "task arithmetic passed as the method must fail"
  assert len(result["accuracy_per_seed"]["evolved"]) == 3
  require_reproduced(result["claim"])


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason=(
    "does not reproduce at the CI scale (12 rounds x 3 local epochs, 3 seeds): FedLAW 84.6% vs FedAvg 88.0%, "
    "gamma 1.006; nor in the full run (the record, 30 rounds x 5 epochs): 92.37% vs 94.81%, gamma 0.9992 "
    "(claim: gamma < 1 and FedLAW >= FedAvg + 1 point)"))
def test_fedlaw_beats_fedavg_with_label_skew(run_claim, tmp_path):
  result = run_claim("merge/fedprox_fedlaw", tmp_path, paper_id=164)
  assert not result["claim"]["control_passes"], "FedAvg passed as the method must fail"
  assert len(result["per_seed"]["fedlaw"]["test_acc"]) == 3
  require_reproduced(result["claim"])
