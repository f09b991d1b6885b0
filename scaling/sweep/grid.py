"""Dial grids: the combinations a spec's ``[method.<name>]`` table asks for, grids centred on a fit, and
why a grid may give an unreliable isoFLOP minimum.

    >>> from scaling.sweep.grid import dial_grid, dial_values, grid_warnings
    >>> [c.reduction for c in dial_grid(spec, "ladder")]          # spec order
    [2, 4, 8, 16, 32]
    >>> dial_values("rank", arch)[:6]                              # valid values, four per octave
    [1, 2, 3, 4, 5, 6]

In ``[method.<name>]`` a scalar fixes a dial, a list is a grid axis, and ``{min, max, num}`` a log-spaced
grid (rounded to integers when both ends are integers); several axes form their product.

Centring on a fit: for each budget the planner aims ``grid.points`` trainable-parameter counts
log-spaced over ±``grid.half_width`` decades around N*(C) and picks the nearest valid value of the
method's dial (``MethodConfig.dial``: Ladder's reduction, xLadder's δ, (Q)LoRA's rank). A grid whose
optimum is not interior (< 2 points on a side) or that spans more than ±1 decade around its centre
draws a warning: wide grids bias the fitted N*(C) coefficient (+4% at ±1 decade, +8.5% at ±1.5;
docs/fitting.md).
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any

from scaling import flops, methods
from scaling.arch import Arch
from scaling.config import check, check_positive_int, check_positive_number
from scaling.errors import ScalingError

if TYPE_CHECKING:
    from scaling.sweep.spec import GridSpec, SweepSpec

GENERATOR_KEYS = ("min", "max", "num")
WIDE_GRID_DECADES = 1.0  # ±1 decade: +4% bias on the N*(C) coefficient (docs/fitting.md)


def _axis(method: str, key: str, value: Any) -> list[Any] | None:
    """Values of a grid axis; ``None`` for a fixed (scalar) dial."""
    where = f"method.{method}.{key}"
    if isinstance(value, list):
        check(value != [], f"empty dial grid: {where} = []")
        return value
    if not isinstance(value, dict):
        return None
    unknown = [k for k in value if k not in GENERATOR_KEYS]
    check(
        not unknown,
        f"unknown key {unknown[:1]} in {where}; valid keys: {', '.join(GENERATOR_KEYS)}",
    )
    check(all(k in value for k in GENERATOR_KEYS), f"{where} needs min, max and num")
    lo, hi, n = value["min"], value["max"], value["num"]
    check_positive_number(f"{where}.min", lo)
    check_positive_number(f"{where}.max", hi)
    check(hi >= lo, f"{where}: max must be ≥ min")
    check_positive_int(f"{where}.num", n)
    values = [lo * (hi / lo) ** (i / (n - 1)) if n > 1 else lo for i in range(n)]
    if isinstance(lo, int) and isinstance(hi, int):
        values = [round(v) for v in values]
    return list(dict.fromkeys(values))


DIAL_KEY = "dial"
"""In ``[method.<name>]``, ``dial = "<field>"`` names the swept dial (not a method setting)."""


def swept_dial(spec: SweepSpec, method: str) -> str | None:
    """The dial a method's sweep varies — the one fits are read along, re-centring moves and advice
    searches: ``dial = "<field>"`` in ``[method.<name>]``; else its only grid axis; else the method's
    own (``MethodConfig.dial``). Several axes and no ``dial`` is an error: which one is N?"""
    table = spec.method.get(method, {})
    check(isinstance(table, dict), f"method.{method} must be a table of dials")
    cls = methods.config_class(method)
    named = table.get(DIAL_KEY)
    axes = [k for k, v in table.items() if k != DIAL_KEY and _axis(method, k, v) is not None]
    if named is not None:
        fields = cls.field_names()
        check(isinstance(named, str) and named in fields,
              f"method.{method}.dial must name one of its dials ({', '.join(fields)}); "
              f"got {named!r}")  # fmt: skip
        return named
    if len(axes) == 1:
        return axes[0]
    check(len(axes) == 0 or cls.dial in axes,
          f"method.{method} sweeps {', '.join(axes)}: name the swept one with dial = \"...\"")  # fmt: skip
    return cls.dial


def dial_grid(spec: SweepSpec, method: str) -> list[methods.MethodConfig]:
    """Every combination of the method's grid axes, as validated method configs (spec order)."""
    raw = spec.method.get(method, {})
    check(isinstance(raw, dict), f"method.{method} must be a table of dials")
    table = {k: v for k, v in raw.items() if k != DIAL_KEY}
    axes = {k: a for k, v in table.items() if (a := _axis(method, k, v)) is not None}
    fixed = {k: v for k, v in table.items() if k not in axes}
    cls = methods.config_class(method)
    combos = itertools.product(*axes.values())
    return [
        cls.from_dict({**fixed, **dict(zip(axes, combo, strict=True))}, where=f"[method.{method}]")
        for combo in combos
    ]


def dial_values(dial: str, arch: Arch) -> list[int]:
    """Valid values of a method's dial (to centre a grid on a fit, or to search for advice)."""
    if dial == "side_width":  # four per octave from the backbone width down
        d = arch.hidden_size
        return sorted({max(1, round(d * 2 ** (-k / 4))) for k in range(4 * d.bit_length() + 1)})
    if dial == "rank":
        return sorted({round(2 ** (k / 4)) for k in range(49)})  # 1 … 4096, four per octave
    if dial == "reduction":
        return [r for r in range(1, arch.hidden_size + 1) if arch.hidden_size % r == 0]
    if dial in ("delta", "side_layers"):
        return list(range(1, arch.num_layers + 1))
    return []


def grid_targets(target: float, grid: GridSpec) -> list[float]:
    """``grid.points`` sizes log-spaced over ±``grid.half_width`` decades around ``target``."""
    n, h = grid.points, grid.half_width
    return [target * 10 ** (h * (2 * i / (n - 1) - 1)) if n > 1 else target for i in range(n)]


def centred_grid(
    base: list[methods.MethodConfig], arch: Arch, seq_len: int, target: float, grid: GridSpec,
    dial: str | None = None,
) -> list[methods.MethodConfig]:  # fmt: skip
    """Configs whose trainable-parameter counts lie nearest to ``grid.points`` log-spaced targets
    within ±``grid.half_width`` decades of ``target``, moving ``dial`` (default: the method's own)
    for each combination of the other axes."""
    # A target of 0 or inf (an extreme law at an extreme budget) has no nearest valid dial value.
    check(
        math.isfinite(target) and target > 0,
        f"cannot centre a grid on N*={target:g} parameters: the fit's law gives no usable size here",
    )
    dial = dial or type(base[0]).dial
    values = dial_values(dial, arch)
    if not values:
        raise ScalingError(f"cannot centre dial {dial!r} on a fit")
    targets = grid_targets(target, grid)
    out: list[methods.MethodConfig] = []
    for cfg in dict.fromkeys(b.replace(**{dial: getattr(type(b)(), dial)}) for b in base):
        sized = []
        for value in values:
            try:
                c = cfg.replace(**{dial: value})
                sized.append((flops.cost(arch, c, seq_len).trainable_params, c))
            except ScalingError:
                continue
        picks = [min(sized, key=lambda s, t=t: abs(math.log(s[0] / t)))[1] for t in targets]
        out += sorted(dict.fromkeys(picks), key=lambda c: getattr(c, dial))
    return out


def grid_warnings(params: list[int], centre: float | None) -> list[str]:
    """Why an isoFLOP minimum from these trainable-parameter counts may be unreliable."""
    ns = sorted(set(params))
    if not ns:
        return ["no grid point survives the constraints"]
    out = []
    if len(ns) < 3:
        out.append(
            f"only {len(ns)} grid point(s): a parabola needs ≥ 3 (≥ 2 each side of its minimum)"
        )
    if centre is None:
        half, what = math.log10(ns[-1] / ns[0]) / 2, "its centre"
    else:
        below, above = sum(n < centre for n in ns), sum(n > centre for n in ns)
        what = f"the predicted optimum N*={centre:.3g}"
        if not ns[0] <= centre <= ns[-1]:
            out.append(
                f"{what} lies outside the grid [{ns[0]:.3g}, {ns[-1]:.3g}]: no interior minimum"
            )
        elif below < 2 or above < 2:
            out.append(f"{below} point(s) below and {above} above {what}: want ≥ 2 on each side")
        half = max(math.log10(ns[-1] / centre), math.log10(centre / ns[0]))
    if half > WIDE_GRID_DECADES + 1e-9:
        out.append(
            f"grid spans ±{half:.3g} decades around {what} (> ±1): wide grids bias the fitted "
            "N*(C) coefficient (+4% at ±1 decade, +8.5% at ±1.5)"
        )
    return out
