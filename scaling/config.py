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
import json
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

from scaling.errors import ScalingError, one_line


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
        return cls.from_dict(read_toml(path, what), where=str(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> Self:
        return self.from_dict({**self.to_dict(), **changes})

    def with_overrides(self, overrides: dict[str, Any], *, flag: str = "--set") -> Self:
        """A copy with nested ``overrides`` (from :func:`parse_overrides`) merged in, table by table:
        unknown keys are refused naming ``flag`` and listing the valid ones, values are validated
        like the TOML's."""
        check_override_keys(type(self), overrides, flag=flag)
        return self.from_dict(merge_tables(self.to_dict(), overrides), where=f"{flag} overrides")


@functools.cache
def _sections(cls: type[Config]) -> dict[str, type[Config]]:
    """Fields of ``cls`` that are themselves configs (TOML tables such as ``[dataset]``)."""
    hints = typing.get_type_hints(cls)
    return {
        f.name: hints[f.name]
        for f in dataclasses.fields(cls)
        if isinstance(hints[f.name], type) and issubclass(hints[f.name], Config)
    }


def merge_tables(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Tables merge key by key; anything else in ``over`` replaces what ``base`` holds."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_tables(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(items: list[str] | None, *, flag: str = "--set") -> dict[str, Any]:
    """Command-line overrides as nested tables: ``["optimizer.lr=1e-4", "seeds=[0, 1]"]`` →
    ``{"optimizer": {"lr": 0.0001}, "seeds": [0, 1]}``.

    Each item is ``KEY=VALUE`` where KEY is a TOML dotted key and VALUE a TOML value, so an override
    is typed exactly as the same line in a spec file would be (``1e-4`` a float, ``[0, 1]`` a list,
    ``true`` a bool). A bare word that is not a TOML value (``dataset.name=wikitext``) is taken as a
    string, as Hydra's and OLMo-core's overrides do; a value that opens a string, list or table must
    be valid TOML. Later items win; tables merge. Which keys exist is the config classes' business
    (:func:`check_override_keys`).
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ScalingError(f"{flag} {item!r}: expected KEY=VALUE, e.g. optimizer.lr=1e-4")
        try:
            table = tomllib.loads(f"{key} = {value}")
        except tomllib.TOMLDecodeError as e:
            bare = value.strip()
            if not bare or bare[0] in "[{\"'":  # meant as TOML: say why it is not
                raise ScalingError(f"{flag} {item}: not a TOML value ({one_line(e)})") from None
            try:
                table = tomllib.loads(f"{key} = {json.dumps(bare)}")  # a JSON string is TOML's too
            except tomllib.TOMLDecodeError:
                raise ScalingError(
                    f"{flag} {item}: {key.strip()!r} is not a key path (KEY.SUBKEY=VALUE)"
                ) from None
        out = merge_tables(out, table)
    return out


def check_override_keys(cls: type[Config], overrides: dict[str, Any], *, flag: str = "--set",
                        prefix: str = "") -> None:  # fmt: skip
    """Refuse an override of a key ``cls`` (or one of its tables) does not have, listing the valid
    ones; tables of free keys (``method``, ``lr_by_method``) are left to the config's own checks."""
    valid = cls.field_names()
    for key, value in overrides.items():
        path = prefix + key
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            where = f"[{prefix[:-1]}]" if prefix else "the spec"
            raise ScalingError(
                f"{flag} {path}: unknown key '{key}' for {where}{hint}; valid keys: {', '.join(valid)}"
            )
        section = _sections(cls).get(key)
        if section is None:
            continue
        if not isinstance(value, dict):
            first = section.field_names()[0]
            raise ScalingError(f"{flag} {path}: [{path}] is a table; set its keys, e.g. "
                               f"{flag} {path}.{first}=...")  # fmt: skip
        check_override_keys(section, value, flag=flag, prefix=f"{path}.")


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """A TOML file's tables, or a one-line ScalingError: missing, a folder, unreadable (permissions,
    I/O), not UTF-8, or not TOML."""
    path = Path(path)
    if path.is_dir():
        raise ScalingError(f"{what} {path} is a folder, not a TOML file")
    if not path.is_file():
        raise ScalingError(f"{what} not found: {path}")
    try:
        text = path.read_text()
    except OSError as e:
        raise ScalingError(f"cannot read {what} {path}: {e.strerror or one_line(e)}") from None
    except UnicodeDecodeError as e:
        raise ScalingError(f"cannot parse {path}: not UTF-8 text ({e.reason})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ScalingError(f"cannot parse {path}: {one_line(e)}") from None


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


MAX_INT = 2**63 - 1
"""The largest integer a manifest or Parquet column holds (int64): a larger one cannot be recorded."""
MAX_DIM = 2**31 - 1
"""The largest tensor dimension a method dial may ask for (32-bit indexing in most GPU kernels); a
rank or width beyond it is a typo, not a configuration."""


def check_positive_int(name: str, value: Any, *, allow_none: bool = False,
                       maximum: int = MAX_INT) -> None:  # fmt: skip
    """An integer in [1, ``maximum``] (not a bool), or ``None`` when ``allow_none``."""
    if value is None and allow_none:
        return
    check(
        isinstance(value, int) and not isinstance(value, bool) and value > 0,
        f"{name} must be a positive integer; got {value!r}",
    )
    check(value <= maximum, f"{name} must be at most {maximum}; got {value!r}")


def positive_int(text: str) -> int:
    """An argparse ``type`` for a count: one usage line for ``0``, ``-3`` or ``x``, not a traceback
    later."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value
