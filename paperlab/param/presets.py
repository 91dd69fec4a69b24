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
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, NamedTuple

from paperlab._checks import check_positive
from paperlab.param.parametrization import Parametrization, parametrize

__all__ = ["CEREBRAS_GPT_MUP", "MupPreset", "cerebras_gpt_mup"]

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
