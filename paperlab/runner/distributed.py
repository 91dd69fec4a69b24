"""Running one experiment on several processes (hosts) joined by ``jax.distributed``.

On a TPU pod slice or a multi-node GPU job every host runs the same command; JAX joins the processes and
``jax.devices()`` then lists the devices of all of them. The runner keeps one program per process and makes the
processes agree without sharing a file system for their decisions:

* :func:`initialize` joins the cluster: auto-detected (Cloud TPU, SLURM, Open MPI: ``jax.distributed.initialize()``
  with no arguments), explicit (``coordinator``, ``num_processes``, ``process_id``), or from the environment
  variables JAX reads (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``). On CPU it selects
  the gloo collectives, so several local processes can be tried on one machine.
* :func:`is_primary` is true on process 0 only: it alone writes the run store (metrics, status, results, locks,
  checkpoint manifests) and reads it to decide what runs; :func:`broadcast` sends its decision to every process,
  so all of them run the same trials from the same step.
* :func:`barrier` waits for every process (``multihost_utils.sync_global_devices``).
* :func:`global_array` / :func:`to_host` move host values (equal on every process) onto a global sharding and
  global arrays back to every host.

Without :func:`initialize` (one process) every helper is the identity or a no-op.

If a process dies, JAX's coordination service notices the missing heartbeats and the surviving processes stop
(the runner turns that into a one-line error); the same command run again resumes from the last checkpoint.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

__all__ = ["initialize", "is_initialized", "is_primary", "process_index", "process_count", "broadcast",
           "broadcast_tree", "barrier", "global_array", "to_host", "ENV_VARS"]

ENV_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
_initialized = False


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               *, timeout_s: int = 300, heartbeat_timeout_s: int = 30) -> None:
  """Join this process to the cluster (call it before anything else uses JAX's devices).

  Args:
    coordinator: ``HOST:PORT`` of process 0's coordination service; ``None`` = auto-detect (Cloud TPU,
      SLURM, Open MPI) or ``$JAX_COORDINATOR_ADDRESS``.
    num_processes: how many processes join; ``None`` = auto-detect or ``$JAX_NUM_PROCESSES``.
    process_id: this process's index in ``[0, num_processes)``; ``None`` = auto-detect or ``$JAX_PROCESS_ID``.
    timeout_s: how long to wait for every process to join.
    heartbeat_timeout_s: a process silent that long is considered dead and the others stop.

  Raises:
    ValueError: an explicit argument is out of range or only some of the three are given.
  """
  global _initialized
  if _initialized:
    return
  given = [coordinator is not None, num_processes is not None, process_id is not None]
  if any(given) and not all(given):
    raise ValueError("--coordinator, --num-processes and --process-id go together (got "
                     f"coordinator={coordinator!r}, num_processes={num_processes!r}, process_id={process_id!r})")
  if num_processes is not None and (isinstance(num_processes, bool) or int(num_processes) < 1):
    raise ValueError(f"num_processes must be a positive integer, got {num_processes!r}")
  if process_id is not None and num_processes is not None and not 0 <= int(process_id) < int(num_processes):
    raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id!r}")
  if coordinator is None and all(os.environ.get(v) for v in ENV_VARS):
    try:
      coordinator = os.environ["JAX_COORDINATOR_ADDRESS"]
      num_processes, process_id = int(os.environ["JAX_NUM_PROCESSES"]), int(os.environ["JAX_PROCESS_ID"])
    except ValueError:
      raise ValueError(f"JAX_NUM_PROCESSES={os.environ['JAX_NUM_PROCESSES']!r} and JAX_PROCESS_ID="
                       f"{os.environ['JAX_PROCESS_ID']!r} must be integers") from None
    if not 0 <= process_id < num_processes:
      raise ValueError(f"JAX_PROCESS_ID must be in [0, {num_processes}), got {process_id!r}")
  import jax  # pylint: disable=g-import-not-at-top
  platforms = (os.environ.get("JAX_PLATFORMS") or os.environ.get("JAX_PLATFORM_NAME") or "").lower()
  if platforms in ("", "cpu"):
    try:  # CPU collectives between processes (ignored by TPU/GPU backends)
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except Exception:  # pylint: disable=broad-except  # an older/newer JAX without the option
      pass
  kwargs: dict[str, Any] = dict(initialization_timeout=int(timeout_s))
  try:
    import inspect  # pylint: disable=g-import-not-at-top
    if "heartbeat_timeout_seconds" in inspect.signature(jax.distributed.initialize).parameters:
      kwargs["heartbeat_timeout_seconds"] = int(heartbeat_timeout_s)
  except (TypeError, ValueError):
    pass
  if coordinator is not None:
    jax.distributed.initialize(coordinator, num_processes=int(num_processes), process_id=int(process_id), **kwargs)
  else:
    jax.distributed.initialize(**kwargs)
  _initialized = True


def is_initialized() -> bool:
  """Whether this process is part of a multi-process JAX cluster (through :func:`initialize` or directly)."""
  if _initialized:
    return True
  if "jax" not in sys.modules:
    return False
  try:
    from jax._src import distributed as _dist  # pylint: disable=g-import-not-at-top
    return getattr(_dist.global_state, "client", None) is not None
  except Exception:  # pylint: disable=broad-except
    return False


def process_index() -> int:
  """This process's index (0 when JAX runs as one process)."""
  if not is_initialized():
    return 0
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index()


def process_count() -> int:
  """How many processes run the program (1 when JAX runs as one process)."""
  if not is_initialized():
    return 1
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_count()


def is_primary() -> bool:
  """True on the process that writes the run store (process 0), and always in a single-process run."""
  return process_index() == 0


def broadcast(value: Any) -> Any:
  """Process 0's ``value`` (anything JSON can hold) on every process; the identity in a single-process run.

  Every process must call it at the same point (it is a collective); the others' ``value`` is ignored.
  """
  if process_count() == 1:
    return value
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  data = json.dumps(value).encode() if is_primary() else b""
  size = int(multihost_utils.broadcast_one_to_all(np.asarray(len(data), np.int32)))
  buf = np.zeros(size, np.uint8)
  if is_primary():
    buf[:] = np.frombuffer(data, np.uint8)
  out = np.asarray(multihost_utils.broadcast_one_to_all(buf)).astype(np.uint8)
  return json.loads(out.tobytes().decode())


def broadcast_tree(tree: Any, template: Any) -> Any:
  """Process 0's pytree of arrays on every process (as NumPy); the others pass ``template`` (same structure,
  shapes and dtypes; its values are ignored)."""
  if process_count() == 1:
    return tree
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  source = tree if is_primary() else jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), template)
  return jax.tree.map(np.asarray, multihost_utils.broadcast_one_to_all(source))


def barrier(name: str) -> None:
  """Wait until every process reaches the barrier ``name`` (no-op in a single-process run)."""
  if process_count() == 1:
    return
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  multihost_utils.sync_global_devices(name)


def global_array(value: Any, sharding: Any) -> Any:
  """Place a pytree of host values, equal on every process, on ``sharding`` (which may span processes).

  One process: ``jax.device_put``. Several: each process builds its own shards from its copy
  (``jax.make_array_from_callback``), so no data moves between hosts.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  if process_count() == 1:
    return jax.device_put(value, sharding)

  def place(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return jax.device_put(x, sharding)  # already global: reshard
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  return jax.tree.map(place, value)


def to_host(tree: Any) -> Any:
  """A pytree of (possibly global) arrays as NumPy arrays holding the global values, on every process."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  if process_count() == 1:
    return jax.tree.map(np.asarray, jax.device_get(tree))
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)

  return jax.tree.map(get, tree)
