"""Figures: every one written as PNG and PDF from a fit report, and plotting never fits."""

from __future__ import annotations

import pytest

from scaling import fit
from scaling.fit import collect, laws, plots, synth
from scaling.fit.report import write_outputs
from scaling.fit.spec import FitSpec

SMALL = {"alpha": [0.25, 0.75, 1.5], "e": [-1.0, 0.0, 1.0], "a": [0.0, 10.0, 20.0]}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("plots") / "sweep"
    synth.simulate(out, noise=0.003, seed=2)
    c = collect.collect(out)
    spec = FitSpec.from_dict(
        {"approach3": SMALL, "bootstrap": {"resamples": 20}, "joint": {"enabled": False}}
    )
    return fit.fit(c.table(spec), spec, curves=c.curves)


def test_every_figure_as_png_and_pdf(report, tmp_path, monkeypatch):
    def no_fitting(*args, **kwargs):
        raise AssertionError("plots must not fit")

    for name in ("fit_lse", "refit_lse", "lbfgs_batched"):
        monkeypatch.setattr(laws, name, no_fitting)
    written = write_outputs(report, tmp_path)  # what `scaling fit` calls
    assert {"fits.json", "frontier.parquet", "frontier.csv", "minima.parquet", "minima.csv",
            "summary.txt"} <= {p.name for p in written}  # fmt: skip
    import polars as pl

    assert pl.read_csv(tmp_path / "frontier.csv").equals(
        pl.read_parquet(tmp_path / "frontier.parquet")
    )
    minima = pl.read_csv(tmp_path / "minima.csv")
    assert minima.height == sum(len(mf.points.budgets) for mf in report.methods.values())
    assert {"window_n_lo", "window_n_hi", "n_opt", "loss_opt", "status"} <= set(minima.columns)
    written = [p for p in written if p.suffix in (".png", ".pdf")]
    names = {p.name for p in written}
    for fig in (
        "isoflop",
        "frontier",
        "optimal",
        "residuals",
        "isoloss",
        "envelope",
        "holdout",
        "calibration",
    ):
        assert {f"{fig}.png", f"{fig}.pdf"} <= names
    for p in written:
        head = p.read_bytes()[:8]
        assert head.startswith(b"\x89PNG" if p.suffix == ".png" else b"%PDF")
        assert p.stat().st_size > 5000
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_figures_without_approach1(report):
    import dataclasses

    import matplotlib.pyplot as plt

    methods = {m: dataclasses.replace(mf, approach1=None) for m, mf in report.methods.items()}
    bare = dataclasses.replace(report, methods=methods)
    assert plots.envelope(bare) is None
    fig = plots.frontier(bare)
    assert len(fig.axes[0].lines) >= 4  # two approaches per method, and the budget markers
    plt.close(fig)


def test_extrapolation_is_dashed_and_the_fitted_range_marked(report):
    import matplotlib.pyplot as plt
    import numpy as np

    fig = plots.frontier(report)
    ax = fig.axes[0]
    top = max(mf.points.budgets.max() for mf in report.methods.values())
    dashed = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert dashed  # the part of each law beyond its fitted budgets
    for ln in dashed:
        x = np.asarray(ln.get_xdata(), dtype=float)
        assert np.nanmax(x) > top  # drawn where there is no data
    assert len(ax.patches) >= len(report.methods)  # a shaded fitted range per method
    plt.close(fig)


def test_holdout_figure_shows_predicted_against_observed(report):
    import matplotlib.pyplot as plt

    fig = plots.holdout(report)
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    for m, mf in report.methods.items():
        assert any(t.startswith(f"{m} at C=") and f"MAPE {mf.holdout.mape:.2%}" in t for t in texts)
    plt.close(fig)
