"""Experiment runner: configs, sweeps, executors, run store, reports (see the Runner section of the design).

Importing this package does not import JAX; the executors import it when they train.
"""

from paperlab.runner.config import ConfigError, apply_overrides, load_experiment, trial_id
from paperlab.runner.context import Context, to_jsonable
from paperlab.runner.execute import plan, run_experiment
from paperlab.runner.progress import Progress
from paperlab.runner.report import report
from paperlab.runner.store import TrialDir
from paperlab.runner.sweeps import grid, log_uniform, product, seeds, uniform, zipped
from paperlab.runner.trainer import NonFiniteLoss, group_trials, traced_keys

__all__ = [
    "ConfigError", "Context", "NonFiniteLoss", "Progress", "TrialDir", "apply_overrides", "grid", "group_trials",
    "load_experiment", "log_uniform", "plan", "product", "report", "run_experiment", "seeds", "to_jsonable",
    "traced_keys", "trial_id", "uniform", "zipped",
]
