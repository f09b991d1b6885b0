"""Training jobs: every method trains its planned run and leaves its records; a run interrupted by a
signal resumes to the same final loss as an uninterrupted one; divergence, failures and bad input are
recorded or refused as documented."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import torch
from conftest import make_tiny

from scaling import cli, flops, methods, sweep
from scaling.arch import PRESET_HUB_IDS, PRESETS, preset_alias, resolve_arch
from scaling.errors import ScalingError
from scaling.runspec import open_run
from scaling.train import job as train_mod
from scaling.train import train
from scaling.train.objective import schedule
from scaling.train.records import METRIC_COLUMNS
from scaling.train.tokenizers import save_byte_tokenizer

ROOT = Path(__file__).resolve().parents[2]
SEQ, BATCH = 32, 64  # two sequences of 32 tokens per step


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> str:
    """A tiny Llama with the built-in byte tokenizer saved beside it, as a user's model would be."""
    path = tmp_path_factory.mktemp("train") / "tiny-llama"
    make_tiny("llama", path)
    save_byte_tokenizer(path)
    return str(path)


def plan_run(root: Path, backbone: str, method: str, steps: int, *, train=None, dataset=None,
             optimizer=None, **dials) -> Path:  # fmt: skip
    """Plan a one-run sweep of ``steps`` optimizer steps into ``root``; return the run's directory."""
    cfg = methods.config(method, **dials)
    fpt = flops.cost(resolve_arch(backbone), cfg, SEQ).train_flops_per_token
    spec = sweep.load_spec(
        None, name="t", backbones=[backbone], methods=[method], method={method: dials},
        seq_len=SEQ, batch_tokens=BATCH, micro_batch_size=1, budgets=[steps * BATCH * fpt],
        dataset={"eval_sequences": 4, "difficulty": 2, **(dataset or {})},
        optimizer={"lr_by_method": {}, "lr": 3e-3, **(optimizer or {})},
        constraints={"min_steps": 1}, train={"log_every": 2, **(train or {})},
    )  # fmt: skip
    p = sweep.build_plan(spec)
    assert len(p.runs) == 1 and p.runs[0].steps == steps
    sweep.write(p, root)
    return root / "runs" / p.runs[0].run_id


def metrics(run: Path) -> pl.DataFrame:
    return pl.read_parquet(run / "metrics.parquet")


def snapshot(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


# --------------------------------------------------------------------------------------------------
# Every method trains and records


@pytest.mark.parametrize(
    "method, dials",
    [
        ("full", {}),
        ("lora", {"rank": 4}),
        ("qlora", {"rank": 4}),
        ("ladder", {"reduction": 4, "quantization": "none"}),
        ("xladder", {"reduction": 4, "delta": 1}),
    ],
)
def test_every_method_trains_its_planned_run(tmp_path, backbone, method, dials):
    run = plan_run(tmp_path / "sweep", backbone, method, steps=6, **dials)
    spec = json.loads((run / "spec.json").read_text())
    result = train(run)

    assert result["status"] == "success", result.get("traceback")
    assert result == json.loads((run / "result.json").read_text())
    assert result["steps"] == result["planned_steps"] == 6
    assert result["tokens"] == result["planned_tokens"] == 6 * BATCH
    assert result["flops"] == pytest.approx(spec["realised_flops"])
    assert result["trainable_params"] == spec["trainable_params"]  # built model = accounting
    assert math.isfinite(result["final_eval_loss"]) and result["tokens_per_s"] > 0
    prov = result["provenance"]
    assert prov["git_sha"] and prov["versions"]["torch"] == torch.__version__
    assert prov["seed"] == spec["seed"] and prov["device"].startswith(("cpu", "cuda"))
    assert prov["precision"] == {"compute_dtype": "float32", "trainable_dtype": "float32",
                                 "optimizer": "adamw", "loss_kernel": "plain"}  # fmt: skip

    m = metrics(run)
    assert dict(m.schema) == METRIC_COLUMNS
    tr, ev = m.filter(pl.col("kind") == "train"), m.filter(pl.col("kind") == "eval")
    assert tr["step"].to_list() == [1, 2, 4, 6]  # first, every log_every, last
    assert tr["tokens"].to_list() == [s * BATCH for s in tr["step"]]
    assert tr["flops"].to_list() == pytest.approx(
        [t * spec["flops_per_token"] for t in tr["tokens"]]
    )
    assert ev["step"].to_list() == [2, 4, 6]  # eval_every 0 → ceil(6 / 4) = 2, and the last step
    assert ev["loss"][-1] == pytest.approx(result["final_eval_loss"])
    assert (tr["peak_memory_bytes"] > 0).all() and (tr["grad_norm"] > 0).all()
    # cosine schedule with warm-up: the first step's lr is below the peak, the last one near the floor
    lrs = tr["lr"].to_list()
    assert lrs[0] < 3e-3 and lrs[-1] < lrs[1]

    assert not (run / "checkpoints").exists()  # removed on success
    again = methods.load(run / "model", backbone=backbone)
    assert again.num_trainable_params() == result["trainable_params"]


def test_training_lowers_the_held_out_loss(tmp_path, backbone):
    run = plan_run(tmp_path / "s", backbone, "lora", steps=30, rank=8, train={"eval_every": 10})
    result = train(run)
    ev = metrics(run).filter(pl.col("kind") == "eval")["loss"].to_list()
    assert result["status"] == "success" and ev[-1] < ev[0]


def test_a_finished_run_is_not_trained_again_unless_forced(tmp_path, backbone):
    run = plan_run(tmp_path / "s", backbone, "ladder", steps=2, reduction=8, quantization="none")
    first = train(run)
    assert train(run) == first  # same result, nothing retrained
    again = train(run, force=True)
    assert again["status"] == "success" and again["wall_time_s"] != first["wall_time_s"]


# --------------------------------------------------------------------------------------------------
# Resumption


def _kill_at(step: int, sig: int = signal.SIGTERM):
    def on_step(s: int) -> None:
        if s == step:
            os.kill(os.getpid(), sig)  # a real signal, handled between steps

    return on_step


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR2])
def test_interrupted_run_resumes_to_the_same_result(tmp_path, backbone, sig):
    # LoRA with dropout: the RNG state must survive the checkpoint too, not only weights and data order.
    kw = dict(rank=4, dropout=0.1, train={"log_every": 1, "eval_every": 3})
    ref = plan_run(tmp_path / "a", backbone, "lora", steps=8, **kw)
    run = plan_run(tmp_path / "b", backbone, "lora", steps=8, **kw)
    uninterrupted = train(ref)

    stopped = train(run, on_step=_kill_at(5, sig))
    assert stopped["status"] == "cancelled" and stopped["steps"] == 5
    assert stopped["signal"] == signal.Signals(sig).name and "resumable" in stopped["error"]
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-0000005"]
    assert metrics(run)["step"].max() == 5

    resumed = train(run)
    assert resumed["status"] == "success" and resumed["steps"] == 8
    assert resumed["final_eval_loss"] == pytest.approx(uninterrupted["final_eval_loss"], rel=1e-6)
    assert resumed["final_train_loss"] == pytest.approx(uninterrupted["final_train_loss"], rel=1e-6)
    a, b = metrics(ref), metrics(run)
    assert b.select("kind", "step").equals(a.select("kind", "step"))  # none missing, none twice
    assert b["loss"].to_list() == pytest.approx(a["loss"].to_list(), rel=1e-6)
    assert b["lr"].drop_nulls().to_list() == pytest.approx(
        a["lr"].drop_nulls().to_list(), rel=1e-12
    )


def test_rows_logged_after_the_last_checkpoint_are_not_duplicated(tmp_path, backbone):
    run = plan_run(tmp_path / "s", backbone, "ladder", steps=8, reduction=8,
                   quantization="none", train={"log_every": 1})  # fmt: skip
    train(run, on_step=_kill_at(3))
    # A hard kill after the checkpoint at step 3 leaves rows for steps 4-5 that no checkpoint covers
    # (in the process's metrics segment, where rows are committed, and in the table built from it).
    (segment,) = (run / "metrics.segments").iterdir()
    for path in (segment, run / "metrics.parquet"):
        m = pl.read_parquet(path)
        late = m.filter(pl.col("step") == 3).with_columns(pl.col("step") + 2)
        pl.concat([m, late]).write_parquet(path)
    assert train(run)["status"] == "success"
    steps = metrics(run).filter(pl.col("kind") == "train")["step"].to_list()
    assert steps == list(range(1, 9))


def test_sigusr2_to_the_cli_checkpoints_and_exits_for_requeue(tmp_path, backbone):
    run = plan_run(tmp_path / "s", backbone, "ladder", steps=120, reduction=8,
                   quantization="none", train={"log_every": 1, "eval_every": 120})  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "scaling.cli", "train", str(run)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 120
    while not (run / "metrics.parquet").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR2)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGUSR2, err
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "cancelled" and 0 < result["steps"] < 120
    assert "SIGUSR2" in err and "Traceback" not in err
    resumed = train(run)
    assert resumed["status"] == "success"
    steps = metrics(run).filter(pl.col("kind") == "train")["step"].to_list()
    assert steps == list(range(1, 121))


# --------------------------------------------------------------------------------------------------
# Divergence and failures


def test_exploding_loss_stops_the_run_as_diverged(tmp_path, backbone):
    run = plan_run(tmp_path / "s", backbone, "full", steps=20, optimizer={"lr": 10.0,
                   "warmup_fraction": 0.0, "grad_clip": None})  # fmt: skip
    result = train(run)
    assert result["status"] == "diverged" and result["steps"] < 20
    assert "first loss" in result["error"] or "non-finite" in result["error"]
    assert metrics(run)["step"].max() == result["steps"]  # the logs are kept
    assert not (run / "model").exists()


def test_nan_loss_is_divergence(tmp_path, backbone, monkeypatch):
    run = plan_run(tmp_path / "s", backbone, "lora", steps=6, rank=4)
    real = train_mod._Job._step

    def step(self):
        loss, norm = real(self)
        return (math.nan if self.state.step == 2 else loss), norm

    monkeypatch.setattr(train_mod._Job, "_step", step)
    result = train(run)
    assert result["status"] == "diverged" and result["steps"] == 3
    assert "non-finite" in result["error"]


def test_an_exception_is_recorded_as_failed(tmp_path, backbone, monkeypatch, capsys):
    run = plan_run(tmp_path / "s", backbone, "lora", steps=6, rank=4, train={"log_every": 1})

    def boom(self):
        if self.state.step == 2:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(self)

    real = train_mod._Job._step
    monkeypatch.setattr(train_mod._Job, "_step", boom)
    assert cli.main(["train", str(run)]) == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the progress lines: one line, no traceback
    assert "failed: RuntimeError: CUDA out of memory" in last and "Traceback" not in err
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "failed" and "simulated" in result["error"]
    assert "Traceback" in result["traceback"] and metrics(run)["step"].max() == 2


# --------------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, the run directory untouched


def _corrupt(run: Path) -> None:
    (run / "spec.json").write_text("{not json")


def _foreign_version(run: Path) -> None:
    spec = json.loads((run / "spec.json").read_text())
    (run / "spec.json").write_text(json.dumps({**spec, "format_version": 99}))


def _edit_dataset(**fields):
    def edit(run: Path) -> None:
        spec = json.loads((run / "spec.json").read_text())
        spec["dataset"] |= fields
        (run / "spec.json").write_text(json.dumps(spec))

    return edit


@pytest.mark.parametrize(
    "break_it, message",
    [
        (lambda run: (run / "spec.json").unlink(), "no spec.json"),
        (_corrupt, "unreadable run spec"),
        (_foreign_version, "format version 99"),
        (_edit_dataset(path="/nonexistent/data.jsonl"), "not found"),
        (_edit_dataset(tokens=300.0, max_epochs=1.0), "max_epochs"),
    ],
)
def test_bad_input_is_one_line_and_leaves_the_run_as_it_was(tmp_path, backbone, capsys, break_it,
                                                            message):  # fmt: skip
    run = plan_run(tmp_path / "s", backbone, "ladder", steps=4, reduction=8, quantization="none")
    break_it(run)
    before = snapshot(run)
    assert cli.main(["train", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scaling train: error: ") and err.count("\n") == 1 and message in err
    assert snapshot(run) == before


def test_missing_run_directory(tmp_path, capsys):
    assert cli.main(["train", str(tmp_path / "nope")]) == 2
    assert "run directory not found" in capsys.readouterr().err


def test_presets_train_from_their_hub_weights():
    assert set(PRESET_HUB_IDS) == set(PRESETS)
    assert all(preset_alias(hub) == name for name, hub in PRESET_HUB_IDS.items())
    assert train_mod.backbone_path("Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert train_mod.backbone_path("org/model") == "org/model"
    with pytest.raises(ScalingError, match="backbone not found"):
        train_mod.backbone_path("runs/backbones/missing")


def test_open_run_reads_the_planned_spec(tmp_path, backbone):
    run = plan_run(tmp_path / "s", backbone, "ladder", steps=2, reduction=8, quantization="none")
    r = open_run(run)
    assert r.spec["steps"] == 2 and r.result() is None and r.latest_checkpoint() is None


# --------------------------------------------------------------------------------------------------
# Schedules


@pytest.mark.parametrize("name", ["cosine", "linear", "constant", "wsd"])
def test_schedules_span_exactly_the_run(name):
    steps, warmup, peak = 100, 5, 1.0
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    cfg = dict(schedule=name, warmup_steps=warmup, min_lr_ratio=0.1, decay_fraction=0.2)
    sched = schedule(opt, cfg, steps)
    lrs = []
    for _ in range(steps):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] < peak and max(lrs) == pytest.approx(peak)
    assert all(a <= b + 1e-12 for a, b in zip(lrs[:warmup], lrs[1 : warmup + 1], strict=True))
    if name == "constant":
        assert lrs[-1] == pytest.approx(peak)
    else:
        assert 0.1 * peak <= lrs[-1] < 0.2 * peak  # decays to the floor at the run's end
    if name == "wsd":
        assert lrs[warmup:80] == pytest.approx([peak] * (80 - warmup))  # stable until the decay
        assert lrs[81] < peak


# --------------------------------------------------------------------------------------------------
# Progress


def test_progress_is_log_lines_off_a_terminal_and_a_bar_on_one(tmp_path, backbone, capsys,
                                                               monkeypatch):  # fmt: skip
    run = plan_run(tmp_path / "a", backbone, "ladder", steps=4, reduction=8, quantization="none")
    train(run)
    lines = capsys.readouterr().err.splitlines()
    assert any("step 1/4 loss" in line for line in lines)  # one line per metrics row
    assert any("step 4/4 eval loss" in line for line in lines)

    run = plan_run(tmp_path / "b", backbone, "ladder", steps=4, reduction=8, quantization="none")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    train(run)
    err = capsys.readouterr().err
    assert re.search(r"4/4 \[[^\]]*(step/s|s/step)", err), err  # tqdm's bar, in steps
