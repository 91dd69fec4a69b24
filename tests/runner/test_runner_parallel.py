"""Several runners on one store, the process pool and the Ray backend, and data-parallel sharding."""

from __future__ import annotations

import json
import subprocess
import textwrap

import numpy as np
import pytest

from conftest import PYTHON, REPO, default_trainer_source, subprocess_env
from paperlab.runner import run_experiment

COUNTING_EXPERIMENT = """
    import os, time
    import ml_collections

    def get_config():
      c = ml_collections.ConfigDict()
      c.seed = 0
      c.x = 1.0
      return c

    def get_sweep():
      return [{"seed": s} for s in range(8)]

    def run(config, ctx):
      with open(ctx.workdir / "executions.txt", "a") as f:  # one line per execution of this trial
        f.write(f"{os.getpid()}\\n")
      time.sleep(0.3)
      ctx.log(1, {"loss": config.x + config.seed})
      return {"value": config.x * 10 + config.seed}
    """


def test_two_runners_on_one_store_finish_every_trial_exactly_once(write_experiment, tmp_path):
  exp = write_experiment(COUNTING_EXPERIMENT)
  cmd = [PYTHON, "-m", "paperlab.cli", "run", str(exp), "--sweep", "--workdir", str(tmp_path / "runs"), "--quiet"]
  procs = [subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
           for _ in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err.decode()
  trials = sorted((tmp_path / "runs" / "exp").iterdir())
  assert len(trials) == 8
  for trial in trials:
    assert len((trial / "executions.txt").read_text().split()) == 1
    assert json.loads((trial / "status.json").read_text())["status"] == "done"
    assert (trial / "metrics.jsonl").read_text().count("\n") == 1


def test_process_pool_gives_the_local_results(write_experiment, tmp_path):
  exp = write_experiment(COUNTING_EXPERIMENT)
  local = run_experiment(exp, sweep=True, workdir=tmp_path / "local", quiet=True)
  pool = run_experiment(exp, sweep=True, workdir=tmp_path / "pool", backend="process", max_parallel=2, quiet=True)
  assert [s["result"] for s in pool] == [s["result"] for s in local] == [{"value": 10.0 + s} for s in range(8)]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # Ray starts its processes after JAX loaded
def test_ray_backend_gives_the_local_results(write_experiment, tmp_path):
  ray = pytest.importorskip("ray")
  exp = write_experiment(default_trainer_source(num_steps=20, checkpoint_every=20, lrs=(1e-3, 1e-2), seeds=2))
  local = run_experiment(exp, sweep=True, workdir=tmp_path / "local", quiet=True)
  ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
           runtime_env={"env_vars": subprocess_env()})
  try:
    remote = run_experiment(exp, sweep=True, workdir=tmp_path / "ray", backend="ray", quiet=True)
  finally:
    ray.shutdown()
  assert len(remote) == 4 and all(s["status"] == "done" for s in remote)
  assert [s["trial_id"] for s in remote] == [s["trial_id"] for s in local]
  assert [s["result"] for s in remote] == [s["result"] for s in local]


SHARDED = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    import ml_collections
    from paperlab.runner import apply_overrides
    from paperlab.runner.trainer import GroupTrainer
    assert jax.device_count() == 8, jax.devices()
    sys.path.insert(0, sys.argv[1])
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = dict(name="digits")
    c.model = dict(name="MLP", widths=(16,))
    c.optim = dict(name="sgd", learning_rate=0.1)
    c.loss = dict(name="classification")
    c.train = dict(num_steps=10, batch_size=64, log_every=5, checkpoint_every=10, data_parallel=False)
    out = {}
    for dp in (False, True):
      cfg = apply_overrides(c, {"train.data_parallel": dp})
      tr = GroupTrainer(cfg)
      hp = tr.stack_hparams([cfg])
      ckpt, m = tr.chunk(hp, tr.init(hp), 10)
      out[str(dp)] = np.asarray(m["loss"][0]).tolist()
      if dp:
        hlo = tr._chunks[10].lower(hp, tr.init(hp), tr.train_data).compile().as_text()
        out["all_reduce"] = "all-reduce" in hlo
    print(json.dumps(out))
    """)


def test_data_parallel_run_on_8_devices_gives_the_single_device_loss(tmp_path):
  script = tmp_path / "sharded.py"
  script.write_text(SHARDED)
  env = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  proc = subprocess.run([PYTHON, str(script), str(REPO)], env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["all_reduce"]  # the batch really was split over the devices
  assert len(out["True"]) == 10
  for a, b in zip(out["True"], out["False"]):
    assert abs(a - b) <= 1e-5 * max(1.0, abs(b))


TRIAL_SHARDED = textwrap.dedent("""
    import json, sys
    import jax, ml_collections, numpy as np
    from paperlab.runner import apply_overrides
    from paperlab.runner.trainer import GroupTrainer
    assert jax.device_count() == 4, jax.devices()
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = dict(name="digits")
    c.model = dict(name="MLP", widths=(16,))
    c.optim = dict(name="adamw", learning_rate=1e-3)
    c.loss = dict(name="classification")
    c.train = dict(num_steps=10, batch_size=32, log_every=5, checkpoint_every=10, data_parallel=False,
                   trial_parallel=True)
    out = {}
    for tp in (False, True):
      cfgs = [apply_overrides(c, {"train.trial_parallel": tp, "optim.learning_rate": lr, "seed": s})
              for lr in (1e-3, 1e-2) for s in (0, 1)]
      tr = GroupTrainer(cfgs[0])
      hp = tr.stack_hparams(cfgs)
      ckpt, m = tr.chunk(hp, tr.init(hp), 10)
      out[str(tp)] = np.asarray(m["loss"]).tolist()
      leaf = jax.tree.leaves(ckpt["state"].params)[0]
      out["devices_" + str(tp)] = len(leaf.sharding.device_set)
      out["eval_" + str(tp)] = np.asarray(tr.evaluate(ckpt)["accuracy"]).tolist()
    print(json.dumps(out))
    """)


def test_trial_parallel_splits_a_vmapped_group_over_4_devices_with_unchanged_results(tmp_path):
  script = tmp_path / "trial_sharded.py"
  script.write_text(TRIAL_SHARDED)
  env = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  proc = subprocess.run([PYTHON, str(script)], env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["devices_True"] == 4 and out["devices_False"] == 1  # one trial per device vs all on device 0
  np.testing.assert_allclose(out["True"], out["False"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out["eval_True"], out["eval_False"], atol=1e-6)
  assert np.asarray(out["True"]).shape == (4, 10)
