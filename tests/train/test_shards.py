"""Token shards: the same batches as the in-memory path, prompt masks, the cache (reuse, sharing, keys),
partial and corrupt shards rebuilt, chunked sources, parallel tokenising and Hugging Face streaming."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from scaling.errors import ScalingError
from scaling.sweep import DatasetSpec
from scaling.train import data, shards, sources, tokenizers


@pytest.fixture(scope="module")
def tok():
    return tokenizers.byte_tokenizer()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(shards.CACHE_ENV, str(root))
    return root


def spec(**fields) -> dict:
    return {**DatasetSpec(**fields).to_dict(), "max_epochs": fields.pop("max_epochs", None)}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def docs(n: int) -> list[str]:
    return [f"<{i}>" + f"{'abcdefgh'[i % 8]}<{i}>" * (1 + i % 9) for i in range(n)]


def pairs(n: int) -> list[dict]:
    return [
        {"prompt": f"Q{i}: " + "x" * (i % 5), "response": f"<{i}>" + "y" * (i % 11)}
        for i in range(n)
    ]


def assert_same(dataset: dict, tok, *, seq_len: int, train_sequences: int, max_epochs=None):
    """The shards' view of a run equals the in-memory packing: held-out set, every training
    sequence and label, the batch stream the run's seed draws, and the source it names."""
    memory = data.prepare(dataset, tok, seq_len=seq_len, train_sequences=train_sequences,
                          max_epochs=max_epochs)  # fmt: skip
    view = shards.for_run(dataset, tok, seq_len=seq_len, train_sequences=train_sequences,
                          max_epochs=max_epochs)  # fmt: skip
    assert view.n_train == memory.n_train and view.source == memory.source
    assert np.array_equal(view.eval_ids, memory.eval_ids)
    assert np.array_equal(view.eval_labels, memory.eval_labels)
    every = np.arange(memory.n_train)
    for a, b in zip(view.batch(every), memory.batch(every), strict=True):
        assert a.dtype == b.dtype == np.int64 and np.array_equal(a, b)
    for step in range(3):  # what the job draws: same indices, same tensors
        idx = data.batch_indices(view.n_train, seed=7, start=step * 5, count=5)
        for a, b in zip(view.batch(idx), memory.batch(idx), strict=True):
            assert np.array_equal(a, b)
    return view, memory


def test_plain_text_shards_give_the_in_memory_batches(tok, cache, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in docs(400)])
    view, _ = assert_same(spec(path=str(path), eval_sequences=3), tok, seq_len=32,
                          train_sequences=20)  # fmt: skip
    assert view.shards.dtype == np.uint16 and not view.shards.index["supervised"]
    assert view.shards.disk_bytes() / view.shards.tokens < 4  # uint16 ids + 4 bytes per document
    # another seq_len and held-out size: a view of the same entry, nothing rebuilt
    again, _ = assert_same(spec(path=str(path), eval_sequences=5), tok, seq_len=16,
                           train_sequences=50)  # fmt: skip
    assert again.shards.path == view.shards.path and again.shards.reused


def test_prompt_masks_survive_the_shards(tok, cache, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", pairs(300))
    view, memory = assert_same(spec(path=str(path), eval_sequences=2), tok, seq_len=48,
                               train_sequences=30)  # fmt: skip
    assert view.shards.index["supervised"]
    ids, labels = view.batch(np.arange(view.n_train))
    masked = labels == data.IGNORE
    assert 0.2 < masked.mean() < 0.8 and np.array_equal(labels[~masked], ids[~masked])
    # every masked run starts at a bos and covers exactly bos + prompt
    stream_ids, stream_labels = ids.ravel(), labels.ravel()
    starts = np.flatnonzero(stream_ids == tok.bos_token_id)
    for s in starts[1:20]:
        prompt = tok.decode(stream_ids[s + 1 : s + 20].tolist()).split(":")[0]
        assert re.fullmatch(r"Q\d+", prompt)
        n = 1 + len(prompt) + 2 + int(prompt[1:]) % 5  # bos, "Qi", ": ", the x's
        assert (stream_labels[s : s + n] == data.IGNORE).all() and stream_labels[
            s + n
        ] != data.IGNORE


@pytest.mark.parametrize("train_sequences", [5, 40])
def test_synthetic_data_goes_through_the_shards_with_the_same_batches(tok, cache, train_sequences):
    assert_same(spec(eval_sequences=3), tok, seq_len=64, train_sequences=train_sequences)
    assert_same(spec(eval_sequences=2, tokens=3000), tok, seq_len=64, train_sequences=20)


def test_open_ended_synthetic_grows_once_and_keeps_its_prefix(tok, cache):
    dataset = spec(eval_sequences=2)
    big = shards.prepare(dataset, tok, seq_len=32, train_sequences=60)
    small = shards.prepare(dataset, tok, seq_len=32, train_sequences=10)  # smaller: reused
    assert small.reused and small.path == big.path
    assert_same(dataset, tok, seq_len=32, train_sequences=10)
    bigger = shards.prepare(dataset, tok, seq_len=32, train_sequences=200)  # larger: grown
    assert not bigger.reused and bigger.tokens > big.tokens
    assert_same(dataset, tok, seq_len=32, train_sequences=60)


def test_a_second_prepare_reuses_the_cache_and_tokenizers_are_shared(tok, cache, tmp_path,
                                                                     monkeypatch):  # fmt: skip
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in docs(200)])
    dataset = spec(path=str(path), eval_sequences=2)
    first = shards.prepare(dataset, tok, seq_len=32, train_sequences=10)
    assert not first.reused and [p.name for p in cache.iterdir() if not p.name.startswith(".")] == [
        first.path.name
    ]
    for name in ("a", "b"):  # two backbones saved with the same tokenizer: one key
        tokenizers.save_byte_tokenizer(tmp_path / name)

    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt a usable entry")

    monkeypatch.setattr(shards, "_build", no_build)
    for name in ("a", "b"):
        loaded = tokenizers.load_tokenizer(tmp_path / name)
        again = shards.prepare(dataset, loaded, seq_len=64, train_sequences=5, verify=True)
        assert again.reused and again.path == first.path
    monkeypatch.undo()
    # what changes the tokens changes the key: the data seed, the file's contents, the tokenizer
    other = shards.prepare(spec(path=str(path), seed=1), tok, seq_len=32, train_sequences=1)
    assert other.path != first.path
    write_jsonl(path, [{"text": t} for t in docs(201)])
    assert shards.prepare(dataset, tok, seq_len=32, train_sequences=1).path != first.path
    wider = tokenizers.byte_tokenizer()
    wider.add_tokens(["<extra>"])
    assert shards.cache_key(dataset, wider) != shards.cache_key(dataset, tok)


@pytest.mark.parametrize("damage", ["truncate", "flip", "index"])
def test_a_partial_or_corrupt_entry_is_rebuilt_never_used(tok, cache, tmp_path, damage):
    path = write_jsonl(tmp_path / "p.jsonl", pairs(200))
    dataset = spec(path=str(path), eval_sequences=2)
    good = shards.prepare(dataset, tok, seq_len=32, train_sequences=10)
    expected = good.index["files"]
    tokens = good.path / shards.TOKENS
    if damage == "truncate":  # a partial copy: caught by the size check every job makes
        with open(tokens, "r+b") as f:
            f.truncate(tokens.stat().st_size - 7)
    elif damage == "flip":  # same size, other bytes: caught by the sweep's hash check
        raw = bytearray(tokens.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        tokens.write_bytes(bytes(raw))
    else:
        (good.path / shards.INDEX).write_text("{not json")
    if damage == "flip":
        assert (
            shards.prepare(dataset, tok, seq_len=32, train_sequences=10, verify=True).reused
            is False
        )
    else:
        view = shards.for_run(dataset, tok, seq_len=32, train_sequences=10, max_epochs=None)
        assert not view.shards.reused
    rebuilt = shards.prepare(dataset, tok, seq_len=32, train_sequences=10, verify=True)
    assert rebuilt.reused and rebuilt.index["files"] == expected
    assert_same(dataset, tok, seq_len=32, train_sequences=10)


def test_sizes_are_checked_against_the_run(tok, cache, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in docs(100)])
    dataset = spec(path=str(path), eval_sequences=2)
    n = shards.for_run(dataset, tok, seq_len=32, train_sequences=1, max_epochs=None).n_train
    with pytest.raises(ScalingError, match=f"needs {3 * n:,} sequences.*constraints.max_epochs"):
        shards.for_run(dataset, tok, seq_len=32, train_sequences=3 * n, max_epochs=None)
    assert (
        shards.for_run(dataset, tok, seq_len=32, train_sequences=3 * n, max_epochs=3).n_train == n
    )
    empty = write_jsonl(tmp_path / "e.jsonl", [{"text": None}])
    with pytest.raises(ScalingError, match="has no documents"):
        shards.prepare(spec(path=str(empty)), tok, seq_len=32, train_sequences=1)
    assert not any(p.name.startswith("e.jsonl") for p in cache.iterdir())  # nothing half-built


def test_chunked_sources_read_the_documents_the_whole_file_reader_does(tok, tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "BLOCK_BYTES", 97)  # many JSONL blocks, cut at line ends
    monkeypatch.setattr(sources, "CHUNK_DOCS", 7)
    monkeypatch.setattr(sources, "CHUNK_CHARS", 60)  # and at most ~60 characters
    rows = [{"prompt": f"<{i}> q" * (i % 4 + 1), "response": None if i % 13 == 5 else f"r{i}",
             "n": i} for i in range(120)]  # fmt: skip
    (tmp_path / "a").mkdir()
    write_jsonl(tmp_path / "a" / "p.jsonl", rows[:50])
    (tmp_path / "a" / "q.json").write_text(json.dumps(rows[50:70]))
    pl.DataFrame(rows[70:]).write_parquet(tmp_path / "a" / "r.parquet", row_group_size=9)
    text = "one\n\n  two keeps its indent\nand its lines\n \n\n\nthree\n\n\n" + "\n\n".join(
        docs(30)
    )
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "x.txt").write_text("  \n\nlead\n\t\n" + text + "\n \t")
    (tmp_path / "t" / "y.md").write_text("# four\r\n\r\nfive\n")
    for path, fields in [(tmp_path / "a", {}), (tmp_path / "t", {}),
                         (tmp_path / "a", {"prompt_field": "x", "text_field": "n"})]:  # fmt: skip
        dataset = spec(path=str(path), **fields)
        whole = data.file_documents(dataset).drop_nulls()
        streamed = list(sources.chunks(dataset, size=sources.CHUNK_DOCS))
        assert max(len(t) for t, _ in streamed) <= 7
        for texts, responses in streamed:
            rows = [
                len(t) + (len(r) if responses else 0)
                for t, r in zip(texts, responses or texts, strict=True)
            ]
            assert len(rows) == 1 or sum(rows[:-1]) <= 60  # a chunk goes past the limit by one doc
        assert [t for c, _ in streamed for t in c] == whole[whole.columns[0]].to_list()
        if whole.width == 2:
            assert [r for _, c in streamed for r in c] == whole[whole.columns[1]].to_list()


def test_tokenising_on_worker_processes_gives_the_same_files(tok, cache, tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "p.jsonl", pairs(3000))
    dataset = spec(path=str(path), eval_sequences=2)
    single = shards.prepare(dataset, tok, seq_len=32, train_sequences=10)
    monkeypatch.setattr(shards, "PARALLEL_BYTES", 0)
    monkeypatch.setattr(sources, "CHUNK_DOCS", 500)  # several chunks in flight on 2 workers
    monkeypatch.setattr(shards, "MAX_WORKERS", 2)
    monkeypatch.setattr(shards.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert shards._workers(dataset, 32, 10) == 2
    monkeypatch.setenv(shards.CACHE_ENV, str(tmp_path / "cache2"))
    parallel = shards.prepare(dataset, tok, seq_len=32, train_sequences=10)
    assert parallel.path.parent != single.path.parent and not parallel.reused
    assert parallel.index["files"] == single.index["files"]  # same bytes, same hashes


def test_hugging_face_datasets_are_streamed(tok, cache, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    folder = tmp_path / "hub-like"
    folder.mkdir()
    datasets.Dataset.from_list(pairs(150)).to_parquet(str(folder / "train.parquet"))
    dataset = spec(name=str(folder), eval_sequences=2)
    view, _ = assert_same(dataset, tok, seq_len=32, train_sequences=10)  # streamed vs loaded whole
    assert view.shards.index["supervised"] and view.source == f"{folder} (train)"
    with pytest.raises(ScalingError, match="cannot load dataset"):
        shards.prepare(spec(name=str(folder), split="nope"), tok, seq_len=32, train_sequences=1)


def test_fast_encoding_is_used_only_where_it_gives_the_tokenizers_ids(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(docs(300) * 3, trainers.BpeTrainer(
        vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"]))  # fmt: skip
    bpe = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>")  # fmt: skip
    texts = docs(50) + ["", "zz q"]
    reference = bpe(texts, add_special_tokens=False)["input_ids"]
    assert any(len(ids) < len(t) for ids, t in zip(reference, texts, strict=True))  # merges used
    assert data.token_ids(bpe, texts) == reference == data.token_ids(bpe, texts)

    class Skewed:  # a tokenizer whose own call does more than its backend
        backend_tokenizer = backend
        bos_token_id, eos_token_id = 1, 2

        def __call__(self, texts, **kwargs):
            return {
                "input_ids": [[7, *bpe(t, add_special_tokens=False)["input_ids"]] for t in texts]
            }

    skewed = Skewed()
    expected = skewed(texts)["input_ids"]
    assert data.token_ids(skewed, texts) == expected == data.token_ids(skewed, texts)

    class Sharing(Skewed):  # the same backend as bpe, whose fast ids matched bpe's own
        backend_tokenizer = bpe.backend_tokenizer

    sharing = Sharing()
    assert data.token_ids(sharing, texts) == expected == data.token_ids(sharing, texts)
    assert data.token_ids(bpe, texts) == reference  # and bpe's verdict stands

    class Counting(PreTrainedTokenizerFast):  # a real tokenizer class: its own call is counted
        calls = 0

        def __call__(self, *args, **kwargs):
            Counting.calls += 1
            return super().__call__(*args, **kwargs)

    counting = Counting(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                        unk_token="<unk>")  # fmt: skip
    assert [data.token_ids(counting, texts) for _ in range(3)] == [reference] * 3
    assert Counting.calls == 1  # checked once, then the backend's fast path


def test_the_quickstart_trains_on_the_same_batches_as_before(tok, cache):
    """sweeps/quickstart.toml's data (4e5 synthetic tokens, one epoch) through the shards: the runs
    behind the committed docs/quickstart/ outputs see exactly the sequences they saw in memory."""
    from scaling.sweep import load_spec

    root = Path(__file__).resolve().parents[2]
    quick = load_spec(root / "sweeps" / "quickstart.toml")
    dataset = {**quick.dataset.to_dict(), "max_epochs": quick.constraints.max_epochs}
    steps = 40
    view, _ = assert_same(dataset, tok, seq_len=quick.seq_len, max_epochs=dataset["max_epochs"],
                          train_sequences=steps * quick.batch_tokens // quick.seq_len)  # fmt: skip
    assert view.source == "synthetic-arithmetic (difficulty 3, seed 0)"


def test_a_job_waits_for_another_ones_build_and_reuses_it(tok, cache, tmp_path, capsys):
    """Jobs of an array start together: one builds under the entry's lock, the others wait for it and
    reuse what it built (here the 'other job' is this test holding the lock)."""
    import threading

    from scaling import io

    path = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in docs(100)])
    dataset = spec(path=str(path), eval_sequences=2)
    entry = shards.entry_path(shards.cache_key(dataset, tok))
    got: list = []
    with io.exclusive_lock(entry.with_name(f".{entry.name}.lock"), "test"):
        waiting = threading.Thread(
            target=lambda: got.append(shards.prepare(dataset, tok, seq_len=32, train_sequences=5))
        )
        waiting.start()
        waiting.join(timeout=1.5)
        assert waiting.is_alive() and not got  # blocked on the lock, nothing half-built
        built = shards._build(entry, shards.cache_key(dataset, tok), dataset, tok, seq_len=32,
                              train_sequences=5)  # fmt: skip
    waiting.join(timeout=30)
    assert got and got[0].reused and got[0].index == built.index
    assert "waiting for another process" in capsys.readouterr().err
