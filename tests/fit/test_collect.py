"""Run directories → the tidy runs table and per-step curves, the Parquet cache and its invalidation."""

from __future__ import annotations

import json
import os

import polars as pl
import pytest

from scaling.errors import ScalingError
from scaling.fit import collect, synth
from scaling.fit.spec import FitSpec


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("collect") / "sweep"
    synth.simulate(out, statuses={0: "failed", 5: "cancelled"}, unfinished=(1,), evals=5)
    return out


def test_one_row_per_planned_run_with_status(sweep_dir):
    c = collect.collect(sweep_dir, cache=False)
    manifest = pl.read_parquet(sweep_dir / "manifest.parquet")
    assert c.runs.height == manifest.height
    assert set(c.runs["run_id"]) == set(manifest["run_id"])
    status = dict(zip(c.runs["run_id"], c.runs["status"], strict=True))
    ids = manifest["run_id"].to_list()
    assert (status[ids[0]], status[ids[1]], status[ids[5]]) == ("failed", "not finished",
                                                               "cancelled")  # fmt: skip
    assert sum(s == "success" for s in status.values()) == manifest.height - 3
    row = c.runs.filter(pl.col("status") == "success").row(0, named=True)
    for key in ("final_eval_loss", "tokens", "flops", "flops_per_token", "trainable_params"):
        assert row[key] > 0
    assert row["total_params"] == row["backbone_params"] + row["trainable_params"]
    assert json.loads(row["backbone_config"])["model_type"] == "llama"
    assert json.loads(row["method_config"])
    assert row["seq_len"] == 128 and row["micro_batch_size"] == 2


def test_curves_carry_run_ids(sweep_dir):
    c = collect.collect(sweep_dir, cache=False)
    assert set(collect.CURVE_COLUMNS) <= set(c.curves.columns)
    assert set(c.curves["kind"]) == {"train", "eval"}
    finished = set(c.runs.filter(pl.col("status") == "success")["run_id"])
    assert set(c.curves["run_id"]) == finished


def test_curves_hold_run_ids_and_kinds_as_categories_and_read_the_same_as_text(sweep_dir):
    """At 10⁷ rows a string per row is ~0.3 GiB: the collected curves keep run_id and kind as
    Categorical (also through the cache), and what the fit reads from them is what it reads from
    the same table with text columns (a table given as a file)."""
    from scaling.fit.points import Columns, prepare, run_curves

    cold = collect.collect(sweep_dir, cache=True)
    warm = collect.collect(sweep_dir, cache=True)
    for c in (cold, warm):
        assert c.curves.schema["run_id"] == pl.Categorical == c.curves.schema["kind"]
    text = cold.curves.with_columns(pl.col("run_id", "kind").cast(pl.String))
    spec = FitSpec(loss="last_k_eval", last_k=2)
    assert collect.add_last_k(cold.runs, cold.curves, 2).equals(
        collect.add_last_k(cold.runs, text, 2)
    )
    points = prepare(cold.table(spec), spec, Columns.for_runs(spec)).points
    for pts in points.values():
        a, b = run_curves(pts, cold.curves, spec), run_curves(pts, text, spec)
        assert len(a[0]) >= 2 and list(a[0]) == list(b[0])
        assert (a[1] == b[1]).all() and (a[2] == b[2]).all()


def test_last_k_eval_loss(sweep_dir):
    c = collect.collect(sweep_dir, cache=False)
    t = c.table(FitSpec(loss="last_k_eval", last_k=2))
    rid = t.filter(pl.col("status") == "success")["run_id"][0]
    evals = c.curves.filter((pl.col("run_id") == rid) & (pl.col("kind") == "eval")).sort("step")
    row = t.filter(pl.col("run_id") == rid).row(0, named=True)
    assert row["last_k_eval_loss"] == pytest.approx(evals["loss"].tail(2).mean())
    assert row["n_eval"] == evals.height == 5
    assert c.table(FitSpec()) is c.runs


def test_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    synth.simulate(out, curves=False)
    first = collect.collect(out)
    assert (out / collect.CACHE_DIR / "runs.parquet").is_file()

    def boom(root):
        raise AssertionError("collected again instead of reading the cache")

    monkeypatch.setattr(collect, "_collect", boom)
    assert collect.collect(out).runs.equals(first.runs)
    # A changed result.json invalidates the cache.
    rid = first.runs["run_id"][0]
    path = out / "runs" / rid / "result.json"
    data = json.loads(path.read_text())
    data["final_eval_loss"] = 9.5
    path.write_text(json.dumps(data))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    monkeypatch.undo()
    again = collect.collect(out)
    assert again.runs.filter(pl.col("run_id") == rid)["final_eval_loss"][0] == 9.5


def test_several_directories_and_duplicates(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    synth.simulate(a, curves=False)
    synth.simulate(b, spec=synth.tiny_spec(("lora",), name="other", seeds=[1]),
                       curves=False)  # fmt: skip
    c = collect.collect([a, b], cache=False)
    assert set(c.runs["source"]) == {str(a), str(b)}
    assert c.runs["run_id"].is_unique().all()
    dup = collect.collect([a, a], cache=False)
    assert dup.runs.height == c.runs.filter(pl.col("source") == str(a)).height
    assert any("appear in several directories" in w for w in dup.warnings)


def test_unreadable_result_is_a_status(tmp_path):
    out = tmp_path / "sweep"
    synth.simulate(out, curves=False)
    rid = pl.read_parquet(out / "manifest.parquet")["run_id"][0]
    (out / "runs" / rid / "result.json").write_text("{not json")
    c = collect.collect(out, cache=False)
    row = c.runs.filter(pl.col("run_id") == rid).row(0, named=True)
    assert row["status"] == "unreadable" and "result.json" in row["error"]


def test_not_a_run_directory(tmp_path):
    with pytest.raises(ScalingError, match="run directory not found"):
        collect.collect(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScalingError, match="not a sweep run directory"):
        collect.collect(tmp_path / "empty")
