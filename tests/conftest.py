"""Shared fixtures: embedded data loaded once per session, hypothesis profile for JAX (no deadline)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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

# XLA's CPU backend compiles faster for the test run (users and `paperlab reproduce` keep XLA's defaults). Most of
# the suite's CPU time is compilation. Two flags, set before any backend starts and inherited by the xdist workers,
# notebook kernels and CLI subprocesses:
# - LLVM at -O1: most of the compile time was LLVM optimizing the unrolled threefry rounds of model
#   initialization (an MLP's vmapped init: 1.2 s instead of 7.8 s); tests/test_train.py + the comp-sum
#   reproduction side by side: 245 -> 170 CPU-s.
# - XLA:CPU's older elemental emitters instead of the new fusion emitters (--xla_cpu_use_fusion_emitters=false):
#   a 5-width MLP init + Adam step compiles in 14.3 CPU-s instead of 18.6 at -O1; tests/losses/test_balancing.py
#   37.5 -> 27.8, tests/analysis/test_hessian.py 59.2 -> 37.0, tests/merge/test_averaging.py 23.8 -> 16.3 CPU-s; the
#   training-bound tests/experiments/test_quant_ptq_char.py runs the same (97 vs 101 CPU-s).
# Integer (RNG) results are identical; float results may differ in the last bits (fusion and vectorization), which
# the tests' tolerances and `paperlab reproduce --check` (rtol 1e-3) absorb. PAPERLAB_TEST_XLA_O1=0 turns both off
# (and the unit-test setting below); a flag already in XLA_FLAGS is kept. A jaxlib that does not know the emitter
# flag (XLA aborts on unknown flags) is probed once, in a subprocess, and then runs without it.
_FAST_XLA = os.environ.get("PAPERLAB_TEST_XLA_O1", "1") != "0"


def _xla_accepts(flags: str) -> bool:
  probe = "import jax; jax.devices('cpu')"
  env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, timeout=120).returncode == 0


if _FAST_XLA and "PYTEST_XDIST_WORKER" not in os.environ:
  _XLA_FLAGS = os.environ.get("XLA_FLAGS", "")
  if "xla_backend_optimization_level" not in _XLA_FLAGS:
    _XLA_FLAGS = f"{_XLA_FLAGS} --xla_backend_optimization_level=1".strip()
  if "xla_cpu_use_fusion_emitters" not in _XLA_FLAGS and _xla_accepts(
      f"{_XLA_FLAGS} --xla_cpu_use_fusion_emitters=false"):
    _XLA_FLAGS = f"{_XLA_FLAGS} --xla_cpu_use_fusion_emitters=false"
  os.environ["XLA_FLAGS"] = _XLA_FLAGS

import hypothesis  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

pytest_plugins = ["pytester"]  # tests that run pytest on a generated file (e.g. xfail(raises=...) semantics)

hypothesis.settings.register_profile("paperlab", deadline=None, max_examples=30, derandomize=True,
                                     suppress_health_check=[hypothesis.HealthCheck.too_slow])
hypothesis.settings.register_profile("thorough", deadline=None, max_examples=300)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "paperlab"))


# Unit tests compile with jax's `jax_disable_most_optimizations` (LLVM -O0, no expensive passes): their programs
# run for milliseconds, so compiling less is all that counts (tests/analysis/test_hessian.py 37.0 -> 24.6 CPU-s,
# tests/losses/test_balancing.py 27.8 -> 22.7). These keep the flags above:
# - the reproductions (tests/experiments/) and the tests marked slow: they train (at -O0 the char transformer's PTQ
#   reproduction runs 1.7x longer);
# - the runner's tests (tests/runner/): a record check re-runs an experiment whose numbers must match the record's
#   to rtol 1e-3 (the WSD record [432] does not at -O0: a suboptimality of 1.08e-5 becomes 1.21e-5), and a killed
#   CLI run (a subprocess, which inherits only XLA_FLAGS) is compared bit for bit with an in-process resume;
# - the parity tests (tests/parity/): their tolerances are set at the optimizing flags; at -O0 Adafactor's 20
#   oscillating steps drift 2.0e-5 from torch's (rtol 1e-5) and WSD's 1-square cooldown 3.5e-6 (rtol 1e-6).
# The setting is per process and not part of jax's in-memory jit caches, so a switch between the two kinds of test
# also clears those caches: no test runs a program compiled for the other kind.
_FULLY_OPTIMIZED = ("tests/experiments/", "tests/runner/", "tests/parity/")


@pytest.fixture(autouse=True)
def _compile_effort(request):
  if not _FAST_XLA or "JAX_DISABLE_MOST_OPTIMIZATIONS" in os.environ:
    yield
    return
  import jax  # pylint: disable=g-import-not-at-top
  want = not (request.node.nodeid.startswith(_FULLY_OPTIMIZED) or request.node.get_closest_marker("slow"))
  if jax.config.read("jax_disable_most_optimizations") != want:
    jax.clear_caches()
    jax.config.update("jax_disable_most_optimizations", want)
  yield


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
