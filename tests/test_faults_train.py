"""The trainer's side of "Nothing lost, ever": one trainer per run, resumption that can only add,
strict spec.json, failures recorded with their reason (disk full, permission denied), no stale
temporaries, strict JSON results. Each test is named after the defect it reproduces."""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import pytest
import torch
from conftest import make_tiny

from scaling import cli, flops, io, methods, runspec, sweep
from scaling.arch import resolve_arch
from scaling.errors import ScalingError
from scaling.sweep.spec import DatasetSpec, OptimizerSpec, TrainSpec
from scaling.train import job as train_mod
from scaling.train import train
from scaling.train.records import SEGMENTS
from scaling.train.tokenizers import save_byte_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SEQ, BATCH = 32, 64  # two sequences of 32 tokens per step
EVERY_STEP = {"checkpoint_every_minutes": 1e-9, "log_every": 1}  # a checkpoint after every step


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("faults") / "tiny-llama"
    make_tiny("llama", path)
    save_byte_tokenizer(path)
    return str(path)


def plan_run(root: Path, backbone: str, steps: int = 6, *, train: dict | None = None) -> Path:
    """A one-run sweep of a tiny Ladder side net (fast on CPU); return the run's directory."""
    dials = {"reduction": 8, "quantization": "none"}
    cfg = methods.config("ladder", **dials)
    fpt = flops.cost(resolve_arch(backbone), cfg, SEQ).train_flops_per_token
    spec = sweep.load_spec(
        None, name="t", backbones=[backbone], methods=["ladder"], method={"ladder": dials},
        seq_len=SEQ, batch_tokens=BATCH, micro_batch_size=1, budgets=[steps * BATCH * fpt],
        dataset={"eval_sequences": 4, "difficulty": 2}, optimizer={"lr_by_method": {}, "lr": 3e-3},
        constraints={"min_steps": 1}, train={"log_every": 2, **(train or {})},
    )  # fmt: skip
    p = sweep.build_plan(spec)
    sweep.write(p, root)
    return root / "runs" / p.runs[0].run_id


def snapshot(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def train_steps(run: Path) -> list[int]:
    m = pl.read_parquet(run / "metrics.parquet")
    return m.filter(pl.col("kind") == "train")["step"].to_list()


def kill_at(step: int, sig: int = signal.SIGTERM):
    def on_step(s: int) -> None:
        if s == step:
            os.kill(os.getpid(), sig)  # a real signal, handled between steps

    return on_step


def result_of(run: Path) -> dict:
    return json.loads((run / "result.json").read_text())


def one_line_error(err: str) -> str:
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


# --------------------------------------------------------------------------------------------------
# (2) One trainer per run


def test_defect_2_second_trainer_is_refused_and_changes_nothing(tmp_path, backbone, capsys):
    run = plan_run(tmp_path / "s", backbone, steps=4)
    lock = runspec.open_run(run).lock_path
    before = snapshot(run)
    with io.exclusive_lock(lock, "a trainer"):  # what a live `scaling train` holds
        assert cli.main(["train", str(run)]) == 2
        assert cli.main(["train", str(run), "--force"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all("in use by another process" in line for line in err)
    after = snapshot(run)
    after.pop(runspec.RUN_LOCK)  # the holder wrote its pid into the lock file; nothing else changed
    before.pop(runspec.RUN_LOCK, None)
    assert after == before


def test_defect_2_a_running_trainer_holds_the_run_lock(tmp_path, backbone):
    run = plan_run(tmp_path / "s", backbone, steps=400, train={"log_every": 1, "eval_every": 400})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "scaling.cli", "train", str(run)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.time() + 120
        while not (run / "metrics.parquet").exists() and time.time() < deadline:
            time.sleep(0.05)
        assert io.is_locked(run / runspec.RUN_LOCK)
        with pytest.raises(ScalingError, match="in use by another process"):
            train(run)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    assert result_of(run)["status"] == "cancelled"  # the first trainer's record, not the second's
    assert not io.is_locked(run / runspec.RUN_LOCK)  # the lock died with its holder


def test_defect_2_a_run_that_succeeded_meanwhile_is_not_retrained(tmp_path, backbone, monkeypatch):
    run = plan_run(tmp_path / "s", backbone, steps=2)
    done = train(run)
    (run / "result.json").unlink()
    real = train_mod.shards.for_run

    def finished_by_another_trainer(*args, **kwargs):
        io.write_json(run / "result.json", done)  # the other trainer finishes while we load data
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod.shards, "for_run", finished_by_another_trainer)
    assert train(run) == done
    assert result_of(run) == done and not (run / "checkpoints").exists()


# --------------------------------------------------------------------------------------------------
# (3) Resumption can only add


def test_defect_3_corrupt_checkpoint_falls_back_to_the_previous_one(tmp_path, backbone):
    ref = plan_run(tmp_path / "a", backbone, steps=8, train=EVERY_STEP)
    run = plan_run(tmp_path / "b", backbone, steps=8, train=EVERY_STEP)
    uninterrupted = train(ref)
    assert train(run, on_step=kill_at(5))["status"] == "cancelled"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step-0000004",
        "step-0000005",
    ]  # the last two are kept
    (run / "checkpoints" / "step-0000005" / "state.pt").write_bytes(b"not a checkpoint")

    resumed = train(run)
    assert resumed["status"] == "success", resumed.get("traceback")
    assert "step-0000005" in resumed["skipped_checkpoints"][0]
    assert train_steps(run) == list(range(1, 9))  # every step exactly once
    assert resumed["final_eval_loss"] == pytest.approx(uninterrupted["final_eval_loss"], rel=1e-6)


def test_defect_3_unusable_checkpoint_is_refused_and_keeps_the_logs(tmp_path, backbone, capsys):
    run = plan_run(tmp_path / "s", backbone, steps=8, train={"log_every": 1})
    train(run, on_step=kill_at(5))
    (run / "checkpoints" / "step-0000005" / "state.pt").write_bytes(b"not a checkpoint")
    logged = pl.read_parquet(run / "metrics.parquet")
    for _ in range(2):  # every retry: the same clear reason, nothing lost
        assert cli.main(["train", str(run)]) == 1
        assert "no usable checkpoint" in one_line_error(capsys.readouterr().err)
        result = result_of(run)
        assert result["status"] == "failed" and "step-0000005" in result["error"]
        assert pl.read_parquet(run / "metrics.parquet").equals(logged)
        assert (run / "checkpoints" / "step-0000005" / "state.pt").is_file()
    assert train(run, force=True)["status"] == "success"  # --force retrains from scratch
    assert train_steps(run) == list(range(1, 9))


def test_defect_3_truncated_metrics_table_loses_no_rows(tmp_path, backbone):
    run = plan_run(tmp_path / "s", backbone, steps=8, train={"log_every": 1})
    train(run, on_step=kill_at(5))
    table = run / "metrics.parquet"
    table.write_bytes(table.read_bytes()[:100])
    first = train(run)
    second = train(run)
    assert first["status"] == "success", first.get("error")
    assert second == first and train_steps(run) == list(range(1, 9))


def test_defect_3_truncated_segment_is_reported_never_success(tmp_path, backbone):
    run = plan_run(tmp_path / "s", backbone, steps=8, train={"log_every": 1})
    train(run, on_step=kill_at(5))
    (segment,) = (run / SEGMENTS).iterdir()
    segment.write_bytes(segment.read_bytes()[:100])
    kept = snapshot(run / SEGMENTS), (run / "metrics.parquet").read_bytes()
    for _ in range(2):
        result = train(run)
        assert result["status"] == "failed" and "unreadable metrics segment" in result["error"]
        assert (snapshot(run / SEGMENTS), (run / "metrics.parquet").read_bytes()) == kept


def test_defect_3_truncated_metrics_of_a_run_without_segments_is_refused(tmp_path, backbone):
    """A run checkpointed before metrics segments existed: its table is the only copy of its rows."""
    run = plan_run(tmp_path / "s", backbone, steps=8, train={"log_every": 1})
    train(run, on_step=kill_at(5))
    for path in (run / SEGMENTS).glob("*"):
        path.unlink()
    (run / SEGMENTS).rmdir()
    table = run / "metrics.parquet"
    table.write_bytes(table.read_bytes()[:100])
    for _ in range(2):
        result = train(run)
        assert result["status"] == "failed" and "unreadable metrics table" in result["error"]
    assert (run / "checkpoints" / "step-0000005").is_dir()


# --------------------------------------------------------------------------------------------------
# (6) spec.json is checked before anything is written


def _edit(**changes):
    def edit(spec: dict) -> None:
        for key, value in changes.items():
            table, _, field = key.rpartition(".")
            (spec[table] if table else spec)[field] = value

    return edit


@pytest.mark.parametrize(
    "edit, message",
    [
        (_edit(steps=-5), "steps must be a positive integer"),
        (_edit(steps=0), "steps must be a positive integer"),
        (_edit(steps=2.5), "steps must be a positive integer"),
        (_edit(batch_tokens=16), "batch_tokens (16) must equal seq_len"),
        (_edit(batch_tokens=96, tokens=96 * 4), "batch_tokens (96) must equal seq_len"),
        (_edit(micro_batch_size=0), "micro_batch_size must be a positive integer"),
        (_edit(grad_accum_steps=3), "must equal seq_len × micro_batch_size × grad_accum_steps"),
        (_edit(seq_len=0), "seq_len must be a positive integer"),
        (_edit(tokens=1), "tokens (1) must equal steps × batch_tokens"),
        (_edit(flops_per_token=-1.0), "flops_per_token must be a positive number"),
        (_edit(flops_per_token=math.nan), "flops_per_token must be a positive number"),
        (_edit(**{"train.log_every": 0}), "train.log_every must be a positive integer"),
        (_edit(**{"train.diverge_ratio": 0.5}), "train.diverge_ratio must be a number in (1"),
        (_edit(**{"optimizer.lr": -1.0}), "optimizer.lr must be a positive number"),
        (_edit(**{"optimizer.lr_warmup": 5}), "unknown key 'optimizer.lr_warmup'"),
        (_edit(**{"dataset.eval_sequences": 0}), "dataset.eval_sequences must be a positive"),
    ],
)
def test_defect_6_invalid_spec_is_refused_before_anything_is_written(tmp_path, backbone, capsys,
                                                                     edit, message):  # fmt: skip
    run = plan_run(tmp_path / "s", backbone, steps=4)
    spec = json.loads((run / "spec.json").read_text())
    edit(spec)
    (run / "spec.json").write_text(json.dumps(spec))
    before = snapshot(run)
    assert cli.main(["train", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scaling train: error: ") and err.count("\n") == 1, err
    assert message in err and "spec.json" in err
    assert snapshot(run) == before


def test_defect_6_spec_checks_know_every_key_the_planner_writes():
    """The trainer restates the planner's tables (it may not import the planner): keep them equal."""
    assert set(runspec.DATASET_CHECKS) == {*DatasetSpec.field_names(), "max_epochs"}
    planned = OptimizerSpec(lr_grid=[1.0, 2.0]).for_method("ladder", 100, multiplier=2.0)
    assert set(runspec.OPTIMIZER_CHECKS) == set(planned)
    assert set(runspec.TRAIN_CHECKS) == set(TrainSpec.field_names())
    runspec.check_spec({**_a_spec(), "optimizer": planned})


def _a_spec() -> dict:
    return {"run_id": "r", "backbone": "b", "method": "ladder", "method_config": {}, "seed": 0,
            "seq_len": 32, "batch_tokens": 64, "micro_batch_size": 1, "grad_accum_steps": 2,
            "steps": 100, "tokens": 6400, "flops_per_token": 1.0,
            "dataset": {**DatasetSpec().to_dict(), "max_epochs": None},
            "optimizer": OptimizerSpec().for_method("ladder", 100), "train": TrainSpec().to_dict()}  # fmt: skip


# --------------------------------------------------------------------------------------------------
# (7) Full or read-only disks


def test_defect_7_disk_full_while_training_is_recorded_as_failed(tmp_path, backbone, monkeypatch,
                                                                 capsys):  # fmt: skip
    run = plan_run(tmp_path / "s", backbone, steps=6, train={"log_every": 1})
    real, writes = io.write_parquet, []

    def fills_up(frame, path):
        writes.append(path)
        if len(writes) > 4:  # the disk fills after a few metrics writes
            disk_full()
        real(frame, path)

    monkeypatch.setattr(io, "write_parquet", fills_up)
    assert cli.main(["train", str(run)]) == 1
    assert "failed: disk full: No space left on device" in one_line_error(capsys.readouterr().err)
    result = result_of(run)
    assert result["status"] == "failed" and result["error"].startswith("disk full: ")
    assert "disk full" in result["metrics_error"]
    assert not list(run.rglob("*.tmp"))
    monkeypatch.undo()
    assert train(run)["status"] == "success" and train_steps(run) == list(range(1, 7))


def test_defect_7_sigterm_while_the_checkpoint_write_fails(tmp_path, backbone, monkeypatch,
                                                           capsys):  # fmt: skip
    run = plan_run(tmp_path / "s", backbone, steps=8, train={"log_every": 1})
    monkeypatch.setattr(torch, "save", disk_full)
    monkeypatch.setattr(train_mod._Job, "loop", _with_signal_at(3, train_mod._Job.loop))
    assert cli.main(["train", str(run)]) == 1
    last = one_line_error(capsys.readouterr().err)
    assert "interrupted by SIGTERM at step 3/8 and the checkpoint failed (disk full" in last
    result = result_of(run)
    assert result["status"] == "failed" and result["signal"] == "SIGTERM"
    assert "starts again from step 0" in result["error"]
    assert not (run / "checkpoints").exists()  # no empty or half checkpoint for a resume to pick
    monkeypatch.undo()
    assert train(run)["status"] == "success" and train_steps(run) == list(range(1, 9))


def _with_signal_at(step: int, loop):
    def patched(self, signals, on_step):
        return loop(self, signals, kill_at(step))

    return patched


def test_defect_7_nothing_writable_is_one_line_and_non_zero(tmp_path, backbone, monkeypatch,
                                                            capsys):  # fmt: skip
    run = plan_run(tmp_path / "s", backbone, steps=4)
    monkeypatch.setattr(io, "write_parquet", disk_full)
    monkeypatch.setattr(io, "write_text", disk_full)
    assert cli.main(["train", str(run)]) == 1
    assert "nothing recorded: disk full" in one_line_error(capsys.readouterr().err)
    assert not (run / "result.json").exists()


def test_defect_7_permission_denied_is_one_line_and_non_zero(tmp_path, backbone, monkeypatch,
                                                             capsys):  # fmt: skip
    """What a read-only run directory does to every atomic write (simulated: root ignores chmod)."""
    run = plan_run(tmp_path / "s", backbone, steps=4)

    def denied(*args, dir=None, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(dir))

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    assert cli.main(["train", str(run)]) == 1
    assert "nothing recorded: permission denied" in one_line_error(capsys.readouterr().err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod: nothing to test")
def test_defect_7_read_only_run_directory(tmp_path, backbone, capsys):
    run = plan_run(tmp_path / "s", backbone, steps=4)
    before = snapshot(run)
    run.chmod(0o555)
    try:
        assert cli.main(["train", str(run)]) == 1
    finally:
        run.chmod(0o755)
    assert "permission denied" in one_line_error(capsys.readouterr().err)
    assert snapshot(run) == before


# --------------------------------------------------------------------------------------------------
# (9) Temporaries a killed trainer left


def test_defect_9_stale_temporaries_are_removed_at_start(tmp_path, backbone):
    run = plan_run(tmp_path / "s", backbone, steps=4, train={"log_every": 1})
    train(run, on_step=kill_at(2))
    stale = [run / ".metrics.parquet.k2j3h4g5.tmp", run / ".result.json.a1b2c3d4.tmp",
             run / SEGMENTS / ".0000-from-0000000.parquet.zz9y8x7w.tmp"]  # fmt: skip
    for path in stale:
        path.touch()  # 0 bytes, as a kill -9 leaves them
    half = run / "checkpoints" / ".step-0000003.q1w2e3r4.tmp"
    half.mkdir()
    (half / "state.pt").write_bytes(b"half")
    others = [run / ".spec.json.a1b2c3d4.tmp", run / "notes.tmp"]  # the planner's, the user's
    for path in others:
        path.touch()
    seen = {}

    def look(step: int) -> None:
        seen[step] = [p.exists() for p in [*stale, half]]

    assert train(run, on_step=look)["status"] == "success"
    assert seen[3] == [False] * 4  # gone before training went on
    assert all(p.exists() for p in others)  # not the trainer's: left alone


# --------------------------------------------------------------------------------------------------
# (10) Strict JSON results


def _strict(text: str) -> dict:
    def refuse(name: str):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_defect_10_diverged_result_is_strict_json(tmp_path, backbone, monkeypatch, capsys):
    run = plan_run(tmp_path / "s", backbone, steps=6)
    real = train_mod._Job._step

    def step(self):
        loss, norm = real(self)
        return (math.nan if self.state.step == 2 else loss), norm

    monkeypatch.setattr(train_mod._Job, "_step", step)
    result = train(run)
    written = _strict((run / "result.json").read_text())
    assert written["status"] == "diverged" and written["final_train_loss"] is None
    assert "final_train_loss" in written["non_finite"]
    assert result == written  # what train returns is what it wrote


def test_defect_10_cli_reports_a_null_loss(tmp_path, backbone, monkeypatch, capsys):
    run = plan_run(tmp_path / "s", backbone, steps=2)
    monkeypatch.setattr(train_mod, "evaluate", lambda *a, **k: math.nan)
    assert cli.main(["train", str(run)]) == 0
    out = capsys.readouterr()
    assert "eval loss n/a (not finite)" in out.out and "Traceback" not in out.err
    assert _strict((run / "result.json").read_text())["final_eval_loss"] is None
