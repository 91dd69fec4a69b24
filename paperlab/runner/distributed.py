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

If a process dies, the others stop within a bounded time with one line on stderr and a non-zero exit status
(:data:`PEER_LOST_EXIT`): every process writes a heartbeat into the coordination service's key-value store each
second and a watchdog thread exits the process when a peer's heartbeat has not changed for ``heartbeat_timeout_s``
seconds (``--heartbeat-timeout`` / ``$PAPERLAB_HEARTBEAT_TIMEOUT``, default :data:`DEFAULT_HEARTBEAT_TIMEOUT` s),
or when the coordination service (on process 0) cannot be reached for that long::

  paperlab: process 1 of 2 stopped responding (no heartbeat for 30 s); relaunch the same command to resume from
  step 40

Without it a surviving process would wait in a collective until JAX's own (longer) heartbeat timeout aborts it
with a C++ log and status 134. When process 0 dies, its coordination service goes with it and JAX aborts the
others at once, from C++, before any Python code can run; so ``paperlab run`` under several processes runs its
work in a child process (:func:`supervise`) that turns that abort into the same line (naming process 0) and
status. The same command run again resumes from the last checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from typing import Any, Callable

__all__ = ["initialize", "is_initialized", "is_primary", "process_index", "process_count", "broadcast",
           "broadcast_tree", "barrier", "global_array", "to_host", "finish", "await_verdict", "heartbeat_timeout_from_env",
           "check_heartbeat_timeout", "supervise", "announce", "die_with_supervisor", "ENV_VARS", "HEARTBEAT_ENV_VAR",
           "DEFAULT_HEARTBEAT_TIMEOUT", "PEER_LOST_EXIT", "WORKER_ENV_VAR"]

ENV_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
HEARTBEAT_ENV_VAR = "PAPERLAB_HEARTBEAT_TIMEOUT"
DEFAULT_HEARTBEAT_TIMEOUT = 30.0
PEER_LOST_EXIT = 75  # EX_TEMPFAIL: try again (relaunch the same command)
WORKER_ENV_VAR = "PAPERLAB_DISTRIBUTED_WORKER"  # in the child that :func:`supervise` starts: the parent's pid
_HEARTBEAT_KEY = "paperlab/heartbeat/"
_ANNOUNCE = "paperlab-distributed-worker: process "
_DONE = "done"
_initialized = False
_watchdog: "_Watchdog | None" = None


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               *, timeout_s: int = 300, heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT,
               resume_hint: Callable[[], str] | None = None) -> None:
  """Join this process to the cluster (call it before anything else uses JAX's devices).

  Args:
    coordinator: ``HOST:PORT`` of process 0's coordination service; ``None`` = auto-detect (Cloud TPU,
      SLURM, Open MPI) or ``$JAX_COORDINATOR_ADDRESS``.
    num_processes: how many processes join; ``None`` = auto-detect or ``$JAX_NUM_PROCESSES``.
    process_id: this process's index in ``[0, num_processes)``; ``None`` = auto-detect or ``$JAX_PROCESS_ID``.
    timeout_s: how long to wait for every process to join.
    heartbeat_timeout_s: a process whose heartbeat has not changed for that many seconds is considered dead
      and the others exit (status :data:`PEER_LOST_EXIT`) with one line naming it; JAX's own heartbeat
      timeout is set longer (``2 * heartbeat_timeout_s + 10``) so that this line, not JAX's abort, ends them.
    resume_hint: called when a peer is lost; returns where a relaunch resumes (e.g. ``"step 40"``) for the
      line printed before exiting. ``None``: "the last checkpoint".

  Raises:
    ValueError: an explicit argument is out of range, only some of the three are given, or
      ``heartbeat_timeout_s`` is not a positive finite number.
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
  check_heartbeat_timeout(heartbeat_timeout_s, "heartbeat_timeout_s")
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
      # Longer than ours: the watchdog's one line ends a survivor, not JAX's fatal log (exit 134).
      kwargs["heartbeat_timeout_seconds"] = int(2 * heartbeat_timeout_s + 10)
  except (TypeError, ValueError):
    pass
  if coordinator is not None:
    jax.distributed.initialize(coordinator, num_processes=int(num_processes), process_id=int(process_id), **kwargs)
  else:
    jax.distributed.initialize(**kwargs)
  _initialized = True
  _start_watchdog(float(heartbeat_timeout_s), resume_hint)


def check_heartbeat_timeout(value: Any, name: str = "heartbeat_timeout_s") -> float:
  """``value`` as seconds (a float).

  Raises:
    ValueError: ``value`` is not a positive finite number (the message names ``name``).
  """
  import math  # pylint: disable=g-import-not-at-top
  try:
    seconds = float(value)
  except (TypeError, ValueError):
    seconds = math.nan
  if isinstance(value, bool) or not (math.isfinite(seconds) and seconds > 0):
    raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
  return seconds


def heartbeat_timeout_from_env(default: float = DEFAULT_HEARTBEAT_TIMEOUT) -> float:
  """``$PAPERLAB_HEARTBEAT_TIMEOUT`` in seconds, or ``default`` when unset.

  Raises:
    ValueError: the variable is set but not a positive number.
  """
  text = os.environ.get(HEARTBEAT_ENV_VAR, "").strip()
  return check_heartbeat_timeout(text, HEARTBEAT_ENV_VAR) if text else float(default)


class _Watchdog:
  """Heartbeats through the coordination service's key-value store, and the exit when a peer falls silent.

  One thread writes this process's counter (``paperlab/heartbeat/<i>``) and reads everyone's each
  ``interval`` seconds; another judges: a peer whose counter has not changed for ``timeout`` seconds, or a
  coordination service that has not answered for that long (it lives in process 0), ends this process. Two
  threads, so that a key-value call blocked on a dead coordinator cannot delay the verdict.
  """

  def __init__(self, client, index: int, count: int, timeout: float, resume_hint):
    self.client, self.index, self.count, self.timeout = client, index, count, timeout
    self.resume_hint = resume_hint
    self.interval = min(1.0, timeout / 4)
    now = time.monotonic()
    self.seen = {i: (None, now) for i in range(count) if i != index}  # peer -> (last counter, when it changed)
    self.answered = now  # when the coordination service last answered
    self.finished = False
    self.lock = threading.Lock()

  def start(self) -> None:
    for target, name in ((self._beat, "paperlab-heartbeat"), (self._judge, "paperlab-watchdog")):
      threading.Thread(target=target, name=name, daemon=True).start()

  def _beat(self) -> None:
    beat = 0
    while not self.finished:
      beat += 1
      try:
        self.client.key_value_set(f"{_HEARTBEAT_KEY}{self.index}", str(beat), allow_overwrite=True)
        values = dict(self.client.key_value_dir_get(_HEARTBEAT_KEY))
      except Exception:  # pylint: disable=broad-except  # the service is unreachable: the judge decides
        time.sleep(self.interval)
        continue
      now = time.monotonic()
      with self.lock:
        self.answered = now
        for peer, (last, _) in list(self.seen.items()):
          value = values.get(f"{_HEARTBEAT_KEY}{peer}")
          if value == _DONE:
            del self.seen[peer]  # finished its work and left: not a failure
          elif value != last:
            self.seen[peer] = (value, now)
      time.sleep(self.interval)

  def _judge(self) -> None:
    while not self.finished:
      time.sleep(self.interval / 2)
      now = time.monotonic()
      with self.lock:
        unreachable = now - self.answered > self.timeout
        # Judged on what the service last reported: while it does not answer, only it is known to be silent.
        silent = sorted(p for p, (_, t) in self.seen.items() if self.answered - t > self.timeout)
      if self.finished:
        return
      if unreachable:
        self._exit([0], f"its coordination service has not answered for {self.timeout:g} s")
      elif silent:
        self._exit(silent, f"no heartbeat for {self.timeout:g} s")

  def _exit(self, peers: list[int], why: str) -> None:
    try:
      where = self.resume_hint() if self.resume_hint is not None else None
    except Exception:  # pylint: disable=broad-except  # the message must come out regardless
      where = None
    who = (f"process {peers[0]} of {self.count}" if len(peers) == 1 else
           f"processes {', '.join(map(str, peers))} of {self.count}")
    print(f"paperlab: {who} stopped responding ({why}); relaunch the same command to resume from "
          f"{where or 'the last checkpoint'}", file=sys.stderr, flush=True)
    os._exit(PEER_LOST_EXIT)  # pylint: disable=protected-access  # atexit would wait on the dead peer

  def finish(self) -> None:
    self.finished = True
    try:
      self.client.key_value_set(f"{_HEARTBEAT_KEY}{self.index}", _DONE, allow_overwrite=True)
    except Exception:  # pylint: disable=broad-except
      pass


def _start_watchdog(timeout: float, resume_hint) -> None:
  global _watchdog
  from jax._src import distributed as _dist  # pylint: disable=g-import-not-at-top
  client = getattr(_dist.global_state, "client", None)
  if client is None or _watchdog is not None:
    return
  import jax  # pylint: disable=g-import-not-at-top
  _watchdog = _Watchdog(client, jax.process_index(), jax.process_count(), timeout, resume_hint)
  _watchdog.start()


def await_verdict() -> None:
  """After an error in a multi-process run: give the watchdog one heartbeat timeout to find a lost peer (it
  then prints its line and exits); return when every peer is still alive, so the caller reports the error.

  A collective whose peer died may fail (gloo: connection closed) before the heartbeat timeout runs out; this
  keeps that secondary error from hiding the cause.
  """
  if _watchdog is None or _watchdog.finished:
    return
  deadline = time.monotonic() + _watchdog.timeout + 2 * _watchdog.interval
  while time.monotonic() < deadline:
    time.sleep(_watchdog.interval / 2)


def finish() -> None:
  """Tell the other processes that this one is done (its heartbeat stops without being a failure) and stop the
  watchdog; call it when the run's last collective has returned. A no-op in a single-process run."""
  if _watchdog is not None:
    _watchdog.finish()


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


# glog lines of JAX's coordination client and service: held back while they may be the prelude of JAX's abort.
_COORDINATION_LOG = re.compile(r"^[IWEF]\d{4} [\d:.]+ +\d+ (coordination_service|coordination_service_agent|"
                               r"preemption_sync_manager|client|distributed)\.(cc|h):\d+\]")
_JAX_ABORT = "Terminating process because the JAX distributed service detected fatal errors"


def announce() -> None:
  """In the child process of :func:`supervise`: tell the parent this process's index and the process count."""
  if os.environ.get(WORKER_ENV_VAR):
    print(f"{_ANNOUNCE}{process_index()} of {process_count()}", file=sys.stderr, flush=True)


def die_with_supervisor() -> None:
  """In the child process of :func:`supervise` (Linux): be killed when the supervising command dies, so that a
  SIGKILL of the command stops the work and the other processes notice. Call it first thing in the worker."""
  parent = os.environ.get(WORKER_ENV_VAR, "")
  if not parent.isdigit() or not sys.platform.startswith("linux"):
    return
  try:
    import ctypes  # pylint: disable=g-import-not-at-top
    import signal  # pylint: disable=g-import-not-at-top
    ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    return
  if os.getppid() != int(parent):  # the supervisor died before prctl
    os._exit(PEER_LOST_EXIT)  # pylint: disable=protected-access


def supervise(argv: list[str], resume_hint: Callable[[], str | None] | None = None) -> int:
  """Run ``python argv...`` (the same ``paperlab run`` command) as a child process and return its exit status.

  Its standard output is inherited and its standard error forwarded line by line, except when JAX aborts it
  because another process died (C++ ``LOG(FATAL)``, status 134, which no Python code in the child can catch):
  then the coordination service's log lines and the abort's stack trace are replaced by the same one line the
  watchdog prints, and the status is :data:`PEER_LOST_EXIT`. On Linux the child dies with this process (a
  SIGKILL of the command reaches the worker); SIGTERM is passed on, SIGINT (Ctrl-C, which the terminal sends to
  the worker as well) is left to the worker.
  """
  import signal  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  env = dict(os.environ, **{WORKER_ENV_VAR: str(os.getpid())})
  child = subprocess.Popen([sys.executable, *argv], env=env, stderr=subprocess.PIPE, text=True, errors="replace")
  previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the worker too (same process group): it reports
  signal.signal(signal.SIGTERM, lambda number, _: child.send_signal(number))
  try:
    return _follow(child, resume_hint)
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)


def _follow(child, resume_hint) -> int:
  who, held, held_since, aborted = (None, None), [], 0.0, []
  for line in child.stderr:
    if line.startswith(_ANNOUNCE):
      try:
        index, count = line[len(_ANNOUNCE):].split(" of ")
        who = (int(index), int(count))
      except ValueError:
        pass
      continue
    if aborted:
      aborted.append(line)
      continue
    if _JAX_ABORT in line:
      aborted, held = [*held, line], []
      continue
    if held and time.monotonic() - held_since > 2.0:  # no abort followed: the lines were only warnings
      sys.stderr.writelines(held)
      held = []
    if _COORDINATION_LOG.match(line) or held:
      held_since = held_since if held else time.monotonic()
      held.append(line)
      continue
    sys.stderr.write(line)
    sys.stderr.flush()
  status = child.wait()
  if not aborted:
    sys.stderr.writelines(held)
    sys.stderr.flush()
    return 128 - status if status < 0 else status
  text = "".join(aborted)
  index, count = who
  tasks = re.findall(r"stopped sending heartbeats\):\s*([\d\s,]+)", text)
  ids = [i for i in re.split(r"[\s,]+", tasks[0].strip()) if i] if tasks else []
  if ids:  # the service (in process 0) named the silent processes
    lost = f"process {ids[0]}" if len(ids) == 1 else f"processes {', '.join(ids)}"
  elif "leader task" in text or (index is not None and index != 0):
    lost = "process 0"  # the coordination service, which lives in process 0, is gone
  else:
    lost = "another process"
  try:
    where = resume_hint() if resume_hint is not None else None
  except Exception:  # pylint: disable=broad-except
    where = None
  print(f"paperlab: {lost}{f' of {count}' if count else ''} stopped responding (JAX's coordination service "
        f"reported it lost); relaunch the same command to resume from {where or 'the last checkpoint'}",
        file=sys.stderr, flush=True)
  return PEER_LOST_EXIT
