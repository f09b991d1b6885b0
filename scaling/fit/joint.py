"""Joint laws for fine-tuning: Chinchilla's additive form beside the multiplicative form of Zhang et
al. (2024), with the PEFT size as a third variable when a sweep varies it apart from the backbone.

    >>> from scaling.fit.joint import fit_joint
    >>> j = fit_joint(points, spec)                  # a JointComparison
    >>> j.preferred, [(f.form, f.holdout_mape) for f in j.fits]

The forms, with X the size on the fit's N axis (the backbone's parameters across a backbone ladder,
else the trainable parameters), P the trainable (PEFT) parameters and D the fine-tuning tokens:

    additive                L = E + A·X^−α + B·D^−β                   (Hoffmann et al. 2022, eq. 2)
    multiplicative          L = E + A·X^−α·D^−β                       (Zhang et al. 2024, eq. 1)
    additive+peft           L = E + A·X^−α + G·P^−γ + B·D^−β
    multiplicative+peft     L = E + A·X^−α·P^−γ·D^−β                  (Zhang et al. 2024, §4: X and
                                                                        the PEFT size both vary)

Zhang et al. ("When Scaling Meets LLM Finetuning: The Effect of Data, Model and Finetuning Method",
ICLR 2024) find fine-tuning losses follow the multiplicative form: the data term *scales* the model
term instead of adding to it, so more fine-tuning data helps a larger backbone by the same factor.
The two forms answer the isoFLOP question differently. A PEFT run on backbone X costs C ≈ k·X·D
(the frozen forward dominates), so along an isoFLOP line D = C/(k·X) and

    additive:        L − E = A·X^−α + B·(k·X/C)^β      — a minimum at X* ∝ C^(β/(α+β)), interior;
    multiplicative:  L − E = A·k^β·C^−β·X^(β−α)        — monotone in X: no interior minimum.

Under the multiplicative form the compute-optimal backbone is the largest one (α > β) or the
smallest (α < β) that the constraints allow, whatever the budget; an isoFLOP parabola over the
ladder then finds no minimum or a spurious one. Which form the data prefer is therefore part of the
answer, and it is decided out of sample: each form is fitted on all but the largest
``holdout.budgets`` budgets and scored by its mean |L̂ − L|/L on the held-out runs (the in-sample
objective always favours the form with more parameters).

Fitting: every form is one log-sum-exp law, log L̂ = LSE_t(a_t − Σ_{v∈t} α_{t,v}·x_v, e) with
x_v = log v centred on the data, so each term stays positive; Chinchilla's Huber(δ = 1e-3) SUM on log
residuals, all starts of a small grid advanced together by :func:`scaling.fit.lbfgs.lbfgs_batched`,
the best few polished by scipy's L-BFGS-B. :mod:`scaling.fit.laws` fits the additive law with one
exponent per term (approach 3); a term with several exponents needs the layout here, hence this
module (scipy has no multi-start batched L-BFGS, and one scipy call per start is ~50× slower).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np

from scaling.errors import ScalingError
from scaling.fit.laws import HUBER_DELTA, Cells, huber
from scaling.fit.lbfgs import blas_single_threaded, lbfgs_batched, polish_one
from scaling.fit.points import Points

FORMS: dict[str, tuple[tuple[str, ...], ...]] = {
    "additive": (("X",), ("D",)),
    "multiplicative": (("X", "D"),),
    "additive+peft": (("X",), ("P",), ("D",)),
    "multiplicative+peft": (("X", "P", "D"),),
}
"""Each form's terms, each term the variables whose powers it multiplies."""

COEF_NAMES = {("X",): "A", ("D",): "B", ("P",): "G", ("X", "D"): "A", ("X", "P", "D"): "A"}
EXPONENT_NAMES = {"X": "alpha", "D": "beta", "P": "gamma"}

# Bounds in centred coordinates (a_t: log of term t at the data's centre; e = log E).
BOUND_A = (-25.0, 25.0)
BOUND_EXPONENT = (0.0, 5.0)
BOUND_E = (-25.0, 25.0)
START_A = (-4.0, -2.0, 0.0)
START_EXPONENT = (0.1, 0.5, 1.0, 2.0)
START_E = (-2.0, -1.0, 0.0)
POLISH = 3
OPTIMUM_RTOL = 1e-4


@dataclasses.dataclass(frozen=True)
class JointFit:
    """One form fitted to one method's points (all budgets), and its held-out score."""

    form: str
    params: dict[str, float]
    """E, the coefficients (A, B, G) and exponents (alpha, beta, gamma) in the data's units."""
    objective: float
    """SUM of Huber_δ(log L̂ − log L) at the optimum (unscaled)."""
    n_points: int
    bound_hits: tuple[str, ...]
    """Parameters on a bound of the box at the optimum: not a real fit."""
    at_optimum: float
    """Fraction of starts that ended within 1e-4 of the best objective."""
    holdout_mape: float | None = None
    """Mean |L̂ − L|/L on the held-out budgets' runs, fitted without them."""
    holdout_bias: float | None = None
    """Mean (L̂ − L)/L on the held-out runs (positive: predicts higher losses than observed)."""
    reason: str | None = None
    """Why there is no held-out score."""

    def predict(self, X: np.ndarray, D: np.ndarray, P: np.ndarray | None = None) -> np.ndarray:
        values = {"X": np.asarray(X, float), "D": np.asarray(D, float)}
        if P is not None:
            values["P"] = np.asarray(P, float)
        out = np.full(np.shape(values["X"]), self.params["E"])
        for term in FORMS[self.form]:
            t = self.params[COEF_NAMES[term]]
            for v in term:
                t = t * values[v] ** -self.params[EXPONENT_NAMES[v]]
            out = out + t
        return out

    @property
    def isoflop_direction(self) -> str | None:
        """Multiplicative forms: which end of the size axis an isoFLOP line prefers (X^(β−α))."""
        if not self.form.startswith("multiplicative"):
            return None
        return "largest" if self.params["alpha"] > self.params["beta"] else "smallest"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"isoflop_direction": self.isoflop_direction}


@dataclasses.dataclass(frozen=True)
class JointComparison:
    fits: tuple[JointFit, ...]
    preferred: str | None
    """The form with the lowest held-out error; None when no form has a held-out score."""
    reason: str
    """Why that form (or why none)."""

    def get(self, form: str) -> JointFit | None:
        return next((f for f in self.fits if f.form == form), None)

    def to_json(self) -> dict[str, Any]:
        return {"preferred": self.preferred, "reason": self.reason,
                "forms": {f.form: f.to_json() for f in self.fits}}  # fmt: skip


# --------------------------------------------------------------------------------------------------
# The general LSE law with a term × variable exponent layout


def _layout(form: str, variables: list[str]) -> list[list[int]]:
    return [[variables.index(v) for v in term] for term in FORMS[form]]


def _n_params(layout: list[list[int]]) -> int:
    return len(layout) + sum(map(len, layout)) + 1


def predict_log(theta: np.ndarray, X: np.ndarray, layout: list[list[int]]) -> np.ndarray:
    """log L̂ for θ (..., P) = [a_1 … a_T, α's term by term, e] at centred log-variables X (n, V)."""
    theta = np.asarray(theta, dtype=float)
    t_count = len(layout)
    terms, j = [], t_count
    for t, term in enumerate(layout):
        z = theta[..., t, None] + 0.0 * X[:, 0]
        for v in term:
            z = z - theta[..., j, None] * X[:, v]
            j += 1
        terms.append(z)
    terms.append(theta[..., -1, None] + 0.0 * X[:, 0])
    return np.logaddexp.reduce(np.stack(terms, axis=-1), axis=-1)


def objective(theta, X, y, layout, weights=None, delta=HUBER_DELTA, cells=None):
    """Σ w·Huber_δ(log L̂ − y)/δ² and its gradient for θ (S, P): with term_t = exp(a_t − Σ α·x)
    and z = Σ_t term_t + E, ∂ log L̂/∂a_t = term_t/z, ∂/∂α_{t,v} = −x_v·term_t/z, ∂/∂e = E/z.
    ``cells`` (:class:`scaling.fit.laws.Cells` of X, y): the same sum over groups of repeated x."""
    theta = np.atleast_2d(theta)
    if cells is not None:
        X = cells.X
    t_count = len(layout)
    terms, j, slots = [], t_count, []
    for t, term in enumerate(layout):
        z = theta[:, t, None] - sum(theta[:, j + i, None] * X[:, v] for i, v in enumerate(term))
        slots.append(list(range(j, j + len(term))))
        j += len(term)
        terms.append(np.exp(z))
    e = np.exp(theta[:, -1])
    total = sum(terms) + e[:, None]
    if cells is not None:
        loss, psi = cells(np.log(total))
    else:
        r = np.log(total) - y
        psi = np.clip(r, -delta, delta)
        loss = huber(r, delta)
        if weights is not None:
            loss, psi = loss * weights, psi * weights
    scale = 1.0 / (delta * delta)
    f = loss.sum(axis=-1) * scale
    w = psi * scale / total
    g = np.empty_like(theta)
    for t, term in enumerate(layout):
        tw = terms[t] * w
        g[:, t] = tw.sum(axis=-1)
        for slot, v in zip(slots[t], term, strict=True):
            g[:, slot] = -(tw * X[:, v]).sum(axis=-1)
    g[:, -1] = e * w.sum(axis=-1)
    return f, g


def _bounds(layout):
    k = sum(map(len, layout))
    lo = np.array([BOUND_A[0]] * len(layout) + [BOUND_EXPONENT[0]] * k + [BOUND_E[0]])
    hi = np.array([BOUND_A[1]] * len(layout) + [BOUND_EXPONENT[1]] * k + [BOUND_E[1]])
    return lo, hi


def _starts(layout) -> np.ndarray:
    k = sum(map(len, layout))
    return np.array([[*a, *al, e] for a in itertools.product(START_A, repeat=len(layout))
                     for al in itertools.product(START_EXPONENT, repeat=k) for e in START_E])  # fmt: skip


@blas_single_threaded
def fit_form(form: str, values: dict[str, np.ndarray], L: np.ndarray,
             delta: float = HUBER_DELTA) -> JointFit:  # fmt: skip
    """Fit one form to losses ``L`` at ``values`` (variable name → positive array)."""
    variables = sorted({v for term in FORMS[form] for v in term}, key="XPD".index)
    missing = [v for v in variables if v not in values]
    if missing:
        raise ScalingError(f"form {form} needs {', '.join(missing)}")
    logs = np.log(np.c_[tuple(values[v] for v in variables)])
    x0 = logs.mean(axis=0)
    X = logs - x0
    y = np.log(np.asarray(L, float))
    layout = _layout(form, variables)
    if len(y) <= _n_params(layout):
        raise ScalingError(f"{len(y)} points for {_n_params(layout)} parameters")
    lo, hi = _bounds(layout)

    cells = Cells(X, y, None, delta) if Cells.worth(X) else None  # repeated configurations

    def fun(th, rows):
        return objective(th, X, y, layout, delta=delta, cells=cells)

    batch = lbfgs_batched(fun, _starts(layout), lo, hi, gtol=1e-6, ftol=1e-12, maxiter=1000)
    picks: list[np.ndarray] = []
    for i in np.argsort(batch.f):
        if len(picks) >= POLISH:
            break
        if all(np.abs(batch.x[i] - p).max() > 1e-3 for p in picks):
            picks.append(batch.x[i])
    best = min((polish_one(fun, x, lo, hi) for x in picks), key=lambda r: r.fun)
    theta = np.clip(best.x, lo, hi)
    f, _ = fun(theta[None], None)
    span = hi - lo
    names = _names(form)
    hits = tuple(n for n, v, a, b, w in zip(names, theta, lo, hi, span, strict=True)
                 if v - a <= 1e-6 * w or b - v <= 1e-6 * w)  # fmt: skip
    fbest = float(f[0])
    at_opt = float(np.mean(batch.f <= fbest * (1 + OPTIMUM_RTOL) + len(y) * 1e-12))
    return JointFit(form, _params(form, theta, x0, layout), fbest * delta * delta, len(y),
                    hits, at_opt)  # fmt: skip


def _names(form: str) -> list[str]:
    terms = FORMS[form]
    return ([f"log {COEF_NAMES[t]}" for t in terms]
            + [EXPONENT_NAMES[v] for t in terms for v in t] + ["log E"])  # fmt: skip


def _params(form, theta, x0, layout) -> dict[str, float]:
    """Centred θ → E, coefficients and exponents in the data's units (a_raw = a + Σ α·x0)."""
    out: dict[str, float] = {"E": float(np.exp(theta[-1]))}
    j = len(layout)
    for t, term in enumerate(FORMS[form]):
        a = theta[t]
        for v, idx in zip(term, layout[t], strict=True):
            out[EXPONENT_NAMES[v]] = float(theta[j])
            a += theta[j] * x0[idx]
            j += 1
        out[COEF_NAMES[term]] = float(np.exp(a))
    return out


# --------------------------------------------------------------------------------------------------
# One method's points


def forms_for(points: Points) -> list[str]:
    """The additive and multiplicative forms, and their +peft versions when the trainable size
    varies independently of the backbone (several PEFT sizes on one backbone)."""
    out = ["additive", "multiplicative"]
    if points.P is not None and len(set(zip(points.N, points.P, strict=True))) > len(set(points.N)):
        out += ["additive+peft", "multiplicative+peft"]
    return out


def _values(points: Points) -> dict[str, np.ndarray]:
    out = {"X": points.N, "D": points.D}
    if points.P is not None:
        out["P"] = points.P
    return out


def fit_joint(points: Points, spec) -> JointComparison:
    """Every applicable form on all of ``points``, each scored on the held-out budgets."""
    k = spec.holdout.budgets
    nb = len(points.budgets)
    fits = []
    for form in forms_for(points):
        try:
            full = fit_form(form, _values(points), points.L)
        except ScalingError as e:
            fits.append(JointFit(form, {}, float("nan"), len(points), (), 0.0, reason=str(e)))
            continue
        if k <= 0 or nb < k + 2:
            why = (
                "no held-out budget"
                if k <= 0
                else f"{nb} budget(s): holding out {k} needs ≥ {k + 2}"
            )
            fits.append(dataclasses.replace(full, reason=why))
            continue
        test = points.group >= nb - k
        train = points.subset(~test)
        try:
            part = fit_form(form, _values(train), train.L)
        except ScalingError as e:
            fits.append(dataclasses.replace(full, reason=f"held-out fit: {e}"))
            continue
        values = _values(points.subset(test))
        rel = part.predict(values["X"], values["D"], values.get("P")) / points.L[test] - 1
        fits.append(dataclasses.replace(full, holdout_mape=float(np.mean(np.abs(rel))),
                                        holdout_bias=float(np.mean(rel))))  # fmt: skip
    scored = [f for f in fits if f.holdout_mape is not None]
    if not scored:
        return JointComparison(tuple(fits), None, "no form has a held-out score: "
                               + (fits[0].reason or "nothing fitted"))  # fmt: skip
    best = min(scored, key=lambda f: f.holdout_mape)
    others = ", ".join(f"{f.form} {f.holdout_mape:.2%}" for f in scored if f is not best)
    return JointComparison(tuple(fits), best.form,
                           f"lowest held-out error ({best.holdout_mape:.2%}"
                           + (f"; {others}" if others else "") + ")")  # fmt: skip
