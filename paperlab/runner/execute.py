"""Planning and executing trials: local (in-process, vmapped groups), a process pool, or Ray tasks.

The unit of work is a *job*: a list of sweep points of one experiment that run together (one vmapped group for
the default trainer, one trial for a custom ``run``). A job is described by plain values (experiment path,
overrides, points, store directory), so it can be sent to another process or a Ray worker, which re-plans it,
takes each trial's lock, skips finished trials, resumes interrupted ones and writes to the same store.

Under ``jax.distributed`` (``paperlab run --distributed``, see :mod:`paperlab.runner.distributed`) every process
runs the same local backend in lockstep: process 0 takes the locks, reads the store and decides which trials run
and from which checkpoint step; that decision is broadcast, so every process runs the same trials from the same
step over the global mesh, and only process 0 writes the store.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import pathlib
import re
import sys
import time
import traceback
from typing import Any, Mapping, Sequence

from paperlab.runner import distributed
from paperlab.runner import trainer as trainer_lib
from paperlab.runner.config import (ConfigError, apply_overrides, call_experiment, load_experiment, trial_id,
                                    validate_config)
from paperlab.runner.context import Context, tensorboard_available, to_jsonable
from paperlab.runner.progress import Progress
from paperlab.runner.store import DONE, FAILED, RUNNING, DamagedFile, TrialDir, TrialLocks

BACKENDS = ("local", "process", "ray")
# Groups with more trials close each trial's metrics and TensorBoard files after every chunk (a sweep of
# thousands of trials must not need thousands of open files).
KEEP_OPEN_TRIALS = 64


@dataclasses.dataclass
class Trial:
  """A planned trial: its resolved config, the sweep point it came from, and its directory."""

  point: dict
  config: Any
  dir: TrialDir

  @property
  def id(self) -> str:
    return self.dir.trial_id


def safe_name(text: str, default: str = "experiment") -> str:
  """``text`` as one safe path component: letters, digits, ``_ . = -`` only, no leading dot, at most 100."""
  name = re.sub(r"[^A-Za-z0-9_.=-]+", "_", str(text)).lstrip(".")[:100]
  return name if name.strip("._") else default


def experiment_name(path: str | os.PathLike) -> str:
  """The store directory name of an experiment file: its stem, made safe (``...py`` cannot leave the store)."""
  return safe_name(pathlib.Path(path).stem)


def _check_overrides(overrides: Any) -> None:
  if isinstance(overrides, (str, bytes)):
    raise TypeError(f"overrides must be a list of 'a.b=VALUE' strings or a mapping {{'a.b': value}}, got the "
                    f"string {overrides!r}; wrap it in a list: [{overrides!r}]")
  if not isinstance(overrides, Mapping):
    try:
      items = list(overrides)
    except TypeError:
      raise TypeError(f"overrides must be a list of 'a.b=VALUE' strings or a mapping, got "
                      f"{type(overrides).__name__}") from None
    bad = [o for o in items if not isinstance(o, str)]
    if bad:
      raise TypeError(f"overrides must be 'a.b=VALUE' strings, got {bad[0]!r}")


def _sweep_points(module, path) -> list[dict]:
  points = call_experiment(module, "get_sweep", path)
  try:
    points = list(points)
  except TypeError:
    raise ConfigError(f"get_sweep() of {str(path)!r} must return a list of dicts, got "
                      f"{type(points).__name__}") from None
  if not points:
    raise ConfigError(f"get_sweep() of {str(path)!r} returned no points: nothing to run (run without --sweep "
                      "for the default config)")
  for i, point in enumerate(points):
    if not isinstance(point, Mapping):
      raise ConfigError(f"get_sweep() of {str(path)!r}: point {i} is a {type(point).__name__} ({point!r}), "
                        "expected a dict of dotted keys to values")
  return points


def plan(path: str | os.PathLike, overrides: Sequence[str] | Mapping[str, Any] = (), *, sweep: bool = False,
         workdir: str | os.PathLike = "runs", points: Sequence[Mapping[str, Any]] | None = None
         ) -> tuple[Any, list[Trial]]:
  """Load an experiment and resolve its trials (without running anything).

  Args:
    path: the experiment file.
    overrides: command-line overrides (``"a.b=V"`` strings) or a ``{"a.b": value}`` mapping.
    sweep: expand ``get_sweep()``; otherwise a single trial.
    workdir: the run store root.
    points: explicit sweep points (instead of ``get_sweep()``); used by workers.

  Returns:
    ``(module, trials)``, duplicates (equal resolved configs) removed.
  """
  _check_overrides(overrides)
  module = load_experiment(path)
  config = call_experiment(module, "get_config", path)
  import ml_collections  # pylint: disable=g-import-not-at-top
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"get_config() of {str(path)!r} must return an ml_collections.ConfigDict, got "
                      f"{type(config).__name__} (wrap it: ml_collections.ConfigDict({{...}}))")
  base = apply_overrides(config, overrides)
  if points is None:
    if sweep:
      if not callable(getattr(module, "get_sweep", None)):
        raise ConfigError(f"--sweep given but experiment {str(path)!r} defines no get_sweep()")
      points = _sweep_points(module, path)
    else:
      points = [{}]
  name = experiment_name(path)
  code = getattr(module, "__paperlab_code_sha256__", None)
  locks = TrialLocks(pathlib.Path(workdir) / name)  # one open lock file for all of this plan's trials
  trials, seen = [], set()
  for i, point in enumerate(points):
    config = apply_overrides(base, dict(point))
    validate_config(config, where="config" if not sweep else f"sweep point {i}: config")
    tid = trial_id(config, code)
    if tid not in seen:
      seen.add(tid)
      trials.append(Trial(dict(point), config, TrialDir(workdir, name, tid, locks)))
  return module, trials


def make_jobs(module, trials: Sequence[Trial]) -> list[list[Trial]]:
  """Vmappable groups for the default trainer; one trial per job for a custom ``run``."""
  if callable(getattr(module, "run", None)):
    return [[t] for t in trials]
  groups = trainer_lib.group_trials([t.config for t in trials])
  return [[trials[i] for i in g] for g in groups]


def _summary(trial: Trial) -> dict:
  status = trial.dir.status()
  if trial.dir.unwritten_failure is not None:  # failed, but status.json could not be written (disk full...)
    status = {"status": FAILED, "reason": trial.dir.unwritten_failure}
  out = {"trial_id": trial.id, "dir": str(trial.dir.path), "point": trial.point, **status}
  if status.get("status") == DONE:
    try:
      out["result"] = trial.dir.result()
    except DamagedFile as e:
      out.update(status=FAILED, reason=f"damaged result: {e}")
  elif status.get("status") == "damaged":
    out["status"] = FAILED
  return out


def _context(trial: Trial, quiet: bool, resume_step: int | None = None, on_log=None) -> Context:
  runner = trial.config.get("runner", {}) or {}
  tb = runner.get("tensorboard", True) and tensorboard_available()
  wandb = bool(runner.get("wandb", False) or os.environ.get("PAPERLAB_WANDB"))
  return Context(trial.dir.path, quiet=quiet, tensorboard=tb, wandb=wandb, config=trial.config.to_dict(),
                 resume_step=resume_step, on_log=on_log)


def _failure_reason(e: BaseException) -> str:
  text = str(e).strip()
  line = f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"
  return line[:500]


def _warn(quiet: bool, message: str) -> None:
  if not quiet:
    print(f"paperlab: {message}", file=sys.stderr)


def _walk_numbers(value: Any, path: str = "", depth: int = 0):
  """``(path, depth, float)`` for every real number in a nested result; an array yields its first non-finite
  entry (or nothing when all are finite)."""
  if isinstance(value, Mapping):
    for k, v in value.items():
      yield from _walk_numbers(v, f"{path}[{str(k)!r}]", depth + 1)
  elif isinstance(value, (list, tuple)):
    for i, v in enumerate(value):
      yield from _walk_numbers(v, f"{path}[{i}]", depth + 1)
  elif isinstance(value, numbers.Real) and not isinstance(value, bool):
    yield path, depth, float(value)
  elif hasattr(value, "dtype") and hasattr(value, "tolist"):  # arrays and NumPy/JAX scalars
    import numpy as np  # pylint: disable=g-import-not-at-top
    arr = np.asarray(value)
    if arr.dtype.kind == "f" and arr.size:
      bad = ~np.isfinite(arr)
      if arr.ndim == 0:
        yield path, depth, float(arr)
      elif bad.any():
        first = tuple(np.argwhere(bad)[0])
        yield path + "".join(f"[{i}]" for i in first), depth + 1, float(arr[first])


def check_result(result: Any) -> tuple[dict | None, str | None, list[str]]:
  """``(jsonable result, None, nested non-finite paths)`` for a usable ``run()`` result, else
  ``(None, reason, [])``.

  A result must be a non-empty dict (a bare number becomes ``{"value": x}``), JSON-serialisable once arrays
  are lists, and its top-level numbers must be finite: ``{"loss": nan}`` fails the trial. Non-finite numbers
  deeper inside (a diverged arm's norm in a comparison) are a measurement: kept (as ``"nan"``/``"inf"``
  strings) and listed in ``status.json`` as ``nonfinite``.
  """
  if result is None:
    return None, "run() returned None: return a dict of results", []
  if not isinstance(result, Mapping):
    result = {"value": result}
  if not result:
    return None, "run() returned an empty result {}", []
  nonfinite = []
  for path, depth, x in _walk_numbers(result):
    if not math.isfinite(x):
      if depth == 1:  # a top-level value: the trial's headline number
        return None, f"result{path} is {x} (not finite)", []
      nonfinite.append(f"result{path}")
  try:
    plain = to_jsonable(result)
    json.dumps(plain, allow_nan=False)
  except (TypeError, ValueError) as e:
    return None, f"the result is not JSON-serialisable ({_failure_reason(e)})", []
  return plain, None, nonfinite[:20]


def _run_custom(module, trial: Trial, quiet: bool, on_log=None) -> None:
  """A custom ``run(config, ctx)``: it resumes if it restores its checkpoint (:meth:`Context.restore`), else an
  interrupted one starts over; either way no metric step is logged twice."""
  steps = trial.dir.checkpoint_steps()
  if steps:
    trial.dir.truncate_metrics(steps[-1])  # the context drops the rest if the run does not restore
  elif trial.dir.metrics_path.exists() and distributed.is_primary():
    trial.dir.metrics_path.unlink()
  if distributed.is_primary():  # several processes: process 0 writes the store
    trial.dir.output_path.unlink(missing_ok=True)
  trial.dir.set_status(RUNNING, step=steps[-1] if steps else 0)
  ctx = _context(trial, quiet, resume_step=steps[-1] if steps else None, on_log=on_log)
  t0 = time.time()
  try:
    result = module.run(trial.config, ctx)
    ctx._settle()  # pylint: disable=protected-access
  except trainer_lib.NonFiniteLoss as e:
    trial.dir.fail(_failure_reason(e), step=e.step)
    return
  except Exception as e:  # pylint: disable=broad-except
    trial.dir.fail(_failure_reason(e), traceback=traceback.format_exc()[-4000:])
    _warn(quiet, f"trial {trial.id} failed: {_failure_reason(e)}")
    return
  finally:
    ctx.close()
  plain, problem, nonfinite = check_result(result)
  if problem is not None:
    trial.dir.fail(problem)
    _warn(quiet, f"trial {trial.id} failed: {problem}")
    return
  info = {"nonfinite": nonfinite} if nonfinite else {}
  if ctx.restore_problems:
    trial.dir.notes["damaged_checkpoints"] = ctx.restore_problems
  try:
    trial.dir.finish(plain, seconds=time.time() - t0, **info)
  except OSError as e:
    trial.dir.fail(f"cannot write the result: {_failure_reason(e)}")


def _stack(trees: Sequence[Any]):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _run_default(trials: Sequence[Trial], group: Sequence[Trial], quiet: bool, static: Sequence[str] = ()
                 ) -> None:
  """The default trainer over (part of) one vmappable group, resuming each trial from its last checkpoint.

  The compiled program always has the whole group's trial axis and each trial keeps its slot in it (free
  slots repeat a running trial and are discarded), so a trial resumed alone computes bit for bit what it
  computes in the uninterrupted group.

  Hyperparameters are validated with concrete values first (validation is skipped for traced values). An
  optimizer or loss that cannot take traced hyperparameters (Python control flow on them) falls back to one
  program per hyperparameter setting, vmapped over seeds only.
  """
  import jax  # pylint: disable=g-import-not-at-top
  valid = []
  for t in trials:
    try:
      trainer_lib.build_optimizer(t.config.to_dict().get("optim", {}))
      valid.append(t)
    except Exception as e:  # pylint: disable=broad-except
      t.dir.fail(f"invalid optimizer config: {_failure_reason(e)}")
  trials = valid
  if not trials:
    return
  try:
    trainer = trainer_lib.GroupTrainer(group[0].config, static=static)
    abstract = trainer.abstract_checkpoint()
  except jax.errors.ConcretizationTypeError:
    return _run_static_fallback(trials, group, quiet)
  except Exception as e:  # pylint: disable=broad-except
    for t in trials:
      t.dir.fail(_failure_reason(e), traceback=traceback.format_exc()[-4000:])
    return
  slots = {t.id: i for i, t in enumerate(group)}
  by_start: dict[int, list[tuple[Trial, Any]]] = {}
  restored = _restore_distributed(trials, abstract) if distributed.process_count() > 1 else None
  for t in trials:
    try:
      if restored is not None:
        start, ckpt, problems = restored[t.id]
      else:
        start, ckpt, problems = t.dir.restore_newest(abstract)
      t.dir.truncate_metrics(start)
      if problems:
        t.dir.notes["damaged_checkpoints"] = problems
      t.dir.set_status(RUNNING, step=start, **t.dir.notes)
    except Exception as e:  # pylint: disable=broad-except
      t.dir.fail(f"cannot resume: {_failure_reason(e)}")
      continue
    for p in problems:
      _warn(quiet, f"trial {t.id}: damaged checkpoint not loaded ({p}); "
                   f"{f'resuming from step {start}' if start else 'starting over'}")
    by_start.setdefault(start, []).append((t, ckpt))
  for start, members in sorted(by_start.items()):
    try:
      _run_partition(trainer, members, start, [slots[t.id] for t, _ in members], group, quiet)
    except jax.errors.ConcretizationTypeError:
      if not static and any(k != "seed" for k in trainer.traced):
        _run_static_fallback([t for t, _ in members], group, quiet)
      else:
        for t, _ in members:
          t.dir.fail(f"cannot trace this config: {traceback.format_exc().splitlines()[-1]}")
    except Exception as e:  # pylint: disable=broad-except
      for t, _ in members:
        if not t.dir.is_done():
          t.dir.fail(_failure_reason(e), traceback=traceback.format_exc()[-4000:])


def _restore_distributed(trials: Sequence[Trial], abstract) -> dict[str, tuple[int, Any, list[str]]]:
  """Several processes: process 0 picks each trial's newest checkpoint that verifies (removing damaged ones) and
  broadcasts the step; every process then restores that step with orbax. A trial process 0 cannot resume is
  started over everywhere (``-1`` in the decision marks an unreadable store; it restarts too)."""
  from paperlab.runner import store  # pylint: disable=g-import-not-at-top
  decision = {}
  if distributed.is_primary():
    for t in trials:
      problems, chosen = [], 0
      for step in reversed(t.dir.checkpoint_steps()):
        problem = store.verify_checkpoint(t.dir.checkpoint_root, step)
        if problem is None:
          chosen = step
          break
        problems.append(problem)
        store._remove(t.dir.checkpoint_root / str(step))  # pylint: disable=protected-access
      decision[t.id] = [chosen, problems]
  decision = distributed.broadcast(decision)
  out = {}
  for t in trials:
    step, problems = decision[t.id]
    tree = None
    if step:
      import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
      checkpointer = ocp.StandardCheckpointer()
      try:
        tree = checkpointer.restore((t.dir.checkpoint_root / str(step)).absolute(), abstract)
      finally:
        checkpointer.close()
    out[t.id] = (step, tree, problems)
  return out


def _run_static_fallback(trials: Sequence[Trial], group: Sequence[Trial], quiet: bool) -> None:
  from paperlab.runner.config import flatten  # pylint: disable=g-import-not-at-top
  keys = [k for k in trainer_lib.traced_keys(group[0].config) if k != "seed"]
  subgroups: dict[str, list[Trial]] = {}
  for t in group:
    flat = flatten(t.config)
    subgroups.setdefault(json.dumps([flat.get(k) for k in keys], default=repr), []).append(t)
  ours = {t.id for t in trials}
  for sub in subgroups.values():
    mine = [t for t in sub if t.id in ours]
    if mine:
      _run_default(mine, sub, quiet, static=keys)


def _final_train_metrics(trial: Trial, num_steps: int) -> dict:
  for record in reversed(trial.dir.metrics()):
    if record.get("step") == num_steps:
      return {f"train_{k}": v for k, v in record.items() if k != "step"}
  return {}


def _run_partition(trainer: trainer_lib.GroupTrainer, members: Sequence[tuple[Trial, Any]], start: int,
                   slots: Sequence[int], group: Sequence[Trial], quiet: bool) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  cfg = trainer.train_cfg
  num_steps, every = trainer.num_steps, max(int(cfg["checkpoint_every"]), 1)
  log_every = max(int(cfg["log_every"]), 1)
  trials = [t for t, _ in members]
  # Fill the group's slots: ours in place, the others with a copy of our first trial.
  fill = [trials[0]] * len(group)
  for t, slot in zip(trials, slots):
    fill[slot] = t
  hp = trainer.stack_hparams([t.config for t in fill])
  if start == 0:
    ckpt = trainer.init(hp)
  else:
    restored = {t.id: c for t, c in members}
    ckpt = _stack([restored[t.id] for t in fill])
  active = {slot: True for slot in slots}
  contexts = {slot: _context(t, quiet) for t, slot in zip(trials, slots)}
  release = len(trials) > KEEP_OPEN_TRIALS  # a large group does not hold files open per trial between chunks
  step = start
  bar = Progress(num_steps, f"{trials[0].dir.experiment}: group of {len(trials)} trial{'s' * (len(trials) > 1)}",
                 quiet=quiet, unit="steps", start=start)
  saver = _CheckpointWriter(len(trials))
  try:
    while step < num_steps:
      n = min(every - step % every, num_steps - step)
      ckpt, metrics = trainer.chunk(hp, ckpt, n)  # dispatched asynchronously: the last checkpoints still write
      metrics = dict(distributed.to_host(metrics))
      for t, i in zip(trials, slots):
        if not active[i]:
          continue
        bad = trainer_lib.first_nonfinite(metrics["loss"][i])
        upto = n if bad is None else bad
        for s in range(upto):
          global_step = step + s + 1
          if global_step % log_every == 0 or global_step == num_steps:
            contexts[i].log(global_step, {k: v[i, s] for k, v in metrics.items()})
        if release:
          contexts[i].release()
        if bad is not None:
          value = float(metrics["loss"][i, bad])
          t.dir.fail(f"loss became {value} at step {step + bad + 1}", step=step + bad + 1)
          active[i] = False
      step += n
      live = [metrics["loss"][i, n - 1] for i in slots if active[i]]
      bar.update(n, loss=float(np.mean(live)) if live else None)
      if step % every == 0 or step == num_steps:
        saver.wait()  # one checkpoint per trial in flight: a trial's checkpoints finish in step order
        host = distributed.to_host(ckpt)  # slice on the host: no per-slice XLA programs
        for t, i in zip(trials, slots):
          if active[i]:
            saver.submit(t.dir, step, jax.tree.map(lambda a, i=i: np.asarray(a[i]), host))
    evals = trainer.evaluate(ckpt)
    saver.wait()
  finally:
    saver.close()
    bar.close()
    for c in contexts.values():
      c.close()
  evals = dict(distributed.to_host(evals))
  for t, i in zip(trials, slots):
    if not active[i]:
      continue
    test = {f"test_{k}": float(v[i]) for k, v in evals.items()}
    if not all(trainer_lib.is_finite_number(v) for v in test.values()):
      t.dir.fail(f"evaluation is not finite: {test}", step=num_steps)
      continue
    t.dir.finish({"step": num_steps, **_final_train_metrics(t, num_steps), **test})


class _CheckpointWriter:
  """Writes a group's per-trial orbax checkpoints from a few threads, overlapping the next chunk's compute.

  Each checkpoint is finalized atomically by orbax, so a crash mid-write leaves the trial at its previous
  complete checkpoint. :meth:`wait` re-raises the first write error.
  """

  def __init__(self, num_trials: int):
    import concurrent.futures  # pylint: disable=g-import-not-at-top
    self._pool = concurrent.futures.ThreadPoolExecutor(max(1, min(4, num_trials)), "paperlab-checkpoint")
    self._pending: list = []
    # Several processes: saves are collective (barriers), so every process makes them in the same order, here.
    self._inline = distributed.process_count() > 1

  def submit(self, trial_dir: TrialDir, step: int, tree: Any) -> None:
    if self._inline:
      trial_dir.save_checkpoint(step, tree)
      return
    self._pending.append(self._pool.submit(trial_dir.save_checkpoint, step, tree))

  def wait(self) -> None:
    pending, self._pending = self._pending, []
    for future in pending:
      future.result()

  def close(self) -> None:
    self._pool.shutdown(wait=True)


def _run_job_trials(module, trials: Sequence[Trial], group: Sequence[Trial], quiet: bool, on_log=None) -> None:
  if callable(getattr(module, "run", None)):
    for t in trials:
      try:
        _run_custom(module, t, quiet, on_log)
      except Exception as e:  # pylint: disable=broad-except  # the store failed (e.g. status.json unwritable)
        t.dir.fail(f"cannot run the trial: {_failure_reason(e)}")
        _warn(quiet, f"trial {t.id} failed: {_failure_reason(e)}")
  elif trials:
    _run_default(trials, group, quiet)


def _replay_output(trial: Trial) -> None:
  """Print what a finished trial printed (its table...) when it is skipped on a re-run."""
  try:
    text = trial.dir.output_path.read_text(errors="replace")
  except OSError:
    return
  if text:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


def _prepare(trial: Trial, fresh: bool, quiet: bool) -> bool:
  """With the trial's lock held: reset (``fresh``), clean what killed writers left, and say whether it must
  run (not done, or done with a result that no longer verifies)."""
  if fresh:
    trial.dir.reset()
  trial.dir.clean_orphans()
  status = trial.dir.status()
  if status.get("status") == "damaged":
    _warn(quiet, f"trial {trial.id}: {status['reason']}; running it again")
    return True
  if status.get("status") == DONE:
    problem = trial.dir.result_problem()
    if problem is None:
      return False
    _warn(quiet, f"trial {trial.id}: {problem}; running it again")
  return True


def execute_job(path: str, overrides: Sequence[str] | Mapping[str, Any], points: Sequence[Mapping[str, Any]],
                workdir: str, quiet: bool = True, fresh: bool = False, code: str | None = None,
                progress: Progress | None = None) -> list[dict]:
  """Run one job (see the module docstring) and return each trial's status summary.

  Trials locked by another runner are waited for after this runner's own work; one that runner left
  unfinished (it died) is then run here. So several runners on one store finish every trial exactly once.
  Done trials are skipped (their saved output is printed again unless ``quiet``); failed ones are retried by
  a later invocation. A trial whose files are damaged falls back to its newest intact checkpoint or starts
  over; one whose directory cannot be written is reported failed; either way the other trials go on.

  Args:
    code: the experiment file's digest the caller planned with (:func:`.config.code_digest`); a worker that
      finds the file changed since refuses to run it under the old trial ids.
  """
  module, trials = plan(path, overrides, workdir=workdir, points=points)
  if code is not None and getattr(module, "__paperlab_code_sha256__", code) != code:
    raise ConfigError(f"experiment file {str(path)!r} changed while the run was starting; run it again")
  primary = distributed.is_primary()  # several processes: process 0 decides, the others follow (broadcast)
  by_id = {t.id: t for t in trials}
  pending = []
  for t in trials if primary else ():
    try:
      t.dir.create(t.config, t.point)
      pending.append(t)
    except OSError as e:  # not written there: the directory may lead out of the store
      t.dir.unwritten_failure = f"cannot write the trial directory: {_failure_reason(e)}"
      _warn(quiet, f"trial {t.id}: {t.dir.unwritten_failure}")
  blocking = False
  on_log = None
  if progress is not None:
    on_log = lambda step, metrics: progress.update(0, step=step, loss=metrics.get("loss"))  # noqa: E731
  while distributed.broadcast(bool(pending)):
    mine, busy = [], []
    for t in pending:
      try:
        if not t.dir.try_lock(blocking=blocking):
          busy.append(t)
          continue
        # A trial another runner failed while we waited is not retried now (a later invocation retries it).
        failed_meanwhile = blocking and t.dir.status().get("status") == FAILED
        if failed_meanwhile or not _prepare(t, fresh, quiet):
          if not failed_meanwhile and not quiet:
            _replay_output(t)
          t.dir.unlock()
        else:
          mine.append(t)
      except OSError as e:
        t.dir.unlock()
        t.dir.fail(f"cannot prepare the trial: {_failure_reason(e)}")
        _warn(quiet, f"trial {t.id}: cannot prepare it ({_failure_reason(e)})")
    if distributed.process_count() > 1:
      mine = [by_id[i] for i in distributed.broadcast([t.id for t in mine])]
    try:
      _run_job_trials(module, mine, trials, quiet, on_log)
    finally:
      for t in mine:
        t.dir.unlock()
    fresh = False  # never reset work another runner finished while we waited
    pending, blocking = busy, True
  if distributed.process_count() > 1:
    return distributed.broadcast([_summary(t) for t in trials] if primary else None)
  return [_summary(t) for t in trials]


def check_workdir(workdir: str | os.PathLike) -> pathlib.Path:
  """The run store root, created if needed; a one-line :class:`ConfigError` if it is not a writable
  directory."""
  root = pathlib.Path(workdir)
  if root.exists() and not root.is_dir():
    raise ConfigError(f"--workdir {str(root)!r} is not a directory")
  try:
    root.mkdir(parents=True, exist_ok=True)
    probe = root / f".paperlab-write-test.{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()
  except OSError as e:
    raise ConfigError(f"--workdir {str(root)!r} is not writable: {e.strerror or e}") from None
  return root


def _ray_execute(*args):
  return execute_job(*args)


def run_experiment(path: str | os.PathLike, overrides: Sequence[str] | Mapping[str, Any] = (), *,
                   sweep: bool = False, workdir: str | os.PathLike = "runs", backend: str = "local",
                   max_parallel: int | None = None, fresh: bool = False, quiet: bool = False,
                   ray_address: str | None = None) -> list[dict]:
  """Plan and run an experiment's trials; returns one summary dict per trial (status, result, directory).

  Args:
    path: the experiment file.
    overrides: dotted overrides (``"optim.learning_rate=3e-4"``) applied to ``get_config()``.
    sweep: run every point of ``get_sweep()``.
    workdir: the run store root; re-running the same command resumes there.
    backend: ``"local"`` (in this process), ``"process"`` (a pool of ``max_parallel`` processes) or ``"ray"``
      (Ray tasks; a local Ray starts when no cluster is reachable).
    max_parallel: workers for the process/Ray backends (default: CPU count).
    fresh: discard earlier results and checkpoints of these trials.
    quiet: no progress bars or experiment output.
    ray_address: a Ray cluster address (default: ``$RAY_ADDRESS``, else a new local Ray).
  """
  if backend not in BACKENDS:
    raise ConfigError(f"--backend={backend!r}: expected one of {', '.join(BACKENDS)}")
  if max_parallel is not None and (isinstance(max_parallel, bool) or not isinstance(max_parallel, int)
                                   or max_parallel < 1):
    raise ConfigError(f"--max-parallel={max_parallel!r}: expected a positive integer")
  if distributed.process_count() > 1:
    if backend != "local":
      raise ConfigError(f"--backend={backend!r} cannot run under jax.distributed (several processes): use local")
    quiet = quiet or not distributed.is_primary()  # process 0 reports
  path = str(path)
  workdir = str(workdir)
  module, trials = plan(path, overrides, sweep=sweep, workdir=workdir)
  check_workdir(workdir)
  code = getattr(module, "__paperlab_code_sha256__", None)
  jobs = make_jobs(module, trials)
  overrides = dict(overrides) if isinstance(overrides, Mapping) else list(overrides)
  args = [(path, overrides, [t.point for t in job], workdir, quiet, fresh, code) for job in jobs]
  bar = Progress(len(trials), f"{experiment_name(path)}: trials", quiet=quiet, unit="trials")
  summaries: list[dict] = []
  try:
    if backend == "local":
      for a, job in zip(args, jobs):
        summaries += execute_job(*a, progress=bar)
        bar.update(len(job))
    elif backend == "process":
      import concurrent.futures  # pylint: disable=g-import-not-at-top
      import multiprocessing  # pylint: disable=g-import-not-at-top
      workers = max_parallel or os.cpu_count() or 1
      with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as ex:
        futures = {ex.submit(execute_job, *a): len(job) for a, job in zip(args, jobs)}
        for f in concurrent.futures.as_completed(futures):
          summaries += f.result()
          bar.update(futures[f])
    else:
      import ray  # pylint: disable=g-import-not-at-top
      if not ray.is_initialized():
        address = ray_address or os.environ.get("RAY_ADDRESS")
        if address:
          ray.init(address=address)
        else:
          ray.init(num_cpus=max_parallel or os.cpu_count(), include_dashboard=False, log_to_driver=not quiet)
      task = ray.remote(num_cpus=1)(_ray_execute)
      refs = {task.remote(*a): len(job) for a, job in zip(args, jobs)}
      remaining = list(refs)
      while remaining:
        done, remaining = ray.wait(remaining, num_returns=1)
        summaries += ray.get(done[0])
        bar.update(refs[done[0]])
  finally:
    bar.close()
  order = {t.id: i for i, t in enumerate(trials)}
  return sorted(summaries, key=lambda s: order[s["trial_id"]])
