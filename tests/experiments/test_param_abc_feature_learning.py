"""Reproduction: after one SGD step the hidden features move by Theta(1) under muP and by n^{-1/2} under NTP
(Yang & Hu, arXiv:2011.14522; catalogue [563])."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import require_reproduced


@pytest.mark.slow
def test_features_move_width_independently_under_mup_and_vanish_under_ntp(run_claim, tmp_path):
  result = run_claim("param/abc_feature_learning", tmp_path, paper_id=563)
  claim = result["claim"]
  assert not claim["control_passes"], "NTP's movements in muP's place must fail the claim"
  assert len(result["protocol"]["seeds"]) >= 3
  # the one-hidden-layer mean-field parametrization is muP (TP4): the same movements
  assert result["summary"]["mf"]["movement"] == pytest.approx(result["summary"]["mup"]["movement"], rel=1e-4)
  require_reproduced(claim)
