"""mergekit's YAML merge configuration, read with mergekit's meaning, and turned into a per-tensor merge plan.

The schema and its semantics follow mergekit 0.1.5 (Goddard et al., "Arcee's MergeKit: A Toolkit for Merging
Large Language Models", arXiv:2403.13257; github.com/arcee-ai/mergekit, files ``mergekit/config.py``,
``mergekit/plan.py``, ``mergekit/parameter_resolver.py``, ``mergekit/merge_methods/*``), re-implemented here (no
mergekit import at run time):

* ``models:`` (each ``model`` with optional ``parameters``) or ``slices:`` (each with ``sources``: ``model``,
  ``layer_range: [start, end)``, optional ``parameters``; optional slice ``base_model`` and ``parameters``);
  ``merge_method``, ``base_model``, global ``parameters``, ``dtype`` (inputs are cast to it and merged in it),
  ``out_dtype`` (the saved dtype; default: the merge dtype), ``tokenizer_source`` (``base`` or a model: its
  tokenizer files are copied; by default the base's, else the first model's, as mergekit does).
* ``models:`` is one slice over all layers of every model, with the base model appended when it is not listed.
* A parameter value is a scalar; a list of numbers ("gradient"), interpolated linearly at ``t = i / (n - 1)`` for
  layer ``i`` of an ``n``-layer slice (``t = 1`` for a one-layer slice, ``t = 0`` for tensors outside the layers:
  embeddings, final norm, head); or a list of ``{filter: substring, value: ...}`` conditions, the first whose
  filter occurs in the tensor name (``filter`` absent or ``"*"``: any tensor) deciding.
* Precedence, highest first: the model's own ``parameters`` (in its ``models:`` entry or slice source), the
  slice's, the global ones, then the method's default; a required parameter with no value is an error naming the
  model and tensor. Shared parameters (``t``, ``lambda``, ``normalize``...) skip the first level. Per-model
  parameters of the base model are not read, except for methods that weight every input (``linear``).

One parameter goes beyond mergekit's schema: ``tie_break`` (``ties``, ``breadcrumbs``, ``breadcrumbs_ties``) says
which entries tied with a magnitude threshold survive: ``keep`` (default; all of them, the TIES authors'
``>= kthvalue`` and :func:`~paperlab.merge.task_vectors.ties`' default) or ``index`` (exactly mergekit's count ``k``
per tensor, the tied ones in row-major order, i.e. the order of a stable sort) or ``torch`` (exactly mergekit's
entries: mergekit's choice among tied entries follows ``torch.argsort``'s unspecified order, so paperlab runs the
same ``torch.argsort`` / ``torch.sort`` on the host; needs PyTorch, costs one sort per model and tensor, and equals
mergekit when both use the same torch build on the same kind of device).

Beyond mergekit, the data-free paperlab methods run under their own names: ``ties_global`` (TIES with the
paper's whole-model threshold, :func:`~paperlab.merge.task_vectors.ties` with ``scope="global"``), ``pcb``
(per tensor), ``iso_c``, ``iso_cts`` and ``dare_x`` (DARE with a ``1/q`` rescale).

Layers are found by name (``<prefix>.layers.<i>.<rest>``; also ``.h.``/``.blocks.``); other tensors are
"pre" (names with ``embed``/``wte``/``wpe``, taken from the first slice's models) or "post" (final norm, head;
from the last slice's models), as mergekit's architecture definitions place them for decoder LMs.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
from typing import Any, Mapping, Sequence

__all__ = ["METHODS", "MethodSpec", "ParamSpec", "MergeConfig", "OutputSlice", "InputSlice", "TensorJob",
           "MergePlan", "load_merge_config", "parse_merge_config", "evaluate_setting", "plan_merge",
           "ConfigError"]

MISSING = object()


class ConfigError(ValueError):
  """A merge configuration that cannot be run; the message is one line saying what and where."""


@dataclasses.dataclass(frozen=True)
class ParamSpec:
  """A method parameter: ``kind`` in float/bool/int/str; ``scope`` "shared" (one value per tensor), "input"
  (one per input model) or "non_base" (one per non-base model); ``default`` ``MISSING`` = required."""

  name: str
  kind: str
  scope: str = "shared"
  default: Any = MISSING
  choices: tuple | None = None

  @property
  def required(self) -> bool:
    return self.default is MISSING


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """A merge method's parameters and input contract (mergekit's ``MergeMethodSpec`` / ``InputContract``)."""

  name: str
  params: tuple[ParamSpec, ...]
  base: str = "ignored"  # required / optional / ignored
  min_inputs: int = 1
  max_inputs: int | None = None
  min_non_base: int | None = None
  max_non_base: int | None = None
  paperlab_only: bool = False
  reference: str = ""

  def param(self, name: str) -> ParamSpec:
    return {p.name: p for p in self.params}[name]


def _gta(name: str, normalize: bool, rescale: bool, extra: tuple[ParamSpec, ...] = (), ref: str = "") -> MethodSpec:
  return MethodSpec(name, (ParamSpec("int8_mask", "bool", default=False),
                           ParamSpec("normalize", "bool", default=normalize),
                           ParamSpec("rescale", "bool", default=rescale),
                           ParamSpec("lambda", "float", default=1.0),
                           ParamSpec("weight", "float", "non_base"),
                           ParamSpec("density", "float", "non_base", 1.0), *extra), base="required", reference=ref)


# paperlab's extension: which entries tied with a magnitude threshold survive (see task_vectors.ties); "keep" all
# of them (the TIES authors' rule, the Python default), "index" mergekit's count: exactly k, ties in row-major order;
# "torch" mergekit's own entries (its torch sort run on the host).
_TIE = (ParamSpec("tie_break", "str", default="keep", choices=("keep", "index", "torch")),)
_GAMMA = (ParamSpec("gamma", "float", "non_base", 0.01), *_TIE)
_EPS = (ParamSpec("epsilon", "float", "non_base", 0.15),)

METHODS: dict[str, MethodSpec] = {m.name: m for m in (
    MethodSpec("linear", (ParamSpec("weight", "float", "input"), ParamSpec("normalize", "bool", default=True)),
               reference="arXiv:2203.05482"),
    MethodSpec("slerp", (ParamSpec("t", "float"),), base="required", min_inputs=2, max_inputs=2),
    MethodSpec("nuslerp", (ParamSpec("weight", "float", "non_base"),
                           ParamSpec("nuslerp_row_wise", "bool", default=False),
                           ParamSpec("nuslerp_flatten", "bool", default=True)),
               base="optional", min_non_base=2, max_non_base=2),
    _gta("task_arithmetic", False, False, ref="arXiv:2212.04089"),
    _gta("ties", True, False, _TIE, ref="arXiv:2306.01708"),
    _gta("dare_ties", False, True, ref="arXiv:2311.03099"),
    _gta("dare_linear", False, True, ref="arXiv:2311.03099"),
    _gta("breadcrumbs", False, False, _GAMMA, ref="arXiv:2312.06795"),
    _gta("breadcrumbs_ties", False, False, _GAMMA, ref="arXiv:2312.06795"),
    _gta("della", True, True, _EPS, ref="arXiv:2406.11617"),
    _gta("della_linear", False, True, _EPS, ref="arXiv:2406.11617"),
    MethodSpec("model_stock", (ParamSpec("filter_wise", "bool", default=False),), base="required", min_inputs=3,
               reference="arXiv:2403.19522"),
    MethodSpec("passthrough", (ParamSpec("scale", "float", "input", None),), max_inputs=1),
    # paperlab-only, data-free, per tensor
    MethodSpec("ties_global", (ParamSpec("density", "float", default=0.2), ParamSpec("lambda", "float", default=1.0),
                               ParamSpec("normalize", "bool", default=True),
                               ParamSpec("weight", "float", "non_base", 1.0)),
               base="required", min_non_base=1, paperlab_only=True, reference="arXiv:2306.01708"),
    MethodSpec("pcb", (ParamSpec("ratio", "float", default=0.1), ParamSpec("lambda", "float", default=1.0),
                       ParamSpec("clamp_q", "float", default=1e-4)), base="required", min_non_base=1,
               paperlab_only=True, reference="arXiv:2410.02396"),
    MethodSpec("iso_c", (ParamSpec("alpha", "float", default=1.0), ParamSpec("svd_exclude", "str", default="embed")),
               base="required", min_non_base=1, paperlab_only=True, reference="arXiv:2502.04959"),
    MethodSpec("iso_cts", (ParamSpec("alpha", "float", default=1.0), ParamSpec("common_fraction", "float", default=0.8),
                           ParamSpec("svd_exclude", "str", default="embed")),
               base="required", min_non_base=1, paperlab_only=True, reference="arXiv:2502.04959"),
    MethodSpec("dare_x", (ParamSpec("weight", "float", "non_base", 1.0), ParamSpec("density", "float", default=0.1),
                          ParamSpec("q", "float", default=0.1), ParamSpec("lambda", "float", default=1.0)),
               base="required", min_non_base=1, paperlab_only=True, reference="arXiv:2410.09344"),
)}

_TOP_KEYS = ("models", "slices", "merge_method", "base_model", "dtype", "out_dtype", "tokenizer_source",
             "parameters", "name")
_UNSUPPORTED_TOP = {"modules": "multi-module (vision-language) configs", "tokenizer": "tokenizer surgery "
                    "(`tokenizer:`); use tokenizer_source: base", "chat_template": "chat templates"}
_MODEL_KEYS = ("model", "parameters")
_SOURCE_KEYS = ("model", "layer_range", "parameters")
_SLICE_KEYS = ("sources", "base_model", "parameters", "residual_weight")
_DTYPES = ("bfloat16", "float16", "float32", "float64")


def _hint(word: str, choices: Sequence[str]) -> str:
  close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.5)
  return f"; did you mean {close[0]!r}?" if close else f"; accepted: {', '.join(sorted(choices))}."


def _check_keys(d: Mapping, allowed: Sequence[str], where: str) -> None:
  if not isinstance(d, Mapping):
    raise ConfigError(f"{where} must be a mapping, got {type(d).__name__}: {d!r}.")
  for k in d:
    if k not in allowed:
      if where == "config" and k in _UNSUPPORTED_TOP:
        raise ConfigError(f"config key {k!r} ({_UNSUPPORTED_TOP[k]}) is not supported by paperlab merge.")
      raise ConfigError(f"unknown key {k!r} in {where}{_hint(k, allowed)}")


@dataclasses.dataclass
class InputSlice:
  """One input of a slice: a model directory, its ``[start, end)`` layer range (``None``: all layers, from
  ``models:``) and its own ``parameters``."""

  model: str
  layer_range: tuple[int, int] | None
  parameters: dict | None = None


@dataclasses.dataclass
class OutputSlice:
  """A block of output layers merged from ``sources`` (``models:`` is one slice over all layers)."""

  sources: list[InputSlice]
  base_model: str | None = None
  parameters: dict | None = None


@dataclasses.dataclass
class MergeConfig:
  """A parsed configuration (model references resolved to local directories)."""

  merge_method: str
  slices: list[OutputSlice]
  from_models: bool
  base_model: str | None = None
  parameters: dict | None = None
  dtype: str | None = None
  out_dtype: str | None = None
  tokenizer_source: str | None = None

  @property
  def method(self) -> MethodSpec:
    return METHODS[self.merge_method]

  def referenced_models(self) -> list[str]:
    out = [self.base_model] if self.base_model else []
    for s in self.slices:
      out += [src.model for src in s.sources] + ([s.base_model] if s.base_model else [])
    return list(dict.fromkeys(out))


def _resolve_model(ref: Any, where: str, root: str | None) -> str:
  if isinstance(ref, Mapping) and "model" in ref:  # mergekit's {model: {path: ...}} form
    ref = ref["model"].get("path") if isinstance(ref["model"], Mapping) else ref["model"]
  if not isinstance(ref, str) or not ref:
    raise ConfigError(f"{where} must be a model directory path, got {ref!r}.")
  if "+" in ref and not os.path.exists(ref):
    raise ConfigError(f"{where} {ref!r}: LoRA references (model+lora) are not supported; merge the adapter first.")
  path = ref.split("@")[0] if "@" in ref and not os.path.exists(ref) else ref
  for cand in ([path] if os.path.isabs(path) else [path] + ([os.path.join(root, path)] if root else [])):
    if os.path.isdir(cand) or os.path.isfile(cand):
      return os.path.abspath(cand)
  raise ConfigError(f"{where} {ref!r} is not a local directory (paperlab merge reads local checkpoints; download "
                    f"it first, e.g. `huggingface-cli download {ref} --local-dir ...`).")


def _check_params(params: Any, method: MethodSpec, where: str) -> dict | None:
  if params is None:
    return None
  if not isinstance(params, Mapping):
    raise ConfigError(f"{where} parameters must be a mapping, got {params!r}.")
  names = [p.name for p in method.params]
  for k in params:
    if k not in names:
      raise ConfigError(f"unknown parameter {k!r} for merge_method {method.name!r} in {where}{_hint(k, names)}")
  return dict(params)


def parse_merge_config(data: Mapping[str, Any], root: str | None = None) -> MergeConfig:
  """Validate a mergekit-style configuration mapping (see the module docstring) and resolve its model paths
  (absolute, or relative to the working directory, then to ``root``, the config file's directory).

  Raises :class:`ConfigError` (a ``ValueError``) with a one-line message: an unknown key, method or parameter
  (with a did-you-mean hint), both or neither of ``models``/``slices``, a model that is not a local directory,
  a missing base model for a method that needs one, unequal slice lengths, or a wrong input count."""
  _check_keys(data, _TOP_KEYS, "config")
  method_name = data.get("merge_method")
  if method_name not in METHODS:
    raise ConfigError(f"unknown merge_method {method_name!r}{_hint(method_name, list(METHODS))}")
  method = METHODS[method_name]
  if bool(data.get("models")) == bool(data.get("slices")):
    raise ConfigError("exactly one of 'models' or 'slices' must be given (and non-empty).")
  for key in ("dtype", "out_dtype"):
    value = data.get(key)
    if value is not None and str(value).removeprefix("torch.") not in _DTYPES:
      raise ConfigError(f"{key} {value!r} is not supported{_hint(value, _DTYPES)}")
  base = _resolve_model(data["base_model"], "base_model", root) if data.get("base_model") else None
  gparams = _check_params(data.get("parameters"), method, "global")
  slices: list[OutputSlice] = []
  if data.get("models"):
    sources = []
    for i, m in enumerate(data["models"]):
      m = {"model": m} if isinstance(m, str) else m
      _check_keys(m, _MODEL_KEYS, f"models[{i}]")
      path = _resolve_model(m.get("model"), f"models[{i}].model", root)
      sources.append(InputSlice(path, None, _check_params(m.get("parameters"), method, f"models[{i}]")))
    if base is not None and base not in [s.model for s in sources]:
      sources.append(InputSlice(base, None, None))  # mergekit adds the base as an input
    slices.append(OutputSlice(sources))
  else:
    for i, s in enumerate(data["slices"]):
      _check_keys(s, _SLICE_KEYS, f"slices[{i}]")
      if s.get("residual_weight") is not None:
        raise ConfigError(f"slices[{i}].residual_weight is not supported.")
      if not s.get("sources"):
        raise ConfigError(f"slices[{i}] has no sources.")
      srcs = []
      for j, src in enumerate(s["sources"]):
        where = f"slices[{i}].sources[{j}]"
        _check_keys(src, _SOURCE_KEYS, where)
        lr = src.get("layer_range")
        if (not isinstance(lr, (list, tuple)) or len(lr) != 2 or not all(isinstance(x, int) for x in lr)
            or not 0 <= lr[0] < lr[1]):
          raise ConfigError(f"{where}.layer_range must be [start, end) with 0 <= start < end, got {lr!r}.")
        srcs.append(InputSlice(_resolve_model(src.get("model"), f"{where}.model", root), (lr[0], lr[1]),
                               _check_params(src.get("parameters"), method, where)))
      lengths = {b - a for a, b in (x.layer_range for x in srcs)}
      if len(lengths) != 1:
        raise ConfigError(f"slices[{i}]: all sources must span the same number of layers, got "
                          f"{[list(x.layer_range) for x in srcs]}.")
      sbase = _resolve_model(s["base_model"], f"slices[{i}].base_model", root) if s.get("base_model") else None
      slices.append(OutputSlice(srcs, sbase, _check_params(s.get("parameters"), method, f"slices[{i}]")))
  tok = data.get("tokenizer_source")
  if tok is not None and tok != "base":
    if tok == "union":
      raise ConfigError("tokenizer_source: union (vocabulary merging) is not supported; use 'base' or a model.")
    tok = _resolve_model(tok, "tokenizer_source", root)
  if tok == "base" and base is None:
    raise ConfigError("tokenizer_source: base needs a base_model.")
  cfg = MergeConfig(method_name, slices, bool(data.get("models")), base, gparams,
                    str(data["dtype"]).removeprefix("torch.") if data.get("dtype") else None,
                    str(data["out_dtype"]).removeprefix("torch.") if data.get("out_dtype") else None, tok)
  for i, s in enumerate(cfg.slices):
    _check_contract(method, [x.model for x in s.sources], s.base_model or base, f"slices[{i}]")
  return cfg


def _check_contract(method: MethodSpec, inputs: list[str], base: str | None, where: str) -> None:
  if len(set(inputs)) != len(inputs):
    raise ConfigError(f"{where}: a model is listed twice as an input.")
  if method.base == "ignored":
    base = None
  has_base = base is not None and base in inputs
  if base is not None and not has_base:
    raise ConfigError(f"{where}: base_model {base!r} is not among the inputs.")
  if method.base == "required" and not has_base:
    raise ConfigError(f"merge_method {method.name!r} needs a base_model ({where} has none).")
  n, nb = len(inputs), len(inputs) - int(has_base)
  if n < method.min_inputs or (method.max_inputs is not None and n > method.max_inputs):
    want = (f"exactly {method.min_inputs}" if method.max_inputs == method.min_inputs else
            f"at least {method.min_inputs}" if method.max_inputs is None else f"at most {method.max_inputs}")
    raise ConfigError(f"merge_method {method.name!r} takes {want} input models, {where} has {n}.")
  if (method.min_non_base is not None and nb < method.min_non_base) or (
      method.max_non_base is not None and nb > method.max_non_base):
    raise ConfigError(f"merge_method {method.name!r} takes {method.min_non_base}"
                      f"{'' if method.max_non_base == method.min_non_base else '+'} non-base models, {where} has {nb}.")


def load_merge_config(path: str | os.PathLike) -> MergeConfig:
  """Read a mergekit YAML file (see :func:`parse_merge_config`); relative model paths may be relative to it."""
  import yaml  # PyYAML (a dependency of ml-collections)

  path = os.fspath(path)
  with open(path) as f:
    try:
      data = yaml.safe_load(f)
    except yaml.YAMLError as e:
      raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
  if not isinstance(data, Mapping):
    raise ConfigError(f"{path} must hold a YAML mapping, got {type(data).__name__}.")
  return parse_merge_config(data, root=os.path.dirname(os.path.abspath(path)))


# ----------------------------------------------------------------------------------------------------------------
# parameter values


def _validate(kind: str, value: Any, name: str) -> Any:
  try:
    if kind == "float":
      if isinstance(value, bool):
        raise TypeError
      return float(value)
    if kind == "int":
      if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise TypeError
      return int(value)
    if kind == "bool":
      if isinstance(value, bool):
        return value
      if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
      if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
        return value.lower() in ("true", "yes", "on", "1")
      raise TypeError
    if kind == "str":
      if value is None or isinstance(value, str):
        return value
      raise TypeError
  except (TypeError, ValueError):
    raise ConfigError(f"parameter {name!r} must be a {kind}, got {value!r}.") from None
  raise AssertionError(kind)


def evaluate_setting(tensor_name: str, setting: Any, t: float, kind: str = "float", name: str = "value") -> Any:
  """The value of one parameter setting for a tensor (mergekit's ``evaluate_setting``): a scalar; a list of
  scalars, interpolated at ``t`` (numbers: linearly between the two nearest entries of the list spread over
  [0, 1]; booleans/strings: the entry at ``int(t * (n - 1))``); a ``{filter, value}`` condition or a list of
  them (the first whose ``filter`` is absent, ``"*"`` or a substring of ``tensor_name`` decides, its ``value``
  evaluated again). ``None`` when no condition matches (the next precedence level is then consulted)."""
  if isinstance(setting, Mapping):
    setting = [setting]
  if isinstance(setting, (bool, int, float, str)):
    return _validate(kind, setting, name)
  if isinstance(setting, list):
    if not setting:
      return None
    if all(isinstance(e, (bool, int, float, str)) for e in setting):
      values = [_validate(kind, e, name) for e in setting]
      if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return values[int(t * (len(values) - 1))]
      scaled = t * (len(values) - 1)
      i0 = int(scaled)
      i1 = min(len(values) - 1, i0 + 1)
      frac = scaled - i0
      return _validate(kind, (1 - frac) * values[i0] + frac * values[i1], name)
    for cond in setting:
      if not isinstance(cond, Mapping) or "value" not in cond or set(cond) - {"filter", "value"}:
        raise ConfigError(f"parameter {name!r}: a list must hold only numbers or only {{filter, value}} "
                          f"conditions, got {cond!r}.")
      f = cond.get("filter")
      if f is None or f == "*" or (tensor_name and str(f) in tensor_name):
        return evaluate_setting(tensor_name, cond["value"], t, kind, name)
    return None
  if setting is None:
    return None
  raise ConfigError(f"parameter {name!r} has an unexpected value {setting!r}.")


def _resolve(spec: ParamSpec, levels: Sequence[Mapping | None], tensor_name: str, t: float, where: str) -> Any:
  for level in levels:
    if level is not None and spec.name in level:
      value = evaluate_setting(tensor_name, level[spec.name], t, spec.kind, spec.name)
      if value is not None:
        if spec.choices is not None and value not in spec.choices:
          close = difflib.get_close_matches(str(value), list(spec.choices), n=1, cutoff=0.5)
          raise ConfigError(f"parameter {spec.name!r} must be one of {', '.join(map(repr, spec.choices))}, got "
                            f"{value!r}" + (f"; did you mean {close[0]!r}?" if close else "."))
        return value
  if spec.required:
    raise ConfigError(f"missing required parameter {spec.name!r} for {where}.")
  return spec.default


# ----------------------------------------------------------------------------------------------------------------
# the plan


@dataclasses.dataclass
class TensorJob:
  """One output tensor: read ``sources[i] = (model_dir, tensor_name)``, merge with ``shared`` and
  ``per_input[i]`` parameters (``base_index`` names the base input, if any), write ``out_name``."""

  out_name: str
  sources: list[tuple[str, str]]
  base_index: int | None
  shared: dict[str, Any]
  per_input: list[dict[str, Any]]
  shape: tuple[int, ...]
  in_dtype: Any
  t: float


@dataclasses.dataclass
class MergePlan:
  """The per-tensor jobs of a configuration, the model whose ``config.json`` is copied (``donor``) and the output's
  layer count when slices change it."""

  config: MergeConfig
  jobs: list[TensorJob]
  donor: str  # config.json (and tokenizer files by default) come from here
  num_layers: int | None  # the output's layer count when it differs from the donor's (slices)


_LAYER = re.compile(r"^(?P<prefix>.*?\b(?:layers|h|blocks))\.(?P<idx>\d+)\.(?P<rest>.+)$")
_PRE = re.compile(r"embed|wte|wpe")


def _layer_of(name: str) -> tuple[str, int, str] | None:
  m = _LAYER.match(name)
  return (m["prefix"], int(m["idx"]), m["rest"]) if m else None


def _model_config(path: str) -> dict:
  p = os.path.join(path, "config.json") if os.path.isdir(path) else None
  if p and os.path.exists(p):
    with open(p) as f:
      return json.load(f)
  return {}


def plan_merge(config: MergeConfig, readers: Mapping[str, Any]) -> MergePlan:
  """Per-tensor jobs for ``config``; ``readers`` maps each referenced model directory to a
  :class:`~paperlab.merge.checkpoint.CheckpointReader`. Raises :class:`ConfigError` naming the model and tensor
  when a model lacks a tensor, has it with another shape, lacks a requested layer, or declares another
  architecture than the first model."""
  method = config.method
  models = config.referenced_models()
  archs = {m: _model_config(m).get("architectures") for m in models}
  first = models[0]
  for m, a in archs.items():
    if a and archs[first] and a != archs[first]:
      raise ConfigError(f"mismatched architectures: {m} is {a}, {first} is {archs[first]}.")
  layers: dict[str, dict[int, list[tuple[str, str]]]] = {}
  others: dict[str, list[str]] = {}
  for m in models:
    per: dict[int, list[tuple[str, str]]] = {}
    rest: list[str] = []
    for name in readers[m].keys():
      hit = _layer_of(name)
      if hit:
        per.setdefault(hit[1], []).append((hit[0], hit[2]))
      else:
        rest.append(name)
    layers[m], others[m] = per, rest
  jobs: list[TensorJob] = []

  def add(out_name: str, srcs: list[tuple[str, str]], base: str | None, sl: OutputSlice, t: float,
          srcdefs: list[InputSlice]):
    ref_model, ref_name = srcs[0]
    r0 = readers[ref_model]
    shape, dtype = r0.shape(ref_name), r0.dtype(ref_name)
    for m, name in srcs:
      if name not in readers[m]:
        raise ConfigError(f"model {m} has no tensor {name!r} (needed for output {out_name!r}).")
      if readers[m].shape(name) != shape:
        raise ConfigError(f"model {m} tensor {name!r} has shape {list(readers[m].shape(name))}, but "
                          f"{ref_model} has {list(shape)}: the models do not share an architecture.")
    base_index = None
    if method.base != "ignored" and base is not None:
      base_index = [m for m, _ in srcs].index(base)
    shared_levels = [sl.parameters, config.parameters]
    shared = {p.name: _resolve(p, shared_levels, out_name, t, out_name) for p in method.params
              if p.scope == "shared"}
    per_input = []
    for i, ((m, name), sd) in enumerate(zip(srcs, srcdefs)):
      levels = [sd.parameters, sl.parameters, config.parameters]
      per_input.append({p.name: _resolve(p, levels, name, t, f"{m}.{name}") for p in method.params
                        if p.scope == "input" or (p.scope == "non_base" and i != base_index)})
    jobs.append(TensorJob(out_name, srcs, base_index, shared, per_input, tuple(shape), dtype, t))

  def same_names(named: list[tuple[str, set]], what: str):
    ref_model, ref_names = named[0]
    for m, names in named[1:]:
      if names != ref_names:
        missing = sorted(ref_names - names)
        holder, lacker = (ref_model, m) if missing else (m, ref_model)
        missing = missing or sorted(names - ref_names)
        raise ConfigError(f"model {lacker} has no tensor {missing[0]!r} ({what}), which {holder} has.")

  def non_layer(sl: OutputSlice, pre: bool):
    ref = sl.sources[0].model
    same_names([(s.model, set(others[s.model])) for s in sl.sources], "outside the layers")
    for name in others[ref]:
      if bool(_PRE.search(name)) == pre:
        add(name, [(s.model, name) for s in sl.sources], sl.base_model or config.base_model, sl, 0.0, sl.sources)

  non_layer(config.slices[0], True)
  out_layer = 0
  for sl in config.slices:
    base = sl.base_model or config.base_model
    if config.from_models:
      counts = {s.model: len(layers[s.model]) for s in sl.sources}
      if len(set(counts.values())) != 1:
        raise ConfigError(f"the models have different layer counts: {counts}.")
      ranges = [(0, counts[sl.sources[0].model])] * len(sl.sources)
    else:
      ranges = [s.layer_range for s in sl.sources]
    n = ranges[0][1] - ranges[0][0]
    for idx in range(n):
      t = idx / (n - 1) if n > 1 else 1.0
      ref = sl.sources[0].model
      src_layer = ranges[0][0] + idx
      if src_layer not in layers[ref]:
        raise ConfigError(f"model {ref} has no layer {src_layer} (it has {len(layers[ref])}).")
      named = []
      for s, r in zip(sl.sources, ranges):
        if r[0] + idx not in layers[s.model]:
          raise ConfigError(f"model {s.model} has no layer {r[0] + idx} (it has {len(layers[s.model])}).")
        named.append((s.model, {f"{p}.{r[0] + idx}.{rest}" if s.model == ref else f"{p}.{src_layer}.{rest}"
                                for p, rest in layers[s.model][r[0] + idx]}))
      same_names(named, f"layer {src_layer} of {ref}")
      for prefix, rest in layers[ref][src_layer]:
        srcs = [(s.model, f"{prefix}.{r[0] + idx}.{rest}") for s, r in zip(sl.sources, ranges)]
        add(f"{prefix}.{out_layer}.{rest}", srcs, base, sl, t, sl.sources)
      out_layer += 1
  non_layer(config.slices[-1], False)
  donor = config.base_model or models[0]
  return MergePlan(config, jobs, donor, None if config.from_models else out_layer)
