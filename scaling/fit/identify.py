"""Whether a fitted law is identified by the data, and if not, why — so that a fit never reports a law
the runs cannot pin down as if it were a result.

    >>> from scaling.fit.identify import approach3_reasons, power_law_reasons
    >>> approach3_reasons(a3, boot_info)          # [] when identified
    ['E sits at its bound (1.39e-11)', 'α's 95% interval [0.0154, 1.62] spans more than a decade']

A law is *not identified* when any of these holds (each is a reason, reported in ``summary.txt`` and
``fits.json``):

* approach 3's irreducible loss E lies above the lowest loss observed: every point then sits above
  a floor that some run went below, so the form does not describe the data (a flag rather than a
  constraint E ≤ min L: a constrained fit would sit on the constraint and look like a result, while
  the contradiction is the information — under-trained checkpoints, or a law of another form);
* a parameter sits on the optimiser's bound (the data push it out of any sensible range: with E at
  its lower bound, for instance, the irreducible loss is not measured at all);
* the bootstrap interval of an exponent reaches or crosses zero (the sign of the trend is unknown);
* the interval of a positive quantity spans more than a decade (a factor > 10 between its ends:
  the coefficient E, or the compute-optimal size N* at the middle budget);
* most bootstrap resamples failed to produce the law (it exists only for a lucky draw of the runs);
* a point estimate lies outside its own bootstrap interval: the fits to resampled runs land
  elsewhere than the fit to all of them — the estimate sits on a boundary of the parameter space
  (E at its floor, say, where resamples can only move one way) or in one of several basins, and a
  percentile interval is then not a confidence interval for it (Andrews 2000, *Econometrica*
  68:399, on the bootstrap's failure at a boundary).

The thresholds are deliberately loose: they flag what is unknown, not what is merely imprecise.
Without a bootstrap only the bound test applies.
"""

from __future__ import annotations

import math

DECADE = 10.0
NAMES = {"alpha": "α", "beta": "β", "e": "E", "a": "A", "b": "B", "loss_exponent": "γ"}


def _reaches_zero(ci: tuple[float, float] | None) -> bool:
    return ci is not None and ci[0] <= 0 <= ci[1]


def over_a_decade(ci: tuple[float, float] | None) -> bool:
    """A positive interval whose ends differ by more than :data:`DECADE` times."""
    return ci is not None and ci[0] > 0 and ci[1] / ci[0] > DECADE


def fmt_interval(ci: tuple[float, float]) -> str:
    return f"[{ci[0]:.3g}, {ci[1]:.3g}]"


def outside(what: str, value: float | None, ci: tuple[float, float] | None, pct: str) -> list[str]:
    """The reason when ``value`` lies outside its own interval ``ci`` (module docstring), up to a
    relative 1e-9 (an estimate equal to an interval end, as a resample may reproduce it, is in)."""
    if value is None or ci is None or not all(map(math.isfinite, (value, *ci))):
        return []
    if ci[0] - 1e-9 * abs(value) <= value <= ci[1] + 1e-9 * abs(value):
        return []
    return [f"{what} = {value:.3g} lies outside its own {pct} interval {fmt_interval(ci)}: the "
            "resampled fits land elsewhere (a parameter on a boundary, or another basin)"]  # fmt: skip


def failed_reason(failed: int, total: int) -> list[str]:
    """The reason when most of ``total`` bootstrap resamples ``failed`` (module docstring)."""
    return (
        [f"{failed} of {total} bootstrap resamples failed"] if total and failed > total / 2 else []
    )


def _failed(info: dict | None) -> list[str]:
    if not info or not info.get("resamples"):
        return []
    return failed_reason(int(info.get("failed", 0)), int(info["resamples"]))


def approach3_reasons(a3, info: dict | None, level: float = 0.95) -> list[str]:
    """Reasons approach 3's L(N, D) and its compute-optimal allocation are not identified."""
    reasons = []
    floor = getattr(a3, "min_loss", None)  # None: a fit made without its points
    if floor is not None and a3.E > floor:
        reasons.append(f"E = {a3.E:.4g} lies above the lowest observed loss {floor:.4g}: the "
                       "law's floor contradicts the data (under-trained points, or a form that "
                       "does not hold)")  # fmt: skip
    for name in a3.bound_hits:
        value = {"e": a3.E, "a": a3.A, "b": a3.B, "alpha": a3.alpha, "beta": a3.beta}.get(name)
        shown = f" ({value:.3g})" if value is not None else ""
        reasons.append(f"{NAMES.get(name, name)} sits at its bound{shown}")
    pct = f"{level:.0%}"
    for key in ("alpha", "beta", "loss_exponent"):
        ci = a3.ci.get(key)
        if _reaches_zero(ci):
            reasons.append(f"{NAMES[key]}'s {pct} interval {fmt_interval(ci)} reaches zero")
    if a3.n_opt is not None and _reaches_zero(a3.n_opt.ci.get("a")):
        reasons.append(
            f"the N*(C) exponent's {pct} interval {fmt_interval(a3.n_opt.ci['a'])} reaches zero"
        )
    if over_a_decade(a3.ci.get("E")):
        reasons.append(f"E's {pct} interval {fmt_interval(a3.ci['E'])} spans more than a decade")
    for key, value in (("alpha", a3.alpha), ("beta", a3.beta), ("E", a3.E)):
        reasons += outside(NAMES.get(key.lower(), key), value, a3.ci.get(key), pct)
    if a3.n_opt is not None:
        reasons += outside("the N*(C) exponent", a3.n_opt.a, a3.n_opt.ci.get("a"), pct)
    return reasons + _failed(info)


def power_law_reasons(fit, band: tuple[float, float] | None, info: dict | None,
                      level: float = 0.95) -> list[str]:  # fmt: skip
    """Reasons an N*(C), D*(C), L*(C) fit (approach 2 or 1) is not identified; ``band`` is the
    bootstrap interval of N* at the middle of the fitted budgets."""
    if fit is None or fit.n_opt is None:
        return []
    pct = f"{level:.0%}"
    reasons = []
    if _reaches_zero(fit.n_opt.ci.get("a")):
        reasons.append(
            f"the N*(C) exponent's {pct} interval {fmt_interval(fit.n_opt.ci['a'])} reaches zero"
        )
    reasons += outside("the N*(C) exponent", fit.n_opt.a, fit.n_opt.ci.get("a"), pct)
    loss = getattr(fit, "loss", None)
    if loss is not None and _reaches_zero(loss.ci.get("alpha")):
        reasons.append(
            f"the L*(C) exponent's {pct} interval {fmt_interval(loss.ci['alpha'])} reaches zero"
        )
    if loss is not None:
        for name in getattr(loss, "bound_hits", ()):
            value = {"E": loss.E, "A": loss.A, "alpha": loss.alpha}[name]
            reasons.append(f"the L*(C) law's {NAMES.get(name.lower(), name)} sits at its bound "
                           f"({value:.3g})" + (": the optimal losses do not bend toward a floor"
                                               if name == "E" else ""))  # fmt: skip
        reasons += outside("the L*(C) exponent γ", loss.alpha, loss.ci.get("alpha"), pct)
    if over_a_decade(band):
        reasons.append(f"N* at the middle budget has a {pct} interval {fmt_interval(band)} spanning more "
                       "than a decade")  # fmt: skip
    return reasons + _failed(info)


ADVICE = ("add budgets (a wider range of C), widen the grid around the optimum, or add sizes "
          "(more backbones or dial values)")  # fmt: skip
"""What to add when a law is not identified (printed with the reasons)."""
