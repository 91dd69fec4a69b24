"""A small digits MLP trained by the runner's default loop (used by the runner tests)."""

import ml_collections

from paperlab.runner import sweeps


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = dict(name="digits")
  c.model = dict(name="MLP", widths=(32,))
  c.optim = dict(name="adamw", learning_rate=3e-3, weight_decay=1e-4)
  c.loss = dict(name="classification")
  c.train = dict(num_steps=60, batch_size=64, log_every=10, checkpoint_every=20, data_parallel=False)
  return c


def get_sweep():
  return sweeps.product(sweeps.grid(**{"optim.learning_rate": [1e-3, 3e-3, 1e-2, 3e-2]}), sweeps.seeds(4))
