"""The run store: ``DIR/<experiment>/<trial-id>/`` with ``config.json``, ``status.json``, ``metrics.jsonl``,
``checkpoints/<step>/`` (orbax) and ``result.json`` (written atomically, last).

Every write that a crash could tear is atomic (temporary file + ``os.replace``; orbax finalizes a checkpoint by
renaming its temporary directory), so after a ``SIGKILL`` a trial is either done, or resumable from its last
complete checkpoint. What a crash cannot explain (a bit flipped on disk, a file truncated or edited by hand) is
caught by checksums: every checkpoint holds a SHA-256 manifest of its files, written after orbax finalized it and
verified before it is restored, and ``status.json`` of a done trial holds the SHA-256 of ``result.json``. A
damaged file makes only its own trial fall back (to an older checkpoint, or to a restart); it never stops the
other trials.

Locks: each trial is locked by one byte of its experiment's lock file ``DIR/.locks/<experiment>.lock`` (a Linux
open-file-description lock, released by the kernel when its holder dies). A runner holds one open file per experiment however many
trials it locks, so a sweep of thousands of trials does not run out of file descriptors; the lock file is
opened without following links.

Several processes (``jax.distributed``, see :mod:`paperlab.runner.distributed`): only process 0 writes here
(status, metrics, results, manifests) and takes the locks; the others' :class:`TrialDir` writes are no-ops and
they learn the runner's decisions by broadcast. Checkpoints are saved by every process together (orbax
coordinates them, one commit) and their manifest is written by process 0 once every process has finished.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import pathlib
import shutil
import stat
import struct
import time
from typing import Any, Mapping

from paperlab.runner import distributed
from paperlab.runner.context import to_jsonable

RUNNING, DONE, FAILED = "running", "done", "failed"
MANIFEST = "paperlab_sha256.json"  # inside each checkpoint directory: {relative path: sha256}
KEEP_CHECKPOINTS = 2
LOCK_DIR = ".locks"  # under the store root: <root>/.locks/<experiment>.lock


class DamagedFile(RuntimeError):
  """A run-store file that cannot be read as written (truncated, malformed, or failing its checksum)."""

  def __init__(self, path: str | os.PathLike, why: str):
    super().__init__(f"{path}: {why}")
    self.path = pathlib.Path(path)
    self.why = why


def sha256_file(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _fsync_dir(path: pathlib.Path) -> None:
  try:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def write_json_atomic(path: pathlib.Path, data: Any) -> str:
  """Write JSON so that readers see the old file or the new one, never half of one; returns its SHA-256.

  ``data`` must be JSON-serialisable after :func:`to_jsonable` (a ``TypeError`` otherwise, and nothing is
  written). On any error (a full disk...) the temporary file is removed and the old file stays.
  """
  path = pathlib.Path(path)
  text = json.dumps(to_jsonable(data), indent=2, sort_keys=True, allow_nan=False)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  try:
    _remove(tmp)  # what a killed write of this process id left (or a planted link): never written through
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    try:
      tmp.unlink()
    except OSError:
      pass
    raise
  return hashlib.sha256(text.encode()).hexdigest()


def read_json(path: pathlib.Path) -> Any:
  with open(path) as f:
    return json.load(f)


def read_json_checked(path: pathlib.Path, sha256: str | None = None, kind: type | None = dict) -> Any:
  """The JSON value in ``path``, or :class:`DamagedFile` when it is missing, malformed, of another type than
  ``kind`` or (with ``sha256``) not the file that was written."""
  path = pathlib.Path(path)
  try:
    raw = path.read_bytes()
  except FileNotFoundError:
    raise DamagedFile(path, "missing") from None
  except OSError as e:
    raise DamagedFile(path, f"unreadable ({e.strerror or e})") from None
  if sha256 is not None and hashlib.sha256(raw).hexdigest() != sha256:
    raise DamagedFile(path, "checksum mismatch (the file changed after it was written)")
  try:
    value = json.loads(raw)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DamagedFile(path, f"not valid JSON ({e})") from None
  if kind is not None and not isinstance(value, kind):
    raise DamagedFile(path, f"holds a {type(value).__name__}, expected a JSON object")
  return value


def metric_records(path: pathlib.Path) -> tuple[list[dict], int]:
  """The well-formed lines of a ``metrics.jsonl`` (objects with an integer ``step``) and the number of others."""
  path = pathlib.Path(path)
  good, bad = [], 0
  try:
    f = open(path, "rb")
  except FileNotFoundError:
    return [], 0
  with f:
    for line in f:
      try:
        record = json.loads(line)
      except (json.JSONDecodeError, UnicodeDecodeError):
        bad += 1  # a line torn by a crash, or damaged
        continue
      step = record.get("step") if isinstance(record, dict) else None
      if isinstance(step, int) and not isinstance(step, bool):
        good.append(record)
      else:
        bad += 1
  return good, bad


def truncate_metrics(path: pathlib.Path, last_step: int) -> None:
  """Keep the well-formed lines of a ``metrics.jsonl`` with ``step <= last_step``, atomically."""
  path = pathlib.Path(path)
  if not path.exists():
    return
  records, _ = metric_records(path)
  kept = [json.dumps(r) + "\n" for r in records if r["step"] <= last_step]
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  try:
    _remove(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w") as f:
      f.write("".join(kept))
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


# Checkpoints.
def _finalized_steps(root: pathlib.Path) -> list[int]:
  if not root.is_dir():
    return []
  return sorted(int(p.name) for p in root.iterdir()
                if p.name.isdigit() and not p.is_symlink() and (p / "_CHECKPOINT_METADATA").exists())


def checkpoint_steps(root: pathlib.Path) -> list[int]:
  """Steps with a complete checkpoint under ``root`` (finalized by orbax, manifest written), ascending.

  Complete is not verified: :func:`verify_checkpoint` reads every byte.
  """
  root = pathlib.Path(root)
  return [s for s in _finalized_steps(root) if (root / str(s) / MANIFEST).is_file()]


def _checkpoint_files(target: pathlib.Path) -> list[pathlib.Path]:
  files = [p for p in target.rglob("*") if p.name != MANIFEST and not p.is_dir()]
  return sorted(files)


def write_manifest(target: pathlib.Path) -> None:
  """SHA-256 of every file of a finalized checkpoint directory, in ``MANIFEST`` (atomically)."""
  target = pathlib.Path(target)
  manifest = {str(p.relative_to(target)): sha256_file(p) for p in _checkpoint_files(target)}
  write_json_atomic(target / MANIFEST, {"files": manifest})


def verify_checkpoint(root: pathlib.Path, step: int) -> str | None:
  """``None`` when ``root/<step>`` matches its manifest byte for byte, else why not (naming the file)."""
  target = pathlib.Path(root) / str(step)
  try:
    manifest = read_json_checked(target / MANIFEST)
    files = manifest["files"]
    if not isinstance(files, dict) or not files:
      raise DamagedFile(target / MANIFEST, "lists no files")
  except DamagedFile as e:
    return str(e)
  except (KeyError, TypeError):
    return f"{target / MANIFEST}: malformed manifest"
  present = {str(p.relative_to(target)) for p in _checkpoint_files(target)}
  for name in sorted(set(files) | present):
    path = target / name
    if name not in files:
      return f"{path}: not in the checkpoint's manifest"
    if name not in present:
      return f"{path}: missing"
    if path.is_symlink():
      return f"{path}: a symbolic link"
    try:
      if sha256_file(path) != files[name]:
        return f"{path}: checksum mismatch"
    except OSError as e:
      return f"{path}: unreadable ({e.strerror or e})"
  return None


def save_checkpoint(root: pathlib.Path, step: int, tree: Any, keep: int = KEEP_CHECKPOINTS) -> None:
  """Save a pytree of arrays under ``root/<step>`` and keep only the newest ``keep`` complete checkpoints.

  Synchronous (orbax's standard format, finalized by a rename, then a SHA-256 manifest of its files, so a
  crash mid-write leaves the previous checkpoint the newest complete one) and safe to call from a worker
  thread: the runner writes the checkpoints of a vmapped group from a thread pool while the next chunk computes.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(root)
  target = root / str(step)
  primary = distributed.is_primary()
  if primary:
    root.mkdir(parents=True, exist_ok=True)
    for stale in [target, *root.glob(f"{step}.orbax-checkpoint-tmp*")]:  # also what a killed save left
      _remove(stale)
  distributed.barrier(f"paperlab-save-begin-{root}-{step}")
  checkpointer = ocp.Checkpointer(ocp.StandardCheckpointHandler())
  try:
    checkpointer.save(target.absolute(), tree)  # every process takes part; orbax commits once
  except BaseException:
    if primary:
      for stale in [target, *root.glob(f"{step}.orbax-checkpoint-tmp*")]:  # e.g. the disk is full
        _remove(stale)
    raise
  finally:
    checkpointer.close()
  distributed.barrier(f"paperlab-save-end-{root}-{step}")  # the save is complete on every process
  if not primary:
    return
  write_manifest(target)
  complete = checkpoint_steps(root)
  for old in complete[:-keep]:
    _remove(root / str(old))
  for old in _finalized_steps(root):  # finalized but never given a manifest (killed in between): unusable
    if old < step and old not in complete:
      _remove(root / str(old))


def restore_checkpoint(root: pathlib.Path, step: int, abstract_tree: Any) -> Any:
  """The checkpoint ``root/<step>`` restored into the structure, shapes and dtypes of ``abstract_tree``.

  Raises:
    DamagedFile: the checkpoint does not match its manifest or orbax cannot read it; nothing is loaded.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  problem = verify_checkpoint(root, step)
  if problem is not None:
    raise DamagedFile(pathlib.Path(root) / str(step), problem)
  checkpointer = ocp.StandardCheckpointer()
  try:
    return checkpointer.restore((pathlib.Path(root) / str(step)).absolute(), abstract_tree)
  except Exception as e:  # pylint: disable=broad-except
    raise DamagedFile(pathlib.Path(root) / str(step), f"cannot restore ({type(e).__name__}: "
                      f"{str(e).splitlines()[0][:200] if str(e) else ''})") from e
  finally:
    checkpointer.close()


def restore_newest(root: pathlib.Path, abstract_tree: Any) -> tuple[int, Any, list[str]]:
  """``(step, tree, problems)`` of the newest checkpoint that verifies and restores; ``(0, None, problems)``
  when none does. Each damaged checkpoint is removed and its problem (naming the file) returned."""
  problems = []
  for step in reversed(checkpoint_steps(root)):
    try:
      return step, restore_checkpoint(root, step, abstract_tree), problems
    except DamagedFile as e:
      problems.append(str(e.why if str(e.path) in e.why else e))
      _remove(pathlib.Path(root) / str(step))
  return 0, None, problems


def _remove(path: pathlib.Path) -> None:
  try:
    if path.is_symlink() or not path.is_dir():
      path.unlink()
    else:
      shutil.rmtree(path, ignore_errors=True)
  except FileNotFoundError:
    pass


def _writer_alive(tmp_name: str) -> bool:
  """Whether the process named in a temporary file ``.<name>.<pid>.tmp`` is alive (its write may be in flight:
  files outside a trial's lock, such as ``config.json``, are written by every runner)."""
  parts = tmp_name.split(".")
  if len(parts) < 3 or not parts[-2].isdigit():
    return False
  try:
    os.kill(int(parts[-2]), 0)
  except ProcessLookupError:
    return False
  except (PermissionError, OverflowError):
    return True
  return True


# Locks.
_FLOCK = "hhqqi4x"  # struct flock on Linux (l_type, l_whence, l_start, l_len, l_pid), 32 bytes


def open_nofollow(path: pathlib.Path, flags: int, mode: int = 0o644) -> int:
  """``os.open`` that refuses a symbolic link at ``path`` and anything but a regular file."""
  fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
  if not stat.S_ISREG(os.fstat(fd).st_mode):
    os.close(fd)
    raise OSError(errno.EINVAL, "not a regular file", str(path))
  return fd


class TrialLocks:
  """Exclusive locks on the trials of one experiment directory through a single open file.

  Each trial locks one byte of ``<root>/.locks/<experiment>.lock`` at an offset derived from its id, with an
  open-file-description lock (``F_OFD_SETLK``): it belongs to this object's open file, so two ``TrialLocks`` in
  one process exclude each other like two processes do, and the kernel drops every lock when the holder dies.
  The file is opened when the first trial is locked and closed when the last is unlocked. Where OFD locks do
  not exist (not Linux), each trial falls back to an ``flock`` on its own ``.lock`` file.
  """

  def __init__(self, directory: str | pathlib.Path):
    self.directory = pathlib.Path(directory)
    self.path = self.directory.parent / LOCK_DIR / f"{self.directory.name}.lock"
    self._fd: int | None = None
    self._held: dict[str, int | None] = {}

  def _open(self) -> int:
    if self._fd is None:
      if self.path.parent.is_symlink():  # the lock directory must not lead out of the store
        self.path.parent.unlink()
      self.path.parent.mkdir(parents=True, exist_ok=True)
      for _ in range(5):
        try:
          self._fd = open_nofollow(self.path, os.O_RDWR | os.O_CREAT)
          break
        except OSError as e:  # a link, a directory or another non-file where the lock file belongs
          if e.errno not in (errno.ELOOP, errno.EISDIR, errno.EINVAL, errno.ENXIO):
            raise
          aside = self.path.with_name(f"{self.path.name}.not-a-file.{os.getpid()}.{time.time_ns()}")
          try:
            os.rename(self.path, aside)  # never follows a link; keeps what was there for inspection
          except FileNotFoundError:
            pass
      else:
        raise OSError(errno.EINVAL, "cannot create the lock file", str(self.path))
    return self._fd

  @staticmethod
  def _offset(trial_id: str) -> int:
    return int(hashlib.sha256(trial_id.encode()).hexdigest()[:15], 16)  # < 2**60: fits off_t

  def lock(self, trial_id: str, blocking: bool = False) -> bool:
    """Lock ``trial_id``; ``False`` if it is held elsewhere (and ``blocking`` is off)."""
    if trial_id in self._held:
      return True
    if not hasattr(fcntl, "F_OFD_SETLK"):
      return self._flock(trial_id, blocking)
    fd = self._open()
    cmd = fcntl.F_OFD_SETLKW if blocking else fcntl.F_OFD_SETLK
    try:
      fcntl.fcntl(fd, cmd, struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, self._offset(trial_id), 1, 0))
    except OSError as e:
      if e.errno in (errno.EAGAIN, errno.EACCES):
        self._close_if_idle()
        return False
      raise
    self._held[trial_id] = None
    return True

  def unlock(self, trial_id: str) -> None:
    if trial_id not in self._held:
      return
    fd = self._held.pop(trial_id)
    if fd is not None:  # flock fallback
      fcntl.flock(fd, fcntl.LOCK_UN)
      os.close(fd)
    elif self._fd is not None:
      fcntl.fcntl(self._fd, fcntl.F_OFD_SETLK,
                  struct.pack(_FLOCK, fcntl.F_UNLCK, os.SEEK_SET, self._offset(trial_id), 1, 0))
    self._close_if_idle()

  def _close_if_idle(self) -> None:
    if self._fd is not None and not any(v is None for v in self._held.values()):
      os.close(self._fd)
      self._fd = None

  def _flock(self, trial_id: str, blocking: bool) -> bool:
    path = self.directory / trial_id
    path.mkdir(parents=True, exist_ok=True)
    fd = open_nofollow(path / ".lock", os.O_RDWR | os.O_CREAT)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
      os.close(fd)
      return False
    self._held[trial_id] = fd
    return True


class TrialDir:
  """One trial's directory and the operations on it."""

  def __init__(self, root: str | pathlib.Path, experiment: str, trial_id: str, locks: TrialLocks | None = None):
    self.experiment = experiment
    self.trial_id = trial_id
    self.root = pathlib.Path(root)
    self.path = self.root / experiment / trial_id
    self._locks = locks if locks is not None else TrialLocks(self.path.parent)
    self._locked = False
    self.unwritten_failure: str | None = None  # a failure fail() could not write (e.g. the disk is full)
    self.notes: dict[str, Any] = {}  # recorded in status.json when the trial ends (e.g. damaged checkpoints)

  # Files.
  @property
  def config_path(self) -> pathlib.Path:
    return self.path / "config.json"

  @property
  def status_path(self) -> pathlib.Path:
    return self.path / "status.json"

  @property
  def metrics_path(self) -> pathlib.Path:
    return self.path / "metrics.jsonl"

  @property
  def result_path(self) -> pathlib.Path:
    return self.path / "result.json"

  @property
  def output_path(self) -> pathlib.Path:
    return self.path / "output.txt"

  @property
  def checkpoint_root(self) -> pathlib.Path:
    return self.path / "checkpoints"

  def create(self, config: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> None:
    """Make the directory and write ``config.json`` (again, if it was damaged) and ``overrides.json``.

    Raises:
      OSError: the directory cannot be written, or it leads out of the store (a symbolic link).
    """
    if not distributed.is_primary():
      return
    self.path.mkdir(parents=True, exist_ok=True)
    if not self.path.resolve().is_relative_to(self.root.resolve()) or self.path.is_symlink() or (
        self.path.parent.is_symlink()):
      raise OSError(errno.EXDEV, "the trial directory leads out of the store (a symbolic link)", str(self.path))
    plain = to_jsonable(config.to_dict() if hasattr(config, "to_dict") else config)
    try:
      if not self.config_path.is_symlink() and read_json_checked(self.config_path) == plain:
        plain = None
    except DamagedFile:
      pass
    if plain is not None:
      write_json_atomic(self.config_path, plain)
    if overrides is not None:
      try:
        read_json_checked(self.path / "overrides.json")
      except DamagedFile:
        write_json_atomic(self.path / "overrides.json", overrides)

  def status(self) -> dict:
    """``{"status": running|done|failed, ...}``; a trial that never started reads as ``{"status": "new"}``, one
    whose ``status.json`` cannot be read as ``{"status": "damaged", "reason": ...}`` (it is run again)."""
    try:
      status = read_json_checked(self.status_path)
    except DamagedFile as e:
      if e.why == "missing":
        return {"status": "new"}
      return {"status": "damaged", "reason": str(e)}
    if not isinstance(status.get("status"), str):
      return {"status": "damaged", "reason": f"{self.status_path}: no status field"}
    return status

  def result(self) -> dict:
    """``result.json`` of a done trial, verified against the checksum in ``status.json``.

    Raises:
      DamagedFile: the status or the result cannot be read, or the result is not the one written.
    """
    status = self.status()
    if status.get("status") == "damaged":
      raise DamagedFile(self.status_path, status["reason"].split(": ", 1)[-1])
    sha = status.get("result_sha256")
    if not isinstance(sha, str):
      raise DamagedFile(self.status_path, "holds no checksum of result.json (written before results were "
                        "checksummed, or edited); running the trial again writes one")
    return read_json_checked(self.result_path, sha256=sha)

  def result_problem(self) -> str | None:
    """Why a "done" trial's result cannot be used (naming the file), or ``None``."""
    try:
      self.result()
    except DamagedFile as e:
      return str(e)
    return None

  def is_done(self) -> bool:
    return self.status().get("status") == DONE and self.result_problem() is None

  def set_status(self, status: str, **info) -> None:
    if not distributed.is_primary():  # several processes: process 0 writes the store
      return
    write_json_atomic(self.status_path, {"status": status, "time": time.time(), "pid": os.getpid(), **info})

  def finish(self, result: Mapping[str, Any], **info) -> None:
    """Write ``result.json`` (atomically) and then mark the trial done with the result's SHA-256."""
    if not distributed.is_primary():
      return
    sha = write_json_atomic(self.result_path, result)
    self.set_status(DONE, result_sha256=sha, **{**self.notes, **info})

  def fail(self, reason: str, step: int | None = None, **info) -> bool:
    """Mark the trial failed; ``False`` when even that cannot be written (e.g. the disk is full)."""
    if not distributed.is_primary():
      return True
    try:
      self.set_status(FAILED, reason=reason, step=step, **{**self.notes, **info})
    except (OSError, TypeError, ValueError) as e:
      self.unwritten_failure = f"{reason} (and status.json could not be written: {type(e).__name__}: {e})"
      return False
    self.unwritten_failure = None
    return True

  def reset(self) -> None:
    """Forget everything but the config (``--fresh``)."""
    if not distributed.is_primary():
      return
    for name in ("status.json", "metrics.jsonl", "result.json", "output.txt", "tb"):
      _remove(self.path / name)
    shutil.rmtree(self.checkpoint_root, ignore_errors=True)

  def clean_orphans(self) -> list[str]:
    """Remove what killed writers left: temporary files and unfinished (or never verified) checkpoints.

    Call it holding the trial's lock. Returns the names removed.
    """
    removed = []
    if not self.path.is_dir() or not distributed.is_primary():
      return removed
    for p in self.path.iterdir():
      if p.name.startswith(".") and p.name.endswith(".tmp") and not _writer_alive(p.name):
        _remove(p)
        removed.append(p.name)
    for name in ("metrics.jsonl", "output.txt", "tb", "wandb", "status.json", "result.json"):
      if (self.path / name).is_symlink():  # a link planted to make this trial write (or read) elsewhere
        _remove(self.path / name)
        removed.append(name)
    root = self.checkpoint_root
    if root.is_dir() and not root.is_symlink():
      complete = set(checkpoint_steps(root))
      for p in root.iterdir():
        if ".orbax-checkpoint-tmp" in p.name or (p.name.endswith(".tmp") and p.name.startswith(".")) or (
            p.name.isdigit() and int(p.name) not in complete):
          if not (p.name.endswith(".tmp") and _writer_alive(p.name)):
            _remove(p)
            removed.append(f"checkpoints/{p.name}")
    elif root.is_symlink():
      _remove(root)
      removed.append("checkpoints")
    return removed

  # Metrics.
  def truncate_metrics(self, last_step: int) -> None:
    """Drop metric lines with ``step > last_step`` (and torn or malformed lines), so a resumed run logs no
    step twice."""
    if distributed.is_primary():
      truncate_metrics(self.metrics_path, last_step)

  def metrics(self) -> list[dict]:
    return metric_records(self.metrics_path)[0]

  # Checkpoints.
  def checkpoint_steps(self) -> list[int]:
    """Steps with a complete checkpoint (finalized, with a manifest), ascending."""
    return checkpoint_steps(self.checkpoint_root)

  def save_checkpoint(self, step: int, tree: Any, keep: int = KEEP_CHECKPOINTS) -> None:
    """Save a pytree (train state, RNG key, data position) under ``checkpoints/<step>`` (see
    :func:`save_checkpoint`)."""
    save_checkpoint(self.checkpoint_root, step, tree, keep)

  def restore_checkpoint(self, step: int, abstract_tree: Any) -> Any:
    return restore_checkpoint(self.checkpoint_root, step, abstract_tree)

  def restore_newest(self, abstract_tree: Any) -> tuple[int, Any, list[str]]:
    """See :func:`restore_newest`."""
    return restore_newest(self.checkpoint_root, abstract_tree)

  # Locking.
  def try_lock(self, blocking: bool = False) -> bool:
    """Take this trial's exclusive lock; ``False`` if another runner holds it (and ``blocking`` is off)."""
    if not self._locked:
      self._locked = self._locks.lock(self.trial_id, blocking)
    return self._locked

  def unlock(self) -> None:
    if self._locked:
      self._locks.unlock(self.trial_id)
      self._locked = False
