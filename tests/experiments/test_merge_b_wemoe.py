"""WEMoE reproduction on ROT-DIGITS at CI scale (<= 60 s on one core)."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import ClaimNotReproduced, require_reproduced


@pytest.fixture(scope="module")
def wemoe(run_claim, tmp_path_factory):
  return run_claim("merge/wemoe", tmp_path_factory.mktemp("wemoe"), paper_id=402)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason="does not reproduce at CI scale (ROT-DIGITS, last hidden layer upscaled, 200 "
                   "TTA steps, seeds 0-2): WEMoE 32.5 +- 2.5 < TA(0.3) 52.3 + 5 and < 0.9 x fine-tuned 96.6: entropy "
                   "minimization routes every task to a confidently wrong mixture")
def test_wemoe_beats_task_arithmetic_and_nears_the_finetuned_models(wemoe):
  require_reproduced(wemoe["claim"])


@pytest.mark.slow
def test_wemoe_starts_as_task_arithmetic_and_its_control_fails(wemoe):
  # TTA starts from task arithmetic (routers initialised at lambda)
  assert abs(wemoe["mean_task_accuracy"]["wemoe_before_tta"] - wemoe["claim"]["task_arithmetic"]) < 0.01
  assert not wemoe["claim"]["control_passes"]
