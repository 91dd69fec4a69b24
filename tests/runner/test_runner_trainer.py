"""The default trainer: grouping by static leaves, vmapped == one-by-one, NaN handling, custom runs, logging."""

from __future__ import annotations

import json
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from conftest import default_trainer_source
from paperlab import data, train
from paperlab.models import MLP
from paperlab.runner import apply_overrides, group_trials, run_experiment, traced_keys
from paperlab.runner.trainer import GroupTrainer


def _base():
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = dict(name="digits")
  c.model = dict(name="MLP", widths=(16,))
  c.optim = dict(name="adamw", learning_rate=1e-3, weight_decay=1e-4)
  c.loss = dict(name="classification")
  c.train = dict(num_steps=30, batch_size=32, log_every=10, checkpoint_every=10, data_parallel=False)
  return c


def test_traced_leaves_are_seed_and_float_hyperparameters():
  assert traced_keys(_base()) == ["optim.learning_rate", "optim.weight_decay", "seed"]
  c = _base()
  c.runner = dict(static=("optim.weight_decay",))
  assert traced_keys(c) == ["optim.learning_rate", "seed"]


def test_trials_are_grouped_by_their_static_leaves():
  points = [{"optim.learning_rate": lr, "seed": s} for lr in (1e-3, 1e-2) for s in (0, 1)]
  points += [{"model.widths": (8,), "seed": s} for s in (0, 1)]
  points += [{"optim.name": "sgd", "optim.weight_decay": 0.0}]  # different method name: its own group
  points += [{"train.batch_size": 16}]
  configs = [apply_overrides(_base(), p) for p in points]
  assert group_trials(configs) == [[0, 1, 2, 3], [4, 5], [6], [7]]


@jax.jit
def _reference_run(lr, seed, train_data):
  """One trial written directly against paperlab.train (one compiled program, called trial by trial)."""
  opt = optax.adamw(lr, weight_decay=1e-4)
  graphdef, init = train.make_init(lambda rngs: MLP(64, (16,), 10, rngs=rngs), opt)
  step = train.make_train_step(graphdef, train.classification_loss, opt)
  init_key, run_key = jax.random.split(jax.random.PRNGKey(seed))
  state, metrics = train.run_steps(step, init(init_key), train_data, run_key, batch_size=32, num_steps=30)
  return state, metrics["loss"]


def test_vmapped_group_equals_one_by_one_runs():
  points = [(1e-3, 0), (1e-2, 1), (3e-2, 2)]
  base = _base()
  base.train.data_seed = None  # data order from each trial's seed, as in train.run_steps
  configs = [apply_overrides(base, {"optim.learning_rate": lr, "seed": s}) for lr, s in points]
  trainer = GroupTrainer(configs[0])
  hp = trainer.stack_hparams(configs)
  ckpt, metrics = trainer.chunk(hp, trainer.init(hp), 30)
  ds = data.digits()
  train_data = (jnp.asarray(ds.x_train), jnp.asarray(ds.y_train))
  for i, (lr, seed) in enumerate(points):
    state, losses = _reference_run(lr, seed, train_data)
    np.testing.assert_allclose(metrics["loss"][i], losses, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-5), ckpt["state"].params,
                 state.params)


def test_nonfinite_loss_fails_that_trial_with_its_step_and_the_sweep_goes_on(write_experiment, tmp_path):
  src = default_trainer_source(num_steps=40, lrs=(0.1, 1e6), seeds=1, optim="sgd")
  exp = write_experiment(src)
  out = run_experiment(exp, sweep=True, workdir=tmp_path / "runs", quiet=True)
  by_lr = {s["point"]["optim.learning_rate"]: s for s in out}
  assert by_lr[0.1]["status"] == "done" and by_lr[0.1]["result"]["step"] == 40
  bad = by_lr[1e6]
  assert bad["status"] == "failed" and 1 <= bad["step"] <= 40 and f"at step {bad['step']}" in bad["reason"]
  assert ("nan" in bad["reason"] or "inf" in bad["reason"])
  logged = [json.loads(l) for l in open(f"{bad['dir']}/metrics.jsonl")] if bad["step"] > 10 else []
  assert all(np.isfinite(r["loss"]) and r["step"] < bad["step"] for r in logged)


def test_custom_run_gets_a_context_and_a_failing_trial_does_not_stop_the_sweep(write_experiment, tmp_path):
  exp = write_experiment("""
      import ml_collections
      def get_config():
        c = ml_collections.ConfigDict()
        c.x = 1.0
        return c
      def get_sweep():
        return [{"x": 1.0}, {"x": -1.0}, {"x": 2.0}]
      def run(config, ctx):
        if config.x < 0:
          raise ValueError("x must be positive")
        for step in (1, 2):
          ctx.log(step, {"loss": config.x / step})
        return {"value": config.x * 2, "claim": {"passed": True}}
      """)
  out = run_experiment(exp, sweep=True, workdir=tmp_path / "runs", quiet=True)
  assert [s["status"] for s in out] == ["done", "failed", "done"]
  assert out[1]["reason"] == "ValueError: x must be positive"
  assert out[2]["result"] == {"value": 4.0, "claim": {"passed": True}}
  lines = [json.loads(l) for l in open(f"{out[0]['dir']}/metrics.jsonl")]
  assert [l["step"] for l in lines] == [1, 2]
  tb = list((tmp_path / "runs").glob("exp/*/tb/events.out.tfevents.*"))
  pytest.importorskip("tensorboardX")
  assert len(tb) == 2  # one event file per finished trial with logged scalars


def test_tensorboard_events_hold_the_logged_scalars(tmp_path):
  tbx = pytest.importorskip("tensorboardX")
  del tbx
  from paperlab.runner import Context
  ctx = Context(tmp_path, tensorboard=True)
  ctx.log(3, {"loss": 0.5, "note": "text is skipped"})
  ctx.close()
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  (path,) = (tmp_path / "tb").glob("events.out.tfevents.*")
  raw, scalars = path.read_bytes(), []
  while raw:  # TFRecord framing: u64 length, u32 crc, payload, u32 crc
    n = int.from_bytes(raw[:8], "little")
    event = event_pb2.Event.FromString(raw[12:12 + n])
    raw = raw[16 + n:]
    scalars += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
  assert scalars == [(3, "loss", 0.5)]


BRANCHY_OPTIMIZER = """
    import optax

    def branchy_sgd(learning_rate, clip=1.0):
      if learning_rate <= 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
      if clip > 0:  # Python control flow on a hyperparameter: cannot be traced
        return optax.chain(optax.clip(clip), optax.sgd(learning_rate))
      return optax.sgd(learning_rate)
    """


def test_untraceable_optimizer_falls_back_to_one_program_per_setting(write_experiment, tmp_path, monkeypatch):
  (tmp_path / "branchy_optim.py").write_text(textwrap.dedent(BRANCHY_OPTIMIZER))
  monkeypatch.syspath_prepend(str(tmp_path))
  exp = write_experiment("""
      import ml_collections
      def get_config():
        c = ml_collections.ConfigDict()
        c.seed = 0
        c.data = dict(name="digits")
        c.model = dict(name="MLP", widths=(8,))
        c.optim = dict(name="branchy_optim.branchy_sgd", learning_rate=0.1, clip=1.0)
        c.train = dict(num_steps=10, batch_size=32, log_every=5, checkpoint_every=10)
        return c
      def get_sweep():
        return [{"optim.clip": c, "seed": s} for c in (0.5, 1.0) for s in (0, 1)] + [{"optim.learning_rate": 0.0}]
      """)
  out = run_experiment(exp, sweep=True, workdir=tmp_path / "runs", quiet=True)
  assert [s["status"] for s in out] == ["done"] * 4 + ["failed"]
  assert "learning_rate must be > 0, got 0.0" in out[4]["reason"]  # the optimizer's own check, one trial
  assert out[0]["result"]["train_loss"] != out[2]["result"]["train_loss"]  # clip really differed
