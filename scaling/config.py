"""Strict, frozen configuration dataclasses and their loading from dicts and TOML.

Every spec in the toolkit (method dials, sweep specs, fit specs) subclasses :class:`Config`::

    @dataclass(frozen=True, kw_only=True)
    class LadderConfig(Config):
        reduction: int = 8
        '''Side width = hidden size / reduction.'''

    LadderConfig.from_dict({"reduction": 16})      # ok
    LadderConfig.from_dict({"rank": 16})           # ScalingError: unknown key 'rank' ... valid keys: ...

Unknown keys are errors that list the valid ones (OLMo-core ``Config``, nanoGPT's configurator), and
``__post_init__`` validation names the offending field.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

if TYPE_CHECKING:
    from typing_extensions import Self

from scaling.errors import ScalingError


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Base class: strict ``from_dict`` / ``to_dict`` round trip for frozen keyword-only dataclasses."""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.init]

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str | None = None) -> Self:
        """Build from a plain dict, rejecting unknown keys with the list of valid ones."""
        valid = cls.field_names()
        unknown = [k for k in data if k not in valid]
        if unknown:
            key = unknown[0]
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ScalingError(
                f"unknown key '{key}' for {where or cls.__name__}{hint}; valid keys: {', '.join(valid)}"
            )
        data = dict(data)
        for key, section in _sections(cls).items():  # nested tables: parsed as strictly, named
            if isinstance(data.get(key), dict):
                data[key] = section.from_dict(data[key], where=f"[{key}] in {where or 'the spec'}")
        try:
            return cls(**data)
        except TypeError as e:  # wrong types surface here, e.g. a list where a number belongs
            raise ScalingError(f"{cls.__name__}: {e}") from None

    @classmethod
    def from_toml(cls, path: str | Path, *, what: str = "config file") -> Self:
        path = Path(path)
        if not path.is_file():
            raise ScalingError(f"{what} not found: {path}")
        try:
            data = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ScalingError(f"cannot parse {path}: {e}") from None
        return cls.from_dict(data, where=str(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> Self:
        return self.from_dict({**self.to_dict(), **changes})


@functools.cache
def _sections(cls: type[Config]) -> dict[str, type[Config]]:
    """Fields of ``cls`` that are themselves configs (TOML tables such as ``[dataset]``)."""
    hints = typing.get_type_hints(cls)
    return {
        f.name: hints[f.name]
        for f in dataclasses.fields(cls)
        if isinstance(hints[f.name], type) and issubclass(hints[f.name], Config)
    }


def check(condition: bool, message: str) -> None:
    """Raise :class:`ScalingError` with ``message`` unless ``condition`` holds (for ``__post_init__``)."""
    if not condition:
        raise ScalingError(message)


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    check(value in choices, f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")


def check_positive_number(name: str, value: Any, *, allow_none: bool = False) -> None:
    """A finite number > 0 (not a bool), or ``None`` when ``allow_none``."""
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    check(
        ok and math.isfinite(value) and value > 0,
        f"{name} must be a positive number; got {value!r}",
    )


def check_positive_int(name: str, value: Any, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    check(
        isinstance(value, int) and not isinstance(value, bool) and value > 0,
        f"{name} must be a positive integer; got {value!r}",
    )
