"""Experiment modules, dotted config overrides and trial ids.

An experiment is a Python file with ``get_config() -> ml_collections.ConfigDict``, optionally ``get_sweep() ->
list[dict]`` (each dict maps dotted keys to values) and ``run(config, ctx) -> dict``. Overrides follow
``ml_collections.config_flags``: ``--config.optim.learning_rate=3e-4``, typed by the field they replace.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import importlib.util
import json
import pathlib
import sys
import threading
import types
from typing import Any, Iterable, Mapping, Sequence

import ml_collections


class ConfigError(ValueError):
  """A user error in an experiment path, an override or a sweep; its message is one line."""


_LOADING = threading.local()  # per thread, a stack of [(path, digest)] lists: the files each pending import loaded


def _current(deps: Sequence[tuple[str, str]]) -> bool:
  try:
    return all(code_digest(p) == d for p, d in deps)
  except OSError:
    return False


def load_experiment(path: str | pathlib.Path) -> types.ModuleType:
  """Import an experiment file by path (it needs ``get_config``).

  An experiment may load shared helper files the same way (``load_experiment(pathlib.Path(__file__).with_name(
  "substrate.py"))``); their bytes then count in its digest (``__paperlab_code_sha256__``, part of its trial ids),
  so editing a helper gives every experiment built on it new trial ids, and a cached import whose helpers changed
  is imported again."""
  path = pathlib.Path(path)
  if not path.is_file():
    hint = ""
    if path.parent.is_dir():
      close = difflib.get_close_matches(path.name, [p.name for p in path.parent.glob("*.py")], n=1)
      hint = f"; did you mean {str(path.parent / close[0])!r}?" if close else ""
    raise ConfigError(f"experiment file not found: {str(path)!r}{hint}")
  code = code_digest(path)
  # The module name carries the code's digest: an edited file is imported again, not served from the cache.
  name = "paperlab_experiment_" + hashlib.sha1(f"{path.resolve()}:{code}".encode()).hexdigest()[:10]
  stack = getattr(_LOADING, "stack", None)
  if stack is None:
    stack = _LOADING.stack = []
  cached = sys.modules.get(name)
  if cached is not None and _current(getattr(cached, "__paperlab_deps__", ())):
    if stack:
      stack[-1].extend([(str(path.resolve()), code), *cached.__paperlab_deps__])
    return cached
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  module.__paperlab_code_sha256__ = code
  sys.modules[name] = module  # dataclasses and pickling look modules up by name
  stack.append([])
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # a broken experiment file: one line naming the file, the line and the error
    del sys.modules[name]
    raise ConfigError(f"cannot import experiment {str(path)!r}: {describe_error(e, path)}") from e
  except BaseException:
    del sys.modules[name]
    raise
  finally:
    deps = sorted(set(stack.pop()))
  module.__paperlab_deps__ = deps  # every experiment file it loaded, transitively: (path, digest)
  if deps:
    module.__paperlab_code_sha256__ = hashlib.sha256("\n".join([code, *(d for _, d in deps)]).encode()).hexdigest()
  if stack:
    stack[-1].extend([(str(path.resolve()), code), *deps])
  if not callable(getattr(module, "get_config", None)):
    del sys.modules[name]
    raise ConfigError(f"experiment {str(path)!r} defines no get_config() function")
  return module


def describe_error(e: BaseException, path: str | pathlib.Path | None = None) -> str:
  """``"TypeError: message (file.py, line 12)"``: one line, at the innermost frame in ``path`` if given."""
  import traceback  # pylint: disable=g-import-not-at-top
  text = str(e).strip().splitlines()[0] if str(e).strip() else ""
  where = ""
  if isinstance(e, SyntaxError) and e.lineno:
    where = f" ({pathlib.Path(e.filename or str(path)).name}, line {e.lineno})"
  else:
    frames = traceback.extract_tb(e.__traceback__)
    if path is not None:
      mine = [f for f in frames if pathlib.Path(f.filename).resolve() == pathlib.Path(path).resolve()]
      frames = mine or frames
    if frames:
      where = f" ({pathlib.Path(frames[-1].filename).name}, line {frames[-1].lineno})"
  return f"{type(e).__name__}: {text}{where}"[:500]


def call_experiment(module: types.ModuleType, function: str, path: str | pathlib.Path) -> Any:
  """``module.<function>()`` with its errors as one-line :class:`ConfigError` (naming the file and line)."""
  try:
    return getattr(module, function)()
  except ConfigError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f"{function}() of {str(path)!r} failed: {describe_error(e, path)}") from e


def code_digest(path: str | pathlib.Path) -> str:
  """SHA-256 of an experiment file's bytes; part of its trial ids, so an edited experiment runs again."""
  return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """``{"a.b": value}`` for every leaf of a (nested) ConfigDict or dict."""
  out = {}
  for key, value in config.items():
    dotted = f"{prefix}{key}"
    if isinstance(value, (ml_collections.ConfigDict, dict)) and len(value):
      out.update(flatten(value, dotted + "."))
    else:
      out[dotted] = value
  return out


def _suggest(key: str, known: Iterable[str]) -> str:
  known = list(known)
  close = difflib.get_close_matches(key, known, n=3, cutoff=0.8)
  if not close:  # a typo in the last part only: compare last parts
    last = key.rsplit(".", 1)[-1]
    close = [k for k in known if k.rsplit(".", 1)[-1] in difflib.get_close_matches(last, [
        k.rsplit(".", 1)[-1] for k in known], n=3, cutoff=0.6)][:3]
  if close:
    return "; did you mean " + " or ".join(repr(c) for c in close) + "?"
  parts = key.split(".")
  for n in range(len(parts) - 1, 0, -1):  # the keys of the deepest section that exists
    prefix = ".".join(parts[:n]) + "."
    siblings = [k for k in known if k.startswith(prefix)]
    if siblings:
      more = f" (and {len(siblings) - 6} more)" if len(siblings) > 6 else ""
      return f"; keys under {prefix[:-1]!r}: " + ", ".join(repr(k) for k in siblings[:6]) + more
  return "; top-level keys: " + ", ".join(repr(k) for k in sorted({k.split(".")[0] for k in known}))


def _type_name(t: type) -> str:
  return getattr(t, "__name__", str(t))


def parse_value(key: str, text: str, expected: type) -> Any:
  """Parse the string ``text`` as a value for a field of type ``expected`` (``config_flags`` rules)."""
  def literal():
    try:
      return ast.literal_eval(text)
    except (ValueError, SyntaxError):
      return text

  def fail():
    raise ConfigError(f"--config.{key}={text!r}: expected {_type_name(expected)}")

  if expected is bool:
    low = text.strip().lower()
    if low in ("true", "1", "yes", "on"):
      return True
    if low in ("false", "0", "no", "off"):
      return False
    fail()
  if expected is int:
    value = literal()
    if isinstance(value, bool) or not isinstance(value, int):
      fail()
    return value
  if expected is float:
    try:
      return float(text)
    except ValueError:
      fail()
  if expected is str:
    value = literal()
    return value if isinstance(value, str) else text
  if expected in (tuple, list):
    value = literal()
    if not isinstance(value, (tuple, list)):
      value = (value,) if "," not in text else fail()
    return expected(value)
  return literal()  # None-valued or other fields: a Python literal, else the raw string


def _check_value(key: str, value: Any, expected: type) -> Any:
  if expected in (type(None), object) or value is None:
    return value
  if expected is float and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  if expected in (tuple, list) and isinstance(value, (tuple, list)):
    return expected(value)
  if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
    raise ConfigError(f"config.{key}={value!r}: expected {_type_name(expected)}, got {type(value).__name__}")
  return value


def _check_elements(key: str, value: Any, old: Any) -> Any:
  """A tuple/list override keeps the element type of the default (``model.widths=abc`` is an error)."""
  if not isinstance(value, (tuple, list)) or not isinstance(old, (tuple, list)) or not old:
    return value
  kinds = {type(v) for v in old}
  if len(kinds) != 1 or (kind := kinds.pop()) not in (int, float, str, bool):
    return value
  out = []
  for v in value:
    if kind is float and isinstance(v, int) and not isinstance(v, bool):
      v = float(v)
    if type(v) is not kind:
      raise ConfigError(f"config.{key}={value!r}: expected a {type(old).__name__} of {kind.__name__} "
                        f"(like the default {old!r}), got an element {v!r}")
    out.append(v)
  return type(value)(out)


# Names of fields whose meaning fixes their range, wherever they sit in a config (last part of the dotted key).
POSITIVE_INT_FIELDS = ("num_steps", "batch_size", "checkpoint_every", "log_every", "eval_every", "num_epochs",
                       "epochs", "seeds", "num_seeds")
NON_NEGATIVE_FIELDS = ("learning_rate", "lr", "weight_decay")


def validate_config(config: Mapping[str, Any], where: str = "config") -> None:
  """Check the fields whose range the runner knows before anything runs.

  ``seed`` is an integer; :data:`POSITIVE_INT_FIELDS` (``num_steps``, ``batch_size``, ``checkpoint_every``...)
  are integers >= 1; :data:`NON_NEGATIVE_FIELDS` (``learning_rate``, ``lr``, ``weight_decay``) are finite
  numbers >= 0; the default trainer's sections (``data``, ``model``, ``optim``, ``loss``) name what they build
  with a string. Fields set to ``None`` are not checked.

  Raises:
    ConfigError: naming the key, the value and what is accepted.
  """
  import math  # pylint: disable=g-import-not-at-top
  flat = flatten(config)
  for key, value in flat.items():
    last = key.rsplit(".", 1)[-1]
    if value is None:
      continue
    is_int = isinstance(value, int) and not isinstance(value, bool)
    is_number = is_int or isinstance(value, float)
    if key == "seed" and not is_int:
      raise ConfigError(f"{where}.{key}={value!r}: expected an integer seed")
    if last in POSITIVE_INT_FIELDS and (is_number or isinstance(value, bool)) and (not is_int or value < 1):
      raise ConfigError(f"{where}.{key}={value!r}: expected a positive integer (>= 1)")
    if last in NON_NEGATIVE_FIELDS and isinstance(value, bool):
      raise ConfigError(f"{where}.{key}={value!r}: expected a finite number >= 0")
    if last in NON_NEGATIVE_FIELDS and is_number and not (math.isfinite(value) and value >= 0):
      raise ConfigError(f"{where}.{key}={value!r}: expected a finite number >= 0")
  for section in ("data", "model", "optim", "loss"):
    name = flat.get(f"{section}.name")
    if f"{section}.name" in flat and name is not None and not (isinstance(name, str) and name.strip()):
      raise ConfigError(f"{where}.{section}.name={name!r}: expected a non-empty name (a string)")


def _field_type(config: ml_collections.ConfigDict, key: str) -> tuple[ml_collections.ConfigDict, str, type]:
  """The parent ConfigDict, last key and declared type of a dotted ``key`` (or a ConfigError)."""
  parts = key.split(".")
  node = config
  for i, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      known = flatten(config).keys()
      raise ConfigError(f"unknown config key {key!r}{_suggest(key, known)}")
    if i < len(parts) - 1:
      node = node[part]
  value = node[parts[-1]]
  if isinstance(value, ml_collections.ConfigDict):
    raise ConfigError(f"config key {key!r} is a section; override one of its fields, e.g. "
                      f"{key + '.' + next(iter(value.keys()), '?')!r}")
  return node, parts[-1], node.get_type(parts[-1])


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any] | Iterable[str]
                    ) -> ml_collections.ConfigDict:
  """Return a copy of ``config`` with ``overrides`` applied, then locked.

  Args:
    config: the experiment's config.
    overrides: either strings ``"a.b=V"`` (``V`` parsed by the field's type, as on the command line) or a
      mapping ``{"a.b": value}`` of Python values (a sweep point; ints are accepted for float fields).

  Raises:
    ConfigError: an unknown key (with the nearest existing keys) or a value of the wrong type.
  """
  config = ml_collections.ConfigDict(config.to_dict(preserve_field_references=False))
  if isinstance(overrides, Mapping):
    items = [(k, v, False) for k, v in overrides.items()]
  else:
    items = []
    for text in overrides:
      text = text[len("--config."):] if text.startswith("--config.") else text
      text = text[len("config."):] if text.startswith("config.") else text
      if "=" not in text:
        raise ConfigError(f"override {text!r} must look like --config.a.b=VALUE")
      k, v = text.split("=", 1)
      items.append((k, v, True))
  for key, value, is_text in items:
    parent, leaf, expected = _field_type(config, key)
    value = parse_value(key, value, expected) if is_text else _check_value(key, value, expected)
    value = _check_elements(key, value, parent[leaf])
    try:
      parent[leaf] = value
    except TypeError as e:
      raise ConfigError(f"config.{key}={value!r}: expected {_type_name(expected)}") from e
  config.lock()
  return config


def ci_config(module: types.ModuleType) -> dict[str, Any]:
  """The dotted overrides that turn an experiment's default config into its CI scale.

  An experiment whose full run (``paperlab reproduce ID``, which writes the record) takes more than about a
  minute defines ``CI_CONFIG = {"steps": 100, ...}``: the test suite (``tests/experiments``) and
  ``paperlab reproduce ID --ci`` run ``get_config()`` with these overrides and assert the claim there. The record
  stays at the full config; the CI scale is a smaller run of the same code, never a different claim. Experiments
  without ``CI_CONFIG`` run at their default config in CI.

  Raises:
    ConfigError: ``CI_CONFIG`` is not a mapping of existing keys to values of the field's type, or it runs fewer
      seeds than ``min(3, default seeds)`` (the protocol's >= 3 seeds hold at the CI scale too).
  """
  from paperlab import papers  # pylint: disable=g-import-not-at-top
  overrides = getattr(module, "CI_CONFIG", None)
  if overrides is None:
    return {}
  if not isinstance(overrides, Mapping):
    raise ConfigError(f"CI_CONFIG must be a mapping of dotted config keys to values, got {type(overrides).__name__}")
  default = module.get_config()
  applied = apply_overrides(default, overrides)  # unknown keys / wrong types fail here, with a hint
  before, after = len(papers.seeds_of(default.to_dict())), len(papers.seeds_of(applied.to_dict()))
  if after < min(3, before):
    raise ConfigError(f"CI_CONFIG runs {after} seed(s); the CI scale keeps at least min(3, {before}) seeds")
  return dict(overrides)


def config_json(config: Mapping[str, Any]) -> str:
  """Canonical JSON of a resolved config (sorted keys, tuples as lists)."""
  data = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config
  return json.dumps(data, sort_keys=True, default=repr)


def trial_id(config: Mapping[str, Any], code: str | None = None) -> str:
  """Stable 12-hex-digit id of a resolved config and (when given) the experiment code's digest.

  The same config of the same experiment file always gets the same id; the runner passes the
  experiment's digest (:func:`code_digest` of its file, and of the helper files it loads with
  :func:`load_experiment`), so editing an experiment's ``run()`` or a shared helper gives its trials new ids and they
  run again (the old trials stay in their directories). Python modules it imports (paperlab itself) are not
  hashed.
  """
  text = config_json(config) if code is None else config_json(config) + "\n" + code
  return hashlib.sha256(text.encode()).hexdigest()[:12]
