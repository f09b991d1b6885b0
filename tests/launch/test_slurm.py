"""scaling launch / status / cancel against a real SLURM controller on localhost, training for real.

Bring the cluster up first (CI does, in .ci/run):

    eval "$(ci/slurm/up.sh)"          # exports SLURM_CONF; ci/slurm/down.sh stops it
    .venv/bin/python -m pytest -m slurm

Without a reachable controller these tests skip with the reason, unless SCALING_REQUIRE_SLURM=1
(CI), where they fail instead."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from conftest import make_tiny

from scaling import cli as scaling_cli
from scaling import launch, sweep
from scaling.launch import executors, records, scheduler, status
from scaling.runspec import read_json_or_none
from scaling.train.tokenizers import save_byte_tokenizer

pytestmark = pytest.mark.slurm
DEFAULT_CONF = Path(os.environ.get("SCALING_SLURM_DIR", "/tmp/scaling-slurm")) / "slurm.conf"
WAIT_S = 420


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        if "SLURM_CONF" not in os.environ and DEFAULT_CONF.is_file():
            mp.setenv("SLURM_CONF", str(DEFAULT_CONF))  # ci/slurm/up.sh run without eval
        problem = scheduler.slurm_problem()
        if problem is not None:
            reason = f'no SLURM cluster: {problem}; start one with: eval "$(ci/slurm/up.sh)"'
            if os.environ.get("SCALING_REQUIRE_SLURM") == "1":
                pytest.fail(f"SCALING_REQUIRE_SLURM=1 but {reason}")
            pytest.skip(reason)
        yield


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("slurm") / "tiny-llama"
    make_tiny("llama", path)
    save_byte_tokenizer(path)
    return str(path)


def tiny_sweep(root: Path, backbone: str, steps: int, methods: dict[str, dict]) -> Path:
    """One budget: ≥ ``steps`` optimizer steps for every run (one per dial value)."""
    spec = sweep.load_spec(
        None, name="slurm-ci", backbones=[backbone], methods=list(methods), method=methods,
        seq_len=32, batch_tokens=64, micro_batch_size=1, budgets=[1.0],
        dataset={"eval_sequences": 4, "difficulty": 2}, constraints={"min_steps": 1},
        train={"log_every": 2, "eval_every": 10 ** 6},
    )  # fmt: skip
    fpt = max(r.flops_per_token for r in sweep.build_plan(spec, [1e12]).runs)
    sweep.write(sweep.build_plan(spec, [steps * 64 * fpt]), root)
    return root


def cli(capsys, *args: str) -> str:
    code = scaling_cli.main(list(args))
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def wait_for(predicate, what: str, timeout_s: float = 180.0, poll_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll_s)
    return value


def job_started(run_dir: Path, run_id: str) -> dict | None:
    """The job file of the run's latest submission once training has written metrics."""
    rec = read_json_or_none(run_dir / "runs" / run_id / records.RECORD) or {}
    job = read_json_or_none(records.job_file(rec.get("folder", "/nonexistent"), run_id))
    if job and not job.get("ended_at") and (run_dir / "runs" / run_id / "metrics.parquet").exists():
        return job
    return None


def test_array_of_tiny_runs_finishes_with_results(cluster, backbone, tmp_path, capsys):
    rd = tiny_sweep(tmp_path / "rd", backbone, 30,
                    {"ladder": {"reduction": [4, 8], "quantization": "none"}, "lora": {"rank": [4]}})  # fmt: skip
    text = cli(capsys, "launch", str(rd), "--executor", "slurm", "--time", "00:10:00",
               "--cpus-per-task", "1")  # fmt: skip
    assert "submitted 3 run(s) to slurm as array " in text, text
    out = launch.wait(rd, poll_s=1.0, timeout_s=WAIT_S)
    assert [r.state for r in out.runs] == ["success"] * 3, status.render(out)
    for r in out.runs:
        result = json.loads((rd / "runs" / r.run_id / "result.json").read_text())
        assert result["status"] == "success" and result["steps"] == result["planned_steps"]
        assert r.tokens_done == r.tokens_planned and r.eval_loss is not None
    table = cli(capsys, "status", str(rd))
    with capsys.disabled():  # shown with -s
        print(f"\n{table}")
    assert "summary: 3 success; compute " in table and "(100.0%)" in table

    # The script submitit submitted is the one sbatch_script() (and the golden file) describes.
    rec = json.loads((rd / "runs" / out.runs[0].run_id / "launch.json").read_text())
    folder = Path(rec["folder"])
    submitted = (folder / f"{rec['job_id'].split('_')[0]}_submission.sh").read_text()
    opts = launch.LaunchSpec(executor="slurm", time="00:10:00", cpus_per_task=1)
    assert submitted == executors.sbatch_script(opts, folder=folder, tasks=3, name="scaling-slurm-ci",
                                             minutes=10)  # fmt: skip
    assert "nothing to launch" in cli(capsys, "launch", str(rd), "--executor", "slurm")


def test_cancelled_jobs_show_cancelled_and_are_resubmitted(cluster, backbone, tmp_path, capsys):
    rd = tiny_sweep(tmp_path / "rd", backbone, 150, {"lora": {"rank": [2, 4]}})
    runs = [r.run_id for r in status.collect(rd).runs]
    cli(capsys, "launch", str(rd), "--executor", "slurm", "--time", "00:10:00",
        "--array-parallelism", "1", "--cpus-per-task", "1")  # fmt: skip
    started = wait_for(lambda: next((r for r in runs if job_started(rd, r)), None),
                       "a run to start training", poll_s=0.1)  # fmt: skip
    states = {r.run_id: r.state for r in status.collect(rd).runs}
    assert sorted(states.values()) == ["queued", "running"], states
    assert states[started] == "running"
    text = cli(capsys, "cancel", str(rd))
    assert text.startswith("cancelled 2 run(s): ")
    out = launch.wait(rd, poll_s=0.5, timeout_s=120)
    states = {r.run_id: r.state for r in out.runs}
    # The queued job never starts; the running one checkpoints on SIGTERM (or had just finished).
    (pending,) = set(runs) - {started}
    assert states[pending] == "cancelled" and states[started] in ("cancelled", "success"), states
    cancelled = sorted(r for r, s in states.items() if s == "cancelled")
    assert f"{len(cancelled)} cancelled" in cli(capsys, "status", str(rd))

    text = cli(capsys, "launch", str(rd), "--executor", "slurm", "--time", "00:10:00",
               "--cpus-per-task", "1", "--json")  # fmt: skip
    assert sorted(json.loads(text)["run_ids"]) == cancelled
    out = launch.wait(rd, poll_s=1.0, timeout_s=WAIT_S)
    assert [r.state for r in out.runs] == ["success", "success"], status.render(out)
    for r in out.runs:  # an interrupted run resumed: every step logged exactly once
        steps = pl.read_parquet(rd / "runs" / r.run_id / "metrics.parquet").filter(
            pl.col("kind") == "train"
        )["step"]
        planned = json.loads((rd / "runs" / r.run_id / "result.json").read_text())["planned_steps"]
        assert steps.is_unique().all() and steps.max() == planned


def test_time_out_signal_requeues_and_completes_with_intact_log(
    cluster, backbone, tmp_path, capsys
):
    rd = tiny_sweep(tmp_path / "rd", backbone, 150, {"lora": {"rank": [4]}})
    (run_id,) = (r.run_id for r in status.collect(rd).runs)
    cli(
        capsys,
        "launch",
        str(rd),
        "--executor",
        "slurm",
        "--time",
        "00:10:00",
        "--cpus-per-task",
        "1",
    )
    job = wait_for(lambda: job_started(rd, run_id), "training to start", poll_s=0.1)
    rec = json.loads((rd / "runs" / run_id / "launch.json").read_text())
    # What SLURM sends 90 s before the time limit (sbatch --signal=USR2@90), to the job's steps.
    subprocess.run(["scancel", "--signal=USR2", rec["job_id"]], check=True, timeout=30)
    seen = set()

    def finished() -> bool:
        seen.add(status.collect(rd).runs[0].state)
        return status.collect(rd).runs[0].state not in ("queued", "running")

    wait_for(finished, "the requeued job to finish", WAIT_S)
    final = status.collect(rd).runs[0]
    assert final.state == "success", status.render(status.collect(rd))
    assert seen <= {"running", "queued", "success"}, seen
    after = read_json_or_none(records.job_file(rec["folder"], run_id))
    assert after["attempt"] == job["attempt"] + 1 and after["job_id"] == rec["job_id"]
    result = json.loads((rd / "runs" / run_id / "result.json").read_text())
    assert result["status"] == "success" and result["steps"] == result["planned_steps"] >= 150
    steps = pl.read_parquet(rd / "runs" / run_id / "metrics.parquet").filter(
        pl.col("kind") == "train"
    )["step"]
    assert steps.is_unique().all() and steps.max() == result["planned_steps"]
    # One log for both attempts, appended (open-mode=append), nothing lost.
    log = Path(rec["log"]).read_text() + Path(rec["log"]).with_suffix(".err").read_text()
    assert log.count("Starting with JobEnvironment") == 2, log[-3000:]
    assert "interrupted by SIGUSR2" in log or "SIGUSR2: checkpoint at step" in log, log[-3000:]
    assert "Requeued job" in log and "Job completed successfully" in log
    assert log.count(f": step 1/{result['planned_steps']} ") == 1  # resumed, not restarted
    assert log.index("Requeued job") < log.rindex("Job completed successfully")


def test_rejected_submission_is_one_line_and_records_nothing(cluster, backbone, tmp_path, capsys):
    rd = tiny_sweep(tmp_path / "rd", backbone, 10, {"lora": {"rank": [4]}})
    code = scaling_cli.main(["launch", str(rd), "--executor", "slurm", "--partition", "nope"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("scaling launch: error: submission to slurm failed, nothing was recorded")
    assert "invalid partition" in err
    assert not (rd / "launch").exists() and not list(rd.glob("runs/*/launch.json"))
