"""Helpers of the multi-process runner tests (test_distributed.py, test_distributed_custom.py): a free local port
for the coordinator and the environment of a CPU-only JAX child process with N host devices."""

from __future__ import annotations

import os
import pathlib
import socket

ROOT = pathlib.Path(__file__).resolve().parents[2]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def cpu_env(devices: int) -> dict:
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
             PAPERLAB_COMPILATION_CACHE="0")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # no compilation cache in the multi-process children
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
  return env
