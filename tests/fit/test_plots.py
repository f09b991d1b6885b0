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
        {"approach3": SMALL, "bootstrap": {"resamples": 20}, "holdout": {"budgets": 0}}
    )
    return fit.fit(c.table(spec), spec, curves=c.curves)


def test_every_figure_as_png_and_pdf(report, tmp_path, monkeypatch):
    def no_fitting(*args, **kwargs):
        raise AssertionError("plots must not fit")

    for name in ("fit_lse", "refit_lse", "lbfgs_batched"):
        monkeypatch.setattr(laws, name, no_fitting)
    written = write_outputs(report, tmp_path)  # what `scaling fit` calls
    assert {"fits.json", "frontier.parquet", "summary.txt"} <= {p.name for p in written}
    written = [p for p in written if p.suffix in (".png", ".pdf")]
    names = {p.name for p in written}
    for fig in ("isoflop", "frontier", "optimal", "residuals", "isoloss", "envelope"):
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
