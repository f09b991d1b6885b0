"""Planner inputs from outside the spec: budgets from the command line, backbones from presets,
directories or the hub cache, and a prior fit to centre grids on.

    >>> from scaling.sweep.inputs import parse_budgets, resolve_backbone, load_fit
    >>> parse_budgets(["1e16:1e18:3"])
    [1e+16, 1e+17, 1e+18]
    >>> arch, hf_config = resolve_backbone("qwen2.5-7b")
    >>> load_fit("runs/q/fit/fits.json")            # {method: (A, a)}: N*(C) = A·C^a

Backbones are architecture presets (:data:`scaling.arch.PRESETS`), model directories, ``config.json``
files, or hub names (read from the local Hugging Face cache only, else matched to a preset by name:
``Qwen/Qwen2.5-7B`` → ``qwen2.5-7b``); an inline ``[backbone_config."<ref>"]`` stands in for a backbone
that does not exist yet. A fit file (written by ``scaling fit``) has the form ::

    {"methods": {"ladder": {"optimal_params": {"A": 2.1e-3, "a": 0.52}}, "qlora": {...}}}

meaning N*(C) = A·C^a trainable parameters at budget C (other keys are ignored).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from scaling.arch import (
    PRESETS,
    Arch,
    hub_cached_config,
    preset_alias,
    preset_config,
    read_hf_config,
)
from scaling.config import check_positive_number
from scaling.errors import ScalingError
from scaling.io import read_json

MIN_BUDGET, MAX_BUDGET = 1.0, 1e40
"""Budgets the planner accepts, in FLOPs. 1e40 is 10¹³ times the largest training run to date: beyond
it a budget is a typo (1e300 made a 290-digit step count), and within it a fit's N*(C) is evaluated
without overflow (see :data:`MAX_LAW_EXPONENT`)."""
MAX_LAW_EXPONENT = 3.0
"""|a| of a fit's N*(C) = A·C^a (compute-optimal exponents are near 0.5). With budgets in
[MIN_BUDGET, MAX_BUDGET] and A in [1/MAX_LAW_COEFFICIENT, MAX_LAW_COEFFICIENT], C^a and A·C^a stay
finite and non-zero: the planner's arithmetic on a law cannot overflow."""
MAX_LAW_COEFFICIENT = 1e100


def parse_budgets(items: list[str] | str) -> list[float]:
    """``["1e17", "3e17"]`` or ``["1e16:1e18:5"]`` (geometric, 3 significant digits) → sorted budgets."""
    out: list[float] = []
    for item in [items] if isinstance(items, str) else items:
        parts = str(item).split(":")
        if len(parts) not in (1, 3):
            raise ScalingError(f"--flops: {item!r} is neither a number nor a range START:STOP:N")
        values = [_budget(p, item) for p in parts[:2]]
        if len(parts) == 1:
            out.append(values[0])
            continue
        start, stop = values
        try:
            n = int(parts[2])
        except ValueError:
            raise ScalingError(f"--flops: the N of {item!r} must be an integer") from None
        if n < 2 or stop <= start:
            raise ScalingError(f"--flops: range {item!r} needs START < STOP and N ≥ 2")
        out += [float(f"{start * (stop / start) ** (i / (n - 1)):.3g}") for i in range(n)]
    return check_budgets(out)


def _budget(text: str, item: str) -> float:
    try:
        value = float(text)
    except ValueError:
        hint = " (give the spec file before --flops)" if text.endswith(".toml") else ""
        raise ScalingError(f"--flops: {item!r} is not a number{hint}") from None
    if not (math.isfinite(value) and value > 0):
        raise ScalingError(f"--flops: budgets must be positive and finite; got {item!r}")
    return value


def check_budgets(budgets: list[float]) -> list[float]:
    if not budgets:
        raise ScalingError(
            "no budgets: give --flops (e.g. --flops 1e17 1e18) or budgets in the spec"
        )
    for b in budgets:
        check_positive_number("budget", b)
        if not MIN_BUDGET <= b <= MAX_BUDGET:
            raise ScalingError(
                f"budgets must lie between {MIN_BUDGET:g} and {MAX_BUDGET:g} FLOPs; got {b:g}"
            )
    return sorted({float(b) for b in budgets})


def resolve_backbone(ref: str, inline: dict[str, Any] | None = None) -> tuple[Arch, dict[str, Any]]:
    """(architecture, config.json fields) of a preset, directory, config.json, or cached hub name."""
    if ref.lower() in PRESETS or Path(ref).exists():
        cfg = read_hf_config(ref)
    elif (cached := hub_cached_config(ref)) is not None:
        cfg = cached
    elif inline is not None:
        cfg = dict(inline)
    elif (alias := preset_alias(ref)) is not None:
        cfg = preset_config(alias)
    else:
        raise ScalingError(
            f"backbone not found: {ref} (not a preset, model directory, config.json or cached hub "
            f'model, and no [backbone_config."{ref}"]); presets: {", ".join(PRESETS)}'
        )
    return Arch.from_hf_config(cfg, source=ref), cfg


@dataclasses.dataclass(frozen=True)
class FitLaws:
    """What a fit file offers the planner: per method key (``ladder``, or ``ladder@<backbone>`` when a
    method was fitted per backbone) its N*(C) = A·C^a, the N convention of that law, and, for the
    methods without one, why (``scaling fit`` writes no law it could not identify)."""

    laws: dict[str, tuple[float, float]]
    n: dict[str, str]
    missing: dict[str, str]
    lr: dict[str, float] = dataclasses.field(default_factory=dict)
    """Per method key, the best learning-rate multiplier the fit found at its smallest budget."""

    def best_lr(self, method: str, backbone: str) -> float | None:
        return self.lr.get(f"{method}@{backbone}", self.lr.get(method))

    def law(self, method: str, backbone: str) -> tuple[str, tuple[float, float]] | None:
        """(key, law) for ``method`` on ``backbone``: the per-backbone law first, else the method's."""
        for key in (f"{method}@{backbone}", method):
            if key in self.laws:
                return key, self.laws[key]
        return None

    def why_missing(self, method: str) -> str | None:
        reasons = [r for k, r in self.missing.items() if k == method or k.startswith(method + "@")]
        return "; ".join(reasons) or None


def load_fit(source: str | Path | dict[str, Any]) -> dict[str, tuple[float, float]]:
    """``{method: (A, a)}`` with N*(C) = A·C^a from a fit file (schema in the module docstring).

    A method whose ``optimal_params`` is null (``scaling fit`` found no identified N*(C) law for it)
    is left out: its grid stays the spec's own (:func:`read_fit` says why)."""
    return read_fit(source).laws


def read_fit(source: str | Path | dict[str, Any]) -> FitLaws:
    """The laws of a fit file, their N conventions, and why the other methods have none."""
    data = source
    where = "(given as a dict)" if isinstance(source, dict) else str(source)
    if not isinstance(source, dict):
        data = read_json(source, "fit file")
    table = data.get("methods") if isinstance(data, dict) else None
    if not isinstance(table, dict):
        raise ScalingError(f"fit {where} has no 'methods' table")
    out, conventions, missing, lrs = {}, {}, {}, {}
    for name, entry in table.items():
        lr = entry.get("best_lr_multiplier") if isinstance(entry, dict) else None
        if lr is not None:
            value = _number(lr)
            if not (value is not None and math.isfinite(value) and value > 0):
                raise ScalingError(f"fit {where}: methods.{name}.best_lr_multiplier must be a "
                                   f"positive number; got {lr!r}")  # fmt: skip
            lrs[name] = value
        if isinstance(entry, dict) and entry.get("optimal_params", 0) is None:
            missing[name] = str(entry.get("optimal_params_reason") or "the fit found no N*(C) law")
            continue
        law = entry.get("optimal_params") if isinstance(entry, dict) else None
        A, a = (_number(law.get(k)) for k in "Aa") if isinstance(law, dict) else (None, None)
        if A is None or a is None:
            raise ScalingError(f"fit {where}: methods.{name}.optimal_params needs numbers A and a")
        _check_law(f"fit {where}: methods.{name}", A, a)
        out[name] = (A, a)
        conventions[name] = str(law.get("n", "trainable"))
    return FitLaws(out, conventions, missing, lrs)


def _number(value: Any) -> float | None:
    """A JSON number as a float (an integer too large for one: inf); None for anything else — a bool
    (``true`` would read as 1), a string, null."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _check_law(where: str, A: float, a: float) -> None:
    """A law the planner can evaluate at any budget it accepts (see :data:`MAX_LAW_EXPONENT`)."""
    if not (math.isfinite(A) and A > 0 and math.isfinite(a)):
        raise ScalingError(f"{where}: A must be positive, a finite")
    if not (1 / MAX_LAW_COEFFICIENT <= A <= MAX_LAW_COEFFICIENT and abs(a) <= MAX_LAW_EXPONENT):
        raise ScalingError(
            f"{where}: N*(C) = {A:.3g}·C^{a:.3g} is not a usable law (A must lie within "
            f"{1 / MAX_LAW_COEFFICIENT:g}…{MAX_LAW_COEFFICIENT:g} and a within ±{MAX_LAW_EXPONENT:g}; "
            "compute-optimal exponents are near 0.5)"
        )
