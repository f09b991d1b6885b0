"""The command line's side of "Nothing lost, ever": bad input is one line on stderr and exit 2 with
nothing written, multi-file outputs are all-or-nothing, and no folder a user wrote is ever deleted.

Each test is named after the defect it pins (a few also pin what already worked beside it). Tests that
need a real ``chmod`` skip under root (root reads and writes regardless); each has a twin that makes
the OS refuse through a monkeypatch, so the same path is checked everywhere.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import polars as pl
import pytest

from scaling.cli import main
from scaling.fit import synth

FAST = ["--grid", "small", "--bootstrap", "0", "--no-plots"]
Q7B = ["--model", "qwen2.5-7b", "--method", "qlora", "--seq-len", "8"]


def _permissions_ignored() -> bool:
    """Whether this process reads a mode-000 file anyway (root, or CAP_DAC_OVERRIDE)."""
    if os.geteuid() != 0:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe"
        probe.write_text("x")
        probe.chmod(0)
        try:
            probe.read_text()
        except PermissionError:
            return False
    return True


HOW = [
    pytest.param(
        "chmod",
        marks=pytest.mark.skipif(_permissions_ignored(), reason="root ignores permissions"),
    ),
    "simulated",
]


# --------------------------------------------------------------------------------------------------
# Helpers


def fails_in_one_line(argv: list[str], capsys, *fragments: str) -> str:
    """Run ``scaling ARGV``: exit 2 and exactly one line on stderr holding each fragment; return it."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    # Progress lines of the stages that ran before the error (``fit [  0.3 s] …``) may precede it.
    lines = [x for x in captured.err.splitlines() if not re.match(r"\w+ \[\s*[\d.]+ s\] ", x)]
    assert len(lines) == 1 and captured.err.endswith("\n"), captured.err
    assert "Traceback" not in captured.err
    for fragment in fragments:
        assert fragment in captured.err, captured.err
    return captured.err


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every entry under ``root`` (folders as None, files as their bytes), to prove it untouched."""
    return {
        str(p.relative_to(root)): None if p.is_dir() else p.read_bytes()
        for p in sorted(root.rglob("*"))
    }


def users_folder(path: Path) -> dict[str, bytes | None]:
    """A folder a user wrote (a notes file and a sub-folder); returns its snapshot."""
    (path / "sub").mkdir(parents=True)
    (path / "notes.txt").write_text("my notes\n")
    (path / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return snapshot(path)


def no_leftovers(parent: Path, name: str) -> None:
    """No temporary sibling nor ``.NAME.old`` left beside ``parent / name``."""
    assert [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")] == []


def deny_mkdtemp_in(monkeypatch, folder: Path) -> None:
    """Make creating a temporary folder in ``folder`` fail as a read-only folder would."""
    real = tempfile.mkdtemp

    def mkdtemp(*args, dir=None, **kwargs):  # noqa: A002 (tempfile's own name)
        if dir is not None and Path(dir).resolve() == folder.resolve():
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)


def read_only(request, monkeypatch, folder: Path, how: str) -> None:
    if how == "chmod":
        folder.chmod(0o555)
        request.addfinalizer(lambda: folder.chmod(0o755))  # so pytest can remove it
    else:
        deny_mkdtemp_in(monkeypatch, folder)


def unreadable(monkeypatch, path: Path, how: str) -> None:
    if how == "chmod":
        path.chmod(0)
        return
    real = Path.read_text

    def read_text(self, *args, **kwargs):
        if self.resolve() == path.resolve():
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("faults") / "sweep"
    synth.simulate(out, spec=synth.tiny_spec(("lora",)), noise=0.003, seed=4)
    return out


@pytest.fixture
def sweep(sweep_dir, tmp_path) -> Path:
    """A fresh copy of the simulated sweep, for a test to damage."""
    return Path(shutil.copytree(sweep_dir, tmp_path / "sweep"))


# --------------------------------------------------------------------------------------------------
# (1) `scaling demo --out` deleted what DIR held; with --out FILE the file became a hidden .FILE.old


def test_demo_out_deleted_a_users_folder(tmp_path, capsys):
    out = tmp_path / "mine"
    before = users_folder(out)
    fails_in_one_line(["demo", "--steps", "1", "--out", str(out)], capsys, str(out), "refusing")
    assert snapshot(out) == before
    no_leftovers(tmp_path, "mine")


def test_demo_out_file_was_moved_to_a_hidden_old_file(tmp_path, capsys):
    path = tmp_path / "afile"
    path.write_text("keep me\n")
    fails_in_one_line(["demo", "--steps", "1", "--out", str(path)], capsys, "not a folder")
    assert path.read_text() == "keep me\n"
    no_leftovers(tmp_path, "afile")


def test_demo_out_is_used_only_when_it_is_the_demos_own(tmp_path, capsys):
    from scaling.train import demo

    out = tmp_path / "model"
    demo.tiny_llama(out)  # absent: built there
    assert demo.is_demo_model(out)
    stamp = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert demo.tiny_llama(out) == out  # its own: reused, not rebuilt
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamp
    other = tmp_path / "tiny-llama-64"  # a saved backbone of another shape is not the demo's
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    (other / "tokenizer_config.json").write_text("{}")
    before = snapshot(other)
    fails_in_one_line(["demo", "--steps", "1", "--out", str(other)], capsys, "refusing")
    assert snapshot(other) == before


@pytest.mark.parametrize("steps", ["0", "-1"])
def test_demo_steps_below_one_was_a_traceback(steps, tmp_path, capsys):
    out = tmp_path / "model"
    fails_in_one_line(["demo", "--steps", steps, "--out", str(out)], capsys, "--steps")
    assert not out.exists()


# --------------------------------------------------------------------------------------------------
# (6) multi-file outputs refuse a folder they did not write; (8) fit --out is all or nothing


@pytest.mark.parametrize("verb", ["fit", "backbone"])
def test_multi_file_output_replaced_a_users_folder(verb, sweep, tmp_path, capsys):
    if verb == "fit":
        out = tmp_path / "fit-out"
        argv = ["fit", str(sweep), "--out", str(out), *FAST]
    else:  # the family's own folder for one width is where a user's files sit
        out = tmp_path / "backbones" / "tiny-llama-32"
        argv = ["backbone", "tiny", "--out", str(out.parent), "--steps", "1"]
    before = users_folder(out)
    fails_in_one_line(argv, capsys, str(out), "refusing")
    assert snapshot(out) == before
    no_leftovers(out.parent, out.name)


def test_fit_out_with_a_fits_json_and_user_files_is_not_the_tools_own(sweep, tmp_path, capsys):
    out = tmp_path / "fit-out"
    before = users_folder(out)
    (out / "fits.json").write_text("{}\n")
    before = snapshot(out)
    fails_in_one_line(["fit", str(sweep), "--out", str(out), *FAST], capsys, "refusing")
    assert snapshot(out) == before


def test_fit_out_on_a_full_disk_left_a_partial_output(sweep, capsys, monkeypatch):
    from scaling.fit import plots

    out = sweep / "fit"  # the default --out: RUN_DIR/fit
    assert main(["fit", str(sweep), *FAST]) == 0
    capsys.readouterr()
    before = snapshot(out)

    def disk_full(report, folder):
        (Path(folder) / "isoflop.png").write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(folder) / "isoflop.pdf"))

    monkeypatch.setattr(plots, "save_all", disk_full)
    argv = ["fit", str(sweep), "--grid", "small", "--bootstrap", "0"]  # with figures this time
    fails_in_one_line(argv, capsys, str(out), os.strerror(errno.ENOSPC))
    assert snapshot(out) == before  # the previous fit, whole
    no_leftovers(sweep, "fit")


def test_refit_mixed_old_and_new_files(sweep, capsys):
    out = sweep / "fit"
    assert main(["fit", str(sweep), *FAST]) == 0
    (out / "isoflop.png").write_bytes(b"\x89PNG from an earlier fit with figures")
    old = (out / "fits.json").read_bytes()
    assert main(["fit", str(sweep), *FAST, "--exclude", "nothing-by-this-name"]) == 0
    capsys.readouterr()
    assert main(["fit", str(sweep), *FAST, "--out", str(sweep / "fresh")]) == 0
    fresh = sorted(p.name for p in (sweep / "fresh").iterdir())
    assert "isoflop.png" not in fresh and sorted(p.name for p in out.iterdir()) == fresh
    assert (out / "fits.json").read_bytes() != old
    no_leftovers(sweep, "fit")


# --------------------------------------------------------------------------------------------------
# Tracebacks instead of one line


@pytest.mark.parametrize("verb", ["fit", "backbone", "demo"])
@pytest.mark.parametrize("under", [False, True], ids=["file", "inside-file"])
def test_file_where_a_folder_is_expected(verb, under, sweep, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep me\n")
    out = afile / "sub" if under else afile
    argv = {
        "fit": ["fit", str(sweep), "--out", str(out), *FAST],
        "backbone": ["backbone", "tiny", "--out", str(out), "--steps", "1"],
        "demo": ["demo", "--steps", "1", "--out", str(out)],
    }[verb]
    fails_in_one_line(argv, capsys, "not a folder")
    assert afile.read_text() == "keep me\n"
    no_leftovers(tmp_path, "afile")


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("kind", ["sweep", "fit", "fit --spec"])
def test_unreadable_spec(kind, how, sweep, tmp_path, capsys, monkeypatch):
    spec = tmp_path / "spec.toml"
    spec.write_text("seeds = [0]\n" if kind == "sweep" else "last_k = 2\n")
    unreadable(monkeypatch, spec, how)
    argv = {
        "sweep": ["sweep", str(spec), "--flops", "1e18", "--dry-run"],
        "fit": ["fit", str(spec), str(sweep), *FAST],
        "fit --spec": ["fit", "--spec", str(spec), str(sweep), *FAST],
    }[kind]
    fails_in_one_line(argv, capsys, "cannot read", str(spec), os.strerror(errno.EACCES))
    assert not (sweep / "fit").exists()


@pytest.mark.parametrize("kind", ["sweep", "fit", "fit --spec"])
def test_spec_that_is_a_folder(kind, sweep, tmp_path, capsys):
    spec = tmp_path / "spec.toml"
    spec.mkdir()
    argv = {
        "sweep": ["sweep", str(spec), "--flops", "1e18", "--dry-run"],
        "fit": ["fit", str(spec), str(sweep), *FAST],
        "fit --spec": ["fit", "--spec", str(spec), str(sweep), *FAST],
    }[kind]
    fails_in_one_line(argv, capsys, f"{spec} is a folder")


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("verb", ["fit", "backbone", "demo"])
def test_read_only_out_parent(verb, how, sweep, tmp_path, capsys, monkeypatch, request):
    parent = tmp_path / "ro"
    parent.mkdir()
    out = parent / "out"
    argv = {
        "fit": ["fit", str(sweep), "--out", str(out), *FAST],
        "backbone": ["backbone", "tiny", "--out", str(out), "--steps", "1"],
        "demo": ["demo", "--steps", "1", "--out", str(out)],
    }[verb]
    read_only(request, monkeypatch, parent, how)
    fails_in_one_line(argv, capsys, "cannot write", os.strerror(errno.EACCES))
    assert list(parent.iterdir()) == []


def fit_file(path: Path, law: dict) -> Path:
    path.write_text(json.dumps({"methods": {"qlora": {"optimal_params": law}}}))
    return path


@pytest.mark.parametrize(
    "law",
    [
        {"A": 1e300, "a": 50},
        {"A": 1e300, "a": 0.5},  # N*(C) = inf at any budget
        {"A": 1e-2, "a": 50},  # C^a overflows
        {"A": 1e-2, "a": -50},  # N*(C) = 0
        {"A": 1e-300, "a": 0.5},
        {"A": 10**400, "a": 0.5},  # an integer too large for a float
    ],
)
def test_from_fit_extreme_law_overflowed(law, tmp_path, capsys):
    fits = fit_file(tmp_path / "fits.json", law)
    argv = ["sweep", "--flops", "1e18", "--from-fit", str(fits), "--dry-run"]
    fails_in_one_line(argv, capsys, "methods.qlora")


@pytest.mark.parametrize("flops", ["1e300", "1e-5"])
def test_extreme_budgets_overflowed(flops, tmp_path, capsys):
    fails_in_one_line(["sweep", "--flops", flops, "--out", str(tmp_path / "o")], capsys, "budgets")
    assert not (tmp_path / "o").exists()


def test_corrupt_manifest(sweep, capsys):
    (sweep / "manifest.parquet").write_bytes(b"these bytes are not Parquet")
    fails_in_one_line(["fit", str(sweep), "--no-cache", *FAST], capsys, "manifest.parquet")
    assert not (sweep / "fit").exists()


def test_manifest_without_run_ids(sweep, capsys):
    pl.read_parquet(sweep / "manifest.parquet").drop("run_id").write_parquet(
        sweep / "manifest.parquet"
    )
    fails_in_one_line(["fit", str(sweep), "--no-cache", *FAST], capsys, "no run_id column")


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("runs.parquet", b"these bytes are not Parquet", "cannot read"),
        ("runs.csv", b"\x00\xff\xfe\x00garbage\x89PNG", "corrupt CSV"),
        ("runs.csv", b"params,loss\n\xff\xfe1,2\n", "corrupt CSV"),
    ],
)
def test_corrupt_run_table(name, data, message, tmp_path, capsys):
    table = tmp_path / name
    table.write_bytes(data)
    argv = ["fit", str(table), "--params-col", "params", "--loss-col", "loss",
            "--flops-col", "flops", *FAST]  # fmt: skip
    err = fails_in_one_line(argv, capsys, message, str(table))
    assert "empty" not in err  # a corrupt file is not an empty one
    assert not (tmp_path / f"{table.stem}-fit").exists()


def first_run(sweep: Path) -> Path:
    return sorted(p for p in (sweep / "runs").iterdir() if (p / "result.json").is_file())[0]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("final_eval_loss", "low"),
        ("final_eval_loss", True),
        ("final_eval_loss", [1.0]),
        ("steps", "many"),
        ("tokens", 10**30),  # beyond int64
        ("status", ["success"]),
        ("status", 3),
    ],
)
def test_mistyped_result_json(field, value, sweep, capsys):
    run = first_run(sweep)
    result = json.loads((run / "result.json").read_text())
    (run / "result.json").write_text(json.dumps(result | {field: value}))
    # Like a result.json that is not JSON: the run is excluded with its reason, the fit goes on.
    assert main(["fit", str(sweep), "--no-cache", *FAST]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert f"{run.name}: unreadable: mistyped result.json: {field} must be" in captured.out
    assert "1 excluded" in captured.out


@pytest.mark.parametrize(("field", "value"), [("budget", "lots"), ("optimizer", "adamw")])
def test_mistyped_spec_json(field, value, sweep, capsys):
    run = first_run(sweep)
    spec = json.loads((run / "spec.json").read_text())
    (run / "spec.json").write_text(json.dumps(spec | {field: value}))
    assert main(["fit", str(sweep), "--no-cache", *FAST]) == 0
    captured = capsys.readouterr()
    assert f"warning: {run.name}: mistyped spec.json: {field} must be" in captured.err


@pytest.mark.parametrize(
    ("column", "cast"), [("loss", pl.String), ("step", pl.String), ("kind", pl.Int64)]
)
def test_mistyped_metrics_parquet(column, cast, sweep, capsys):
    run = first_run(sweep)
    metrics = pl.read_parquet(run / "metrics.parquet")
    if cast == pl.Int64:
        metrics = metrics.with_columns(pl.lit(1).alias(column))
    else:
        metrics = metrics.with_columns(pl.col(column).cast(cast))
    metrics.write_parquet(run / "metrics.parquet")
    assert main(["fit", str(sweep), "--no-cache", *FAST]) == 0
    err = capsys.readouterr().err
    assert f"warning: {run.name}: metrics.parquet column {column} holds" in err
    assert "Traceback" not in err


# --------------------------------------------------------------------------------------------------
# Accepted although invalid


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["flops", *Q7B, "--alpha", "inf"], "alpha must be"),
        (["flops", *Q7B, "--alpha", "nan"], "alpha must be"),
        (["flops", *Q7B, "--rank", "99999999999999999999"], "rank must be at most"),
        (["flops", *Q7B, "--attn-implementation", "flash9"], "attn_implementation must be"),
        (["flops", "--model", "qwen2.5-7b", "--method", "ladder", "--seq-len", "8",
          "--gate-temperature", "inf"], "gate_temperature must be"),
        (["memory", *Q7B, "--batch-size", "1", "--gpu-mem", "infGB"], "--gpu-mem"),
        (["memory", *Q7B, "--batch-size", "1", "--gpu-mem", "1e400GB"], "--gpu-mem"),
        (["memory", *Q7B, "--batch-size", "1", "--gpu-mem", "1e300TB"], "--gpu-mem"),
        (["memory", *Q7B, "--batch-size", "1", "--gpu-mem", ""], "--gpu-mem"),
        (["sweep", "--flops", "1e18", "--gpu-mem", "infGB", "--dry-run"], "gpu_mem"),
        (["memory", *Q7B, "--batch-size", "9" * 400], "--batch-size must be at most"),
        (["flops", "--model", "qwen2.5-7b", "--method", "qlora", "--seq-len", "9" * 20],
         "--seq-len must be at most"),
    ],
)  # fmt: skip
def test_invalid_dials_and_sizes_were_accepted(args, message, capsys):
    fails_in_one_line(args, capsys, message)


@pytest.mark.parametrize("kernel", ["eager", "sdpa", "paged|sdpa", "kernels-community/flash-attn"])
def test_valid_attention_kernels_are_still_accepted(kernel, capsys):
    assert main(["flops", *Q7B, "--attn-implementation", kernel, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["attn_implementation"] == kernel


@pytest.mark.parametrize(
    "law", [{"A": True, "a": 0.5}, {"A": 1e-2, "a": False}, {"A": "1e-2", "a": 0.5}]
)
def test_fits_json_booleans_were_numbers(law, tmp_path, capsys):
    fits = fit_file(tmp_path / "fits.json", law)
    argv = ["sweep", "--flops", "1e18", "--from-fit", str(fits), "--dry-run"]
    fails_in_one_line(argv, capsys, "needs numbers A and a")


def test_fits_json_boolean_lr_multiplier(tmp_path, capsys):
    fits = tmp_path / "fits.json"
    fits.write_text(json.dumps({"methods": {"qlora": {"optimal_params": None,
                                                      "best_lr_multiplier": True}}}))  # fmt: skip
    argv = ["sweep", "--flops", "1e18", "--from-fit", str(fits), "--dry-run"]
    fails_in_one_line(argv, capsys, "best_lr_multiplier")


@pytest.mark.parametrize(
    ("text", "shown"), [('budgets = "lots"', "'lots'"), ("budgets = 1e18", "1e+18")]
)
def test_sweep_spec_budgets_not_a_list_was_judged_letter_by_letter(text, shown, tmp_path, capsys):
    spec = tmp_path / "spec.toml"
    spec.write_text(text + "\n")
    fails_in_one_line(["sweep", str(spec), "--dry-run"], capsys,
                      "budgets must be a list of numbers", shown)  # fmt: skip


# --------------------------------------------------------------------------------------------------
# The last safety net in scaling.cli.main


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (OSError(errno.ENOSPC, "No space left on device", "/x/fits.json"),
         "scaling fit: No space left on device: /x/fits.json\n"),
        (PermissionError(errno.EACCES, "Permission denied", "/x", None, "/y"),
         "scaling fit: Permission denied: /x: /y\n"),
        (OSError(errno.EIO, "Input/output error"), "scaling fit: Input/output error\n"),
        (OSError("a message\nover two lines"), "scaling fit: a message over two lines\n"),
    ],
)  # fmt: skip
def test_os_error_escaping_a_verb_was_a_traceback(error, line, capsys, monkeypatch):
    from scaling.fit import cli as fit_cli

    def boom(args):
        raise error

    help_, example, add_arguments, _ = fit_cli.COMMANDS["fit"]
    monkeypatch.setitem(fit_cli.COMMANDS, "fit", (help_, example, add_arguments, boom))
    assert main(["fit", "anything"]) == 1
    assert capsys.readouterr().err == line


def test_keyboard_interrupt_is_still_130(capsys, monkeypatch):
    from scaling.fit import cli as fit_cli

    def interrupted(args):
        raise KeyboardInterrupt

    help_, example, add_arguments, _ = fit_cli.COMMANDS["fit"]
    monkeypatch.setitem(fit_cli.COMMANDS, "fit", (help_, example, add_arguments, interrupted))
    assert main(["fit", "anything"]) == 130
