"""Published muP presets: the per-leaf rules and base hyperparameters a paper trained with, built on
:func:`paperlab.param.parametrize`.

Cerebras-GPT's muP recipe (Dey et al., "Cerebras-GPT: Open Compute-Optimal Language Models Trained on the Cerebras
Wafer-Scale Cluster", arXiv:2304.03208, Sec. 3.3 and the muP table of its appendix): hyperparameters tuned on a
proxy of width ``d_model = 256`` -- ``eta_base = 6e-3``, ``sigma_base = 0.08``, embedding multiplier ``m_emb = 10``
-- and transferred to ``d_model`` with the width ratio ``m_d = d_model / 256``:

=====================  ========================  ==================  ============
leaf                    init std                  forward multiplier  Adam LR
=====================  ========================  ==================  ============
embeddings              sigma_base                m_emb               eta_base
hidden weights          sigma_base / sqrt(m_d)    1                   eta_base / m_d
output (logits)         sigma_base                1 / m_d             eta_base
biases, norm scales     0, 1                      1                   eta_base
=====================  ========================  ==================  ============

and attention logits ``q . k / d_head`` (a model option: ``CharTransformer(attn_scale="mup")``). These are TP5's
Table-8 muP rules for Adam (:func:`paperlab.param.parametrize` with ``kind="mup"``) with Cerebras' absolute init
std ``sigma_base`` in place of ``1 / sqrt(fan_in)``; at ``d_model = 256`` every width factor is 1, so the preset is
the standard parametrization with ``eta = 6e-3`` and every weight ``N(0, 0.08^2)``, times the embedding multiplier.
Not included (verify against the paper): any depth scaling of the residual output projections.

Lingle's muP transformer (Lingle, "A Large-Scale Exploration of mu-Transfer", arXiv:2404.05728, Sec. 2-3): muP for
Adam with hidden LR ``eta * base / width`` (``eta / m_in``), embedding (and readout) LR ``eta``, attention logits
``q . k / d_head``, and the query projection and the readout initialized at zero; weight decay, when used, is
decoupled and not width-scaled (:func:`paperlab.param.mu_adam`'s ``weight_decay``). :func:`mup_transformer` builds it
on :func:`paperlab.param.parametrize` with the paper's two ablation flags (``trainable_gains``: RMSNorm/LayerNorm
gains trained or fixed at 1; ``attn_scale``: ``"1/d_head"`` or ``"1/sqrt(d_head)"``), :func:`mup_transformer_init`
draws its initial parameters (zero query columns included), and :func:`mup_transformer_config` is the
ml-collections preset whose ``mup`` sub-dict is passed as keyword arguments (one-line ablations:
``--config.mup.trainable_gains=True``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from paperlab._checks import check_positive
from paperlab._tree import path_str
from paperlab.param.parametrization import Parametrization, init_params, parametrize

__all__ = ["CEREBRAS_GPT_MUP", "MUP_ATTN_SCALES", "MupPreset", "MupTransformerPreset", "cerebras_gpt_mup",
           "mup_transformer", "mup_transformer_config", "mup_transformer_init"]

CEREBRAS_GPT_MUP = {"eta_base": 6e-3, "sigma_base": 0.08, "embedding_mult": 10.0, "base_d_model": 256}
"""Cerebras-GPT's muP base hyperparameters (Dey et al., arXiv:2304.03208, Sec. 3.3): the 40M proxy's tuned values."""


class MupPreset(NamedTuple):
  """A published muP recipe for one model.

  Attributes:
    parametrization: per-leaf init std, forward multiplier and LR multiplier (use it with
      :func:`paperlab.param.init_params`, :func:`paperlab.param.multiplied` and :func:`paperlab.param.mu_adam`).
    learning_rate: the global (base) learning rate to pass with it, ``eta_base``.
    attn_scale: the attention-logit scaling the recipe uses, as ``paperlab.models.CharTransformer(attn_scale=...)``
      takes it (``"mup"``: ``1 / d_head``).
  """

  parametrization: Parametrization
  learning_rate: float
  attn_scale: str


def cerebras_gpt_mup(model_or_params: Any, base: Any, *, eta_base: float = 6e-3, sigma_base: float = 0.08,
                     embedding_mult: float = 10.0, delta: Any = None,
                     roles: Mapping[str, str] | None = None) -> MupPreset:
  """Cerebras-GPT's muP preset (Dey et al., arXiv:2304.03208, Sec. 3.3 and its muP table; see the module docstring).

  Built on :func:`paperlab.param.parametrize` (``kind="mup"``, ``optimizer="adam"``: roles, the width ratio
  ``m_d`` of each leaf and TP5's LR and readout rules), with the init stds replaced by Cerebras' absolute ones
  (``sigma_base``, hidden ``sigma_base / sqrt(m_d)``) and the embedding multiplier on every input-like leaf (token and
  position embeddings: roles ``embedding`` and ``input``). Defaults are the paper's (:data:`CEREBRAS_GPT_MUP`).
  Host-side construction (Python floats per leaf); the result is used inside jitted code like any
  :class:`~paperlab.param.Parametrization`.

  Args:
    model_or_params: the model (``nnx.Module``, ``nnx.State`` or parameter pytree, arrays or shapes).
    base: the same architecture at the proxy width, ``d_model = 256`` in the paper (``nnx.eval_shape`` is enough).
    eta_base: the proxy's Adam learning rate (6e-3).
    sigma_base: the proxy's init std of every weight (0.08).
    embedding_mult: ``m_emb``, the embedding output multiplier (10).
    delta: a model of another width marking the width dimensions; needed when ``model_or_params`` has the base
      shapes (as in :func:`paperlab.param.parametrize`).
    roles: ``{regex: role}`` overrides of the inferred roles.

  Returns:
    A :class:`MupPreset` ``(parametrization, learning_rate=eta_base, attn_scale="mup")``.

  Raises:
    ValueError: a non-positive ``eta_base``, ``sigma_base`` or ``embedding_mult``, a model at the base shapes
      without ``delta``, or what :func:`paperlab.param.parametrize` rejects.
  """
  check_positive("eta_base", eta_base)
  check_positive("sigma_base", sigma_base)
  check_positive("embedding_mult", embedding_mult)
  mup = parametrize(model_or_params, base, kind="mup", optimizer="adam", delta=delta, roles=roles)
  if not any(r.role in ("embedding", "input", "hidden", "output") for r in mup.rules.values()):
    raise ValueError("delta: the model has the base shapes, so no width dimension is visible; pass delta= a model of "
                     "another d_model (as for parametrize) so that embeddings, hidden and output layers are known.")
  rules = {}
  for path, r in mup.rules.items():
    std, mult = r.init_std, r.multiplier
    if r.role in ("embedding", "input"):
      std, mult = float(sigma_base), float(embedding_mult)
    elif r.role == "hidden":
      std = sigma_base / math.sqrt(r.fan_in_mult)  # m_d: the fan-in's width ratio (4 d / 4 d_base for FFN-out)
    elif r.role == "output":
      std = float(sigma_base)  # the readout multiplier 1 / m_d comes from parametrize
    elif r.role == "fixed" and len(r.shape) >= 2:
      std = float(sigma_base)
    scale = std / sigma_base if len(r.shape) >= 2 else r.init_scale  # against SP: every weight N(0, sigma_base^2)
    rules[path] = dataclasses.replace(r, init_std=float(std), multiplier=float(mult), init_scale=float(scale))
  return MupPreset(mup._replace(rules=rules), float(eta_base), "mup")


MUP_ATTN_SCALES = {"1/d_head": "mup", "1/sqrt(d_head)": "sqrt"}
"""Lingle's attention-scale flag -> the ``attn_scale`` string that ``paperlab.models.CharTransformer`` takes."""


class MupTransformerPreset(NamedTuple):
  """Lingle's muP transformer recipe for one model (:func:`mup_transformer`).

  Attributes:
    parametrization: per-leaf init std, forward multiplier and LR multiplier (fixed gains: LR multiplier 0).
    learning_rate: the base learning rate ``eta``.
    attn_scale: ``"mup"`` (``1/d_head``) or ``"sqrt"`` (``1/sqrt(d_head)``), as ``CharTransformer`` takes it.
    zero_query: regex of the fused ``[q | k | v]`` kernels whose query columns start at zero, or ``None``.
  """

  parametrization: Parametrization
  learning_rate: float
  attn_scale: str
  zero_query: str | None


def _check_bool(name: str, value: Any) -> bool:
  if not isinstance(value, bool):
    raise ValueError(f"{name} must be True or False, got {value!r}.")
  return value


def mup_transformer(model_or_params: Any, base: Any, *, trainable_gains: bool = False,
                    attn_scale: str = "1/d_head", zero_query: bool = True, zero_readout: bool = True,
                    learning_rate: float = 2.0 ** -8, qkv: str = r"qkv/kernel$", delta: Any = None,
                    roles: Mapping[str, str] | None = None, init_gain: float = 1.0,
                    embedding_std: float = 1.0) -> MupTransformerPreset:
  """Lingle's muP recipe for a decoder-only transformer (Lingle, "A Large-Scale Exploration of mu-Transfer",
  arXiv:2404.05728, Sec. 2.3-3.1; TP5's Table 8 for Adam).

  ``parametrize(kind="mup", optimizer="adam")`` gives the per-leaf rules: hidden Adam LR ``eta / m_in`` (the
  paper's ``eta * base / width``), embedding, position, bias and gain LR ``eta``, readout multiplier ``1 / m_in``
  (``mup``'s ``MuReadout``: trains like the paper's readout LR ``eta / m_in``), fan-in inits. On top of it:

  * ``zero_readout`` (paper: True) -- readout init std 0;
  * ``zero_query`` (paper: True) -- :func:`mup_transformer_init` zeroes the query third of every ``qkv`` kernel;
  * ``trainable_gains`` (paper's baseline: False, gains fixed at 1; True is its "trainable gains" ablation, a
    reported exception to transfer) -- False sets the LR multiplier of every norm scale to 0;
  * ``attn_scale`` (paper: ``"1/d_head"``; ``"1/sqrt(d_head)"`` its ablation) -- the model's logit scaling.

  Host-side construction (Python floats per leaf); the result is used inside jitted code like any
  :class:`~paperlab.param.Parametrization`.

  Args:
    model_or_params: the model (``nnx.Module``, ``nnx.State`` or parameter pytree, arrays or shapes).
    base: the same architecture at the base width (``nnx.eval_shape`` is enough).
    trainable_gains: whether norm gains (``scale`` leaves) are trained.
    attn_scale: one of :data:`MUP_ATTN_SCALES`.
    zero_query: zero-initialize the query projection.
    zero_readout: zero-initialize the readout.
    learning_rate: the base LR ``eta`` (default ``2^-8``, the middle of the catalogue's grid ``2^-12..2^-4``; not a
      value from the paper -- tune it on the base model).
    qkv: regex of the fused ``(d_model, 3 d_model)`` ``[q | k | v]`` kernels (``CharTransformer``'s).
    delta, roles, init_gain, embedding_std: as in :func:`paperlab.param.parametrize`.

  Raises:
    ValueError: a flag that is not a bool, an unknown ``attn_scale``, a non-positive ``learning_rate``, a ``qkv``
      regex that selects no kernel with a fan-out divisible by 3 while ``zero_query``, or what ``parametrize``
      rejects.
  """
  _check_bool("trainable_gains", trainable_gains)
  _check_bool("zero_query", zero_query)
  _check_bool("zero_readout", zero_readout)
  if not isinstance(attn_scale, str) or attn_scale not in MUP_ATTN_SCALES:
    raise ValueError(f"attn_scale must be one of {list(MUP_ATTN_SCALES)}, got {attn_scale!r}.")
  check_positive("learning_rate", learning_rate)
  p = parametrize(model_or_params, base, kind="mup", optimizer="adam", delta=delta, roles=roles,
                  init_gain=init_gain, embedding_std=embedding_std, zero_readout=zero_readout)
  if zero_query:
    rx = re.compile(qkv)
    hits = [r for path, r in p.rules.items() if rx.search(path) and len(r.shape) >= 2 and r.shape[-1] % 3 == 0]
    if not hits:
      raise ValueError(f"qkv={qkv!r} selects no fused [q | k | v] kernel (fan-out divisible by 3); paths are "
                       f"{list(p.rules)[:6]}...; pass zero_query=False or the right regex.")
  rules = {path: (dataclasses.replace(r, lr_multiplier=0.0) if r.role == "norm" and not trainable_gains else r)
           for path, r in p.rules.items()}
  return MupTransformerPreset(p._replace(rules=rules), float(learning_rate), MUP_ATTN_SCALES[attn_scale],
                              qkv if zero_query else None)


def mup_transformer_init(key: jax.Array, params: Any, preset: MupTransformerPreset) -> Any:
  """Initial parameters of :func:`mup_transformer`'s recipe: :func:`paperlab.param.init_params`, then the query
  columns (the first third of the fan-out) of every ``preset.zero_query`` kernel set to 0 (Lingle,
  arXiv:2404.05728, Sec. 2.3: zero-init query). Jittable with ``preset`` closed over. Dtypes kept."""
  params = init_params(key, params, preset.parametrization)
  if preset.zero_query is None:
    return params
  rx = re.compile(preset.zero_query)

  def zero(path, x):
    if rx.search(path_str(path)) and x.ndim >= 2 and x.shape[-1] % 3 == 0:
      return x.at[..., : x.shape[-1] // 3].set(jnp.zeros((), x.dtype))
    return x

  return jax.tree_util.tree_map_with_path(zero, params)


def mup_transformer_config(**overrides: Any):
  """The ml-collections preset of Lingle's muP transformer (arXiv:2404.05728): ``model`` (the
  ``paperlab.models.CharTransformer`` arguments of the catalogue's reproduction shape -- 2 layers, 4 heads, context
  64, ``d_model`` and the muP base width ``base_d_model`` -- not the paper's model sizes) and ``mup`` (keyword
  arguments of :func:`mup_transformer`,
  the paper's defaults: fixed gains, ``1/d_head``, zero query and readout). Overrides are dotted keys
  (``mup_transformer_config(**{"mup.trainable_gains": True})``); a typo raises ``ValueError``.
  Host-side (returns a ``ml_collections.ConfigDict``)."""
  import ml_collections  # pylint: disable=g-import-not-at-top  (only the preset needs it)

  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict({"vocab_size": 256, "d_model": 128, "base_d_model": 128, "num_layers": 2,
                                       "num_heads": 4, "seq_len": 64})
  c.mup = ml_collections.ConfigDict({"trainable_gains": False, "attn_scale": "1/d_head", "zero_query": True,
                                     "zero_readout": True, "learning_rate": 2.0 ** -8})
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = c
    for part in parents:
      if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
        raise ValueError(f"overrides: unknown key {key!r}; keys are model.* {list(c.model)} and mup.* {list(c.mup)}.")
      node = node[part]
    if leaf not in node or isinstance(node[leaf], ml_collections.ConfigDict):
      raise ValueError(f"overrides: unknown key {key!r}; keys are model.* {list(c.model)} and mup.* {list(c.mup)}.")
    node[leaf] = value
  if c.mup.attn_scale not in MUP_ATTN_SCALES:
    raise ValueError(f"attn_scale must be one of {list(MUP_ATTN_SCALES)}, got {c.mup.attn_scale!r}.")
  for name in ("trainable_gains", "zero_query", "zero_readout"):
    _check_bool(name, c.mup[name])
  return c
