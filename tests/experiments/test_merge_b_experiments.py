"""Reproductions of merge part B at CI scale (each <= 60 s on one core)."""

from __future__ import annotations

import pathlib

import pytest

from paperlab.runner import Context
from paperlab.runner.config import load_experiment

ROOT = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "merge"


def _load(name):
  return load_experiment(ROOT / f"{name}.py")


def _run(name, tmp_path):
  module = _load(name)
  result = module.run(module.get_config(), Context(tmp_path, quiet=True))
  assert result["claim"]["statement"] == module.CLAIM
  assert isinstance(module.PAPER_ID, int)
  assert (tmp_path / "metrics.jsonl").exists()
  return result


@pytest.mark.slow
def test_weight_matching_cuts_the_midpoint_barrier(tmp_path):
  result = _run("rebasin", tmp_path)
  assert result["claim"]["passed"], result["claim"]


@pytest.mark.slow
def test_opcm_beats_continual_averaging(tmp_path):
  result = _run("opcm", tmp_path)
  assert result["claim"]["passed"], result["claim"]


@pytest.fixture(scope="module")
def fisher_result(tmp_path_factory):
  return _run("fisher", tmp_path_factory.mktemp("fisher"))


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="does not reproduce at CI scale: mean over 6 seeds Fisher 83.4% vs simple "
                   "average 82.5% (+0.9 points, claim needs +2)")
def test_fisher_merging_beats_simple_averaging(fisher_result):
  assert fisher_result["claim"]["passed"], fisher_result["claim"]


@pytest.mark.slow
def test_regmean_beats_simple_averaging(fisher_result):
  acc = fisher_result["accuracy_mean_over_seeds"]
  assert fisher_result["regmean_beats_average"], acc


@pytest.mark.slow
def test_fedprox_beats_fedavg_with_stragglers(tmp_path):
  result = _run("fedprox", tmp_path)
  assert result["claim"]["passed"], result["claim"]


@pytest.mark.slow
def test_repair_lowers_the_barrier_after_weight_matching(tmp_path):
  result = _run("rebasin_repair", tmp_path)
  assert result["claim"]["passed"], result["claim"]


@pytest.mark.slow
def test_starlight_star_is_connected_to_held_out_solutions(tmp_path):
  result = _run("star_domain", tmp_path)
  assert result["claim"]["passed"], result["claim"]


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="does not reproduce at CI scale: evolved 85.9% vs best-scale TA 85.5% test "
                   "(+0.4 points, claim needs +1); across seeds/settings the difference ranges from -3.1 to +2.7")
def test_evolved_coefficients_beat_the_best_task_arithmetic_scale(tmp_path):
  result = _run("evolve", tmp_path)
  assert result["claim"]["passed"], result["claim"]


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="does not reproduce at CI scale: FedLAW 92.0% vs FedAvg 93.6% test accuracy, "
                   "learned gamma 0.999 (claim: gamma < 1 and FedLAW >= FedAvg + 1 point)")
def test_fedlaw_beats_fedavg_with_label_skew(tmp_path):
  result = _run("fedprox_fedlaw", tmp_path)
  assert result["claim"]["passed"], result["claim"]
