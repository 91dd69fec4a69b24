"""A model ladder of char transformers over widths, trained through the runner, and the law fitted to it.

Bhagia et al., "Establishing Task Scaling Laws via Compute-Efficient Model Ladders" (arXiv:2412.04403) predict a
large model from a *ladder* of small ones trained the same way. Here a rung is a
:class:`paperlab.models.CharTransformer` of width ``d_model`` (depth, heads, context, data and steps fixed), trained
on the embedded character corpus (:func:`paperlab.data.char_dataset`) with Adam in SP or muP
(:func:`paperlab.param.parametrize` against ``base_d_model``, so one learning rate serves every width), and
scored by its held-out loss per character. :func:`train_ladder` runs one runner trial per width
(:func:`paperlab.runner.run_experiment` on this module, which is itself an experiment: ``get_config`` / ``run``),
each training all its seeds as one vmapped program, so a ladder is resumable (finished widths are read from the
run store) and every rung has its ``config.json`` / ``metrics.jsonl`` / ``result.json``.
:func:`fit_char_ladder` then fits ``L(N) = c + a N^-b`` with :func:`paperlab.scaling.fit_ladder` on the
non-embedding parameter count (Kaplan et al., arXiv:2001.08361).

    ladder = train_ladder((16, 32, 64, 128), workdir="runs", overrides={"num_steps": 2000})
    fit = scaling.fit_ladder(ladder.num_params, ladder.losses)

From the command line, one rung: ``paperlab run paperlab/runner/ladder.py --config.d_model=64``.
Not applied here: muP's ``1/d_head`` attention scale; the rungs keep ``1/sqrt(d_head)``
(``CharTransformer(attn_scale="mup")`` has it, as experiments/param/mutransfer_char.py uses).
"""

from __future__ import annotations

import pathlib
from typing import Any, Mapping, NamedTuple, Sequence

import ml_collections
import numpy as np

__all__ = ["Ladder", "get_config", "run", "char_windows", "non_embedding_params", "train_ladder", "fit_char_ladder"]

_EMBEDDING = ("embed", "pos")  # top-level CharTransformer leaves that are embeddings (Kaplan's N excludes them)


def get_config() -> ml_collections.ConfigDict:
  """One rung's config (the defaults are a small CPU ladder; override with dotted keys)."""
  c = ml_collections.ConfigDict()
  c.d_model = 32
  c.base_d_model = 16  # muP's base width
  c.parametrization = "mup"  # or "sp"
  c.num_layers = 2
  c.num_heads = 4
  c.seq_len = 32
  c.corpus = "grammar"
  c.num_chars = 100_000
  c.seeds = 3
  c.learning_rate = 3e-3
  c.num_steps = 300
  c.batch_size = 32
  c.eval_windows = 256  # held-out windows scored at the end (0: all)
  return c


def char_windows(tokens: Any, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Non-overlapping next-character windows ``(inputs, targets)``, each ``(num_windows, seq_len)`` int32."""
  ids = np.asarray(tokens, np.int32).reshape(-1)
  if int(seq_len) != seq_len or seq_len < 1:
    raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}.")
  n = (ids.size - 1) // seq_len
  if n < 1:
    raise ValueError(f"tokens holds {ids.size} ids; seq_len={seq_len} needs at least {seq_len + 1}.")
  return ids[:n * seq_len].reshape(n, seq_len), ids[1:n * seq_len + 1].reshape(n, seq_len)


def non_embedding_params(params: Any) -> int:
  """Number of parameters outside the token and position embeddings (Kaplan et al.'s ``N``) of a
  ``CharTransformer``'s parameter pytree (plain dict from ``nnx.to_pure_dict``, arrays or shapes)."""
  import jax  # pylint: disable=g-import-not-at-top
  return int(sum(int(np.prod(x.shape)) for k, v in params.items() if k not in _EMBEDDING
                 for x in jax.tree.leaves(v)))


def _check(config) -> None:
  if config.parametrization not in ("sp", "mup"):
    raise ValueError(f"config.parametrization must be 'sp' or 'mup', got {config.parametrization!r}.")
  for name in ("d_model", "base_d_model", "num_layers", "num_heads", "seq_len", "seeds", "num_steps", "batch_size"):
    v = config[name]
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise ValueError(f"config.{name} must be a positive integer, got {v!r}.")
  if not config.learning_rate > 0:
    raise ValueError(f"config.learning_rate must be positive, got {config.learning_rate!r}.")


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  """Train one rung (width ``config.d_model``) for ``config.seeds`` seeds as one vmapped program; returns the
  held-out loss per character of every seed, the parameter counts and the final training loss."""
  _check(config)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from paperlab import data, param, train  # pylint: disable=g-import-not-at-top
  from paperlab.models import CharTransformer  # pylint: disable=g-import-not-at-top
  from paperlab.runner.trainer import compiler_options  # pylint: disable=g-import-not-at-top

  text = data.char_dataset(config.corpus, num_chars=config.num_chars)
  vocab = text.tokenizer.vocab_size
  x, y = (jnp.asarray(a) for a in char_windows(text.train, config.seq_len))
  xt, yt = char_windows(text.test, config.seq_len)
  if config.eval_windows:
    xt, yt = xt[:config.eval_windows], yt[:config.eval_windows]
  xt, yt = jnp.asarray(xt), jnp.asarray(yt)

  def make(width):
    return lambda rngs: CharTransformer(vocab, width, config.num_layers, config.num_heads, config.seq_len, rngs=rngs)

  shapes = lambda width: nnx.eval_shape(lambda: make(width)(nnx.Rngs(0)))
  model_fn = make(config.d_model)
  kind = "mup" if config.parametrization == "mup" else "sp"
  p = param.parametrize(shapes(config.d_model), shapes(config.base_d_model), kind=kind,
                        delta=shapes(2 * config.base_d_model) if config.d_model == config.base_d_model else None)
  tx = param.mu_adam(config.learning_rate, p)
  loss_fn = lambda model, batch, rng: train.classification_loss(param.multiplied(model, p), batch, rng)
  graphdef, init = train.make_init(model_fn, tx)
  step = train.make_train_step(graphdef, loss_fn, tx)

  def trial(key):
    state = init(key)
    state = state._replace(params=param.init_params(key, state.params, p))
    state, metrics = train.run_steps(step, state, (x, y), key, batch_size=config.batch_size,
                                     num_steps=config.num_steps)
    model = param.multiplied(nnx.merge(graphdef, state.params, state.model_state), p)
    test_loss = optax.softmax_cross_entropy_with_integer_labels(model(xt), yt).mean()
    return metrics["loss"], test_loss

  keys = jax.vmap(jax.random.key)(jnp.arange(config.seeds))
  options = compiler_options(config)  # the runner's fast CPU compile (most of a small rung's cost)
  curves, test_loss = jax.tree.map(np.asarray, jax.jit(jax.vmap(trial), compiler_options=options)(keys))
  mean_curve = curves.mean(axis=0)
  every = max(1, config.num_steps // 20)
  for s in range(0, config.num_steps, every):
    ctx.log(s + 1, {"train_loss": float(mean_curve[s])})
  n_all = int(sum(int(np.prod(a.shape)) for a in jax.tree.leaves(nnx.to_pure_dict(nnx.state(shapes(config.d_model),
                                                                                           nnx.Param)))))
  n = non_embedding_params(nnx.to_pure_dict(nnx.state(shapes(config.d_model), nnx.Param)))
  result = {"d_model": config.d_model, "num_params": n, "num_params_with_embeddings": n_all,
            "test_loss": test_loss.tolist(), "test_loss_mean": float(np.mean(test_loss)),
            "test_loss_std": float(np.std(test_loss)), "final_train_loss": curves[:, -1].tolist()}
  ctx.print(f"d_model {config.d_model}: N = {n}, held-out loss {result['test_loss_mean']:.4f} "
            f"+- {result['test_loss_std']:.4f} over {config.seeds} seeds")
  return result


class Ladder(NamedTuple):
  """A trained ladder: per rung (sorted by width) its width, non-embedding parameter count, per-seed held-out
  losses ``(rungs, seeds)`` and trial directory."""

  widths: np.ndarray
  num_params: np.ndarray
  losses: np.ndarray
  trial_dirs: tuple


def train_ladder(widths: Sequence[int], *, workdir: str | pathlib.Path, overrides: Mapping[str, Any] | None = None,
                 fresh: bool = False, quiet: bool = True) -> Ladder:
  """Train a char-transformer ladder over ``widths`` through the runner (one resumable trial per width, its seeds
  vmapped) and collect the rungs.

  Args:
    widths: the ``d_model`` of each rung (distinct; each divisible by ``num_heads``).
    workdir: the run store root (re-running resumes: finished rungs are not retrained).
    overrides: dotted overrides of :func:`get_config` shared by every rung (``{"num_steps": 1000}``).
    fresh: discard earlier results of these trials.
    quiet: no progress bars.

  Raises:
    ValueError: empty or repeated widths, or an override of ``d_model``.
    RuntimeError: a rung's trial failed (naming the width and the runner's reason).
  """
  from paperlab.runner.execute import run_experiment  # pylint: disable=g-import-not-at-top
  widths = [int(w) for w in widths]
  if not widths or len(set(widths)) != len(widths) or min(widths) < 1:
    raise ValueError(f"widths must be distinct positive integers, got {widths}.")
  overrides = dict(overrides or {})
  if "d_model" in overrides:
    raise ValueError("overrides must not set d_model: the ladder's widths set it per rung.")
  rows = []
  for w in sorted(widths):
    summary = run_experiment(__file__, {**overrides, "d_model": w}, workdir=workdir, fresh=fresh, quiet=quiet)[0]
    if summary.get("status") != "done":
      raise RuntimeError(f"ladder rung d_model={w} did not finish: {summary.get('status')}: "
                         f"{summary.get('reason', '')} ({summary.get('dir')}).")
    r = summary["result"]
    rows.append((w, r["num_params"], r["test_loss"], summary["dir"]))
  return Ladder(np.asarray([r[0] for r in rows]), np.asarray([r[1] for r in rows], np.float64),
                np.asarray([r[2] for r in rows], np.float64), tuple(r[3] for r in rows))


def fit_char_ladder(widths: Sequence[int], *, workdir: str | pathlib.Path,
                    overrides: Mapping[str, Any] | None = None, with_offset: bool = True, bootstrap: int = 0,
                    fresh: bool = False, quiet: bool = True):
  """:func:`train_ladder`, then :func:`paperlab.scaling.fit_ladder` on its non-embedding sizes and held-out
  losses. Returns ``(ladder, fit)``."""
  from paperlab import scaling  # pylint: disable=g-import-not-at-top
  ladder = train_ladder(widths, workdir=workdir, overrides=overrides, fresh=fresh, quiet=quiet)
  return ladder, scaling.fit_ladder(ladder.num_params, ladder.losses, with_offset=with_offset, bootstrap=bootstrap)
