"""Experiment runner: configs, sweeps, executors, run store, reports (see the Runner section of the design)."""

from paperlab.runner.context import Context, to_jsonable

__all__ = ["Context", "to_jsonable"]
