"""scaling launch / status / cancel without a cluster: option parsing, the sbatch golden file,
executor selection, states from files, idempotency, the debug and local executors, bad input.

The jobs here run a stand-in for ``scaling.train.train`` (pickled by value, so the local executor's
fresh processes can load it); tests/test_slurm.py runs the real training on a real SLURM cluster."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import cloudpickle
import pytest

from scaling import cli as scaling_cli
from scaling import launch, sweep
from scaling.arch import tiny_config
from scaling.errors import ScalingError
from scaling.io import write_json
from scaling.launch import cli as launch_cli
from scaling.launch import executors, records, scheduler, status, submit
from scaling.launch import spec as launch_spec

GOLDEN = Path(__file__).parent / "golden" / "sbatch_array.sh"
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def fake_train(run: str, seconds: float = 0.0, status_: str = "success") -> dict:
    """Stands in for scaling.train.train: writes result.json (and metrics) like it does."""
    import time
    from pathlib import Path

    import polars as pl

    from scaling.io import write_json

    spec = json.loads((Path(run) / "spec.json").read_text())
    start = time.time()
    (Path(run) / "spans.txt").open("a").write(f"{start}\n")
    time.sleep(seconds)
    tokens = spec["tokens"]
    pl.DataFrame(
        {"kind": ["train", "eval"], "tokens": [tokens, tokens], "loss": [2.5, 2.25]}
    ).write_parquet(Path(run) / "metrics.parquet")
    result = {"status": status_, "error": None if status_ == "success" else "boom",
              "method": spec["method"], "tokens": tokens, "planned_tokens": tokens,
              "flops": tokens * spec["flops_per_token"], "wall_time_s": max(time.time() - start, 1.0),
              "final_eval_loss": 2.25}  # fmt: skip
    write_json(Path(run) / "result.json", result)
    (Path(run) / "spans.txt").open("a").write(f"{time.time()}\n")
    return result


def slow_train(run: str) -> dict:
    return fake_train(run, seconds=1.5)


def raising_train(run: str) -> dict:
    raise ScalingError("no such backbone")


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """The quickstart sweep at one budget: 6 planned runs (inline backbone config, no model)."""
    three = {"reduction": [2, 4, 8]}  # pinned here so the quickstart's own grid may change
    spec = sweep.load_spec(Path(__file__).parents[2] / "sweeps/quickstart.toml",
                           backbones=["runs/backbones/tiny-llama-128"],
                           backbone_config={"runs/backbones/tiny-llama-128": tiny_config(128)},
                           methods=["ladder", "xladder"], method={"ladder": three, "xladder": three})  # fmt: skip
    plan = sweep.build_plan(spec, [1e11])
    sweep.write(plan, tmp_path / "rd")
    return tmp_path / "rd"


def ids(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "runs").iterdir())


def cli(*args: str, capsys) -> tuple[int, str, str]:
    code = scaling_cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


# --------------------------------------------------------------------------------------------------
# Options


@pytest.mark.parametrize(("text", "want"), [("32GB", "32G"), ("32G", "32G"), ("500mb", "500M"),
                                           ("1.5TiB", "1536G"), ("0.5G", "512M"), ("64K", "64K")])  # fmt: skip
def test_slurm_mem(text, want):
    assert launch_spec.slurm_mem(text) == want


@pytest.mark.parametrize("text", ["32", "32XB", "-1G", "0G", "lots", "G"])
def test_slurm_mem_rejects(text):
    with pytest.raises(ScalingError, match="invalid memory size"):
        launch_spec.slurm_mem(text)


@pytest.mark.parametrize(("text", "minutes"), [("01:30:00", 90), ("00:03:00", 3), ("1-00:00:00", 1440),
                                              ("00:04:01", 5), ("48:00:00", 2880)])  # fmt: skip
def test_parse_time(text, minutes):
    assert launch_spec.parse_time(text) == minutes


@pytest.mark.parametrize(("text", "match"), [("90", "invalid time"), ("1:2", "invalid time"),
                                             ("00:61:00", "invalid time"), ("00:02:00", "too short")])  # fmt: skip
def test_parse_time_rejects(text, match):
    with pytest.raises(ScalingError, match=match):
        launch_spec.parse_time(text)


def test_launch_spec_validates_and_lists_keys():
    with pytest.raises(ScalingError, match="launch.executor must be one of slurm, local, debug"):
        launch.LaunchSpec(executor="k8s")
    with pytest.raises(ScalingError, match="unknown key 'partitions'.*did you mean 'partition'"):
        launch.LaunchSpec.from_dict({"partitions": "gpu"})
    with pytest.raises(ScalingError, match="invalid memory"):
        launch.LaunchSpec(mem="lots")
    with pytest.raises(ScalingError, match="launch.throughput must be a positive number"):
        launch.LaunchSpec(throughput=-1.0)


def test_options_merge_spec_launch_table_under_flags(run_dir):
    meta = json.loads((run_dir / "sweep.json").read_text())
    meta["spec"]["launch"] = {
        "partition": "gpu",
        "mem": "16GB",
        "slurm_extra": {"mail-type": "END"},
    }
    write_json(run_dir / "sweep.json", meta)
    opts = submit.resolve_options(run_dir, {"mem": "32GB", "partition": None,
                                            "slurm_extra": {"mail-user": "a@b"}})  # fmt: skip
    assert (opts.partition, opts.mem, opts.time) == ("gpu", "32GB", "auto")
    assert opts.slurm_extra == {"mail-type": "END", "mail-user": "a@b"}


def test_sbatch_script_golden():
    """The exact script submitit submits for an array (SCALING_UPDATE_GOLDEN=1 rewrites it)."""
    opts = launch.LaunchSpec(partition="gpu", account="lab", qos="high", constraint="a100",
                             gpus_per_node=1, cpus_per_task=8, mem="32GB", time="01:30:00",
                             array_parallelism=4, slurm_extra={"mail-type": "END"})  # fmt: skip
    text = executors.sbatch_script(opts, folder="/RUN_DIR/launch/SUBMISSION", tasks=6,
                                name="scaling-quickstart", minutes=launch_spec.parse_time(opts.time),
                                python="/venv/bin/python")  # fmt: skip
    if os.environ.get("SCALING_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()
    assert "#SBATCH --array=0-5%4" in text and "#SBATCH --signal=USR2@90" in text


# --------------------------------------------------------------------------------------------------
# Executor selection


def test_default_executor_without_slurm_commands_is_local(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert "not on PATH" in scheduler.slurm_problem()
    assert scheduler.default_executor() == "local"


def test_default_executor_without_configuration_is_local(monkeypatch, tmp_path):
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "missing.conf"))
    assert scheduler.default_executor() == "local"


def test_slurm_unreachable_is_one_line_error_and_records_nothing(run_dir, monkeypatch, tmp_path,
                                                                capsys):  # fmt: skip
    conf = tmp_path / "slurm.conf"  # a controller nobody runs
    conf.write_text("ClusterName=none\nSlurmctldHost=localhost\nSlurmctldPort=6999\n")
    monkeypatch.setenv("SLURM_CONF", str(conf))
    code, out, err = cli("launch", str(run_dir), "--executor", "slurm", capsys=capsys)
    assert code == 2 and out == ""
    assert (
        err.startswith("scaling launch: error: cannot submit to SLURM: ") and err.count("\n") == 1
    )
    assert not (run_dir / "launch").exists()
    assert not list(run_dir.glob("runs/*/launch.json"))


# --------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(("args", "match"), [
    (["--mem", "32XB"], "invalid memory size '32XB'"),
    (["--time", "2h"], "invalid time '2h'"),
    (["--only", "nope-1e11-s0-00000000"], "--only names 1 run(s) not in"),
    (["--slurm-extra", "mail-type"], "--slurm-extra: expected KEY=VALUE"),
])  # fmt: skip
def test_launch_bad_input(run_dir, capsys, args, match):
    code, out, err = cli("launch", str(run_dir), "--executor", "debug", *args, capsys=capsys)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("scaling launch: error: ") and match in err
    assert not list(run_dir.glob("runs/*/launch.json"))


@pytest.mark.parametrize("command", ["launch", "status", "cancel"])
def test_run_dir_without_manifest(tmp_path, capsys, command):
    code, _, err = cli(command, str(tmp_path), capsys=capsys)
    assert code == 2 and "has no manifest.parquet" in err and err.count("\n") == 1
    code, _, err = cli(command, str(tmp_path / "missing"), capsys=capsys)
    assert code == 2 and "run directory not found" in err


def test_usage_errors_exit_2(capsys):
    assert scaling_cli.main(["launch"]) == 2
    assert scaling_cli.main(["frobnicate"]) == 2
    assert scaling_cli.main(["status", "--help"]) == 0
    assert "scaling status" in capsys.readouterr().out


def test_commands_table_shape():
    for name, (help_, example, add_arguments, run) in launch_cli.COMMANDS.items():
        assert example.startswith(f"scaling {name} ") and help_ and callable(add_arguments)
        assert callable(run)


# --------------------------------------------------------------------------------------------------
# States from files


def _record(run_path: Path, **kw) -> dict:
    rec = {"run_id": run_path.name, "executor": "slurm", "job_id": "7_0", "folder": "/nonexistent",
           "submitted_at": time.time() - 10, "cancelled_at": None} | kw  # fmt: skip
    write_json(run_path / records.RECORD, rec)
    return rec


@pytest.mark.parametrize(("result", "slurm", "kw", "want"), [
    (None, {}, None, "planned"),
    ({"status": "success"}, {}, None, "success"),                       # trained by hand
    (None, {"7_0": "PENDING"}, {}, "queued"),
    (None, {"7_0": "RUNNING"}, {}, "running"),
    ({"status": "cancelled", "signal": "SIGUSR2"}, {"7_0": "PENDING"}, {}, "queued"),  # requeued
    ({"status": "cancelled", "signal": "SIGUSR2"}, {}, {}, "timed-out"),
    ({"status": "cancelled", "signal": "SIGTERM"}, {"7_0": "CANCELLED"}, {}, "cancelled"),
    (None, {"7_0": "TIMEOUT"}, {}, "timed-out"),
    (None, {"7_0": "CANCELLED"}, {}, "cancelled"),
    (None, {}, {"cancelled_at": 1.0}, "cancelled"),                     # cancelled while pending
    (None, {"7_0": "OUT_OF_MEMORY"}, {}, "failed"),
    (None, {}, {}, "failed"),                                           # gone without a result
    (None, None, {}, "unknown"),                                        # squeue did not answer
    ({"status": "diverged"}, None, {}, "diverged"),
])  # fmt: skip
def test_run_state_rules(run_dir, result, slurm, kw, want):
    path = run_dir / "runs" / ids(run_dir)[0]
    if result is not None:
        write_json(path / "result.json", result)
    record = _record(path, **kw) if kw is not None else None
    assert status.run_state(path, record, result, None, slurm)[0] == want


def test_result_older_than_submission_gives_progress_not_state(run_dir):
    path = run_dir / "runs" / ids(run_dir)[0]
    write_json(path / "result.json", {"status": "failed", "tokens": 512, "error": "old"})
    os.utime(path / "result.json", (time.time() - 100, time.time() - 100))
    record = _record(path, executor="local", workers=[{"pid": os.getpid(), "create_time": None}])
    assert status.run_state(path, record, {"status": "failed"}, None, {})[0] == "queued"
    os.utime(path / "result.json")  # written by the new attempt
    assert status.run_state(path, record, {"status": "failed"}, None, {})[0] == "failed"


# --------------------------------------------------------------------------------------------------
# Time limits


def test_time_auto_from_throughput_and_measured(run_dir):
    runs = status.collect(run_dir).runs
    minutes, est, source = submit.time_limits(run_dir, runs, launch.LaunchSpec(throughput=1e8))
    biggest = max(r.flops_planned for r in runs)
    assert max(est.values()) == pytest.approx(biggest / 1e8 * 1.5 + submit.STARTUP_S)
    assert (
        minutes == max(submit.MIN_TIME_MIN, -(-max(est.values()) // 60))
        and "--throughput" in source
    )
    minutes, est, source = submit.time_limits(run_dir, runs, launch.LaunchSpec())
    assert (minutes, est) == (60, {}) and "no throughput figure" in source
    fake_train(str(run_dir / "runs" / runs[0].run_id))  # a finished run measures the throughput
    minutes, est, source = submit.time_limits(run_dir, runs, launch.LaunchSpec())
    assert "measured" in source and len(est) == len(runs)
    assert submit.time_limits(run_dir, runs, launch.LaunchSpec(time="02:00:00"))[0] == 120


# --------------------------------------------------------------------------------------------------
# Debug and local executors: launching, idempotency, cancelling


def test_debug_launch_is_idempotent_and_force_archives(run_dir, capsys):
    out = launch.launch(run_dir, {"executor": "debug"}, target=fake_train)
    assert sorted(out.run_ids) == ids(run_dir) and out.submission
    s = status.collect(run_dir)
    assert {r.state for r in s.runs} == {"success"}
    rec = json.loads((run_dir / "runs" / ids(run_dir)[0] / "launch.json").read_text())
    assert rec["executor"] == "debug" and rec["submission"] == out.submission
    sub = json.loads((run_dir / "launch" / out.submission / "submission.json").read_text())
    assert sub["run_ids"] == out.run_ids and sub["options"]["executor"] == "debug"

    again = launch.launch(run_dir, {"executor": "debug"}, target=fake_train)
    assert again.run_ids == [] and again.skipped == {"success": 6}
    code, text, _ = cli("launch", str(run_dir), "--executor", "debug", capsys=capsys)
    assert code == 0 and "nothing to launch" in text and "--force" in text

    one = ids(run_dir)[0]
    forced = launch.launch(
        run_dir, {"executor": "debug"}, only=[one], force=True, target=fake_train
    )
    assert forced.run_ids == [one]
    assert list((run_dir / "runs" / one / "archive").glob("*/result.json"))
    rec = json.loads((run_dir / "runs" / one / "launch.json").read_text())
    assert rec["history"][0]["submission"] == out.submission


def test_debug_failures_show_with_their_error(run_dir):
    launch.launch(run_dir, {"executor": "debug"}, only=ids(run_dir)[:1], target=raising_train)
    r = status.collect(run_dir).runs[0]
    assert r.state == "failed" and "no such backbone" in r.error
    text = status.render(status.collect(run_dir))
    assert "errors:" in text and "ScalingError: no such backbone" in text
    assert "summary: 5 planned, 1 failed" in text
    # failed runs are launched again
    assert sorted(launch.launch(run_dir, {"executor": "debug"}, target=fake_train).run_ids) == ids(
        run_dir
    )


def test_local_workers_bounded_cancel_and_relaunch(run_dir, capsys):
    out = launch.launch(run_dir, {"executor": "local", "array_parallelism": 2, "time": "00:10:00"},
                        target=slow_train)  # fmt: skip
    assert len(out.run_ids) == 6 and out.job_ids == ["local"] * 6
    last = out.run_ids[-1]  # the last run a worker claims
    deadline = time.monotonic() + 30
    while status.collect(run_dir, [last]).runs[0].state != "queued":  # workers still starting
        assert time.monotonic() < deadline
        time.sleep(0.1)
    code, text, _ = cli("cancel", str(run_dir), "--only", last, capsys=capsys)
    assert code == 0 and f"cancelled 1 run(s): {last}" in text
    s = launch.wait(run_dir, poll_s=0.3, timeout_s=90)
    states = {r.run_id: r.state for r in s.runs}
    assert states.pop(last) == "cancelled" and set(states.values()) == {"success"}
    spans = sorted(  # (start, +1), (end, -1) of every training: never more than 2 at once
        (float(t), sign)
        for rid in states
        for t, sign in zip(
            (run_dir / "runs" / rid / "spans.txt").read_text().split(), (1, -1), strict=True
        )
    )
    running = [sum(sign for _, sign in spans[: i + 1]) for i in range(len(spans))]
    assert max(running) <= 2
    again = launch.launch(run_dir, {"executor": "local", "time": "00:10:00"}, target=fake_train)
    assert again.run_ids == [last] and again.skipped == {"success": 5}
    assert launch.wait(run_dir, [last], poll_s=0.3, timeout_s=60).runs[0].state == "success"


def test_status_cli_table_and_json(run_dir, capsys):
    launch.launch(run_dir, {"executor": "debug"}, only=ids(run_dir)[:2], target=fake_train)
    code, text, _ = cli("status", str(run_dir), capsys=capsys)
    assert code == 0
    assert text.splitlines()[0] == f"sweep quickstart in {run_dir}: 6 run(s)"
    assert "tokens done/planned" in text and "100%" in text and "2.5000" in text
    assert "summary: 4 planned, 2 success; compute " in text
    code, text, _ = cli("status", str(run_dir), "--json", capsys=capsys)
    data = json.loads(text)
    assert data["summary"]["counts"] == {"planned": 4, "success": 2}
    assert data["summary"]["flops_planned"] > data["summary"]["flops_done"] > 0
    assert {"run_id", "state", "job_id", "tokens_done", "last_loss", "method", "dial"} <= set(
        data["runs"][0]
    )


def test_dry_run_writes_nothing(run_dir, capsys):
    code, text, _ = cli("launch", str(run_dir), "--executor", "slurm", "--dry-run", "--throughput",
                        "1e9", "--partition", "gpu", capsys=capsys)  # fmt: skip
    assert code == 0 and "dry run: would submit 6 run(s) to slurm" in text
    assert "#SBATCH --partition=gpu" in text and "#SBATCH --array=0-5%6" in text
    assert not (run_dir / "launch").exists()


# --------------------------------------------------------------------------------------------------
# Time limits that fit the runs; GPUs


def test_time_groups_bound_each_limit_by_its_runs():
    need = {"a": 100.0, "b": 390.0, "c": 1000.0, "d": 5000.0, "e": 50000.0, "f": 60000.0}
    groups = submit.time_groups(need, list(need) + ["g"])  # g: no estimate
    assert [ids for _, ids in groups] == [["a", "b"], ["c"], ["d"], ["e", "f", "g"]]
    for limit, ids in groups:
        known = [need[r] for r in ids if r in need]
        assert limit * 60 >= max(known)  # every run fits its array's limit
        assert limit <= max(submit.MIN_TIME_MIN, -(-min(known) * submit.GROUP_FACTOR // 60))
    assert submit.time_groups({}, ["x"]) == [(submit.MIN_TIME_MIN, ["x"])]
    assert submit.time_groups({}, []) == []


@pytest.fixture
def wide_run_dir(tmp_path) -> Path:
    """Two budgets 20× apart: runs whose time needs differ by as much."""
    spec = sweep.load_spec(Path(__file__).parents[2] / "sweeps/quickstart.toml",
                           backbones=["runs/backbones/tiny-llama-128"],
                           backbone_config={"runs/backbones/tiny-llama-128": tiny_config(128)},
                           methods=["ladder"], method={"ladder": {"reduction": [4]}})  # fmt: skip
    sweep.write(sweep.build_plan(spec, [1.5e10, 3e11]), tmp_path / "wide")
    return tmp_path / "wide"


def test_dry_run_groups_runs_into_arrays_by_their_own_need(wide_run_dir, capsys):
    code, text, _ = cli("launch", str(wide_run_dir), "--executor", "slurm", "--dry-run",
                        "--throughput", "1e6", capsys=capsys)  # fmt: skip
    assert code == 0 and "would submit 2 run(s) to slurm in 2 arrays" in text
    out = launch.launch(wide_run_dir, {"executor": "slurm", "throughput": 1e6}, dry_run=True)
    (short, long_) = out.arrays
    assert short["time_limit_min"] < long_["time_limit_min"] == out.time_limit_min
    for a in out.arrays:
        (rid,) = a["run_ids"]
        assert a["time_limit_min"] == max(submit.MIN_TIME_MIN, -(-out.estimates_s[rid] // 60))
        assert f"#SBATCH --time={a['time_limit_min']}" in a["script"]
    assert "time limits" in text and "by array" in text


def test_each_array_records_its_own_limit(wide_run_dir, monkeypatch):
    calls = []

    def fake_submit(executor, opts, folder, paths, name, minutes, target):
        calls.append((len(paths), minutes))
        job = 100 + len(calls)
        return [f"{job}_{i}" for i in range(len(paths))], {"jobs": []}

    monkeypatch.setattr(submit, "slurm_problem", lambda: None)
    monkeypatch.setattr(submit, "submit", fake_submit)
    out = launch.launch(wide_run_dir, {"executor": "slurm", "throughput": 1e6})
    assert len(calls) == 2 and calls[0][1] < calls[1][1]
    assert out.job_ids == ["101_0", "102_0"]
    for a in out.arrays:
        record = json.loads((wide_run_dir / "runs" / a["run_ids"][0] / "launch.json").read_text())
        assert record["time_limit_min"] == a["time_limit_min"] and record["array_index"] == 0
        assert record["job_id"] == a["job_ids"][0]


def _plan_for_gpu(run_dir: Path) -> None:
    meta = json.loads((run_dir / "sweep.json").read_text())
    meta["spec"]["constraints"]["gpu_mem"] = "12GB"
    write_json(run_dir / "sweep.json", meta)


def test_gpu_sweep_without_gpus_is_refused_unless_allowed(run_dir, capsys):
    _plan_for_gpu(run_dir)
    code, _, err = cli("launch", str(run_dir), "--executor", "slurm", "--dry-run", capsys=capsys)
    assert code == 2 and "planned for a GPU (gpu_mem = 12GB)" in err and "--gpus-per-node" in err
    assert len(err.strip().splitlines()) == 1 and not (run_dir / "launch").exists()
    for extra in (["--gpus-per-node", "1"], ["--allow-cpu"], ["--slurm-extra", "gres=gpu:1"]):
        code, text, _ = cli("launch", str(run_dir), "--executor", "slurm", "--dry-run", *extra,
                            capsys=capsys)  # fmt: skip
        assert code == 0 and "warning" not in text
    # The local executor uses the machine it runs on: nothing to refuse.
    assert cli("launch", str(run_dir), "--executor", "local", "--dry-run", capsys=capsys)[0] == 0


def test_more_gpus_than_a_run_uses_is_a_warning(run_dir, capsys):
    code, text, _ = cli("launch", str(run_dir), "--executor", "slurm", "--dry-run",
                        "--gpus-per-node", "4", capsys=capsys)  # fmt: skip
    assert code == 0 and "warning: --gpus-per-node 4: each run trains on one GPU" in text
    assert "3 of every task's GPUs would sit idle" in text


def test_status_shows_eta_of_a_running_run(run_dir, capsys):
    import polars as pl

    from scaling.io import exclusive_lock
    from scaling.runspec import RUN_LOCK

    rid = ids(run_dir)[0]
    path = run_dir / "runs" / rid
    planned = json.loads((path / "spec.json").read_text())["tokens"]
    pl.DataFrame({"kind": ["train"] * 3, "tokens": [100, 200, planned // 2],
                  "loss": [3.0, 2.9, 2.8], "tokens_per_s": [50.0, 100.0, 100.0]}).write_parquet(
        path / "metrics.parquet")  # fmt: skip
    with exclusive_lock(path / RUN_LOCK, "the run"):
        r = next(r for r in status.collect(run_dir).runs if r.run_id == rid)
        assert r.state == "running"
        assert r.eta_s == pytest.approx((planned - planned // 2) / 100.0)
        code, text, _ = cli("status", str(run_dir), capsys=capsys)
    assert code == 0 and " eta" in text.splitlines()[2]
    assert f"ends in ~{status.fmt_seconds(r.eta_s)}" in text
    pl.DataFrame({"kind": ["train"], "tokens": [planned], "loss": [2.7],
                  "tokens_per_s": [100.0]}).write_parquet(path / "metrics.parquet")  # fmt: skip
    with exclusive_lock(path / RUN_LOCK, "the run"):  # every token done: evaluating, no ETA
        r = next(r for r in status.collect(run_dir).runs if r.run_id == rid)
    assert r.state == "running" and r.eta_s is None
    assert [status.fmt_seconds(x) for x in (None, 42, 1020, 11100, 187200)] == [
        "-", "42s", "17m", "3h05m", "2d04h"]  # fmt: skip
