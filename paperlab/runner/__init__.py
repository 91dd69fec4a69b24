"""Experiment runner: configs, sweeps, executors, run store, reports (see the Runner section of the design).

An experiment is a Python file with ``get_config() -> ml_collections.ConfigDict``, optionally ``get_sweep() ->
list[dict]`` (build it with :func:`grid`, :func:`zipped`, :func:`seeds`, :func:`log_uniform`, :func:`product`)
and optionally ``run(config, ctx) -> dict``; without ``run`` the default trainer (:mod:`.trainer`) trains from
the config sections and runs trials that differ only in traced hyperparameters as one vmapped program. A custom
``run`` logs with ``ctx.log`` / ``ctx.log_curve`` and survives a crash with ``ctx.checkpoint(step, state)`` and
``ctx.restore(template)`` (see :class:`Context`).

  paperlab run experiments/runner_demo.py --sweep --workdir runs     # resumable: re-run to continue
  paperlab report runs

From Python: ``run_experiment(path, ["optim.learning_rate=3e-4"], sweep=True, workdir="runs")``.
Importing this package does not import JAX; the executors import it when they train.

Under damage: checkpoints carry SHA-256 manifests and results a checksum in ``status.json``, both verified
before use; a trial whose files are damaged falls back to its newest intact checkpoint, starts over, or fails
with a reason naming the file, and the other trials go on (see :mod:`.store`). Every config is validated
before anything runs (:func:`.config.validate_config`).
"""

from paperlab.runner.config import ConfigError, apply_overrides, load_experiment, trial_id
from paperlab.runner.context import Context, to_jsonable
from paperlab.runner.execute import plan, run_experiment
from paperlab.runner.progress import Progress
from paperlab.runner.report import report
from paperlab.runner.store import DamagedFile, TrialDir
from paperlab.runner.sweeps import grid, log_uniform, product, seeds, uniform, zipped
from paperlab.runner.trainer import NonFiniteLoss, group_trials, traced_keys

__all__ = [
    "ConfigError", "Context", "DamagedFile", "NonFiniteLoss", "Progress", "TrialDir", "apply_overrides", "grid", "group_trials",
    "load_experiment", "log_uniform", "plan", "product", "report", "run_experiment", "seeds", "to_jsonable",
    "traced_keys", "trial_id", "uniform", "zipped",
]
