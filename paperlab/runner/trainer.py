"""The default training loop, used when an experiment has no ``run(config, ctx)``.

It builds everything from config sections::

  config.seed = 0
  config.data = dict(name="digits")                       # paperlab.data.<name>(**rest)
  config.model = dict(name="MLP", widths=(64,))           # paperlab.models.<name>; in/out sizes from the data
  config.optim = dict(name="adamw", learning_rate=1e-3)   # optax.<name> / paperlab.optim.<name> / "pkg.mod.fn"
  config.loss = dict(name="classification")               # or a per-example loss fn(logits, labels, **rest)
  config.train = dict(num_steps=500, batch_size=128, log_every=50, checkpoint_every=100, data_parallel=False,
                      data_seed=0, trial_parallel=True)
  config.runner = dict(traced=("optim", "loss"), static=(), fast_compile=True)   # optional

A group of trials that differ only in *traced* leaves runs as one compiled program with a leading trial axis
(``jax.vmap`` over the hyperparameters and seeds). Traced leaves are declared once, here: ``seed`` and every
float leaf under the sections listed in ``config.runner.traced`` (default: ``optim`` and ``loss``), except the
dotted keys in ``config.runner.static``. Everything else (shapes, names, step counts, ints, strings) is static
and distinguishes groups. With several local devices the group's trial axis is split over them
(``train.trial_parallel``, see :meth:`GroupTrainer.trial_sharding`); ``train.data_parallel`` instead splits one
trial's batch over them. Under ``jax.distributed`` (``paperlab run --distributed``) both meshes span the devices
of every process; the data and the batch order are pure functions of the config, so the processes agree
without communicating, and each builds its own shards (:func:`paperlab.runner.distributed.global_array`).

The loop runs ``checkpoint_every`` steps at a time as one ``lax.scan`` and saves an orbax checkpoint per trial
(train state, RNG keys and data position). The batch and rng of step ``s`` are pure functions of ``(key, s)``
(:func:`paperlab.data.batch_at`'s batches, taken from :func:`paperlab.data.batching.batch_indices`, which
shuffles once per epoch instead of once per step), so a run restored at step ``s`` continues exactly as an
uninterrupted one.

Data order: with ``train.data_seed`` an int (default 0) every trial of a sweep sees the same sequence of
mini-batches (common random numbers: hyperparameters are compared on equal data, and the batch indices are
computed once for the whole vmapped group instead of once per trial: shuffling costs more on CPU than a small
model's step); seeds then vary initialization and the step rng. With ``train.data_seed=None`` the order comes from
the trial's seed, exactly as in ``paperlab.train.run_steps(step, state, data, run_key)``.
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
import json
import math
from typing import Any, Callable, Mapping, Sequence

import ml_collections

from paperlab.runner.config import flatten

DEFAULT_TRACED_SECTIONS = ("optim", "loss")
TRAIN_DEFAULTS = dict(num_steps=500, batch_size=128, log_every=50, checkpoint_every=100, data_parallel=False,
                      data_seed=0, trial_parallel=True)


class NonFiniteLoss(RuntimeError):
  """The training loss became NaN or Inf."""

  def __init__(self, step: int, value: float):
    super().__init__(f"loss became {value} at step {step}")
    self.step = step


def _runner_section(config: Mapping[str, Any]) -> Mapping[str, Any]:
  return config.get("runner", {}) or {}


def traced_keys(config: Mapping[str, Any]) -> list[str]:
  """Dotted keys of the leaves that may differ inside one vmapped group (see the module docstring)."""
  runner = _runner_section(config)
  sections = tuple(runner.get("traced", DEFAULT_TRACED_SECTIONS))
  static = set(runner.get("static", ()))
  keys = []
  for key, value in flatten(config).items():
    if key in static:
      continue
    if key == "seed" or (isinstance(value, float) and any(key == s or key.startswith(s + ".") for s in sections)):
      keys.append(key)
  return sorted(keys)


def group_key(config: Mapping[str, Any]) -> str:
  """Trials with equal group keys can run as one vmapped program: the static leaves, as JSON."""
  traced = set(traced_keys(config))
  static = {k: v for k, v in flatten(config).items() if k not in traced}
  return json.dumps({"static": static, "traced": sorted(traced)}, sort_keys=True, default=repr)


def group_trials(configs: Sequence[Mapping[str, Any]]) -> list[list[int]]:
  """Partition trial indices into vmappable groups (first-appearance order)."""
  groups: dict[str, list[int]] = {}
  for i, config in enumerate(configs):
    groups.setdefault(group_key(config), []).append(i)
  return list(groups.values())


# On CPU, XLA's most expensive LLVM passes roughly double the compile time of the small programs the runner
# compiles and barely change their speed; ``config.runner.fast_compile = False`` turns this off.
FAST_COMPILE_CPU = {"xla_backend_optimization_level": 1, "xla_llvm_disable_expensive_passes": True}


def compiler_options(config: Mapping[str, Any]) -> dict | None:
  """XLA options for the runner's programs: :data:`FAST_COMPILE_CPU` on CPU unless the config opts out."""
  import jax  # pylint: disable=g-import-not-at-top
  if not _runner_section(config).get("fast_compile", True) or jax.default_backend() != "cpu":
    return None
  return dict(FAST_COMPILE_CPU)


def resolve(name: str, namespaces: Sequence[str]) -> Any:
  """``name`` looked up in each namespace module in turn, or a dotted ``"package.module.attr"`` path."""
  for ns in namespaces:
    module = importlib.import_module(ns)
    if hasattr(module, name):
      return getattr(module, name)
  if "." in name:
    module_name, attr = name.rsplit(".", 1)
    try:
      return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
      pass
  raise ValueError(f"cannot find {name!r} in {', '.join(namespaces)} (or as a dotted path).")


def _set_dotted(tree: dict, key: str, value: Any) -> None:
  parts = key.split(".")
  for p in parts[:-1]:
    tree = tree[p]
  tree[parts[-1]] = value


def _rest(section: Mapping[str, Any]) -> dict:
  return {k: v for k, v in section.items() if k != "name"}


def build_data(data_cfg: Mapping[str, Any]):
  """``paperlab.data.<name>(**rest)`` -> a Dataset (x_train, y_train, x_test, y_test)."""
  fn = resolve(data_cfg.get("name", "digits"), ["paperlab.data"])
  return fn(**_rest(data_cfg))


def build_model_fn(model_cfg: Mapping[str, Any], data) -> Callable:
  """``rngs -> model``; input and output sizes the model's constructor asks for are read from the data."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  cls = resolve(model_cfg.get("name", "MLP"), ["paperlab.models"])
  kwargs = _rest(model_cfg)
  params = inspect.signature(cls.__init__ if inspect.isclass(cls) else cls).parameters
  num_classes = int(np.max(data.y_train)) + 1
  inferred = {"in_features": data.x_train.shape[-1], "in_channels": data.x_train.shape[-1],
              "out_features": num_classes, "num_classes": num_classes}
  for name, value in inferred.items():
    if name in params and name not in kwargs:
      kwargs[name] = value
  for key, value in kwargs.items():
    if isinstance(value, list):
      kwargs[key] = tuple(value)
  return lambda rngs: cls(**kwargs, rngs=rngs)


def build_optimizer(optim_cfg: Mapping[str, Any]):
  """``optax.<name>(**rest)`` (or ``paperlab.optim.<name>`` / a dotted path); values may be tracers."""
  fn = resolve(optim_cfg.get("name", "adamw"), ["optax", "paperlab.optim"])
  return fn(**_rest(optim_cfg))


def build_loss(loss_cfg: Mapping[str, Any]) -> Callable:
  """``loss_fn(model, (x, y), rng) -> (loss, {"accuracy": ...})``."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from paperlab import train  # pylint: disable=g-import-not-at-top
  name = loss_cfg.get("name", "classification")
  if name == "classification":
    return train.classification_loss
  per_example = resolve(name, ["paperlab.losses", "optax.losses"])
  kwargs = _rest(loss_cfg)

  def loss_fn(model, batch, rng):
    del rng
    x, y = batch
    logits = model(x)
    return per_example(logits, y, **kwargs).mean(), {"accuracy": (jnp.argmax(logits, -1) == y).mean()}

  return loss_fn


class GroupTrainer:
  """Compiled init / chunk / evaluate functions for one group of trials (equal static leaves)."""

  def __init__(self, config: Mapping[str, Any], static: Sequence[str] = ()):
    import jax  # pylint: disable=g-import-not-at-top
    from paperlab import train  # pylint: disable=g-import-not-at-top
    self.cfg = copy.deepcopy(config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config))
    self.traced = [k for k in traced_keys(self.cfg) if k not in static]
    self.train_cfg = {**TRAIN_DEFAULTS, **self.cfg.get("train", {})}
    self.data = build_data(self.cfg.get("data", {}))
    self.model_fn = build_model_fn(self.cfg.get("model", {}), self.data)
    self.loss_fn = build_loss(self.cfg.get("loss", {}))
    self.graphdef, _ = train.make_init(self.model_fn, build_optimizer(self.cfg.get("optim", {})))
    self.batch_size = int(self.train_cfg["batch_size"])
    self.num_steps = int(self.train_cfg["num_steps"])
    self.mesh = None
    if self.train_cfg.get("data_parallel"):
      n = jax.device_count()
      if self.batch_size % n:
        raise ValueError(f"train.batch_size={self.batch_size} must be divisible by the {n} devices for "
                         "data_parallel.")
      self.mesh = jax.make_mesh((n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    self.train_data = (jax.numpy.asarray(self.data.x_train), jax.numpy.asarray(self.data.y_train))
    self.num_examples = int(self.train_data[0].shape[0])
    self.compiler_options = compiler_options(self.cfg)
    self._init = jax.jit(jax.vmap(self._init_one), compiler_options=self.compiler_options)
    self._chunks: dict[int, Callable] = {}
    self._eval = jax.jit(jax.vmap(self._eval_one), compiler_options=self.compiler_options)

  # Per-trial pure functions (vmapped above).
  def hparams(self, config: Mapping[str, Any]) -> dict:
    flat = flatten(config)
    return {k: flat[k] for k in self.traced}

  def _resolved(self, hp: Mapping[str, Any]) -> dict:
    cfg = copy.deepcopy(self.cfg)
    for key, value in hp.items():
      _set_dotted(cfg, key, value)
    return cfg

  def _keys(self, hp):
    import jax  # pylint: disable=g-import-not-at-top
    key = jax.random.PRNGKey(hp.get("seed", 0))
    return jax.random.split(key)  # (init_key, run_key)

  def _init_one(self, hp):
    from paperlab import train  # pylint: disable=g-import-not-at-top
    cfg = self._resolved(hp)
    _, init = train.make_init(self.model_fn, build_optimizer(cfg.get("optim", {})))
    init_key, run_key = self._keys(hp)
    return {"state": init(init_key), "key": run_key}

  def _chunk_one(self, hp, ckpt, data, idx, *, num_steps: int):
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from paperlab import train  # pylint: disable=g-import-not-at-top
    from paperlab.data.batching import batch_indices  # pylint: disable=g-import-not-at-top
    cfg = self._resolved(hp)
    step = train.make_train_step(self.graphdef, self.loss_fn, build_optimizer(cfg.get("optim", {})))
    if self.mesh is not None:
      sharding = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec("data"))
      inner = step

      def step(state, batch, rng):  # data parallel: the batch is split over the mesh, XLA all-reduces grads
        return inner(state, jax.lax.with_sharding_constraint(batch, sharding), rng)

    # The same split as train.run_steps; the batches are batch_at's (idx is given when the data key is shared).
    data_key, step_key = jax.random.split(ckpt["key"])
    if idx is None:
      idx = batch_indices(data_key, ckpt["state"].step, num_steps, self.num_examples, self.batch_size)

    def body(state, batch_idx):
      batch = jax.tree.map(lambda a: jnp.take(a, batch_idx, axis=0), data)
      return step(state, batch, jax.random.fold_in(step_key, state.step))

    state, metrics = jax.lax.scan(body, ckpt["state"], idx)
    return {"state": state, "key": ckpt["key"]}, metrics

  def _chunk_group(self, hp, ckpt, data, *, num_steps: int):
    """``num_steps`` steps of every trial; all trials are at the same step (the runner runs them so).

    With a shared data order (``train.data_seed``) the batch indices are computed once for the group, outside
    the trial axis: one shuffle per epoch instead of one per trial and step, which on CPU costs more than the
    small models' steps.
    """
    import jax  # pylint: disable=g-import-not-at-top
    from paperlab.data.batching import batch_indices  # pylint: disable=g-import-not-at-top
    idx = None
    if self.train_cfg.get("data_seed") is not None:
      key = jax.random.PRNGKey(int(self.train_cfg["data_seed"]))
      idx = batch_indices(key, ckpt["state"].step[0], num_steps, self.num_examples, self.batch_size)
    one = functools.partial(self._chunk_one, num_steps=num_steps)
    return jax.vmap(one, in_axes=(0, 0, None, None))(hp, ckpt, data, idx)

  def _eval_one(self, ckpt):
    from paperlab import train  # pylint: disable=g-import-not-at-top
    return train.evaluate(self.graphdef, ckpt["state"], self.data.x_test, self.data.y_test)

  # Group operations.
  def stack_hparams(self, configs: Sequence[Mapping[str, Any]]) -> dict:
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    hps = [self.hparams(c) for c in configs]
    return {k: jnp.asarray([h[k] for h in hps], dtype=jnp.int32 if k == "seed" else jnp.float32)
            for k in self.traced}

  def trial_sharding(self, hp):
    """How a group's trial axis is placed: split over all devices (of every process, see
    :mod:`paperlab.runner.distributed`) (``train.trial_parallel``, the default)
    when there are several, the group divides evenly among them and the batch is not already data parallel;
    otherwise ``None`` (one device). Each device then runs its share of the vmapped trials: on a host with 8
    accelerators a 16-trial sweep runs 2 trials per device, with no communication between them."""
    import jax  # pylint: disable=g-import-not-at-top
    n, trials = jax.device_count(), len(next(iter(hp.values())))
    if self.mesh is not None or not self.train_cfg.get("trial_parallel", True) or n == 1 or trials % n:
      return None
    mesh = jax.make_mesh((n,), ("trials",), axis_types=(jax.sharding.AxisType.Auto,))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("trials"))

  def init(self, hp):
    from paperlab.runner import distributed  # pylint: disable=g-import-not-at-top
    sharding = self.trial_sharding(hp)
    return self._init(hp if sharding is None else distributed.global_array(hp, sharding))

  def abstract_checkpoint(self):
    """Shapes and dtypes of one trial's checkpoint (for orbax restore)."""
    import jax  # pylint: disable=g-import-not-at-top
    hp = {k: (0 if k == "seed" else 0.0) for k in self.traced}
    hp = jax.tree.map(jax.numpy.asarray, hp)
    return jax.eval_shape(self._init_one, {k: v.astype(jax.numpy.int32 if k == "seed" else jax.numpy.float32)
                                           for k, v in hp.items()})

  def chunk(self, hp, ckpt, num_steps: int):
    import jax  # pylint: disable=g-import-not-at-top
    from paperlab.runner import distributed  # pylint: disable=g-import-not-at-top
    if num_steps not in self._chunks:
      fn = functools.partial(self._chunk_group, num_steps=num_steps)
      self._chunks[num_steps] = jax.jit(fn, compiler_options=self.compiler_options)
    # Several processes: the mesh spans all of them; every process holds the same data, hyperparameters and
    # (restored or initialized) state, and global_array builds each process's shards from its own copy.
    data = self.train_data
    if self.mesh is not None:
      replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
      data = distributed.global_array(data, replicated)
      ckpt = distributed.global_array(ckpt, replicated)
      if distributed.process_count() > 1:
        hp = distributed.global_array(hp, replicated)
    elif (sharding := self.trial_sharding(hp)) is not None:
      hp, ckpt = distributed.global_array((hp, ckpt), sharding)
      data = distributed.global_array(data, jax.sharding.NamedSharding(sharding.mesh,
                                                                      jax.sharding.PartitionSpec()))
    return self._chunks[num_steps](hp, ckpt, data)

  def evaluate(self, ckpt) -> dict:
    return self._eval(ckpt)


def first_nonfinite(losses) -> int | None:
  """Index of the first NaN/Inf in a 1-D array of losses, or None."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  bad = ~np.isfinite(np.asarray(losses))
  return int(np.argmax(bad)) if bad.any() else None


def is_finite_number(x) -> bool:
  return isinstance(x, (int, float)) and math.isfinite(x)
