"""Adapters on disk in Hugging Face ``peft``'s format: ``adapter_model.safetensors`` with peft's tensor names and
torch layouts, plus ``adapter_config.json``, so that an adapter trained here loads with
``peft.PeftModel.from_pretrained`` into the same network written in PyTorch, and a peft adapter loads here.

Names: the adapter of the Flax kernel ``"hidden/0/kernel"`` is peft's module ``hidden.0``, stored as
``base_model.model.hidden.0.lora_A.weight`` / ``lora_B.weight`` / ``lora_magnitude_vector`` (DoRA),
``...hada_w1_a`` ... (LoHa), ``...miss_block`` (Bone / MiSS). The adapter arrays are already held in peft's layout
(see :mod:`paperlab.peft.adapters`), so nothing is transposed. Host-side I/O (not jittable).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping

import numpy as np

from paperlab.peft.adapters import DEFAULT_ALPHA, Adapters, adapter_kind

__all__ = ["PREFIX", "module_name", "kernel_path", "adapter_state_dict", "adapters_from_state_dict",
           "save_adapters", "load_adapters", "save_pretrained"]

PREFIX = "base_model.model."
_WEIGHT_SUFFIX = {"lora_A": "lora_A.weight", "lora_B": "lora_B.weight"}
_FROM_SUFFIX = {v: k for k, v in _WEIGHT_SUFFIX.items()}


def module_name(path: str) -> str:
  """peft / torch module name of a Flax kernel path: ``"hidden/0/kernel"`` -> ``"hidden.0"``."""
  parts = path.split("/")
  if parts[-1] == "kernel":
    parts = parts[:-1]
  return ".".join(parts)


def kernel_path(module: str) -> str:
  """Inverse of :func:`module_name`: ``"hidden.0"`` -> ``"hidden/0/kernel"``."""
  return "/".join(module.split(".") + ["kernel"])


def adapter_state_dict(adapters: Adapters, *, name_fn: Callable[[str], str] = module_name) -> dict[str, np.ndarray]:
  """``{peft tensor name: host array}`` (as ``peft.get_peft_model_state_dict`` returns it)."""
  out = {}
  for path, adapter in adapters.items():
    suffix = {} if adapter_kind(adapter) == "adalora" else _WEIGHT_SUFFIX  # AdaLoRA's are ParameterDicts
    for name, arr in adapter.items():
      out[f"{PREFIX}{name_fn(path)}.{suffix.get(name, name)}"] = np.ascontiguousarray(np.asarray(arr))
  return out


def adapters_from_state_dict(state: Mapping[str, Any], *, path_fn: Callable[[str], str] = kernel_path) -> Adapters:
  """Inverse of :func:`adapter_state_dict` (arrays as ``numpy``; ``jnp.asarray`` them as needed).

  Raises:
    ValueError: a tensor name without the ``base_model.model.`` prefix or with no known adapter suffix.
  """
  out: dict[str, dict[str, Any]] = {}
  known = list(_FROM_SUFFIX) + ["lora_magnitude_vector", "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b",
                                "miss_block", "lora_A", "lora_B", "lora_E"]
  for key, arr in state.items():
    if not key.startswith(PREFIX):
      raise ValueError(f"tensor {key!r} lacks the peft prefix {PREFIX!r}.")
    rest = key[len(PREFIX):]
    suffix = next((s for s in known if rest.endswith("." + s)), None)
    if suffix is None:
      raise ValueError(f"tensor {key!r} ends in none of the adapter names {known}.")
    module = rest[:-len(suffix) - 1]
    out.setdefault(path_fn(module), {})[_FROM_SUFFIX.get(suffix, suffix)] = np.asarray(arr)
  for adapter in out.values():
    adapter_kind(adapter)
  return out


def save_adapters(adapters: Adapters, path: str | os.PathLike, *, name_fn: Callable[[str], str] = module_name) -> None:
  """Write ``adapters`` as one safetensors file with peft's tensor names (atomically: temporary name, rename)."""
  from safetensors.numpy import save_file

  tmp = f"{os.fspath(path)}.tmp"
  save_file(adapter_state_dict(adapters, name_fn=name_fn), tmp, metadata={"format": "pt"})
  os.replace(tmp, path)


def load_adapters(path: str | os.PathLike, *, path_fn: Callable[[str], str] = kernel_path) -> Adapters:
  """Read a peft ``adapter_model.safetensors`` (or a file from :func:`save_adapters`) into an adapter dict."""
  from safetensors.numpy import load_file

  return adapters_from_state_dict(load_file(os.fspath(path)), path_fn=path_fn)


def _rank(adapter: Mapping[str, Any], kind: str) -> int:
  if kind in ("lora", "dora", "adalora"):
    return int(adapter["lora_A"].shape[0])
  if kind == "loha":
    return int(adapter["hada_w1_b"].shape[0])
  return int(adapter["miss_block"].shape[-1 if kind == "bat" else 0])


def save_pretrained(directory: str | os.PathLike, adapters: Adapters, *, alpha: float = DEFAULT_ALPHA,
                    name_fn: Callable[[str], str] = module_name) -> None:
  """Write ``adapter_model.safetensors`` and ``adapter_config.json`` into ``directory``, loadable by
  ``peft.PeftModel.from_pretrained(torch_model, directory)``.

  Raises:
    ValueError: adapters of mixed kinds (one peft config holds one kind).
  """
  kinds = {adapter_kind(a) for a in adapters.values()}
  if len(kinds) != 1:
    raise ValueError(f"save_pretrained needs adapters of one kind, got {sorted(kinds)}.")
  kind = kinds.pop()
  ranks = {name_fn(path): _rank(a, kind) for path, a in adapters.items()}
  r = max(set(ranks.values()), key=list(ranks.values()).count)
  pattern = {k: v for k, v in ranks.items() if v != r}
  common = {"r": r, "target_modules": sorted(ranks), "inference_mode": True, "base_model_name_or_path": None,
            "task_type": None}
  if pattern and kind in ("bone", "bat"):
    raise ValueError(f"save_pretrained: peft's MissConfig has one r for every module, got block sizes {ranks}.")
  if kind == "adalora":  # peft ignores (and warns about) r for AdaLoRA: init_r / target_r carry it
    config = {"peft_type": "ADALORA", "lora_alpha": alpha, "init_r": r, "target_r": r, "lora_dropout": 0.0,
              "bias": "none", "rank_pattern": None, "total_step": 1, **{k: v for k, v in common.items() if k != "r"}}
  elif kind in ("lora", "dora"):
    config = {"peft_type": "LORA", "lora_alpha": alpha, "use_dora": kind == "dora", "lora_dropout": 0.0,
              "bias": "none", "rank_pattern": pattern, **common}
  elif kind == "loha":
    config = {"peft_type": "LOHA", "alpha": alpha, "rank_dropout": 0.0, "module_dropout": 0.0, "rank_pattern": pattern,
              **common}
  else:
    config = {"peft_type": "MISS", "init_weights": "bat" if kind == "bat" else True, "miss_dropout": 0.0, **common}
  os.makedirs(directory, exist_ok=True)
  save_adapters(adapters, os.path.join(directory, "adapter_model.safetensors"), name_fn=name_fn)
  tmp = os.path.join(directory, "adapter_config.json.tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(config, f, indent=1)
  os.replace(tmp, os.path.join(directory, "adapter_config.json"))
