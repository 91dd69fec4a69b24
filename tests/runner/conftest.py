"""Helpers for the runner tests: small experiment files written into a temporary directory."""

from __future__ import annotations

import os
import pathlib
import sys
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def default_trainer_source(*, num_steps=40, batch_size=32, widths=(16,), checkpoint_every=20, log_every=10,
                           lrs=(1e-3, 3e-3), seeds=2, optim="adamw", extra="") -> str:
  """An experiment for the default trainer: a digits MLP with an (lr x seed) sweep."""
  return textwrap.dedent(f"""
      import ml_collections
      from paperlab.runner import sweeps

      def get_config():
        c = ml_collections.ConfigDict()
        c.seed = 0
        c.data = dict(name="digits")
        c.model = dict(name="MLP", widths={tuple(widths)!r})
        c.optim = dict(name={optim!r}, learning_rate=1e-3)
        c.loss = dict(name="classification")
        c.train = dict(num_steps={num_steps}, batch_size={batch_size}, log_every={log_every},
                       checkpoint_every={checkpoint_every}, data_parallel=False)
        {extra}
        return c

      def get_sweep():
        return sweeps.product(sweeps.grid(**{{"optim.learning_rate": {list(lrs)!r}}}), sweeps.seeds({seeds}))
      """)


@pytest.fixture
def write_experiment(tmp_path):
  """``write_experiment(source, name="exp") -> path`` of a new experiment file."""
  def write(source: str, name: str = "exp") -> pathlib.Path:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return path
  return write


def subprocess_env(**extra) -> dict:
  env = dict(os.environ)
  env.setdefault("JAX_PLATFORMS", "cpu")
  env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
  env.update(extra)
  if "PAPERLAB_COMPILATION_CACHE" in extra:  # the test chooses the cache: not the test run's (tests/conftest.py)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env.pop("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", None)
  return env
