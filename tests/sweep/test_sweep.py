"""isoFLOP sweep planner: planning invariants, constraints, fit re-centring, the run directory, and
the ``scaling sweep`` command line with its one-line errors."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from scaling import flops, methods, sweep
from scaling.arch import resolve_arch, tiny_config
from scaling.errors import ScalingError
from scaling.runspec import SWEEP_LOCK

ROOT = Path(__file__).resolve().parents[2]
SWEEPS = ROOT / "sweeps"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "scaling.cli", "sweep", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=cwd,
    )


def write_spec(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------------
# Planning invariants


@pytest.mark.parametrize("budgets", [[1e17], [1e16, 3e17, 1e18, 1e19]])
def test_realised_compute_within_1pct_and_tokens_positive(budgets):
    p = sweep.build_plan(sweep.load_spec(), budgets)
    assert p.runs
    for r in p.runs:
        assert r.tokens > 0 and r.steps >= 100
        assert r.tokens == r.steps * r.batch_tokens
        assert abs(r.realised_flops / r.budget - 1) <= 0.01
        assert r.realised_flops == pytest.approx(r.tokens * r.flops_per_token)


def test_tokens_come_from_exact_flops_not_6ND():
    (r,) = [r for r in sweep.plan(None, [1e18]) if r.method == "ladder" and r.dial == "reduction=8"]
    exact = flops.cost(resolve_arch("qwen2.5-0.5b"), methods.config("ladder", reduction=8), 1024)
    assert r.flops_per_token == exact.train_flops_per_token
    assert r.trainable_params == exact.trainable_params
    assert r.steps == round(1e18 / exact.train_flops_per_token / 65536)
    assert r.flops_per_token != pytest.approx(6 * r.trainable_params, rel=0.5)


def test_every_point_and_seed_is_planned():
    spec = sweep.load_spec(seeds=[0, 1])
    runs = sweep.plan(spec, [1e18])
    assert len(runs) == 2 * (5 + 6)
    assert len({r.run_id for r in runs}) == len(runs)
    assert {r.method for r in runs} == {"ladder", "qlora"}


def test_default_toml_is_the_builtin_default():
    assert sweep.load_spec(SWEEPS / "default.toml") == sweep.SweepSpec()


@pytest.mark.parametrize("name", ["default", "quickstart", "qwen2.5-ladder-vs-qlora"])
def test_shipped_specs_plan(name):
    spec = sweep.load_spec(SWEEPS / f"{name}.toml")
    p = sweep.build_plan(spec, spec.budgets or [1e18])
    assert p.runs and all(abs(r.budget_error) <= spec.constraints.tolerance for r in p.runs)


def test_quickstart_is_cpu_sized():
    spec = sweep.load_spec(SWEEPS / "quickstart.toml")
    runs = sweep.plan(spec)
    assert sum(r.realised_flops for r in runs) < 2e13  # minutes on two CPU cores
    assert {r.method for r in runs} == {"ladder", "xladder", "qlora"}
    assert len({r.budget for r in runs}) >= 3
    for method in ("ladder", "xladder", "qlora"):  # the tiny family is the size axis
        sizes = {r.backbone_params for r in runs if r.method == method}
        assert len(sizes) == 6, (method, sizes)
        for budget in {r.budget for r in runs}:
            assert len({r.backbone for r in runs if (r.method, r.budget) == (method, budget)}) >= 4


def test_realistic_spec_spans_1e17_to_1e19_with_both_methods():
    spec = sweep.load_spec(SWEEPS / "qwen2.5-ladder-vs-qlora.toml")
    runs = sweep.plan(spec)
    assert {r.budget for r in runs} >= {1e17, 1e19}
    assert {r.method for r in runs} == {"ladder", "qlora"}
    assert len({r.backbone for r in runs}) == 2


# ---------------------------------------------------------------------------------------------------
# Run ids


def test_ids_stable_across_invocations_and_processes():
    ids = [r.run_id for r in sweep.plan(None, [1e17, 1e18])]
    assert ids == [r.run_id for r in sweep.plan(None, [1e17, 1e18])]
    code = "from scaling import sweep; print([r.run_id for r in sweep.plan(None, [1e17, 1e18])])"
    env = {**os.environ, "PYTHONHASHSEED": "123", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == repr(ids)
    assert ids[0].startswith("ladder-r2-qwen2.5-0.5b-1e17-s0-")


def test_changing_a_dial_changes_only_affected_ids():
    base = {r.run_id for r in sweep.plan(None, [1e18])}
    changed = sweep.load_spec(method={"ladder": {"reduction": [2, 4, 8, 16, 64]}})
    new = {r.run_id for r in sweep.plan(changed, [1e18])}
    assert base - new == {i for i in base if i.startswith("ladder-r32-")}
    assert len(new - base) == 1 and next(iter(new - base)).startswith("ladder-r64-")
    # a method-wide dial changes every run of that method only
    ckpt = sweep.load_spec(method={"qlora": {"gradient_checkpointing": True}})
    ids = {r.run_id for r in sweep.plan(ckpt, [1e18])}
    assert {i for i in base if i.startswith("ladder")} <= ids
    assert not {i for i in base if i.startswith("qlora")} & ids


# ---------------------------------------------------------------------------------------------------
# Constraints


def test_min_steps_drops_with_reason():
    p = sweep.build_plan(sweep.load_spec(), [1e16])
    reasons = {d.dial: d.reason for d in p.dropped if d.method == "qlora"}
    assert len(reasons) == 6
    assert all(
        r.startswith("budget too small:") and "< min_steps 100" in r for r in reasons.values()
    )
    assert any(w.startswith("1e16 qwen2.5-0.5b qlora") for w in p.warnings)
    assert {r.method for r in p.runs} == {"ladder"}


def test_max_epochs_drops_with_reason():
    spec = sweep.load_spec(dataset={"tokens": 5e8}, constraints={"max_epochs": 1.0})
    p = sweep.build_plan(spec, [1e18])
    assert all(r.epochs <= 1.0 for r in p.runs)
    assert p.dropped and all("epochs > max_epochs 1" in d.reason for d in p.dropped)
    assert {d.method for d in p.dropped} == {"ladder"}  # ladder is cheaper per token: more tokens


def test_gpu_mem_drops_with_reason_after_trying_the_levers():
    p = sweep.build_plan(sweep.load_spec(), [1e18], gpu_mem="1GiB")
    assert all(r.peak_memory_bytes <= 2**30 and r.fits_gpu for r in p.runs)
    assert p.dropped and all("> gpu_mem 1GiB even with loss=efficient" in d.reason
                             for d in p.dropped)  # fmt: skip
    assert len(p.runs) + len(p.dropped) == 11


def test_gpu_mem_levers_keep_points_and_are_recorded():
    """Under a cap, a point that does not fit gets the memory-efficient loss, then checkpointing, then a
    smaller micro-batch — recorded in its spec — instead of being dropped; checkpointing re-derives the
    tokens from its larger FLOPs per token."""
    spec = sweep.load_spec(micro_batch_size=4)
    free = {(r.method, r.dial): r for r in sweep.build_plan(spec, [1e18]).runs}
    capped = sweep.build_plan(spec, [1e18], gpu_mem="12GB")
    assert not capped.dropped and len(capped.runs) == len(free)
    for r in capped.runs:
        base = free[(r.method, r.dial)]
        assert r.peak_memory_bytes <= 12e9
        if r.levers:
            assert r.method_config["loss"] == "efficient" and r.run_id != base.run_id
            assert base.peak_memory_bytes > 12e9
        ckpt = "gradient_checkpointing" in r.levers
        assert r.method_config.get("gradient_checkpointing", False) is (
            ckpt or base.method_config.get("gradient_checkpointing", False)
        )
        if ckpt:
            assert r.flops_per_token > base.flops_per_token and r.tokens < base.tokens
        assert r.micro_batch_size * r.grad_accum_steps * r.seq_len == r.batch_tokens
    assert any(r.levers for r in capped.runs) and any(not r.levers for r in capped.runs)
    tight = sweep.build_plan(spec, [1e18], gpu_mem="1.2GiB")
    assert any(any(v.startswith("micro_batch_size=") for v in r.levers) for r in tight.runs)


def test_budget_rounding_beyond_tolerance_is_dropped():
    spec = sweep.load_spec(constraints={"min_steps": 1})
    p = sweep.build_plan(spec, [2e14])  # one or two steps: rounding misses by far more than 1%
    assert any("whole steps miss the budget" in d.reason for d in p.dropped)
    assert all(abs(r.budget_error) <= 0.01 for r in p.runs)


def test_geometry_errors_are_dropped_not_silent():
    spec = sweep.load_spec(method={"ladder": {"reduction": [3, 8]}})  # 3 does not divide 896
    p = sweep.build_plan(spec, [1e18])
    (d,) = p.dropped
    assert d.dial == "reduction=3" and "does not divide" in d.reason


# ---------------------------------------------------------------------------------------------------
# Grids and fits


def test_log_spaced_generator():
    spec = sweep.load_spec(method={"ladder": {"reduction": {"min": 2, "max": 32, "num": 5}}})
    assert [c.reduction for c in sweep.dial_grid(spec, "ladder")] == [2, 4, 8, 16, 32]


def fit_file(path: Path, A: float, a: float = 0.5) -> Path:
    law = {"optimal_params": {"A": A, "a": a}}
    path.write_text(json.dumps({"methods": {"ladder": law, "qlora": law}}))
    return path


def test_recentring_from_fit_moves_the_grid(tmp_path):
    spec = sweep.load_spec()
    small = sweep.build_plan(spec, [1e18], from_fit=fit_file(tmp_path / "a.json", 3e-3))
    large = sweep.build_plan(spec, [1e18], from_fit=fit_file(tmp_path / "b.json", 3e-2))
    for method in ("ladder", "qlora"):
        n_small = sorted(r.trainable_params for r in small.runs if r.method == method)
        n_large = sorted(r.trainable_params for r in large.runs if r.method == method)
        geo = lambda ns: (ns[0] * ns[-1]) ** 0.5  # noqa: E731
        assert geo(n_large) > 3 * geo(n_small)
        target = 3e-3 * 1e18**0.5
        assert n_small[0] < target < n_small[-1]


def test_each_budget_is_centred_on_the_running_fit(tmp_path):
    fit = fit_file(tmp_path / "fits.json", 1.6e-2, 0.5)
    p = sweep.build_plan(sweep.load_spec(), [1e17, 1e19], from_fit=fit)
    for budget in (1e17, 1e19):
        ns = sorted(
            r.trainable_params for r in p.runs if r.budget == budget and r.method == "qlora"
        )
        centre = 1.6e-2 * budget**0.5
        assert sum(n < centre for n in ns) >= 2 and sum(n > centre for n in ns) >= 2
        assert max(ns) / min(ns) < 10**1.2  # ±0.5 decade grid, nearest valid ranks
    assert not [w for w in p.warnings if "qlora" in w]


def test_off_centre_and_wide_grids_warn(tmp_path):
    far = sweep.build_plan(sweep.load_spec(), [1e18], from_fit=fit_file(tmp_path / "f.json", 1e-6))
    assert any("outside the grid" in w or "want ≥ 2 on each side" in w for w in far.warnings)
    wide = sweep.load_spec(method={"qlora": {"rank": [1, 4, 16, 64, 256, 1024]}})
    p = sweep.build_plan(wide, [1e18])
    assert any("qlora: grid spans" in w and "(> ±1)" in w for w in p.warnings)
    spread = sweep.load_spec(grid={"half_width": 1.5})
    p = sweep.build_plan(spread, [1e18], from_fit=fit_file(tmp_path / "g.json", 3e-3))
    assert any("grid spans" in w for w in p.warnings)


def test_fit_without_a_method_warns(tmp_path):
    path = tmp_path / "fits.json"
    path.write_text(json.dumps({"methods": {"ladder": {"optimal_params": {"A": 1e-2, "a": 0.5}}}}))
    p = sweep.build_plan(sweep.load_spec(), [1e18], from_fit=path)
    assert any(w.startswith("qlora: the fit has no entry") for w in p.warnings)
    assert {r.dial for r in p.runs if r.method == "qlora"} == {
        f"rank={r}" for r in (4, 8, 16, 32, 64, 128)
    }


# ---------------------------------------------------------------------------------------------------
# Spec loading and bad input (library)


def test_spec_states_only_differences(tmp_path):
    spec = sweep.load_spec(write_spec(tmp_path / "mine.toml", "[method.qlora]\nrank = [8, 16]\n"))
    assert spec.name == "mine"
    assert spec.method["qlora"] == {"rank": [8, 16]}
    assert spec.method["ladder"] == {"reduction": [2, 4, 8, 16, 32]}
    assert spec.seq_len == 1024 and spec.optimizer.lr_by_method["ladder"] == 3e-3


def test_extends_layers_over_another_spec(tmp_path):
    write_spec(tmp_path / "base.toml", "seq_len = 512\nbatch_tokens = 32768\n")
    spec = sweep.load_spec(
        write_spec(tmp_path / "child.toml", 'extends = "base.toml"\nseeds = [1]\n')
    )
    assert (spec.name, spec.seq_len, spec.batch_tokens, spec.seeds) == ("child", 512, 32768, [1])


@pytest.mark.parametrize(
    "text, message",
    [
        ("sequence_len = 5\n", "unknown key 'sequence_len'"),
        ("[constraints]\nmin_step = 5\n", "unknown key 'min_step'"),
        ("[method.ladder]\nrank = [4]\n", "unknown key 'rank'"),
        ('methods = ["ladder", "adapterx"]\n', "unknown method 'adapterx'"),
        ("[method.ladder]\nreduction = []\n", "empty dial grid: method.ladder.reduction"),
        ("batch_tokens = 1000\n", "must be a multiple of seq_len"),
        ("[constraints]\nmax_epochs = 2.0\n", "needs dataset.tokens"),
        ('backbones = ["no/such-model-xyz"]\n', "backbone not found"),
        ("seq_len = 0\n", "seq_len must be a positive integer"),
    ],
)
def test_bad_specs_name_the_problem(tmp_path, text, message):
    with pytest.raises(ScalingError, match=message):
        spec = sweep.load_spec(write_spec(tmp_path / "bad.toml", text))
        sweep.build_plan(spec, [1e18])


def test_unknown_key_lists_valid_ones(tmp_path):
    with pytest.raises(ScalingError, match="valid keys: name, backbones"):
        sweep.load_spec(write_spec(tmp_path / "bad.toml", "bogus = 1\n"))


@pytest.mark.parametrize(
    "items, expected",
    [
        (["1e17", "3e17"], [1e17, 3e17]),
        (["1e16:1e18:5"], [1e16, 3.16e16, 1e17, 3.16e17, 1e18]),
        (["1e18", "1e17", "1e18"], [1e17, 1e18]),
    ],
)
def test_parse_budgets(items, expected):
    assert sweep.parse_budgets(items) == expected


def test_hub_names_fall_back_to_presets():
    arch, cfg = sweep.resolve_backbone("Qwen/Qwen2.5-0.5B")
    preset = resolve_arch("qwen2.5-0.5b")
    assert dataclasses.replace(arch, source="") == dataclasses.replace(preset, source="")
    assert cfg["hidden_size"] == 896


def test_importing_sweep_does_not_import_torch():
    code = "import sys, scaling.sweep, scaling.sweep.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------------
# Run directory


def test_write_manifest_and_run_specs(tmp_path):
    p = sweep.build_plan(sweep.load_spec(), [1e17, 1e18])
    new = sweep.write(p, tmp_path / "out")
    assert len(new) == len(p.runs)
    df = pl.read_parquet(tmp_path / "out" / "manifest.parquet")
    assert df.height == len(p.runs)
    for col in ("run_id", "method", "dial_reduction", "dial_rank", "trainable_params",
                "backbone_params", "budget", "tokens", "steps", "flops_per_token",
                "realised_flops", "seed", "status"):  # fmt: skip
        assert col in df.columns
    assert set(df["status"]) == {"planned"}
    r = p.runs[0]
    spec_json = json.loads((tmp_path / "out" / "runs" / r.run_id / "spec.json").read_text())
    assert spec_json["run_id"] == r.run_id and spec_json["steps"] == r.steps
    assert spec_json["backbone_config"]["hidden_size"] == 896
    # the side net's rate follows its width (μP's 1/width for Adam): 3e-3 at width 128
    width = 896 // r.method_config["reduction"]
    assert spec_json["optimizer"]["lr"] == pytest.approx(3e-3 * 128 / width)
    assert spec_json["optimizer"]["warmup_steps"] > 0
    meta = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert meta["spec_hash"] == p.identity and meta["budgets"] == [1e17, 1e18]


def test_replanning_is_a_noop_and_new_budgets_only_add(tmp_path):
    out = tmp_path / "out"
    spec = sweep.load_spec()
    sweep.write(sweep.build_plan(spec, [1e18]), out)

    def outputs() -> dict[Path, int]:  # the lock file records its latest holder: not an output
        files = [f for f in out.rglob("*") if f.is_file() and f.name != SWEEP_LOCK]
        return {f: f.stat().st_mtime_ns for f in files}

    first = outputs()
    assert sweep.write(sweep.build_plan(spec, [1e18]), out) == []
    assert outputs() == first
    added = sweep.write(sweep.build_plan(spec, [1e18, 3e18]), out)
    assert len(added) == 11 and all(r.budget == 3e18 for r in added)
    for f, mtime in first.items():  # existing run specs untouched
        if f.name == "spec.json":
            assert f.stat().st_mtime_ns == mtime
    assert pl.read_parquet(out / "manifest.parquet").height == 22


def test_different_sweep_is_refused_and_nothing_changes(tmp_path):
    out = tmp_path / "out"
    sweep.write(sweep.build_plan(sweep.load_spec(), [1e18]), out)
    before = {f: f.read_bytes() for f in out.rglob("*") if f.is_file()}
    other = sweep.load_spec(seq_len=2048)
    with pytest.raises(ScalingError, match="holds a different sweep"):
        sweep.write(sweep.build_plan(other, [1e18]), out)
    assert {f: f.read_bytes() for f in out.rglob("*") if f.is_file()} == before


# ---------------------------------------------------------------------------------------------------
# Command line


def test_cli_default_spec_prints_plan_offline(tmp_path):
    out = run("--flops", "1e18", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "sweep default: 11 runs" in out.stdout
    for col in ("run id", "N train", "FLOPs/tok", "tokens D", "steps", "epochs", "peak GiB",
                "realised C"):  # fmt: skip
        assert col in out.stdout
    assert "ladder-r8-qwen2.5-0.5b-1e18-s0-" in out.stdout
    assert out.stdout.startswith("no --out: writing to runs/default/")  # said before the table
    assert "qlora-r64-qwen2.5-0.5b-1e18-s0-" in out.stdout
    assert (tmp_path / "runs" / "default" / "manifest.parquet").is_file()
    again = run("--flops", "1e18", cwd=tmp_path)
    assert again.returncode == 0 and "0 new runs" in again.stdout


def test_cli_geometric_range_gives_five_budgets(tmp_path):
    out = run("--flops", "1e16:1e18:5", "--json", "--dry-run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["budgets"] == [1e16, 3.16e16, 1e17, 3.16e17, 1e18]
    assert {r["budget"] for r in data["runs"]} == set(data["budgets"])
    assert data["dropped"] and all(d["reason"] for d in data["dropped"])
    assert not (tmp_path / "runs").exists()


def test_cli_quickstart_dry_run_writes_nothing(tmp_path):
    out = run(str(SWEEPS / "quickstart.toml"), "--dry-run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "sweep quickstart:" in out.stdout and "dry run: nothing written" in out.stdout
    assert list(tmp_path.iterdir()) == []


def test_cli_from_fit_and_gpu_mem(tmp_path):
    fit = fit_file(tmp_path / "fits.json", 3e-3)
    out = run("--flops", "1e18", "--from-fit", str(fit), "--gpu-mem", "0.8GiB", "--dry-run",
              cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "dropped" in out.stdout and "> gpu_mem 0.8GiB even with" in out.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--flops", "-1"], "positive and finite"),
        (["--flops", "0"], "positive and finite"),
        (["--flops", "nan"], "positive and finite"),
        (["--flops", "inf"], "positive and finite"),
        (["--flops", "abc"], "not a number"),
        (["--flops", "1e18:1e16:3"], "START < STOP"),
        (["--flops", "1e16:1e18:x"], "must be an integer"),
        (["--flops", "1e18", "spec.toml"], "give the spec file before --flops"),
        (["--flops", "1e10"], "too small for one optimizer step"),
        (["--flops"], "expected at least one argument"),
        ([], "no budgets"),
        (["missing.toml", "--flops", "1e18"], "sweep spec not found: missing.toml"),
        (["--flops", "1e18", "--from-fit", "nofit.json"], "fit file not found"),
        (["--flops", "1e18", "--gpu-mem", "lots"], "cannot read a memory size"),
    ],
)
def test_cli_bad_input_one_line_exit_2_nothing_written(tmp_path, args, message):
    out = run(*args, "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert out.returncode == 2
    assert out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and message in out.stderr
    assert out.stderr.startswith("scaling sweep: error:")
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "text, message",
    [
        ("colour = 1\n", "unknown key 'colour'"),
        ("[method.qlora]\nrank = []\n", "empty dial grid"),
        ('methods = ["nope"]\n', "unknown method 'nope'"),
        ("seq_len = [\n", "cannot parse"),
    ],
)
def test_cli_bad_spec(tmp_path, text, message):
    spec = write_spec(tmp_path / "bad.toml", text)
    out = run(str(spec), "--flops", "1e18", cwd=tmp_path)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert message in out.stderr
    assert not (tmp_path / "runs").exists()


def test_cli_out_dir_with_different_sweep(tmp_path):
    assert run("--flops", "1e18", "--out", "o", cwd=tmp_path).returncode == 0
    before = {f: f.read_bytes() for f in (tmp_path / "o").rglob("*") if f.is_file()}
    spec = write_spec(tmp_path / "other.toml", "seq_len = 512\n")
    out = run(str(spec), "--flops", "1e18", "--out", "o", cwd=tmp_path)
    assert out.returncode == 2 and "holds a different sweep" in out.stderr
    assert {f: f.read_bytes() for f in (tmp_path / "o").rglob("*") if f.is_file()} == before
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("x")
    out = run("--flops", "1e18", "--out", "junk", cwd=tmp_path)
    assert out.returncode == 2 and "not empty and holds no sweep" in out.stderr
    assert [f.name for f in (tmp_path / "junk").iterdir()] == ["file.txt"]


def test_cli_help_shows_example():
    out = run("--help")
    assert out.returncode == 0 and "example" in out.stdout and "--flops" in out.stdout


def test_fit_without_a_law_for_a_method_leaves_its_grid_alone():
    from scaling.sweep import load_fit

    fit = {
        "methods": {
            "ladder": {"optimal_params": {"A": 1e-2, "a": 0.5}},
            "qlora": {"optimal_params": None},
        }
    }
    assert load_fit(fit) == {"ladder": (1e-2, 0.5)}
    with pytest.raises(ScalingError, match=r"fit \(given as a dict\): methods.qlora"):
        load_fit({"methods": {"qlora": {"optimal_params": {"A": "x"}}}})


def test_run_ids_survive_new_dials_at_their_old_values():
    """``loss`` and ``optimizer`` came after the quickstart was first planned: at ``plain`` / ``adamw``
    (and one learning rate for every side width) they leave Ladder's ids as they were (these ids are
    from a plan made before they existed); QLoRA's reference defaults (prepare_kbit,
    paged_adamw_32bit, rsLoRA) are a different baseline, with new ids."""
    old_quickstart = dict(  # sweeps/quickstart.toml as it was: one backbone, dial grids
        backbones=["runs/backbones/tiny-llama-128"], budgets=[4e10, 1.2e11, 4e11],
        backbone_config={"runs/backbones/tiny-llama-128": tiny_config(128)},
        method={"ladder": {"reduction": [1, 2, 4, 8, 16]},
                "xladder": {"reduction": [1, 2, 4, 8, 16], "delta": 2},
                "qlora": {"rank": [1, 2, 4, 8, 32]}},
        dataset={"tokens": 5e5, "eval_sequences": 32}, optimizer={"lr_width_rule": "none"},
    )  # fmt: skip
    spec = sweep.load_spec(ROOT / "sweeps/quickstart.toml", **old_quickstart)
    p = sweep.build_plan(spec)
    ids = {r.run_id for r in p.runs}
    # The hash is the run's identity; the readable prefix has since gained the backbone tag.
    assert {"ladder-r1-tiny-llama-128-4e10-s0-4793e97f", "ladder-r2-tiny-llama-128-4e10-s0-f0e9b175",
            "xladder-r1-d2-tiny-llama-128-4e10-s0-27d6bbf3"} <= ids  # fmt: skip
    assert not any(i.endswith("-79dddb57") for i in ids)


def test_replanning_keeps_the_ids_a_directory_already_has(tmp_path):
    """A sweep planned before ids carried the backbone tag: a re-plan adopts its ids (same hash)
    instead of planning every run again."""
    import polars as pl

    spec = sweep.load_spec(methods=["ladder"], method={"ladder": {"reduction": [4, 8]}})
    p = sweep.build_plan(spec, [1e18])
    out = tmp_path / "old"
    sweep.write(p, out)
    old_ids = {}
    for r in p.runs:  # rename as an earlier version named them: no backbone tag
        old = r.run_id.replace("-qwen2.5-0.5b", "")
        (out / "runs" / r.run_id).rename(out / "runs" / old)
        old_ids[r.run_id] = old
    m = pl.read_parquet(out / "manifest.parquet")
    m.with_columns(pl.col("run_id").replace(old_ids)).write_parquet(out / "manifest.parquet")
    assert sweep.write(sweep.build_plan(spec, [1e18]), out) == []
    more = sweep.write(sweep.build_plan(spec, [1e18, 3e18]), out)
    assert more and all("-qwen2.5-0.5b-3e18-" in r.run_id for r in more)
    assert set(old_ids.values()) <= {p.name for p in (out / "runs").iterdir()}


def test_learning_rate_grid_every_budget_and_smallest_budget():
    base = dict(methods=["qlora"], method={"qlora": {"rank": [8, 16]}})
    every = sweep.build_plan(sweep.load_spec(**base, optimizer={"lr_grid": [0.5, 1.0, 2.0]}),
                             [1e18, 3e18])  # fmt: skip
    assert len(every.runs) == 2 * 2 * 3
    lrs = sorted({r.optimizer["lr"] for r in every.runs})
    assert lrs == pytest.approx([1e-4, 2e-4, 4e-4])
    assert {r.optimizer["lr_multiplier"] for r in every.runs} == {0.5, 1.0, 2.0}
    assert len({r.run_id for r in every.runs}) == 12 and "lr0.5" in every.runs[0].run_id
    assert "lr×0.5" in every.runs[0].dial
    smallest = sweep.load_spec(**base, optimizer={"lr_grid": [0.5, 1.0, 2.0],
                                                  "lr_protocol": "smallest_budget"})  # fmt: skip
    p = sweep.build_plan(smallest, [1e18, 3e18])
    at = {b: [r for r in p.runs if r.budget == b] for b in (1e18, 3e18)}
    assert len(at[1e18]) == 6 and [r.optimizer["lr_multiplier"] for r in at[3e18]] == [1.0, 1.0]
    assert any("no fitted best learning rate" in w for w in p.warnings)
    fitted = {"methods": {"qlora": {"optimal_params": None, "best_lr_multiplier": 2.0}}}
    p = sweep.build_plan(smallest, [1e18, 3e18], from_fit=fitted)
    assert {r.optimizer["lr_multiplier"] for r in p.runs if r.budget == 3e18} == {2.0}


def test_side_net_learning_rate_follows_its_width():
    spec = sweep.load_spec(methods=["ladder"], method={"ladder": {"reduction": [2, 4, 8]}})
    runs = sweep.build_plan(spec, [1e18]).runs
    by = {r.method_config["reduction"]: r.optimizer["lr"] for r in runs}
    assert by[4] == pytest.approx(2 * by[2]) and by[8] == pytest.approx(4 * by[2])
    flat = sweep.build_plan(spec.replace(optimizer=spec.optimizer.replace(lr_width_rule="none")),
                            [1e18]).runs  # fmt: skip
    assert {r.optimizer["lr"] for r in flat} == {3e-3}


def test_swept_dial_is_explicit():
    spec = sweep.load_spec(
        methods=["xladder"], method={"xladder": {"reduction": [4, 8], "delta": 2}}
    )
    runs = sweep.build_plan(spec, [1e18]).runs
    assert {r.dial_name for r in runs} == {"reduction"}  # its only axis
    two = {"xladder": {"reduction": [4, 8], "delta": [1, 2]}}  # its own dial among them: that one
    runs = sweep.build_plan(sweep.load_spec(methods=["xladder"], method=two), [1e18]).runs
    assert {r.dial_name for r in runs} == {"reduction"}
    named = {"xladder": {**two["xladder"], "dial": "delta"}}
    runs = sweep.build_plan(sweep.load_spec(methods=["xladder"], method=named), [1e18]).runs
    assert {r.dial_name for r in runs} == {"delta"}
    other = {"ladder": {"reduction": 8, "side_layers": [6, 12], "fusion": ["add", "replace"]}}
    with pytest.raises(ScalingError, match="name the swept one with dial"):
        sweep.load_spec(methods=["ladder"], method=other)
    with pytest.raises(ScalingError, match="must name one of its dials"):
        sweep.load_spec(methods=["xladder"], method={"xladder": {"dial": "width"}})
