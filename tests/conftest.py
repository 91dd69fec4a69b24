"""Shared fixtures: embedded data loaded once per session, hypothesis profile for JAX (no deadline)."""

from __future__ import annotations

import os
import shutil
import tempfile

# One persistent XLA compilation cache per test run, created by the controlling process and inherited by the
# xdist workers and the subprocesses they start: a program that several tests compile (same HLO, other Python
# closures) is compiled once. Loading an executable from it changes no result (the same compiled program); it
# cuts CPU time (tests/optim/test_lowrank.py alone: 64 -> 55 CPU-s, -15%). Nothing outlives the run
# (the directory is removed at the end), so a CI run never starts from a previous run's programs. Set
# JAX_COMPILATION_CACHE_DIR yourself to choose the directory, or PAPERLAB_TEST_XLA_CACHE=0 to turn it off.
_XLA_CACHE_CREATED = None
if ("PYTEST_XDIST_WORKER" not in os.environ and "JAX_COMPILATION_CACHE_DIR" not in os.environ
    and os.environ.get("PAPERLAB_TEST_XLA_CACHE", "1") != "0"):
  _XLA_CACHE_CREATED = tempfile.mkdtemp(prefix="paperlab-tests-xla-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _XLA_CACHE_CREATED
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

# XLA's CPU backend at LLVM -O1 for the test run (users and `paperlab reproduce` keep XLA's default, -O2+). Most
# of the suite's CPU time is compilation, and most of that is LLVM optimizing the unrolled threefry rounds of model
# initialization: an MLP's vmapped init compiles in 1.2 s instead of 7.8 s; tests/test_train.py + the comp-sum
# reproduction, side by side: 245 -> 170 CPU-s (-31%; the reproduction's training too: 103 -> 87). Integer
# (RNG) results are identical; float results may differ in the last bits (fusion and vectorization), which the
# tests' tolerances and `paperlab reproduce --check` (rtol 1e-3) absorb. PAPERLAB_TEST_XLA_O1=0 turns it off;
# an optimization level already in XLA_FLAGS is kept.
_XLA_FLAGS = os.environ.get("XLA_FLAGS", "")
if os.environ.get("PAPERLAB_TEST_XLA_O1", "1") != "0" and "xla_backend_optimization_level" not in _XLA_FLAGS:
  os.environ["XLA_FLAGS"] = f"{_XLA_FLAGS} --xla_backend_optimization_level=1".strip()

import hypothesis  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

pytest_plugins = ["pytester"]  # tests that run pytest on a generated file (e.g. xfail(raises=...) semantics)

hypothesis.settings.register_profile("paperlab", deadline=None, max_examples=30, derandomize=True,
                                     suppress_health_check=[hypothesis.HealthCheck.too_slow])
hypothesis.settings.register_profile("thorough", deadline=None, max_examples=300)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "paperlab"))


@pytest.fixture(scope="session")
def digits_data():
  """The default digits split as host arrays."""
  from paperlab import data

  return data.digits()


@pytest.fixture(scope="session")
def digits_jnp(digits_data):
  """``(x_train, y_train)`` as device arrays."""
  return jnp.asarray(digits_data.x_train), jnp.asarray(digits_data.y_train)


def pytest_unconfigure(config):  # pylint: disable=unused-argument
  if _XLA_CACHE_CREATED is not None:
    shutil.rmtree(_XLA_CACHE_CREATED, ignore_errors=True)
