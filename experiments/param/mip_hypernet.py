"""Magnitude-invariant parametrization (MIP) speeds up hypernetwork training (Ortiz et al., "Magnitude Invariant
Parametrizations Improve Hypernetwork Learning", 2023), catalogue [571].

A family of 1-D regression tasks indexed by ``gamma`` in [0, 1]: ``y = (0.5 + gamma) sin(x + pi gamma)``,
``x ~ U[-pi, pi]``. A hypernetwork (MLP ``in -> 64 -> 64 -> 49``, LeakyReLU, Kaiming-normal hidden layers and zero
biases, as ``hyperlight``'s ``FullyConnectedNet``) outputs the 49 weights of the primary regressor
``1 -> 16 -> 1`` (tanh). Each Adam step draws 16 tasks and 64 points per task; MSE. Arms:
``default``: ``theta = h(gamma; omega)`` with the raw ``gamma`` as input
(``paperlab.param.mip_hypernet(h, encoding=None, residual=False)``); ``mip``: ``theta = theta_0 + h(encode(gamma))``
with the ``cos|sin`` encoding and a learned ``theta_0`` initialised like the primary network (LeCun normal kernels,
zero biases; ``paperlab.param.mip_hypernet(h)``). Both arms share everything else, the hypernetwork's init included.

Protocol (:mod:`paperlab.runner.protocol`): the same learning-rate grid for both arms, chosen on the validation loss
at step 300 (tasks and points drawn apart from training and test), 3 seeds (init and batches), the test loss (64
fresh tasks x 256 points) read once per arm at the chosen rate. Claim on seed means: MIP's test loss at step 300 <
0.7 x the default's. Control: the default in MIP's place must fail (ratio 1).

Measured (seeds 0-2; learning rates {1e-3, 3e-3, 1e-2, 3e-2, 1e-1}): MIP chose 1e-2, the default 3e-2. Test loss
at step 300: MIP 0.00226 +- 0.00073 (per seed 0.0016, 0.0033, 0.0019), default 0.00287 +- 0.00136 (0.0017,
0.0049, 0.0020); ratio 0.79, not < 0.7: NOT REPRODUCED (the control, ratio 1, fails as it must). At step 1000 MIP
is further ahead: 0.00114 vs 0.00241 (ratio 0.47). Validation loss at step 300 by learning rate (1e-3 ... 1e-1):
MIP 0.0040, 0.0041, 0.0021, 0.0023, 0.0080; default 0.0069, 0.0037, 0.0064, 0.0027, 0.0190 -- at a shared rate
MIP is ahead at 4 of 5 rates (by up to 3x), but tuned separately the default closes most of the gap. A first grid
{3e-4, 1e-3, 3e-3, 1e-2} capped the default at 1e-2 and gave a ratio of 0.59; it was widened because MIP's choice
sat on its edge, before the claim was judged on the widened grid. 39 CPU-s.

CI scale (CI_CONFIG): the full grid and seeds, training stopped at step 300 (the claim's step), XLA's fast CPU
compile; at it: the same step-300 numbers (ratio 0.79, not reproduced; strict xfail), 23 CPU-s.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from paperlab import papers, param
from paperlab.runner import protocol
from paperlab.runner.lr_transfer import fast_compile_options

PAPER_ID = 571
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = (
    "the sine family is y = (0.5 + gamma) sin(x + pi gamma), x ~ U[-pi, pi] (the catalogue names only 'a family of "
    "sine tasks indexed by gamma'); the primary regressor is 1-16-1 tanh, the hypernetwork 64-64 LeakyReLU",
    "the learning rate of each arm is chosen from the same grid on the validation loss at step 300",
)
CI_CONFIG = {"fast_compile": True, "steps": 300}  # the claim reads step 300; the 700 steps after it are skipped


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.learning_rates = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
  c.steps = 1000
  c.eval_step = 300
  c.tasks_per_step = 16
  c.points_per_task = 64
  c.hyper_widths = (64, 64)
  c.primary_width = 16
  c.eval_tasks = 64
  c.eval_points = 256
  c.ratio = 0.7
  c.fast_compile = False  # True: XLA's cheaper CPU compile (paperlab.runner.trainer.FAST_COMPILE_CPU), CI scale only
  return c


def _target(gamma, x):
  return (0.5 + gamma) * jnp.sin(x + jnp.pi * gamma)


def _primary(theta, x):
  """The 1-hidden-layer regressor: ``x (n,) -> (n,)``."""
  h = jnp.tanh(x[:, None] @ theta["w1"] + theta["b1"])
  return (h @ theta["w2"] + theta["b2"])[:, 0]


def _primary_shapes(width):
  return {"w1": (1, width), "b1": (width,), "w2": (width, 1), "b2": (1,)}


def _primary_init(key, width):
  """LeCun-normal kernels and zero biases (Flax's default init of the primary network)."""
  k1, k2 = jax.random.split(key)
  return {"w1": jax.random.normal(k1, (1, width)), "b1": jnp.zeros((width,)),
          "w2": jax.random.normal(k2, (width, 1)) / jnp.sqrt(width), "b2": jnp.zeros((1,))}


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  shapes = _primary_shapes(config.primary_width)
  sizes = {k: int(np.prod(s)) for k, s in shapes.items()}
  num_out = sum(sizes.values())
  slope = 0.01  # LeakyReLU's negative slope (torch's default, hyperlight's nonlinearity)
  gain = np.sqrt(2.0 / (1 + slope ** 2))

  def hyper_init(key, d_in):
    dims = (d_in,) + tuple(config.hyper_widths) + (num_out,)
    keys = jax.random.split(key, len(dims) - 1)
    layers = []
    for i, (k, a, b) in enumerate(zip(keys, dims[:-1], dims[1:])):
      std = (gain if i < len(dims) - 2 else 1.0) / np.sqrt(a)  # Kaiming normal (fan in); the output layer linear
      layers.append({"w": std * jax.random.normal(k, (a, b)), "b": jnp.zeros((b,))})
    return layers

  def hyper_apply(omega, z):
    for layer in omega[:-1]:
      z = jax.nn.leaky_relu(z @ layer["w"] + layer["b"], slope)
    flat = z @ omega[-1]["w"] + omega[-1]["b"]
    out, start = {}, 0
    for k, s in shapes.items():
      out[k] = flat[..., start:start + sizes[k]].reshape(flat.shape[:-1] + s)
      start += sizes[k]
    return out

  arms_spec = {"default": dict(encoding=None, residual=False), "mip": dict(encoding="cos|sin", residual=True)}

  def init_params(arm, key):
    k_hyper, k_theta = jax.random.split(key)
    d_in = 2 if arms_spec[arm]["encoding"] == "cos|sin" else 1
    params = {"hyper": hyper_init(k_hyper, d_in)}
    if arms_spec[arm]["residual"]:
      params["theta0"] = _primary_init(k_theta, config.primary_width)
    return params

  def draw(key, num_tasks, num_points):
    kg, kx = jax.random.split(key)
    gamma = jax.random.uniform(kg, (num_tasks, 1))
    x = jax.random.uniform(kx, (num_tasks, num_points), minval=-jnp.pi, maxval=jnp.pi)
    return gamma, x, _target(gamma, x)

  def make_loss(apply):
    def loss(params, gamma, x, y):
      theta = jax.vmap(apply, in_axes=(None, 0))(params, gamma)
      pred = jax.vmap(_primary)(theta, x)
      return jnp.mean((pred - y) ** 2)
    return loss

  val = draw(jax.random.key(10_001), config.eval_tasks, config.eval_points)  # shared by every arm and seed
  test_set = draw(jax.random.key(20_002), config.eval_tasks, config.eval_points)

  @functools.lru_cache(maxsize=None)
  def program(arm_name):
    """One jitted program per arm; the learning rate is traced, so the grid reuses it."""
    loss = make_loss(param.mip_hypernet(hyper_apply, **arms_spec[arm_name]))

    @functools.partial(jax.jit, compiler_options=fast_compile_options() if config.fast_compile else None)
    @functools.partial(jax.vmap, in_axes=(0, None))
    def trial(seed, learning_rate):
      tx = optax.adam(learning_rate)

      def steps(carry, keys):
        def body(c, k):
          p, s = c
          value, g = jax.value_and_grad(loss)(p, *draw(k, config.tasks_per_step, config.points_per_task))
          u, s = tx.update(g, s, p)
          return (optax.apply_updates(p, u), s), value
        return jax.lax.scan(body, carry, keys)

      key = jax.random.key(seed)
      params = init_params(arm_name, jax.random.fold_in(key, 0))
      keys = jax.random.split(jax.random.fold_in(key, 1), config.steps)
      carry, first = steps((params, tx.init(params)), keys[:config.eval_step])
      at_eval = carry[0]
      (final, _), rest = steps(carry, keys[config.eval_step:])
      return (loss(at_eval, *val), loss(at_eval, *test_set), loss(final, *test_set),
              jnp.concatenate([first, rest]))

    return trial

  def fit(arm, hparams, seeds):
    val_loss, test_eval, test_final, curve = program(arm.name)(jnp.asarray(seeds),
                                                              jnp.float32(hparams["learning_rate"]))
    ctx.log_curve(f"{arm.name}/lr{hparams['learning_rate']}/train_loss", np.asarray(curve).mean(0),
                  every=max(1, config.steps // 20))
    return {"val_loss": np.asarray(val_loss), "test_loss_at_eval_step": np.asarray(test_eval),
            "test_loss_final": np.asarray(test_final)}

  grid = [{"learning_rate": lr} for lr in config.learning_rates]
  arms = [protocol.Arm("mip", grid), protocol.Arm("default", grid)]
  comparison = protocol.compare(arms, range(config.seeds), fit, validate=lambda out: out["val_loss"],
                                test=lambda out: {k: v for k, v in out.items() if k != "val_loss"}, maximize=False)
  verdict = comparison.judge(
      lambda m, b: m["test_loss_at_eval_step"] < config.ratio * b["test_loss_at_eval_step"],
      method="mip", baseline="default")
  mip, default = comparison["mip"], comparison["default"]
  ratio = mip.mean("test_loss_at_eval_step") / default.mean("test_loss_at_eval_step")
  for arm in (mip, default):
    ctx.print(f"{arm.name}: lr {arm.chosen['learning_rate']}, test loss at step {config.eval_step} "
              f"{arm.mean('test_loss_at_eval_step'):.4f} +- {arm.std('test_loss_at_eval_step'):.4f} "
              f"(per seed {np.round(arm.test['test_loss_at_eval_step'], 4).tolist()}), at step {config.steps} "
              f"{arm.mean('test_loss_final'):.4f}; validation by lr {np.round(arm.validation, 4).tolist()}")
  results = {name: {k: v.tolist() for k, v in arm.test.items()} for name, arm in comparison.arms.items()}
  results["protocol"] = comparison.to_json()
  results["claim"] = {**verdict, "statement": CLAIM, "loss_ratio_at_eval_step": ratio, "threshold": config.ratio,
                      "eval_step": config.eval_step,
                      "chosen_learning_rate": {a.name: a.chosen["learning_rate"] for a in (mip, default)},
                      "test_loss_mip": mip.mean("test_loss_at_eval_step"),
                      "test_loss_default": default.mean("test_loss_at_eval_step")}
  return results
