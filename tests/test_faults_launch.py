"""Nothing lost, ever: the launch / status / sweep side: each test reproduces one defect (it failed
before the fix) and pins the fix.

- 2: a run being trained showed as ``planned`` and would have been submitted again;
- 4: two concurrent ``scaling sweep`` calls lost one budget's runs from the manifest;
- 5: an orphaned local worker's runs, and debug runs still training, showed as ``failed``;
- tracebacks: bad paths and damaged or mistyped files give one line (or one ``unreadable`` run).

A running trainer is simulated by holding the run's lock (:data:`scaling.runspec.RUN_LOCK`), as
``scaling train`` does for its whole life: in a subprocess where ``cancel`` must be able to signal it,
in-process (a lock held here is seen by ``is_locked`` here too) inside stand-in trainers."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cloudpickle
import polars as pl
import pytest

from scaling import cli as scaling_cli
from scaling import io, launch, sweep
from scaling.arch import tiny_config
from scaling.errors import ScalingError
from scaling.io import write_json
from scaling.launch import status
from scaling.runspec import RUN_LOCK, SWEEP_LOCK
from scaling.sweep import rundir

ROOT = Path(__file__).resolve().parents[1]
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # local workers load these trainers


def fake_train(run: str, seconds: float = 0.0) -> dict:
    """Stands in for scaling.train.train: writes metrics.parquet and result.json like it does."""
    spec = json.loads((Path(run) / "spec.json").read_text())
    with (Path(run) / "spans.txt").open("a") as f:
        f.write(f"{time.time()}\n")
    time.sleep(seconds)
    tokens = spec["tokens"]
    pl.DataFrame({"kind": ["train", "eval"], "tokens": [tokens, tokens], "loss": [2.5, 2.25]}
                 ).write_parquet(Path(run) / "metrics.parquet")  # fmt: skip
    result = {"status": "success", "error": None, "method": spec["method"], "tokens": tokens,
              "flops": tokens * spec["flops_per_token"], "wall_time_s": 1.0, "final_eval_loss": 2.25}  # fmt: skip
    write_json(Path(run) / "result.json", result)
    with (Path(run) / "spans.txt").open("a") as f:
        f.write(f"{time.time()}\n")
    return result


def locking_train(run: str, seconds: float = 4.0) -> dict:
    """A trainer that, like the real one, holds the run's lock for its whole life."""
    from scaling import io

    with io.exclusive_lock(Path(run) / ".train.lock", f"run {Path(run).name}"):
        return fake_train(run, seconds)


def observing_train(run: str) -> dict:
    """A locking trainer that records what status and a dry-run launch say while it trains."""
    from scaling import io, launch
    from scaling.launch import status

    with io.exclusive_lock(Path(run) / ".train.lock", f"run {Path(run).name}"):
        sweep_dir = Path(run).parents[1]
        seen = {r.run_id: r.state for r in status.collect(sweep_dir).runs}
        again = launch.launch(sweep_dir, {"executor": "debug"}, dry_run=True).run_ids
        (Path(run) / "observed.json").write_text(json.dumps({"states": seen, "again": again}))
        return fake_train(run)


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """The quickstart sweep at one budget: 6 planned runs (inline backbone config, no model)."""
    three = {"reduction": [2, 4, 8]}
    spec = sweep.load_spec(ROOT / "sweeps/quickstart.toml",
                           backbones=["runs/backbones/tiny-llama-128"],
                           backbone_config={"runs/backbones/tiny-llama-128": tiny_config(128)},
                           methods=["ladder", "xladder"], method={"ladder": three, "xladder": three})  # fmt: skip
    sweep.write(sweep.build_plan(spec, [1e11]), tmp_path / "rd")
    return tmp_path / "rd"


def ids(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "runs").iterdir())


def cli(*args: str, capsys) -> tuple[int, str, str]:
    code = scaling_cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def hold_lock(lock: Path, pid_line: str | None = None) -> subprocess.Popen:
    """A process holding ``lock`` as a trainer does (optionally rewriting the pid it records)."""
    code = (
        "import sys, time; from scaling import io\n"
        "with io.exclusive_lock(sys.argv[1], 'run'):\n"
        "    if len(sys.argv) > 2: open(sys.argv[1], 'w').write(sys.argv[2] + '\\n')\n"
        "    print('held', flush=True); time.sleep(120)"
    )
    args = [sys.executable, "-c", code, str(lock), *([pid_line] if pid_line else [])]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "held"
    return proc


def outputs(out: Path) -> dict[Path, bytes]:
    """Every file of a sweep directory but the lock (which records its latest holder)."""
    return {f: f.read_bytes() for f in out.rglob("*") if f.is_file() and f.name != SWEEP_LOCK}


def until(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


# --------------------------------------------------------------------------------------------------
# Defect 2: a run being trained looked planned, and launch would have submitted it again


def test_defect_2_locked_run_shows_running_and_is_never_resubmitted(run_dir, capsys):
    busy, *rest = ids(run_dir)
    # A stale record says its last submission failed long ago: the lock still wins.
    write_json(run_dir / "runs" / busy / "launch.json",
               {"run_id": busy, "executor": "local", "job_id": None, "folder": "/nonexistent",
                "submitted_at": time.time() - 3600, "cancelled_at": None, "workers": []})  # fmt: skip
    proc = hold_lock(run_dir / "runs" / busy / RUN_LOCK)
    try:
        r = status.collect(run_dir, [busy]).runs[0]
        assert (r.state, r.error) == ("running", None)
        assert r.pid == proc.pid
        code, text, _ = cli("status", str(run_dir), capsys=capsys)
        assert code == 0 and f"pid {proc.pid}" in text and "5 planned, 1 running" in text

        dry = launch.launch(run_dir, {"executor": "debug"}, dry_run=True)
        assert busy not in dry.run_ids and dry.skipped == {"running": 1}
        code, text, _ = cli("launch", str(run_dir), "--executor", "debug", "--dry-run",
                            capsys=capsys)  # fmt: skip
        assert code == 0 and "would submit 5 run(s)" in text and "skipped: 1 running" in text

        out = launch.launch(run_dir, {"executor": "debug"}, target=fake_train)
        assert sorted(out.run_ids) == rest and out.skipped == {"running": 1}
        assert not (run_dir / "runs" / busy / "spans.txt").exists()  # never trained twice
        forced = launch.launch(run_dir, {"executor": "debug"}, force=True, dry_run=True)
        assert busy not in forced.run_ids  # --force re-runs finished runs, never a running one
    finally:
        proc.kill()
        proc.wait()
    assert status.collect(run_dir, [busy]).runs[0].state == "failed"  # the lock died with it


def test_defect_2_cancel_signals_the_trainer_holding_the_lock(run_dir, capsys):
    busy = ids(run_dir)[0]
    proc = hold_lock(run_dir / "runs" / busy / RUN_LOCK)
    try:
        code, text, err = cli("cancel", str(run_dir), capsys=capsys)
        assert (code, err) == (0, "") and text.strip() == f"cancelled 1 run(s): {busy}"
        assert proc.wait(timeout=10) == -signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()
    assert not (run_dir / "runs" / busy / "launch.json").exists()  # no record is invented


def test_defect_2_cancel_refuses_a_trainer_it_cannot_signal(run_dir, capsys):
    """A holder that is not a process here holding the lock (e.g. on another node) is never
    signalled by pid: the command refuses in one line and cancels nothing."""
    busy = ids(run_dir)[0]
    proc = hold_lock(run_dir / "runs" / busy / RUN_LOCK, pid_line="999999999")
    try:
        code, out, err = cli("cancel", str(run_dir), capsys=capsys)
        assert code == 2 and out == "" and err.count("\n") == 1
        assert "cannot cancel 1 run(s)" in err and "pid 999999999" in err
        assert proc.poll() is None
        assert status.collect(run_dir, [busy]).runs[0].pid == 999999999
    finally:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------------------------------
# Defect 4: concurrent planners lost runs from the manifest


def _all_runs_listed(out: Path) -> tuple[set[str], set[str]]:
    listed = set(pl.read_parquet(out / "manifest.parquet")["run_id"].to_list())
    return listed, {p.name for p in (out / "runs").iterdir()}


def test_defect_4_concurrent_replans_lose_no_runs(tmp_path, monkeypatch):
    out = tmp_path / "out"
    spec = sweep.load_spec()
    sweep.write(sweep.build_plan(spec, [1e18]), out)
    plan_a, plan_b = sweep.build_plan(spec, [1e18, 3e18]), sweep.build_plan(spec, [1e18, 1e19])
    # Planner A stops just before it writes the manifest, long enough for B to run meanwhile.
    reached, release, original = threading.Event(), threading.Event(), rundir.write_parquet

    def slow_write(frame, path):
        if threading.current_thread().name == "A" and not reached.is_set():
            reached.set()
            release.wait(30)
        original(frame, path)

    monkeypatch.setattr(rundir, "write_parquet", slow_write)
    errors: list[BaseException] = []

    def plan(p):
        try:
            sweep.write(p, out)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    a = threading.Thread(target=plan, args=(plan_a,), name="A")
    b = threading.Thread(target=plan, args=(plan_b,), name="B")
    a.start()
    assert reached.wait(30)
    b.start()
    time.sleep(0.5)
    b_waited = b.is_alive()  # for A's lock, instead of writing beside it
    release.set()
    a.join(60)
    b.join(60)
    assert not errors, errors
    listed, on_disk = _all_runs_listed(out)
    assert on_disk <= listed  # no run directory without its manifest row
    assert listed == {r.run_id for p in (plan_a, plan_b) for r in p.runs}
    assert json.loads((out / "sweep.json").read_text())["budgets"] == [1e18, 3e18, 1e19]
    assert b_waited


def test_defect_4_planner_waits_for_the_lock_then_refuses_in_one_line(tmp_path, monkeypatch):
    out = tmp_path / "out"
    spec = sweep.load_spec()
    sweep.write(sweep.build_plan(spec, [1e18]), out)
    before = outputs(out)
    monkeypatch.setattr(rundir, "SWEEP_WAIT_S", 0.3, raising=False)
    with io.exclusive_lock(out / SWEEP_LOCK, "a planner"):
        with pytest.raises(ScalingError, match=f"another `scaling sweep` \\(pid {os.getpid()}\\)"):
            sweep.write(sweep.build_plan(spec, [1e18, 3e18]), out)
    assert outputs(out) == before


def test_defect_4_interrupted_plans_are_completed_and_strays_adopted(run_dir, capsys):
    """A row whose spec.json is missing (a plan interrupted after the manifest) is shown, skipped by
    launch and written by the next plan; a run folder without a row (left by the old race) is adopted
    by the next plan of its budget, with everything in it kept."""
    spec = json.loads((run_dir / "sweep.json").read_text())
    first, *_ = ids(run_dir)
    (run_dir / "runs" / first / "spec.json").unlink()
    r = status.collect(run_dir, [first]).runs[0]
    assert r.state == "unreadable" and "no runs/" in r.error and "scaling sweep" in r.error
    assert first not in launch.launch(run_dir, {"executor": "debug"}, dry_run=True).run_ids

    three = {"reduction": [2, 4, 8]}
    sweep_spec = sweep.load_spec(ROOT / "sweeps/quickstart.toml",
                                 backbones=["runs/backbones/tiny-llama-128"],
                                 backbone_config={"runs/backbones/tiny-llama-128": tiny_config(128)},
                                 methods=["ladder", "xladder"], method={"ladder": three, "xladder": three})  # fmt: skip
    assert spec["spec_hash"] == sweep.build_plan(sweep_spec, [1e11]).identity
    stray = sweep.build_plan(sweep_spec, [3e11]).runs[0]  # as if its row had been lost
    write_json(run_dir / "runs" / stray.run_id / "spec.json", stray.to_json())
    (run_dir / "runs" / stray.run_id / "result.json").write_text('{"status": "success"}\n')

    written = sweep.write(sweep.build_plan(sweep_spec, [1e11, 3e11]), run_dir)
    assert first in {r.run_id for r in written}
    assert (run_dir / "runs" / first / "spec.json").is_file()
    assert status.collect(run_dir, [first]).runs[0].state == "planned"
    listed, on_disk = _all_runs_listed(run_dir)
    assert stray.run_id in listed and on_disk == listed
    kept = (run_dir / "runs" / stray.run_id / "result.json").read_text()
    assert kept == '{"status": "success"}\n'


# --------------------------------------------------------------------------------------------------
# Defect 5: liveness from the lock (and worker records), not from the controller's pid


def test_defect_5_orphaned_local_worker_keeps_its_runs(run_dir):
    two = ids(run_dir)[:2]
    out = launch.launch(run_dir, {"executor": "local", "time": "00:10:00"}, only=two,
                        target=locking_train)  # fmt: skip
    first, second = out.run_ids
    rec = json.loads((run_dir / "runs" / first / "launch.json").read_text())
    controller = rec["workers"][0]["pid"]
    until(lambda: io.is_locked(run_dir / "runs" / first / RUN_LOCK), what="the first run to start")
    os.kill(controller, signal.SIGKILL)  # the submitit controller dies; its worker goes on
    s = {r.run_id: r for r in status.collect(run_dir, two).runs}
    assert s[second].state == "queued", s[second].error
    assert s[first].state == "running" and s[first].pid not in (None, controller)
    again = launch.launch(run_dir, {"executor": "local", "time": "00:10:00"}, only=two,
                          target=fake_train)  # fmt: skip
    assert again.run_ids == [] and again.skipped == {"running": 1, "queued": 1}
    until(lambda: {r.state for r in status.collect(run_dir, two).runs} == {"success"},
          timeout=90, what="the orphaned worker to finish")  # fmt: skip
    for rid in two:  # each trained exactly once: one start and one end
        assert len((run_dir / "runs" / rid / "spans.txt").read_text().split()) == 2


def test_defect_5_debug_runs_show_running_while_they_run(run_dir):
    out = launch.launch(run_dir, {"executor": "debug"}, target=observing_train)
    order = out.run_ids
    for i, rid in enumerate(order):
        seen = json.loads((run_dir / "runs" / rid / "observed.json").read_text())
        want = {**dict.fromkeys(order[:i], "success"), rid: "running",
                **dict.fromkeys(order[i + 1:], "queued")}  # fmt: skip
        assert seen["states"] == want
        assert seen["again"] == []  # a launch meanwhile would submit none of them
    assert {r.state for r in status.collect(run_dir).runs} == {"success"}


# --------------------------------------------------------------------------------------------------
# Tracebacks instead of one line


def test_tracebacks_sweep_out_under_a_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("mine\n")
    code, out, err = cli("sweep", "--flops", "1e18", "--out", str(tmp_path / "afile" / "sub"),
                         capsys=capsys)  # fmt: skip
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("scaling sweep: error: cannot create output directory")
    assert (tmp_path / "afile").read_text() == "mine\n"
    assert sorted(os.listdir(tmp_path)) == ["afile"]


def test_tracebacks_sweep_read_only_parent(tmp_path, capsys, monkeypatch):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    if os.geteuid() == 0:  # root ignores permissions: make creating anything in it fail as well
        real = os.mkdir

        def mkdir(path, *args, **kwargs):
            if Path(path).parent == parent:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real(path, *args, **kwargs)

        monkeypatch.setattr(os, "mkdir", mkdir)
    try:
        code, out, err = cli("sweep", "--flops", "1e18", "--out", str(parent / "out"),
                             capsys=capsys)  # fmt: skip
    finally:
        parent.chmod(0o755)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "cannot create output directory" in err and "Permission denied" in err
    assert list(parent.iterdir()) == []


@pytest.mark.parametrize(("damage", "message"), [
    (lambda m: m.write_bytes(b"PAR1 not really parquet"), "unreadable manifest"),
    (lambda m: pl.read_parquet(m).drop("run_id").write_parquet(m), "has no run_id column"),
])  # fmt: skip
def test_tracebacks_sweep_replan_over_a_damaged_manifest(tmp_path, capsys, damage, message):
    out = tmp_path / "out"
    assert cli("sweep", "--flops", "1e18", "--out", str(out), capsys=capsys)[0] == 0
    damage(out / "manifest.parquet")
    before = outputs(out)
    code, text, err = cli("sweep", "--flops", "1e18", "3e18", "--out", str(out), capsys=capsys)
    assert code == 2 and text == "" and err.count("\n") == 1 and message in err
    assert outputs(out) == before


@pytest.mark.parametrize("command", ["status", "launch", "cancel"])
def test_tracebacks_manifest_without_run_id(run_dir, capsys, command):
    pl.read_parquet(run_dir / "manifest.parquet").drop("run_id").write_parquet(
        run_dir / "manifest.parquet"
    )
    extra = ["--executor", "debug", "--dry-run"] if command == "launch" else []
    code, out, err = cli(command, str(run_dir), *extra, capsys=capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and "has no run_id column" in err


def _record(**kw) -> dict:
    return {"executor": "debug", "job_id": "debug-0", "folder": "/nonexistent",
            "submitted_at": time.time() - 60, "cancelled_at": None} | kw  # fmt: skip


def _metrics(path: Path, **columns) -> None:
    pl.DataFrame({"kind": ["train"], "tokens": [5], "loss": [2.5]} | columns).write_parquet(path)


BAD_FILES = {  # file → what to write into it, and what status must say about the run
    "launch.json workers text": ("launch.json", _record(executor="local", workers="abc"),
                                 "launch.json: workers must be a list"),
    "launch.json submitted_at text": ("launch.json", _record(submitted_at="yesterday"),
                                      "launch.json: submitted_at must be"),
    "launch.json folder number": ("launch.json", _record(folder=5), "launch.json: folder must be text"),
    "launch.json a list": ("launch.json", ["debug-0"], "launch.json is not a JSON object"),
    "result.json tokens text": ("result.json", {"status": "success", "tokens": "ten"},
                                "result.json: tokens must be"),
    "result.json steps text": ("result.json", {"status": "success", "steps": "ten"},
                               "result.json: steps must be an integer"),
    "result.json flops text": ("result.json", {"status": "success", "flops": "many",
                                               "wall_time_s": 2.0}, "result.json: flops must be"),
    "result.json a string": ("result.json", "done", "result.json is not a JSON object"),
    "result.json status": ("result.json", {"status": "great"}, "result.json: status must be one of"),
    "result.json not JSON": ("result.json", b"{status: success", "result.json is not JSON"),
    "metrics tokens text": ("metrics.parquet", {"tokens": ["ten"]}, "tokens is String"),
    "metrics loss text": ("metrics.parquet", {"loss": ["low"]}, "loss is String"),
    "metrics bytes": ("metrics.parquet", b"\x00garbage", "metrics.parquet unreadable"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_tracebacks_mistyped_run_files_show_that_run_only(run_dir, capsys, case):
    name, content, message = BAD_FILES[case]
    bad, *rest = ids(run_dir)
    path = run_dir / "runs" / bad / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif name == "metrics.parquet":
        _metrics(path, **content)
    else:
        path.write_text(json.dumps(content))
    metrics = name == "metrics.parquet"  # unreadable progress leaves the state standing

    runs = {r.run_id: r for r in status.collect(run_dir).runs}
    assert runs[bad].state == ("planned" if metrics else "unreadable")
    assert message in ((runs[bad].note if metrics else runs[bad].error) or "")
    assert {runs[r].state for r in rest} == {"planned"}
    code, text, err = cli("status", str(run_dir), capsys=capsys)
    assert code == 0 and err == "" and all(rid in text for rid in ids(run_dir))
    assert f"  {bad}: " in text and message in text

    code, text, err = cli("launch", str(run_dir), "--executor", "debug", "--dry-run", capsys=capsys)
    assert code == 0 and err == ""
    assert ("would submit 6 run(s)" if metrics else "would submit 5 run(s)") in text
    if not metrics:
        assert "skipped: 1 unreadable" in text
    code, text, err = cli("cancel", str(run_dir), capsys=capsys)
    assert code == 0 and err == "" and "nothing to cancel" in text
    assert path.exists()  # left as it was
