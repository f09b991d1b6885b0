"""Regenerate docs/quickstart/ from a quickstart run: nothing in it is typed by hand.

    make demo                                    # → runs/quickstart, trained
    python docs/quickstart.py runs/quickstart    # → docs/quickstart/: the collected runs and curves,
                                                 #   then the fit of exactly those: summary.txt,
                                                 #   fits.json, frontier.parquet, figures
    python docs/quickstart.py                    # refit the committed tables only
    python docs/generate.py                      # the README's quickstart numbers, from fits.json

The fit is re-run here from the committed tables (``runs.parquet``, ``curves.parquet``) with the
committed ``analysis/default.toml``, never copied from the run's own ``fit/``, so the committed summary
is what the committed code makes of the committed data — ``tests/test_docs.py`` refits and compares.
``timing.json`` (the wall time of ``make demo`` on a fresh clone) is written by ``bench/demo_time.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "quickstart"
SPEC = ROOT / "analysis" / "default.toml"
INPUT = "docs/quickstart/runs.parquet"
FIGURES = ("frontier", "isoflop", "isoloss", "envelope", "optimal")


def export(run_dir: Path, out: Path = OUT) -> None:
    """The collected table of every run and their per-step curves, as committed inputs."""
    import polars as pl

    from scaling.fit import collect
    from scaling.io import atomic_dir

    c = collect.collect([run_dir], cache=False)
    out.mkdir(parents=True, exist_ok=True)
    # Where the run lay on the machine that made it is nobody's business: the path `make demo` uses.
    runs = c.runs.with_columns(pl.lit("runs/quickstart").alias("source"))
    with atomic_dir(out / ".tables") as tmp:
        runs.write_parquet(tmp / "runs.parquet")
        if c.curves is not None:
            c.curves.write_parquet(tmp / "curves.parquet")
    for name in ("runs.parquet", "curves.parquet"):
        if (out / ".tables" / name).is_file():
            (out / ".tables" / name).replace(out / name)
    (out / ".tables").rmdir()


def refit(out: Path = OUT):
    """The fit report of the committed tables, with the committed default fit spec."""
    import polars as pl

    from scaling import fit
    from scaling.fit.collect import Collected

    spec = fit.load_spec(SPEC)
    curves = pl.read_parquet(out / "curves.parquet") if (out / "curves.parquet").is_file() else None
    runs = Collected(pl.read_parquet(out / "runs.parquet"), curves, [INPUT], [])
    return fit.fit(runs.table(spec), spec, fit.Columns.for_runs(spec), curves=curves,
                   source=INPUT, inputs=[INPUT])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", type=Path, help="a finished quickstart run directory")
    args = parser.parse_args(argv)
    from scaling.fit.report import write_outputs

    if args.run_dir is not None:
        export(args.run_dir)
    report = refit()
    # docs/quickstart/ also holds the committed inputs, so it is not a fit's own folder (which
    # write_outputs alone may replace): the fit is written beside it, then its files moved in.
    import tempfile

    with tempfile.TemporaryDirectory(dir=OUT.parent, prefix=".quickstart-fit-") as tmp:
        written = write_outputs(report, Path(tmp) / "fit")
        for path in written:
            if path.suffix != ".pdf":  # figures are committed as PNG only
                path.replace(OUT / path.name)
    print((OUT / "summary.txt").read_text(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
