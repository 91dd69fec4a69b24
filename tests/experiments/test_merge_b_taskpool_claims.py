"""Reproduction tests on the ROT-DIGITS task pool: Iso-C [372], Model Breadcrumbs [369], PCB [285]."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import ClaimNotReproduced, require_reproduced


@pytest.fixture(scope="module")
def iso_c(run_claim, tmp_path_factory):
  return run_claim("merge/iso_c", tmp_path_factory.mktemp("iso_c"), paper_id=372)


@pytest.fixture(scope="module")
def breadcrumbs(run_claim, tmp_path_factory):
  return run_claim("merge/breadcrumbs", tmp_path_factory.mktemp("breadcrumbs"), paper_id=369)


@pytest.fixture(scope="module")
def pcb(run_claim, tmp_path_factory):
  return run_claim("merge/pcb", tmp_path_factory.mktemp("pcb"), paper_id=285)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason="does not reproduce at CI scale: ROT-DIGITS, 3 seeds, one val-picked grid: "
                   "Iso-C 69.3 +- 2.1 >= TA 60.3 +- 1.5 + 2 and alignment (0.932 vs 0.832) hold, but Iso-CTS "
                   "59.6 +- 1.6 < Iso-C 69.3 - 0.5 on every seed (grid to 6.0 changes no pick)")
def test_iso_c_claim(iso_c):
  require_reproduced(iso_c["claim"])


@pytest.mark.slow
def test_iso_c_control_task_arithmetic_as_the_method_fails(iso_c):
  assert not iso_c["claim"]["control_passes"]


@pytest.mark.slow
def test_iso_c_beats_task_arithmetic_and_aligns_better(iso_c):
  c = iso_c["claim"]
  assert c["iso_c"] >= c["task_arithmetic"] + c["margin"]
  assert c["alignment_iso_c"] > c["alignment_task_arithmetic"]


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason="does not reproduce at CI scale: ROT-DIGITS, 3 seeds, one val-picked grid: "
                   "breadcrumbs(0.85, 0.01) 47.0 +- 2.5 < TA 60.3 +- 1.5 - 0.5 (masking a task vector drops its own "
                   "task from 96.6 to 57.9); kept fraction 0.140 <= 0.15 and the 2->5-task drop (29.0 +- 2.5 vs TA "
                   "30.4 +- 3.2) hold")
def test_breadcrumbs_claim(breadcrumbs):
  require_reproduced(breadcrumbs["claim"])


@pytest.mark.slow
def test_breadcrumbs_control_task_arithmetic_as_the_method_fails(breadcrumbs):
  assert not breadcrumbs["claim"]["control_passes"]


@pytest.mark.slow
def test_breadcrumbs_is_sparse_and_degrades_less_when_adding_tasks(breadcrumbs):
  c = breadcrumbs["claim"]
  assert c["sparse_ok"] and c["kept_fraction_max"] <= 0.15
  assert c["drop_2_to_5_breadcrumbs"] < c["drop_2_to_5_task_arithmetic"]


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason="does not reproduce at CI scale: ROT-DIGITS, 3 seeds, one val-picked grid: "
                   "PCB(ratio 0.1) 46.7 +- 2.4 < TA 60.3 +- 1.5 + 1 on seed means (ratio 1.0, no trim: 52.5)")
def test_pcb_claim(pcb):
  require_reproduced(pcb["claim"])


@pytest.mark.slow
def test_pcb_control_task_arithmetic_as_the_method_fails(pcb):
  assert not pcb["claim"]["control_passes"] and not pcb["claim"]["vacuous"]
