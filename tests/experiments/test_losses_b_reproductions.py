"""Reproductions of losses part B (uncertainty weighting, loss-free MoE balancing, VAT, ...): each asserts its
catalogue claim at CI scale."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

from paperlab.runner import Context

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "losses"


def _run(name: str, tmp_path) -> dict:
  spec = importlib.util.spec_from_file_location(f"experiments_losses_b_{name}", EXPERIMENTS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert isinstance(module.PAPER_ID, int) and module.CLAIM
  result = module.run(module.get_config(), Context(tmp_path, quiet=True))
  assert result["claim"]["statement"] == module.CLAIM
  assert (tmp_path / "metrics.jsonl").exists()
  return result


@pytest.mark.slow
@pytest.mark.parametrize("name", ["uncertainty_weighting", "aux_loss_free", "vat"])
def test_claim_reproduces(name, tmp_path):
  result = _run(name, tmp_path)
  assert result["claim"]["passed"], result["claim"]
