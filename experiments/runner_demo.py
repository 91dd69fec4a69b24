"""Runner demo: a digits MLP trained by the runner's default loop, swept over learning rate x seed.

    paperlab run experiments/runner_demo.py --sweep          # 16 trials, one vmapped program
    paperlab report runs                                     # table (mean ± std over seeds) and plots

No ``run`` function: the runner builds data, model, optimizer and loss from the config sections. The 16 trials
differ only in traced leaves (``optim.learning_rate`` and ``seed``), so they form one group and compile once.
"""

from __future__ import annotations

import ml_collections

from paperlab.runner import sweeps


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = dict(name="digits")
  c.model = dict(name="MLP", widths=(64,))
  c.optim = dict(name="adamw", learning_rate=1e-3, weight_decay=1e-4)
  c.loss = dict(name="classification")
  c.train = dict(num_steps=1000, batch_size=64, log_every=50, checkpoint_every=500, data_parallel=False)
  return c


def get_sweep() -> list[dict]:
  return sweeps.product(sweeps.grid(**{"optim.learning_rate": [3e-4, 1e-3, 3e-3, 1e-2]}), sweeps.seeds(4))
