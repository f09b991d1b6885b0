"""`scaling sweep` checks the data at plan time and tokenises it once for every job: one-line errors with
nothing written, the dataset named in the header, the cache reused by a second sweep."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scaling import cli
from scaling.train import shards
from scaling.train.tokenizers import save_byte_tokenizer


@pytest.fixture(scope="module")
def backbones(tmp_path_factory) -> list[str]:
    """Two tiny backbones saved with the same (byte) tokenizer."""
    from conftest import make_tiny

    root = tmp_path_factory.mktemp("backbones")
    out = []
    for name, layers in (("a", 3), ("b", 2)):
        model = make_tiny("llama", root / name, num_hidden_layers=layers)
        save_byte_tokenizer(model)
        out.append(model)
    return out


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(shards.CACHE_ENV, str(root))
    return root


def write_spec(tmp_path: Path, backbones: list[str], dataset: str, constraints: str = "") -> Path:
    spec = tmp_path / "s.toml"
    spec.write_text(
        f'name = "s"\nbackbones = {json.dumps(backbones)}\nmethods = ["ladder"]\nseq_len = 32\n'
        "batch_tokens = 64\nmicro_batch_size = 2\nbudgets = [4e8]\n"
        '[method.ladder]\nreduction = [8]\nquantization = "none"\n'
        f"[dataset]\neval_sequences = 2\n{dataset}\n[constraints]\nmin_steps = 5\ntolerance = 0.05\n{constraints}"
    )
    return spec


def corpus(path: Path, n: int, **extra) -> Path:
    rows = [{"text": f"<{i}>" + "abc" * (i % 20), **extra} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sweep(spec: Path, out: Path, *extra: str) -> int:
    return cli.main(["sweep", str(spec), "--out", str(out), *extra])


@pytest.mark.parametrize(
    "dataset, message",
    [
        ('path = "{tmp}/missing.jsonl"', "dataset path not found"),
        ('path = "{tmp}/empty.jsonl"', "has no documents"),
        ('path = "{tmp}/d.jsonl"\ntext_field = "body"', "has neither a 'body' column"),
        ('path = "{tmp}/small.jsonl"\ntokens = 3e5', "is too small"),  # declared ≠ real size
    ],
)
@pytest.mark.parametrize("dry_run", [False, True])
def test_bad_data_is_one_line_at_plan_time_and_nothing_is_written(tmp_path, backbones, cache, capsys,
                                                                  dataset, message, dry_run):  # fmt: skip
    corpus(tmp_path / "d.jsonl", 60)
    corpus(tmp_path / "small.jsonl", 8)
    (tmp_path / "empty.jsonl").write_text("")
    constraints = "max_epochs = 1.0\n" if "tokens" in dataset else ""
    spec = write_spec(tmp_path, backbones[:1], dataset.format(tmp=tmp_path), constraints)
    out = tmp_path / "runs"
    code = sweep(spec, out, *(["--dry-run"] if dry_run else []))
    err = capsys.readouterr().err
    if dry_run and message == "is too small":  # sizes need the tokens: checked when written
        assert code == 0
        return
    assert code == 2 and err.count("\n") == 1 and message in err and "Traceback" not in err
    assert not out.exists()


def test_sweep_prepares_once_names_the_data_and_a_second_sweep_reuses_it(tmp_path, backbones, cache,
                                                                         capsys, monkeypatch):  # fmt: skip
    data_file = corpus(tmp_path / "d.jsonl", 400)
    spec = write_spec(tmp_path, backbones, f'path = "{data_file}"')
    assert sweep(spec, tmp_path / "runs", "--dry-run") == 0
    text = capsys.readouterr().out
    assert f"dataset {data_file}," in text and not cache.exists()  # a dry run prepares nothing
    assert sweep(spec, tmp_path / "runs") == 0
    text = capsys.readouterr().out
    line = next(ln for ln in text.splitlines() if ln.startswith("data for"))
    assert f"data for {backbones[0]}, {backbones[1]}: prepared" in line  # one copy, one tokenizer
    entries = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1 and str(entries[0]) in line

    def no_build(*args, **kwargs):
        raise AssertionError("a second sweep tokenised the corpus again")

    monkeypatch.setattr(shards, "_build", no_build)
    assert sweep(spec, tmp_path / "other-runs", "--json") == 0
    planned = json.loads(capsys.readouterr().out)
    assert [d["reused"] for d in planned["data"]] == [True]
    assert planned["data"][0]["path"] == str(entries[0])
    # and a job of the sweep trains on those shards without tokenising again
    from scaling.train.job import _prepare_data
    from scaling.train.tokenizers import load_tokenizer

    run = json.loads(next((tmp_path / "runs").glob("runs/*/spec.json")).read_text())
    view = _prepare_data(run, run["backbone"], load_tokenizer(run["backbone"]))
    assert view.shards.path == entries[0] and view.n_train > 0


def test_runs_of_the_same_size_are_checked_against_the_data_once(tmp_path, backbones, cache, capsys,
                                                                  monkeypatch):  # fmt: skip
    data_file = corpus(tmp_path / "d.jsonl", 400)
    spec = write_spec(tmp_path, backbones[:1], f'path = "{data_file}"')
    spec.write_text("seeds = [0, 1, 2]\n" + spec.read_text())  # three runs per size
    checked = []
    real = shards.layout

    def layout(prepared, dataset, **kw):
        checked.append((kw["seq_len"], kw["train_sequences"]))
        return real(prepared, dataset, **kw)

    monkeypatch.setattr(shards, "layout", layout)
    assert sweep(spec, tmp_path / "runs", "--json") == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    sizes = {(r["seq_len"], r["steps"] * r["batch_tokens"] // r["seq_len"]) for r in runs}
    assert len(runs) == 3 * len(sizes) and sorted(checked) == sorted(sizes)


def test_a_backbone_whose_tokenizer_is_not_here_is_left_to_its_jobs(tmp_path, backbones, cache,
                                                                    capsys):  # fmt: skip
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((Path(backbones[0]) / "config.json").read_text())
    spec = write_spec(tmp_path, [str(bare)], "")
    assert sweep(spec, tmp_path / "runs") == 0
    text = capsys.readouterr().out
    assert f"data for {bare}: tokenizer not available here" in text and "first job" in text
