"""``scaling fit`` end to end through ``fit_cli.main``: outputs, --json, --predict, --gpu-mem, tables,
and one-line errors with exit code 2."""

from __future__ import annotations

import argparse
import json
import math

import polars as pl
import pytest

from scaling import cli
from scaling.fit import cli as fit_cli
from scaling.fit import synth

FAST = ["--grid", "small", "--bootstrap", "30"]


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "sweep"
    synth.simulate(out, noise=0.003, seed=4, statuses={3: "diverged"})
    return out


@pytest.fixture(scope="module")
def table_csv(tmp_path_factory):
    rows = []
    for c in (1e18, 1e19, 1e20, 1e21):
        n_opt = 0.6 * (c / 6) ** 0.5
        for i in range(7):
            n = n_opt * 10 ** (-1 + i / 3)
            loss = 1.69 + 406.4 * n**-0.34 + 410.7 * (c / (6 * n)) ** -0.28
            rows.append({"params": n, "flops": c, "loss": loss, "model": "chinchilla"})
    path = tmp_path_factory.mktemp("cli") / "runs.csv"
    pl.DataFrame(rows).write_csv(path)
    return path


def test_interface_for_the_main_cli():
    assert isinstance(fit_cli.HELP, str) and "\n" not in fit_cli.HELP
    assert fit_cli.EXAMPLE.startswith("scaling fit ")
    parser = argparse.ArgumentParser()
    fit_cli.add_arguments(parser)
    args = parser.parse_args(["runs/x", "--predict", "1e18", "--gpu-mem", "12GB"])
    assert args.inputs == ["runs/x"] and args.predict == [1e18] and callable(fit_cli.run)


def test_fit_a_sweep_directory(sweep_dir, tmp_path, capsys):
    out = tmp_path / "fit"
    argv = [
        str(sweep_dir),
        "--out",
        str(out),
        "--predict",
        "1e14",
        "--gpu-mem",
        "4MB",
        "--no-plots",
        *FAST,
    ]  # figures: tests/test_plots.py, through the same write_outputs
    assert cli.main(["fit", *argv]) == 0
    text = capsys.readouterr().out
    assert "approach 3: L(N, D) = E + A/N^α + B/D^β" in text
    assert "excluded (1):" in text and "diverged: simulated diverged" in text
    assert "predictions:" in text and "method comparison" in text
    assert "joint laws (all budgets; held-out" in text and "ladder: the data prefer " in text
    assert "memory-aware advice (4MB):" in text and "lora at C=1e+14: rank=" in text
    data = json.loads((out / "fits.json").read_text())
    assert set(data["methods"]) == {"ladder", "lora"}
    for m in data["methods"].values():
        assert m["optimal_params"]["A"] > 0 and 0 < m["optimal_params"]["a"] < 1
        assert {"E", "A", "B", "alpha", "beta", "ci", "starts", "bound_hits"} <= set(m["approach3"])
        assert m["approach3"]["ci"]["alpha"][0] <= m["approach3"]["alpha"]
        assert m["holdout"]["mape"] < 0.05
        # Simulated from Chinchilla's additive law: the held-out comparison says so.
        assert m["joint"]["preferred"] == "additive"
        assert set(m["joint"]["forms"]) == {"additive", "multiplicative"}
        assert {p["approach"] for p in m["predictions"]} == {"approach1", "approach2", "approach3"}
        assert m["advice"][0]["best_fitting"]["fits"] and m["advice"][0]["C"] == 1e14
    assert data["settings"]["bootstrap"]["resamples"] == 30
    assert data["exclusions"][0]["reason"].startswith("diverged")
    frontier = pl.read_parquet(out / "frontier.parquet")
    assert {"method", "approach", "C", "N", "D", "L", "L_lo", "L_hi"} <= set(frontier.columns)
    assert set(frontier["approach"]) == {"approach1", "approach2", "approach3"}
    assert not list(out.glob("*.png"))
    assert (out / "summary.txt").read_text().startswith("scaling fit:")


def test_default_out_is_inside_the_run_directory(tmp_path, capsys):
    out = tmp_path / "sweep"
    synth.simulate(out, curves=False)
    assert cli.main(["fit", str(out), "--no-plots", *FAST, "--bootstrap", "0"]) == 0
    assert (out / "fit" / "fits.json").is_file()
    assert f"wrote {out / 'fit'}/" in capsys.readouterr().out


def test_fit_a_csv_table_with_json_output(table_csv, tmp_path, capsys):
    argv = [str(table_csv), "--params-col", "params", "--flops-col", "flops", "--loss-col", "loss",
            "--method-col", "model", "--out", str(tmp_path), "--no-plots", "--json",
            "--predict", "1e22", *FAST]  # fmt: skip
    assert cli.main(["fit", *argv]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["out"] == str(tmp_path) and (tmp_path / "fits.json").is_file()
    (pred,) = [
        p for p in data["methods"]["chinchilla"]["predictions"] if p["approach"] == "approach3"
    ]
    assert pred["C"] == 1e22 and pred["extrapolated"]
    a3 = data["methods"]["chinchilla"]["approach3"]
    assert a3["alpha"] == pytest.approx(0.34, rel=1e-4) and a3["beta"] == pytest.approx(
        0.28, rel=1e-4
    )
    assert any("D = C / (6·N)" in w for w in data["warnings"])
    G = (0.34 * 406.4 / (0.28 * 410.7)) ** (1 / 0.62)  # Chinchilla's closed form, F = 6·N
    a = data["methods"]["chinchilla"]["approach3"]["n_opt"]["a"]
    assert a == pytest.approx(0.28 / 0.62, rel=1e-6)
    assert data["methods"]["chinchilla"]["approach3"]["n_opt"]["A"] == pytest.approx(
        G * 6 ** -(0.28 / 0.62), rel=1e-5
    )
    assert not math.isnan(data["methods"]["chinchilla"]["optimal_params"]["a"])


def test_fit_spec_toml_as_first_input(sweep_dir, tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text('loss = "last_k_eval"\nlast_k = 2\n[approach3]\nalpha = [0.3, 1.0]\n'
                    'e = [0.0]\na = [5.0, 15.0]\n[bootstrap]\nresamples = 0\n')  # fmt: skip
    assert cli.main(["fit", str(spec), str(sweep_dir), "--out", str(tmp_path / "o"), "--json",
                         "--no-plots"]) == 0  # fmt: skip
    data = json.loads(capsys.readouterr().out)
    assert data["settings"]["loss"] == "last_k_eval" and data["settings"]["last_k"] == 2
    assert data["methods"]["ladder"]["approach3"]["starts"]["n"] == 16


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{dir}/nope"], "run directory not found"),
        (["{csv}", "--tokens-col", "nope"], "--tokens-col 'nope': no such column in"),
        (["{csv}", "--params-col", "params", "--loss-col", "nope", "--flops-col", "flops"],
         "--loss-col 'nope': no such column in"),
        (["{dir}/x.csv", "--params-col", "p", "--loss-col", "l"], "table not found"),
        (["{csv}", "{csv}", "--params-col", "p", "--loss-col", "l"], "give one table"),
        (["{sweep}", "--gpu-mem", "12GB"], "--gpu-mem needs --predict"),
        (["{sweep}", "--gpu-mem", "lots", "--predict", "1e14"], "cannot read a memory size"),
        (["{sweep}", "--params-col", "p"], "--params-col is for CSV/Parquet tables"),
        (["{sweep}", "--methods", "qlora"], "method 'qlora' not in"),
        (["{csv}", "--params-col", "params", "--loss-col", "loss", "--flops-col", "flops",
          "--predict", "1e20", "--gpu-mem", "12GB"], "--gpu-mem needs runs from a sweep"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(argv, message, sweep_dir, table_csv, tmp_path, capsys):
    fill = {"dir": str(tmp_path), "csv": str(table_csv), "sweep": str(sweep_dir)}
    argv = [a.format(**fill) for a in argv] + ["--out", str(tmp_path / "o"), "--no-plots", *FAST]
    assert cli.main(["fit", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scaling fit: error: ") and message in err, err
    assert err.count("\n") == 1


def test_empty_table_and_all_diverged(tmp_path, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_text("params,flops,loss\n")
    argv = [str(empty), "--params-col", "params", "--flops-col", "flops", "--loss-col", "loss"]
    assert cli.main(["fit", *argv]) == 2
    assert "is empty: nothing to fit" in capsys.readouterr().err
    out = tmp_path / "sweep"
    synth.simulate(out, statuses={i: "diverged" for i in range(500)}, curves=False)
    assert cli.main(["fit", str(out), "--no-plots", *FAST]) == 2
    err = capsys.readouterr().err
    assert "nothing to fit" in err and "diverged" in err and err.count("\n") == 1


def test_single_budget_table_is_an_error_when_nothing_fits(tmp_path, capsys):
    path = tmp_path / "one.csv"
    pl.DataFrame(
        {"params": [1e8, 3e8, 1e9], "flops": [1e19] * 3, "loss": [3.0, 2.9, 3.1]}
    ).write_csv(path)
    argv = [str(path), "--params-col", "params", "--flops-col", "flops", "--loss-col", "loss",
            "--no-plots", *FAST]  # fmt: skip
    assert cli.main(["fit", *argv]) == 2
    err = capsys.readouterr().err
    assert "3 points (< approach3.min_points = 8)" in err and "interior minimum" in err


# --------------------------------------------------------------------------------------------------
# Tables as researchers publish them


def _chinchilla_table(path, columns, k=6.0):
    """A 4-budget isoFLOP table from Chinchilla's law with C = k·N·D, in the named columns."""
    rows = []
    for c in (1e18, 1e19, 1e20, 1e21):
        n_opt = 0.6 * (c / 6) ** 0.5
        for i in range(7):
            n = n_opt * 10 ** (-1 + i / 3)
            d = c / (k * n)
            loss = 1.69 + 406.4 * n**-0.34 + 410.7 * d**-0.28
            rows.append({"N": n, "D": d, "C": c, "L": loss})
    pl.DataFrame([{new: r[old] for old, new in columns.items()} for r in rows]).write_csv(path)
    return path


def test_table_columns_are_recognised_by_their_common_names(tmp_path, capsys):
    path = _chinchilla_table(tmp_path / "t.csv", {"N": "params", "D": "tokens", "L": "loss"})
    out = tmp_path / "fit"
    assert cli.main(["fit", str(path), "--out", str(out), "--no-plots", "--json", *FAST]) == 0
    captured = capsys.readouterr()
    err = captured.err
    assert "columns recognised by name: loss = 'loss', params = 'params', tokens = 'tokens'" in err
    assert "no FLOPs column: C = 6·N·D assumed" in err and "--flops-col" in err  # the warning
    summary = (out / "summary.txt").read_text()
    header = summary.splitlines()[0]
    assert f"table {path}: N = 'params', D = 'tokens', C = 6·N·D (derived), loss = 'loss'" in header
    assert "trainable" not in header and "final_eval" not in header
    data = json.loads((out / "fits.json").read_text())
    assert data["input_columns"].startswith(f"table {path}: N = 'params'")
    assert data["methods"]["all"]["approach3"]["alpha"] == pytest.approx(0.34, rel=1e-3)


def test_table_with_only_compute_and_tokens_derives_n(tmp_path, capsys):
    path = _chinchilla_table(tmp_path / "t.csv", {"C": "compute", "D": "tokens", "L": "loss"})
    out = tmp_path / "fit"
    assert cli.main(["fit", str(path), "--out", str(out), "--no-plots", *FAST]) == 0
    capsys.readouterr()
    summary = (out / "summary.txt").read_text()
    assert "N = C/(6·D) (derived), D = 'tokens', C = 'compute'" in summary.splitlines()[0]
    assert "no parameters column: N = C / (6·D)" in summary
    m = json.loads((out / "fits.json").read_text())["methods"]["all"]
    assert m["approach3"]["alpha"] == pytest.approx(0.34, rel=1e-3)
    assert m["approach3"]["n_opt"]["a"] == pytest.approx(0.28 / 0.62, abs=1e-3)


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"N": "params", "C": "n_params", "L": "loss"}, "columns 'params', 'n_params' could each "
                                                        "be params; name one with --params-col"),
        ({"N": "params", "L": "loss"}, "two of parameters N, tokens D and FLOPs C are needed "
                                       "(found params = 'params')"),
        ({"N": "params", "C": "flops", "L": "ppl"}, "no loss column"),
    ],
)  # fmt: skip
def test_table_column_inference_errors(columns, message, tmp_path, capsys):
    path = _chinchilla_table(tmp_path / "t.csv", columns)
    assert cli.main(["fit", str(path), "--out", str(tmp_path / "o"), "--no-plots", *FAST]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_progress_is_a_line_per_stage_off_a_terminal(table_csv, tmp_path, capsys):
    argv = [str(table_csv), "--out", str(tmp_path / "o"), "--no-plots", *FAST]
    assert cli.main(["fit", *argv]) == 0
    stages = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("fit [")]
    text = "\n".join(stages)
    for stage in (
        "all: approach 3 (28 points, 243 starts)",
        "all: approach 2",
        "all: bootstrap (30 resamples)",
        "all: held-out check",
        "all: joint laws",
    ):
        assert f"] {stage}" in text, text
    assert all(ln[5:12].strip().endswith("s]") or " s]" in ln for ln in stages)


def test_progress_on_a_terminal_redraws_one_line():
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    progress = fit_cli.Progress(stream)
    for stage in ("m: approach 3 (8 points, 243 starts)", "m: bootstrap (30 resamples)", None):
        progress(stage)
    text = stream.getvalue()
    assert "fit: m: approach 3 (8 points, 243 starts) [1 stages" in text
    assert "fit: m: bootstrap (30 resamples) [2 stages" in text
    assert "\n" not in text and text.endswith("\r")  # one line, cleared at the end
