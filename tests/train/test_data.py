"""Data pipeline: byte tokenizer, synthetic arithmetic, file and hub loading, masking, packing, the
held-out split, batch order, and the one-line errors for bad input."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from scaling.errors import ScalingError
from scaling.sweep import DatasetSpec
from scaling.train import data, tokenizers
from scaling.train.synthetic import synthetic_arithmetic


@pytest.fixture(scope="module")
def tok():
    return tokenizers.byte_tokenizer()


def spec(**fields) -> dict:
    """What the training loop passes: the DatasetSpec fields plus max_epochs."""
    return {**DatasetSpec(**fields).to_dict(), "max_epochs": None}


def one_line(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


def unique_docs(n: int) -> list[str]:
    """Documents that name themselves throughout: ``<17>`` cannot be mistaken for a piece of another
    marker, and both parts of a document cut in two still carry it."""
    return [f"<{i}>" + f"{'abcdefgh'[i % 8]}<{i}>" * (2 + i % 5) for i in range(n)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def doc_ids(ids: np.ndarray, tok) -> set[int]:
    return {int(m) for row in ids for m in re.findall(r"<(\d+)>", tok.decode(row))}


# --- tokenizers ---------------------------------------------------------------------------------------


def test_byte_tokenizer_round_trips_and_saves(tok, tmp_path):
    from transformers import AutoTokenizer

    text = "Q: 482+39=\nnaïve café — ✓ \t\x00"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == list(text.encode())
    assert tok.decode(ids) == text
    assert len(tok) == tokenizers.BYTE_VOCAB <= 300
    specials = {tok.pad_token_id, tok.bos_token_id, tok.eos_token_id}
    assert len(specials) == 3 and min(specials) >= 256 and max(specials) < tokenizers.BYTE_VOCAB

    tokenizers.save_byte_tokenizer(tmp_path / "tok")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert loaded(text, add_special_tokens=False)["input_ids"] == ids
    assert (loaded.bos_token_id, loaded.eos_token_id) == (tok.bos_token_id, tok.eos_token_id)


def test_load_tokenizer_sets_a_missing_pad_token_to_eos(tmp_path):
    no_pad = tokenizers.byte_tokenizer()
    no_pad.pad_token = None
    no_pad.save_pretrained(tmp_path)
    loaded = tokenizers.load_tokenizer(tmp_path)
    assert loaded.pad_token_id == loaded.eos_token_id == no_pad.eos_token_id


@pytest.mark.parametrize("backbone", ["model-dir", "no-such-org/no-such-model"])
def test_load_tokenizer_errors_are_one_line(tmp_path, backbone):
    if backbone == "model-dir":  # a model saved without its tokenizer
        backbone = tmp_path / backbone
        backbone.mkdir()
        (backbone / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ScalingError) as e:
        tokenizers.load_tokenizer(backbone)
    assert str(backbone) in one_line(e)


# --- synthetic arithmetic -----------------------------------------------------------------------------


def test_synthetic_is_deterministic_and_prefix_stable():
    examples = synthetic_arithmetic(60, difficulty=3, seed=0)
    assert examples == synthetic_arithmetic(60, difficulty=3, seed=0)
    assert examples[:25] == synthetic_arithmetic(25, difficulty=3, seed=0)
    assert examples != synthetic_arithmetic(60, difficulty=3, seed=1)
    assert len({e["prompt"] for e in examples}) > 50


@pytest.mark.parametrize("difficulty", [1, 2, 5])
def test_synthetic_answers_and_steps_are_right(difficulty):
    ops = set()
    for example in synthetic_arithmetic(300, difficulty=difficulty, seed=7):
        a, op, b = re.fullmatch(r"Q: (\d+)([+*-])(\d+)=\n", example["prompt"]).groups()
        ops.add(op)
        assert max(len(a), len(b)) <= difficulty and (op != "*" or len(b) == 1)
        *steps, answer = example["response"].rstrip("\n").split("\n")
        expected = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
        assert answer == f"A: {expected}" and expected >= 0
        assert len(steps) >= max(len(a), len(b))  # one line per column (+ a final carry)
        for step in steps:  # "8+3+1=12, write 2, carry 1": the arithmetic of each line holds
            if "=" in step:
                expr, value = re.fullmatch(r"([\d+*-]+)=(\d+).*", step).groups()
                assert eval(expr) == int(value), step
    assert ops == {"+", "-", "*"}


def test_synthetic_ops_restrict_the_operations_and_leave_the_default_alone():
    both = synthetic_arithmetic(200, difficulty=3, seed=0, ops="+-*")
    assert both == synthetic_arithmetic(200, difficulty=3, seed=0)  # the default is unchanged
    no_mul = synthetic_arithmetic(200, difficulty=3, seed=0, ops="+-")
    assert {re.search(r"[+*-]", e["prompt"][3:]).group() for e in no_mul} == {"+", "-"}
    with pytest.raises(ValueError, match="ops must be drawn from"):
        synthetic_arithmetic(1, difficulty=3, seed=0, ops="/")


# --- masking, packing, held-out split -----------------------------------------------------------------


def test_prompt_tokens_are_masked_exactly(tok):
    td = data.prepare(spec(eval_sequences=2), tok, seq_len=256, train_sequences=4, max_epochs=None)
    # synthetic examples are not shuffled: the held-out stream opens with examples 0, 1, 2, ...
    ids, labels = [], []
    for ex in synthetic_arithmetic(6, difficulty=3, seed=0):
        prompt, response = list(ex["prompt"].encode()), list(ex["response"].encode())
        ids += [tok.bos_token_id, *prompt, *response, tok.eos_token_id]
        labels += [-100] * (1 + len(prompt)) + [*response, tok.eos_token_id]
    assert len(ids) < td.eval_ids.size
    assert td.eval_ids.ravel()[: len(ids)].tolist() == ids
    assert td.eval_labels.ravel()[: len(ids)].tolist() == labels
    kept = td.train_labels != -100
    assert np.array_equal(td.train_labels[kept], td.train_ids[kept])
    assert 0.3 < kept.mean() < 0.95


def test_packing_shapes_and_plain_text_labels(tok, tmp_path):
    texts = unique_docs(200)
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in texts])
    td = data.prepare(
        spec(path=str(path), eval_sequences=3), tok, seq_len=32, train_sequences=50, max_epochs=None
    )
    total = sum(len(t.encode()) + 2 for t in texts)  # + bos, eos
    assert td.eval_ids.shape == td.eval_labels.shape == (3, 32)
    n_train = td.train_ids.shape[0]
    assert td.train_ids.shape == td.train_labels.shape == (n_train, 32)
    assert 0 <= total - 3 * 32 - n_train * 32 < 32 + max(len(t) + 2 for t in texts)
    assert td.train_ids.dtype == td.train_labels.dtype == np.int64
    assert td.train_tokens == n_train * 32
    assert np.array_equal(td.train_labels, td.train_ids)
    assert np.array_equal(td.eval_labels, td.eval_ids)
    assert td.train_labels is not td.train_ids and td.source == str(path)


def test_held_out_depends_only_on_the_data_seed_and_is_disjoint(tok, tmp_path):
    path = str(write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in unique_docs(300)]))

    def run(seed: int, train_sequences: int) -> data.TokenData:
        return data.prepare(
            spec(path=path, seed=seed, eval_sequences=4),
            tok,
            seq_len=32,
            train_sequences=train_sequences,
            max_epochs=None,
        )

    small, large = run(0, 10), run(0, 100)  # runs of different budgets in one sweep
    assert np.array_equal(small.eval_ids, large.eval_ids)
    assert np.array_equal(small.train_ids, large.train_ids)
    assert small.train_ids[0, 0] == tok.bos_token_id  # training starts at a document boundary
    held_out, train = doc_ids(small.eval_ids, tok), doc_ids(small.train_ids, tok)
    assert held_out and train and not held_out & train
    assert held_out != set(range(len(held_out)))  # documents were shuffled
    assert held_out != doc_ids(run(1, 10).eval_ids, tok)


def test_synthetic_held_out_is_the_same_for_every_run_size(tok):
    def run(train_sequences: int) -> data.TokenData:
        return data.prepare(
            spec(eval_sequences=3),
            tok,
            seq_len=64,
            train_sequences=train_sequences,
            max_epochs=None,
        )

    small, large = run(5), run(40)
    assert small.train_ids.shape == (5, 64) and large.train_ids.shape == (40, 64)  # just enough
    assert np.array_equal(small.eval_ids, large.eval_ids)
    assert np.array_equal(small.train_ids, large.train_ids[:5])
    assert small.source == "synthetic-arithmetic (difficulty 3, seed 0)"


def test_synthetic_corpus_of_fixed_size_obeys_the_epoch_rule(tok):
    dataset = spec(tokens=3000, eval_sequences=2)
    td = data.prepare(dataset, tok, seq_len=64, train_sequences=20, max_epochs=None)
    assert 3000 - 2 * 64 - 2 * 64 - 200 < td.train_tokens <= 3000
    with pytest.raises(ScalingError) as e:
        data.prepare(dataset, tok, seq_len=64, train_sequences=200, max_epochs=None)
    assert "constraints.max_epochs" in one_line(e)
    assert data.prepare(dataset, tok, seq_len=64, train_sequences=200, max_epochs=5.0)


# --- files --------------------------------------------------------------------------------------------


def test_reads_jsonl_json_parquet_text_directories_and_globs(tok, tmp_path):
    rows = [{"prompt": f"<{i}> q", "response": f"r{i}", "extra": i} for i in range(40)]
    (tmp_path / "a").mkdir()
    write_jsonl(tmp_path / "a" / "p.jsonl", rows[:10])
    (tmp_path / "a" / "q.json").write_text(json.dumps(rows[10:20]))
    (tmp_path / "a" / "sub").mkdir()
    pl.DataFrame(rows[20:40]).write_parquet(tmp_path / "a" / "sub" / "r.parquet")
    (tmp_path / "a" / "notes.csv").write_text("ignored")
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "x.txt").write_text(
        "one\n\n  two keeps its indent\nand its lines\n \n\n\nthree\n"
    )
    (tmp_path / "t" / "y.md").write_text("# four\n")

    def docs(path: Path | str, **fields) -> pl.DataFrame:
        return data.file_documents(spec(path=str(path), **fields))

    assert docs(tmp_path / "a" / "p.jsonl").columns == ["prompt", "response"]
    assert docs(tmp_path / "a" / "q.json")["response"].to_list() == [f"r{i}" for i in range(10, 20)]
    assert docs(tmp_path / "a").height == 40  # recursive, sorted, other suffixes ignored
    assert docs(tmp_path / "a" / "*.json*").height == 20
    assert docs(tmp_path / "a" / "**" / "*.parquet").height == 20
    assert docs(tmp_path / "t")["text"].to_list() == [
        "one",
        "  two keeps its indent\nand its lines",
        "three",
        "# four",
    ]
    # no "question" column: falls back to the text field, numbers read as text
    assert docs(tmp_path / "a", prompt_field="question", text_field="extra")["extra"][3] == "3"

    td = data.prepare(
        spec(path=str(tmp_path / "a"), eval_sequences=1), tok, seq_len=16, train_sequences=20,
        max_epochs=None,
    )  # fmt: skip
    assert (td.train_labels == -100).any() and td.train_ids.shape[1] == 16


def test_file_errors_are_one_line(tok, tmp_path):
    def prepare(path: Path | str, **fields):
        with pytest.raises(ScalingError) as e:
            data.prepare(spec(path=str(path), **fields), tok, seq_len=16, train_sequences=1,
                         max_epochs=None)  # fmt: skip
        return one_line(e)

    assert (
        prepare(tmp_path / "missing.jsonl") == f"dataset path not found: {tmp_path}/missing.jsonl"
    )
    assert "dataset path not found" in prepare(tmp_path / "*.parquet")
    write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}])
    message = prepare(tmp_path / "d.jsonl")
    assert "question, answer" in message and "'text'" in message and "'prompt'" in message
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    assert "cannot read dataset file" in prepare(tmp_path / "bad.jsonl")
    (tmp_path / "d.csv").write_text("text\nhello\n")
    assert "no dataset files" in prepare(tmp_path / "d.csv")
    (tmp_path / "m").mkdir()
    write_jsonl(tmp_path / "m" / "a.jsonl", [{"prompt": "p", "response": "r"}])
    (tmp_path / "m" / "README.md").write_text("hello")
    assert "mixes" in prepare(tmp_path / "m")


def test_too_small_without_repetition_is_an_error_and_max_epochs_allows_it(tok, tmp_path):
    path = str(write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in unique_docs(100)]))
    fits = data.prepare(spec(path=path, eval_sequences=2), tok, seq_len=32, train_sequences=1,
                        max_epochs=None)  # fmt: skip
    n = fits.train_ids.shape[0]
    with pytest.raises(ScalingError) as e:
        data.prepare(spec(path=path, eval_sequences=2), tok, seq_len=32, train_sequences=3 * n,
                     max_epochs=None)  # fmt: skip
    message = one_line(e)
    assert path in message and f"{n:,} training sequences" in message
    assert f"needs {3 * n:,} sequences" in message and "constraints.max_epochs" in message
    with pytest.raises(ScalingError, match="max_epochs = 2 allows fewer"):
        data.prepare(spec(path=path, eval_sequences=2), tok, seq_len=32, train_sequences=3 * n,
                     max_epochs=2)  # fmt: skip
    repeated = data.prepare(spec(path=path, eval_sequences=2), tok, seq_len=32,
                            train_sequences=3 * n, max_epochs=3)  # fmt: skip
    assert np.array_equal(repeated.train_ids, fits.train_ids)
    with pytest.raises(ScalingError, match="held-out"):
        data.prepare(spec(path=path, eval_sequences=1000), tok, seq_len=32, train_sequences=1,
                     max_epochs=None)  # fmt: skip


# --- Hugging Face datasets ----------------------------------------------------------------------------


class FakeHubDataset:
    def __init__(self, columns: dict[str, list]):
        self.columns = columns
        self.column_names = list(columns)

    def __getitem__(self, name: str) -> list:
        return self.columns[name]


def fake_datasets(load_dataset) -> types.ModuleType:
    module = types.ModuleType("datasets")
    module.load_dataset = load_dataset
    return module


def test_hub_dataset_through_a_fake_datasets_module(tok, monkeypatch):
    calls = []

    def load_dataset(name, split):
        calls.append((name, split))
        return FakeHubDataset({"text": unique_docs(120), "id": list(range(120))})

    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(load_dataset))
    dataset = spec(name="someone/corpus", split="train[:90%]", eval_sequences=2)
    td = data.prepare(dataset, tok, seq_len=32, train_sequences=10, max_epochs=None)
    assert calls == [("someone/corpus", "train[:90%]")]
    assert td.source == "someone/corpus (train[:90%])" and td.eval_ids.shape == (2, 32)
    assert not doc_ids(td.eval_ids, tok) & doc_ids(td.train_ids, tok)


def test_hub_dataset_errors_are_one_line(tok, monkeypatch):
    dataset = spec(name="someone/corpus")

    def offline(name, split):
        raise ConnectionError(
            "Couldn't reach 'someone/corpus' on the Hub\n(LocalEntryNotFoundError)"
        )

    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(offline))
    with pytest.raises(ScalingError) as e:
        data.prepare(dataset, tok, seq_len=16, train_sequences=1, max_epochs=None)
    assert "cannot load dataset 'someone/corpus'" in one_line(e) and "reach" in str(e.value)

    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` raises ImportError
    with pytest.raises(ScalingError) as e:
        data.prepare(dataset, tok, seq_len=16, train_sequences=1, max_epochs=None)
    assert "pip install datasets" in one_line(e)


# --- batches ------------------------------------------------------------------------------------------


def test_batch_indices_permute_each_epoch_and_resume_anywhere():
    n = 7
    stream = data.batch_indices(n, seed=3, start=0, count=5 * n)
    epochs = stream.reshape(5, n)
    assert all(sorted(epoch) == list(range(n)) for epoch in epochs.tolist())
    assert len({tuple(epoch) for epoch in epochs.tolist()}) > 1  # reshuffled per epoch
    assert np.array_equal(stream, data.batch_indices(n, seed=3, start=0, count=5 * n))
    assert not np.array_equal(stream, data.batch_indices(n, seed=4, start=0, count=5 * n))
    cuts = [0, 3, 4, 11, 20, 33, 5 * n]
    pieces = [
        data.batch_indices(n, seed=3, start=a, count=b - a)
        for a, b in zip(cuts, cuts[1:], strict=False)
    ]
    assert np.array_equal(np.concatenate(pieces), stream)
    assert stream.dtype == np.int64
    with pytest.raises(ScalingError):
        data.batch_indices(0, seed=0, start=0, count=1)
