"""Shared fixtures: embedded data loaded once per session, hypothesis profile for JAX (no deadline)."""

from __future__ import annotations

import os

import hypothesis
import jax.numpy as jnp
import pytest

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
