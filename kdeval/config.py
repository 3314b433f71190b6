"""Settings files: YAML or TOML read into a typed, frozen dataclass.

YAML is read with yaml.safe_load (no tags that build objects); TOML with tomllib. Keys are the
dataclass's field names (dashes allowed for underscores); an unknown key or a value of the wrong
type is a one-line error naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from pathlib import Path
from typing import Any

from kdeval.errors import KdevalError


def read_settings_file(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise KdevalError(f"{path}: config file not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".toml":
            raw = tomllib.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml", ".json"):
            import yaml

            raw = yaml.safe_load(text) if text.strip() else {}
        else:
            raise KdevalError(f"{path}: expected a .yaml, .yml, .toml or .json config file")
    except KdevalError:
        raise
    except Exception as exc:  # yaml.YAMLError, tomllib.TOMLDecodeError: say where, in one line
        raise KdevalError(f"{path}: not a readable config file ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise KdevalError(f"{path}: expected a mapping of settings at the top level, got {type(raw).__name__}")
    return raw


def _check_type(value: Any, hint: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _check_type(value, option, where)
            except KdevalError as exc:
                errors.append(str(exc))
        raise KdevalError(errors[0])
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise KdevalError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return tuple(_check_type(v, inner, where) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise KdevalError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise KdevalError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise KdevalError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise KdevalError(f"{where}: expected text, got {value!r}")
        return value
    return value


def settings_from_mapping(cls, raw: dict, source: str, base=None):
    """An instance of the frozen dataclass `cls` from `raw` (over `base` or the defaults)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise KdevalError(f"{source}: unknown setting {str(key)!r} (known: {', '.join(sorted(names))})")
        values[name] = _check_type(value, hints[name], f"{source}: {key}")
    try:
        return dataclasses.replace(base, **values) if base is not None else cls(**values)
    except KdevalError as exc:
        raise KdevalError(f"{source}: {exc}") from None
