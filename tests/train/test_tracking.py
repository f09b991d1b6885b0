"""Experiment tracking (``[train] report_to``): TensorBoard event files and W&B's offline run files,
read back, hold the rows of ``metrics.parquet``, the run's spec and provenance; a resumed run logs
no step twice; a missing tracker is refused before anything is written; a failing one never fails
the run. trackio is tested only where it is installed (it cannot share the project's lock: it needs
pillow < 13)."""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import polars as pl
import pytest
from conftest import make_tiny

from scaling import flops, methods, runspec, sweep
from scaling.arch import resolve_arch
from scaling.errors import ScalingError
from scaling.sweep.spec import TrainSpec
from scaling.train import job, tracking, train
from scaling.train.tokenizers import save_byte_tokenizer

SEQ, BATCH = 32, 64
VALUES = list(tracking.SCALARS)
DETERMINISTIC = ("tokens", "flops", "loss", "lr", "grad_norm")
"""What a retrained step reproduces on CPU (not its timing or memory)."""


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tracking") / "tiny-llama"
    make_tiny("llama", path)
    save_byte_tokenizer(path)
    return str(path)


def plan_run(root: Path, backbone: str, steps: int, **train_table) -> Path:
    """A one-run sweep (Ladder, unquantized) of ``steps`` steps; the run's directory."""
    cfg = methods.config("ladder", reduction=8, quantization="none")
    fpt = flops.cost(resolve_arch(backbone), cfg, SEQ).train_flops_per_token
    spec = sweep.load_spec(
        None, name="track", backbones=[backbone], methods=["ladder"],
        method={"ladder": {"reduction": 8, "quantization": "none"}}, seq_len=SEQ,
        batch_tokens=BATCH, micro_batch_size=1, budgets=[steps * BATCH * fpt],
        dataset={"eval_sequences": 4, "difficulty": 2}, optimizer={"lr_by_method": {}, "lr": 3e-3},
        constraints={"min_steps": 1}, train={"log_every": 1, "eval_every": 3, **train_table},
    )  # fmt: skip
    p = sweep.build_plan(spec)
    sweep.write(p, root)
    return root / "runs" / p.runs[0].run_id


def metrics(run: Path) -> pl.DataFrame:
    return pl.read_parquet(run / "metrics.parquet")


def expected(run: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.parquet as (step, value) series per ``<kind>/<column>``."""
    out: dict[str, list[tuple[int, float]]] = {}
    for row in metrics(run).iter_rows(named=True):
        for col in VALUES:
            if row[col] is not None:
                out.setdefault(f"{row['kind']}/{col}", []).append((row["step"], float(row[col])))
    return out


def crash_after_checkpoint(monkeypatch, checkpoint: int, crash: int):
    """A job that checkpoints only at step ``checkpoint`` and dies (an exception: recorded failed)
    at step ``crash``: its rows past the checkpoint were committed and sent to the trackers, as a
    hard kill leaves them."""
    original = job._Job.save_checkpoint

    def save(self):
        if self.state.step == checkpoint:
            original(self)

    monkeypatch.setattr(job._Job, "save_checkpoint", save)

    def on_step(step: int) -> None:
        if step == crash:
            raise RuntimeError("node lost")

    return on_step


# --------------------------------------------------------------------------------------------------
# TensorBoard


def tensorboard_scalars(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    texts = {}
    for tag in acc.Tags()["tensors"]:  # add_text is stored as a string tensor
        for event in acc.Tensors(tag):
            texts.setdefault(tag.split("/")[0], []).append(
                event.tensor_proto.string_val[0].decode()
            )
    return scalars, texts


def from_markdown(text: str):
    return json.loads(text.removeprefix("```\n").removesuffix("\n```"))


def test_tensorboard_logs_the_rows_of_metrics_parquet_the_spec_and_provenance(tmp_path, backbone):
    pytest.importorskip("tensorboard")
    run = plan_run(tmp_path / "s", backbone, steps=6, report_to=["tensorboard"])
    assert train(run)["status"] == "success"
    scalars, texts = tensorboard_scalars(run)
    want = expected(run)
    assert set(scalars) == set(want) and "train/loss" in want and "eval/loss" in want
    for tag, series in want.items():
        assert [s for s, _ in scalars[tag]] == [s for s, _ in series], tag
        assert [v for _, v in scalars[tag]] == pytest.approx([v for _, v in series], rel=1e-6)
    spec = json.loads((run / "spec.json").read_text())
    assert from_markdown(texts["spec"][0]) == json.loads(json.dumps(spec))
    prov = from_markdown(texts["provenance"][0])
    assert {"git_sha", "versions", "device", "host"} <= set(prov)
    result = from_markdown(texts["result"][0])
    assert result["status"] == "success" and result["steps"] == 6


def test_tensorboard_resumed_run_shows_every_step_once_with_its_retrained_value(
    tmp_path, backbone, monkeypatch
):
    pytest.importorskip("tensorboard")
    run = plan_run(tmp_path / "s", backbone, steps=8, report_to=["tensorboard"])
    failed = train(run, on_step=crash_after_checkpoint(monkeypatch, checkpoint=3, crash=5))
    assert failed["status"] == "failed" and "node lost" in failed["error"]
    scalars, _ = tensorboard_scalars(run)
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3, 4, 5]  # 4-5 past the checkpoint
    monkeypatch.undo()
    # What the first life sent for steps 4-5 is made distinguishable from the retrained values.
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(run / "tensorboard")) as w:
        for step in (4, 5):
            w.add_scalar("train/loss", 999.0, global_step=step)
    assert train(run)["status"] == "success"
    scalars, _ = tensorboard_scalars(run)
    want = expected(run)
    for tag, series in want.items():
        assert [s for s, _ in scalars[tag]] == [s for s, _ in series], tag  # none twice
        assert [v for _, v in scalars[tag]] == pytest.approx([v for _, v in series], rel=1e-6)
    assert [s for s, _ in want["train/loss"]] == list(range(1, 9))


# --------------------------------------------------------------------------------------------------
# Weights & Biases, offline


def wandb_records(path: Path):
    """Every record of a W&B transaction log (``run-<id>.wandb``). wandb ships no Python reader
    since its core moved to Go, so this reads the format it writes: a 7-byte header (``:W&B``,
    magic 0xBEE1, version), then LevelDB-log blocks of 32 KiB holding chunks (CRC-32 masked as
    LevelDB does, 2-byte length, type FULL/FIRST/MIDDLE/LAST) of serialised ``Record`` protos."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B" and struct.unpack("<H", data[4:6])[0] == 0xBEE1
    pos, block, pending, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer: padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            break
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def wandb_lives(run: Path) -> list[dict]:
    """Per offline run directory (one per process that trained the run), oldest first: its run id,
    config and history rows ``{key: value, "_step": step}``."""
    lives = []
    for folder in sorted((run / "wandb").glob("offline-run-*")):
        (log,) = folder.glob("run-*.wandb")
        life = {"id": None, "config": {}, "history": [], "summary": {}}
        for r in wandb_records(log):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                life["id"] = r.run.run_id
                life["config"] |= {i.key: json.loads(i.value_json) for i in r.run.config.update}
            elif kind == "config":
                life["config"] |= {i.key: json.loads(i.value_json) for i in r.config.update}
            elif kind == "history":
                life["history"].append(
                    {
                        i.key or "/".join(i.nested_key): json.loads(i.value_json)
                        for i in r.history.item
                    }
                )
            elif kind == "summary":
                life["summary"] |= {
                    i.key or "/".join(i.nested_key): json.loads(i.value_json)
                    for i in r.summary.update
                }
        lives.append(life)
    return lives


@pytest.fixture
def wandb_offline(monkeypatch, tmp_path):
    pytest.importorskip("wandb")
    for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true",
                       "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
                       "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
                       "WANDB_ERROR_REPORTING": "false"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)


def test_wandb_offline_resumed_run_logs_every_step_once(tmp_path, backbone, monkeypatch,
                                                        wandb_offline):  # fmt: skip
    run = plan_run(tmp_path / "s", backbone, steps=8, report_to=["wandb", "tensorboard"])
    run_id = run.name
    with monkeypatch.context() as m:
        failed = train(run, on_step=crash_after_checkpoint(m, checkpoint=3, crash=5))
    assert failed["status"] == "failed"
    assert train(run)["status"] == "success"
    import wandb

    wandb.teardown()  # the offline files are complete once W&B's service has stopped
    lives = wandb_lives(run)
    assert len(lives) == 2 and {life["id"] for life in lives} == {tracking.wandb_id(run_id)}
    steps = [h["_step"] for life in lives for h in life["history"]]
    # Life 1 sent steps 1-5 (eval at 3); life 2 resumed from the checkpoint at 3, retrained 4-8 and
    # sent only 6-8: W&B holds each step once.
    assert steps == sorted(set(steps)) == list(range(1, 9))
    sent: dict[str, list[tuple[int, float]]] = {}
    for life in lives:
        for h in life["history"]:
            for key, value in h.items():
                if not key.startswith("_"):
                    sent.setdefault(key, []).append((h["_step"], value))
    want = expected(run)
    assert set(sent) == set(want)
    for tag, series in want.items():
        assert [s for s, _ in sent[tag]] == [s for s, _ in series], tag
        if tag.split("/")[1] in DETERMINISTIC:  # life 1's values for steps 4-5 are the same
            assert [v for _, v in sent[tag]] == pytest.approx([v for _, v in series], rel=1e-6)
    spec = json.loads((run / "spec.json").read_text())
    for life in lives:
        assert life["config"]["spec"] == json.loads(json.dumps(spec))
        assert life["config"]["provenance"]["versions"]["scaling"] is not None
    assert lives[0]["summary"]["status"] == "failed"
    assert lives[1]["summary"]["status"] == "success"
    assert lives[1]["summary"]["final_eval_loss"] == pytest.approx(
        json.loads((run / "result.json").read_text())["final_eval_loss"]
    )


# --------------------------------------------------------------------------------------------------
# trackio (where installed)


def test_trackio_logs_the_rows_of_metrics_parquet(tmp_path, backbone, monkeypatch):
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))  # read when trackio is imported
    pytest.importorskip("trackio")
    from trackio.sqlite_storage import SQLiteStorage

    run = plan_run(tmp_path / "s", backbone, steps=4, report_to=["trackio"])
    assert train(run)["status"] == "success"
    logs = SQLiteStorage.get_logs(project="track", run=run.name)
    for tag, series in expected(run).items():
        got = [(r["step"], r[tag]) for r in logs if r.get(tag) is not None]
        assert [s for s, _ in got] == [s for s, _ in series], tag
        assert [v for _, v in got] == pytest.approx([v for _, v in series], rel=1e-6), tag
    config = SQLiteStorage.get_run_config(project="track", run=run.name)
    assert config["spec"]["run_id"] == run.name and "git_sha" in config["provenance"]


# --------------------------------------------------------------------------------------------------
# Off by default, validated, refused when missing, never fatal


def test_report_to_is_off_by_default_and_validated(tmp_path, backbone):
    assert TrainSpec().report_to == []
    with pytest.raises(ScalingError, match="unknown tracker 'mlflow'; valid: tensorboard, wandb"):
        TrainSpec(report_to=["mlflow"])
    with pytest.raises(ScalingError, match="lists a tracker twice"):
        TrainSpec(report_to=["wandb", "wandb"])
    with pytest.raises(ScalingError, match="must be a list of trackers"):
        TrainSpec(report_to="wandb")
    run = plan_run(tmp_path / "s", backbone, steps=2)
    assert train(run)["status"] == "success"
    assert not (run / "tensorboard").exists() and not (run / "wandb").exists()
    spec = json.loads((run / "spec.json").read_text())
    spec["train"]["report_to"] = ["tensorbored"]
    with pytest.raises(ScalingError, match="train.report_to: unknown tracker 'tensorbored'"):
        runspec.check_spec(spec)


def test_a_tracker_not_installed_is_refused_before_anything_is_written(tmp_path, backbone,
                                                                       monkeypatch):  # fmt: skip
    run = plan_run(tmp_path / "s", backbone, steps=2, report_to=["wandb"])
    before = sorted(p.name for p in run.iterdir())
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))  # fmt: skip
    with pytest.raises(ScalingError, match=r"lists wandb, not installed here: pip install "
                                           r"'scaling\[wandb\]'"):  # fmt: skip
        train(run)
    assert sorted(p.name for p in run.iterdir()) == before  # not even the lock file


def test_report_to_a_tracker_not_installed_leaves_the_spec_as_it_was(tmp_path, backbone,
                                                                     monkeypatch, capsys):  # fmt: skip
    from scaling import cli

    run = plan_run(tmp_path / "s", backbone, steps=2)
    spec = (run / "spec.json").read_bytes()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))  # fmt: skip
    for args in (["--report-to", "wandb"], ["--set", 'train.report_to=["wandb"]']):
        assert cli.main(["train", str(run), *args]) == 2
        err = capsys.readouterr().err
        assert "lists wandb, not installed here" in err and len(err.splitlines()) == 1
        assert (run / "spec.json").read_bytes() == spec  # a later plain `scaling train` still works


def test_a_failing_tracker_warns_once_and_the_run_goes_on(tmp_path, backbone, monkeypatch, capsys):
    pytest.importorskip("tensorboard")
    run = plan_run(tmp_path / "s", backbone, steps=4, report_to=["tensorboard"])
    calls = []

    def broken(self, rows):
        calls.append(len(rows))
        raise ConnectionError("tracker unreachable")

    monkeypatch.setattr(tracking._TensorBoard, "log", broken)
    result = train(run)
    assert result["status"] == "success" and calls == [1]  # dropped after the first failure
    assert metrics(run).filter(pl.col("kind") == "train")["step"].to_list() == [1, 2, 3, 4]
    err = capsys.readouterr().err
    assert err.count("warning: report_to tensorboard failed (ConnectionError: tracker "
                     "unreachable)") == 1  # fmt: skip


def test_wandb_ids_are_the_run_ids():
    assert tracking.wandb_id("ladder-r8-1.2e11-s0-1a2b3c4d") == "ladder-r8-1.2e11-s0-1a2b3c4d"
    assert tracking.wandb_id("a/b:c") == "a-b-c"
