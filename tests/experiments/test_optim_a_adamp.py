"""Reproduction: AdamP limits norm growth of scale-invariant kernels (catalogue [17])."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import ClaimNotReproduced, require_reproduced


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason=(
    "does not reproduce at the CI scale (CI_CONFIG: 20 epochs, seeds 0-2): norm growth AdamP +0.072% vs Adam "
    "+0.127% (ratio 0.57 > 0.5); nor at the full run (paperlab reproduce 17, the record: lr 1e-3, 40 epochs, 3 seeds): "
    "norm growth AdamP +0.073% vs "
    "Adam +0.098% (ratio 0.74 > 0.5); the kernels barely move at this learning rate"))
def test_adamp_limits_norm_growth(run_claim, tmp_path):
  result = run_claim("optim/adamp", tmp_path, paper_id=17)
  claim = result["claim"]
  assert not claim["control_passes"], "Adam passed as the method must fail the claim"
  assert claim["max_cosine_after_projection"] <= 1e-4  # the unit-test part holds
  assert claim["test_accuracy_adamp"] >= claim["test_accuracy_adam"] - 0.01
  require_reproduced(claim)
