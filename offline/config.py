"""The base of every offline config: a pydantic (v2) model that refuses unknown keys and wrong
types and reports each problem in one line that names the field.

A config is checked when it is built and again on every assignment, so an instance is always
valid. Errors are :class:`ConfigError`, an :class:`~offline.errors.InputError` (exit code 2
in the CLI) and a ``ValueError``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from offline.errors import InputError

__all__ = ["ConfigError", "StrictConfig"]

C = TypeVar("C", bound="StrictConfig")


class ConfigError(InputError):
    """A config with an unknown key, a wrong type or a value out of range (the message names it)."""


def _describe(model: str, e: ValidationError) -> str:
    parts = []
    for err in e.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(config)"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key {loc!r}")
        elif "input" in err and err["type"] != "missing":
            parts.append(f"{loc}: {err['msg']} (got {err['input']!r})")
        else:
            parts.append(f"{loc}: {err['msg']}")
    return f"{model}: " + "; ".join(parts)


class StrictConfig(BaseModel):
    """Strict types (no "5" for 5, no 1 for True), finite numbers, no unknown keys, checked on assignment."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True, allow_inf_nan=False)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise ConfigError(_describe(type(self).__name__, e)) from None

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as e:
            raise ConfigError(_describe(type(self).__name__, e)) from None

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any]) -> C:
        """Build from a plain dict (e.g. parsed JSON): lists are accepted where tuples are due."""
        if not isinstance(d, dict):
            raise ConfigError(f"{cls.__name__}: must be a JSON object, got {type(d).__name__}")
        fixed = {k: tuple(v) if isinstance(v, list) and _wants_tuple(cls, k) else v for k, v in d.items()}
        return cls(**fixed)

    @classmethod
    def from_file(cls: type[C], path: str | os.PathLike) -> C:
        """Load a JSON config file (missing file, bad JSON or bad keys: ConfigError naming it)."""
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a JSON object")
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON values (tuples become lists)."""
        return self.model_dump(mode="json")


def _wants_tuple(cls: type[StrictConfig], key: str) -> bool:
    f = cls.model_fields.get(key)
    return f is not None and "tuple" in str(f.annotation)
