"""Shared by the reproduction tests: run an experiment at its CI-scale config and check the contract."""

from __future__ import annotations

import pathlib

import pytest

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[2] / "experiments"


@pytest.fixture(scope="session")
def run_claim():
  """``run_claim("family/name", workdir, paper_id=None) -> result`` of ``experiments/family/name.py`` at its
  CI scale: ``get_config()`` with the module's ``CI_CONFIG`` overrides, if it has any (see
  ``paperlab.runner.config.ci_config``; the record is made at the full default config by ``paperlab reproduce``).

  Checks the reproduction contract on the way: an int ``PAPER_ID``, the ``CLAIM`` returned as the claim's
  statement, and logged metrics. The claim itself is asserted (or xfailed) by the test.
  """
  from paperlab.runner import Context  # pylint: disable=g-import-not-at-top
  from paperlab.runner.config import apply_overrides, ci_config, load_experiment  # pylint: disable=g-import-not-at-top

  def run(name: str, workdir, paper_id: int | None = None) -> dict:
    module = load_experiment(EXPERIMENTS / f"{name}.py")
    assert isinstance(module.PAPER_ID, int) and module.CLAIM
    assert paper_id is None or module.PAPER_ID == paper_id
    config, overrides = module.get_config(), ci_config(module)
    if overrides:
      config = apply_overrides(config, overrides)
    result = module.run(config, Context(workdir, quiet=True))
    assert result["claim"]["statement"] == module.CLAIM
    assert (pathlib.Path(workdir) / "metrics.jsonl").exists()
    return result

  return run
