"""Training data: local files, a Hugging Face dataset or a built-in synthetic task → packed token sequences.

This module defines the data semantics and builds them in memory (:func:`prepare`: small data, the tiny
backbones' pre-training, and the reference the shards are tested against). Jobs read the same
sequences from token shards prepared once per sweep (:mod:`scaling.train.shards`), which reuse the
pieces below (:func:`encode`, :func:`check_size`, :func:`train_start`, :func:`batch_indices`).

    >>> from scaling.train import data
    >>> from scaling.train.tokenizers import load_tokenizer
    >>> from scaling.sweep import DatasetSpec
    >>> tokenizer = load_tokenizer("path/to/backbone")          # or byte_tokenizer() for tiny models
    >>> td = data.prepare(DatasetSpec().to_dict(), tokenizer, seq_len=256, train_sequences=800, max_epochs=None)
    >>> td.train_ids.shape, td.eval_ids.shape                     # (≥800, 256), (64, 256)
    >>> data.batch_indices(len(td.train_ids), seed=1, start=16 * step, count=16)   # one step's batch

How a dataset becomes sequences:

1. Documents. ``dataset.path`` (a file, a directory searched recursively, or a glob): ``.jsonl``/``.ndjson``,
   ``.json`` (an array of records), ``.parquet`` read with polars, and ``.txt``/``.md`` split into one document
   per paragraph (at blank lines, so one big text file still shuffles and splits). Records with
   ``prompt_field`` and ``response_field`` are prompt/response pairs; else ``text_field`` is plain text.
   Without a path, ``synthetic-arithmetic`` generates examples offline and any other name is loaded with
   ``datasets.load_dataset(name, split=split)``.
2. Tokens. The backbone's own tokenizer, no special tokens, then ``[bos] + doc + [eos]`` (bos only if the
   tokenizer has one). Labels equal the ids, except that a pair's bos and prompt tokens are ``-100`` so the
   loss is on the response (and its eos) only.
3. Held-out split. Documents are shuffled by ``dataset.seed`` (not the run's seed), so every run of a sweep
   evaluates on the same sequences: the first ``eval_sequences × seq_len`` tokens. Training data starts at
   the next document boundary, so no document is in both. Synthetic examples are already random and are
   not shuffled: the held-out set is then the same however many examples a run generates.
4. Packing. The stream is cut into ``seq_len`` chunks and the remainder dropped; documents attend to the
   ones before them in the same chunk (the usual packing trade-off: no padding, no attention masks).
5. Batches. :func:`batch_indices` visits every training sequence once per epoch in an order set by the
   run's seed and the epoch, a pure function of the step so a resumed run sees the same batches.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
import re
import weakref
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from scaling.errors import ScalingError, one_line
from scaling.train.synthetic import OPS, SYNTHETIC, arithmetic_example

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE = -100  # label of positions without loss (torch's CrossEntropyLoss ignore_index)
TABLE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet")
TEXT_SUFFIXES = (".txt", ".md")
ENCODE_CHUNK = 8192  # documents per tokenizer call: bounds the Python lists alive at once


def keyed_rng(*keys: int) -> np.random.Generator:
    """A numpy Generator keyed by integers (negative seeds map to distinct non-negative entropy)."""
    return np.random.default_rng([k % 2**64 for k in keys])


# --- documents ----------------------------------------------------------------------------------------


def fields_of(columns: list[str], dataset: dict[str, Any], where: str) -> list[str]:
    """``[prompt, response]`` or ``[text]``: the columns this dataset is read from."""
    pair = [dataset["prompt_field"], dataset["response_field"]]
    if all(name in columns for name in pair):
        return pair
    if dataset["text_field"] in columns:
        return [dataset["text_field"]]
    raise ScalingError(
        f"{where} has neither a '{dataset['text_field']}' column nor '{pair[0]}' and '{pair[1]}' "
        f"columns; found: {', '.join(columns) or 'none'} "
        "(set dataset.text_field, or dataset.prompt_field and dataset.response_field)"
    )


def input_files(path: str) -> list[Path]:
    if any(c in path for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(path), recursive=True))
        if not files:
            raise ScalingError(f"dataset path not found: {path} (no file matches)")
    else:
        root = Path(path).expanduser()
        if not root.exists():
            raise ScalingError(f"dataset path not found: {root}")
        files = sorted(f for f in root.rglob("*") if f.is_file()) if root.is_dir() else [root]
    files = [f for f in files if f.suffix.lower() in TABLE_SUFFIXES + TEXT_SUFFIXES]
    if not files:
        suffixes = ", ".join(TABLE_SUFFIXES + TEXT_SUFFIXES)
        raise ScalingError(f"no dataset files at {path}: expected {suffixes}")
    return files


def read_file(file: Path, dataset: dict[str, Any]) -> pl.DataFrame:
    """One file as a table of the dataset's text or prompt/response columns, as strings."""
    suffix = file.suffix.lower()
    try:
        if suffix in TEXT_SUFFIXES:
            paragraphs = re.split(r"\n(?:[ \t]*\n)+", file.read_text())
            texts = [p.rstrip() for p in paragraphs if p.strip()]
            return pl.DataFrame(
                {dataset["text_field"]: texts}, schema={dataset["text_field"]: pl.String}
            )
        read = {".parquet": pl.read_parquet, ".json": pl.read_json}.get(suffix, pl.read_ndjson)
        frame = read(file)
    except (OSError, UnicodeDecodeError, pl.exceptions.PolarsError) as e:
        raise ScalingError(f"cannot read dataset file {file}: {one_line(e)}") from None
    fields = fields_of(frame.columns, dataset, f"dataset file {file}")
    return frame.select(pl.col(name).cast(pl.String) for name in fields)


def file_documents(dataset: dict[str, Any]) -> pl.DataFrame:
    frames = [read_file(file, dataset) for file in input_files(dataset["path"])]
    if len({tuple(frame.columns) for frame in frames}) > 1:
        raise ScalingError(
            f"dataset path {dataset['path']} mixes plain-text and prompt/response files; "
            "point it at one kind (a glob can select them)"
        )
    return pl.concat(frames)


def _hub_documents(dataset: dict[str, Any]) -> pl.DataFrame:
    """A Hugging Face dataset by name (needs ``pip install datasets`` and usually network)."""
    name, split = dataset["name"], dataset["split"]
    try:
        import datasets
    except ImportError:
        raise ScalingError(
            f"dataset {name!r} needs `pip install datasets` (or set dataset.path to local files, "
            f"or use dataset.name = {SYNTHETIC!r}, which runs offline)"
        ) from None
    try:
        hub = datasets.load_dataset(name, split=split)
    except Exception as e:  # no network, unknown name or split, bad files: one line for the user
        raise ScalingError(f"cannot load dataset {name!r} split {split!r}: {one_line(e)}") from None
    fields = fields_of(list(hub.column_names), dataset, f"dataset {name!r}")
    frame = pl.DataFrame({field: list(hub[field]) for field in fields})
    return frame.select(pl.all().cast(pl.String))


# --- tokens -------------------------------------------------------------------------------------------


_FAST_MATCHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""tokenizer → (its backend, whether ``encode_batch_fast`` gave the tokenizer's own ids): weak, so a
verdict dies with its tokenizer and never passes to a later one at the same address (as an ``id()``
key could), and per tokenizer, since two tokenizers sharing a backend may call it differently."""


def _fast_verdict(tokenizer, backend) -> bool | None:
    """The recorded verdict for ``tokenizer`` over ``backend`` (None: not checked yet; False also for
    a tokenizer that cannot be weakly referenced, whose verdict could not be kept)."""
    try:
        seen = _FAST_MATCHES.get(tokenizer)
    except TypeError:
        return False
    return None if seen is None or seen[0] is not backend else seen[1]


def token_ids(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """``tokenizer(texts, add_special_tokens=False)["input_ids"]``, through the backend's
    ``encode_batch_fast`` (no offsets: about 2.5× faster) once it has given the same ids as the call on
    a first batch; a tokenizer it does not match (or has no backend) keeps the call."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    fast = getattr(backend, "encode_batch_fast", None)
    kwargs = dict(add_special_tokens=False, return_attention_mask=False, verbose=False)
    verdict = False if fast is None else _fast_verdict(tokenizer, backend)
    if verdict is False:
        return tokenizer(texts, **kwargs)["input_ids"]
    ids = [e.ids for e in fast(texts, add_special_tokens=False)]
    if verdict is None:
        reference = tokenizer(texts, **kwargs)["input_ids"]
        _FAST_MATCHES[tokenizer] = (backend, ids == reference)
        return reference
    return ids


def _flat(lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
    return np.fromiter(
        chain.from_iterable(lists), dtype=np.int64, count=int(lengths.sum())
    ), lengths


def _place(ids: np.ndarray, at: np.ndarray, flat: np.ndarray, lengths: np.ndarray) -> None:
    """Write each document's piece of ``flat`` (``lengths``) into ``ids`` from its offset ``at``."""
    ids[np.repeat(at - (np.cumsum(lengths) - lengths), lengths) + np.arange(flat.size)] = flat


def encode(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], responses: list[str] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat ids and labels of ``[bos] + text + [eos]`` (or ``[bos] + prompt + response + [eos]``) per
    document, and each document's length."""
    n_bos = int(tokenizer.bos_token_id is not None)
    parts = []
    for i in range(0, len(texts), ENCODE_CHUNK):
        first, n_first = _flat(token_ids(tokenizer, texts[i : i + ENCODE_CHUNK]))
        if responses is None:
            second, n_second, masked = None, np.zeros_like(n_first), np.zeros_like(n_first)
        else:
            second, n_second = _flat(token_ids(tokenizer, responses[i : i + ENCODE_CHUNK]))
            masked = n_bos + n_first
        lengths = n_bos + n_first + n_second + 1
        starts = np.cumsum(lengths) - lengths
        ids = np.empty(int(lengths.sum()), dtype=np.int64)
        if n_bos:
            ids[starts] = tokenizer.bos_token_id
        _place(ids, starts + n_bos, first, n_first)
        if second is not None:
            _place(ids, starts + n_bos + n_first, second, n_second)
        ids[starts + lengths - 1] = tokenizer.eos_token_id
        position = np.arange(ids.size) - np.repeat(starts, lengths)
        labels = np.where(position < np.repeat(masked, lengths), IGNORE, ids)
        parts.append((ids, labels, lengths))
    return _concat(parts)


def _concat(parts: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    return tuple(np.concatenate(arrays) for arrays in zip(*parts, strict=True))


def _table_tokens(
    frame: pl.DataFrame, tokenizer: PreTrainedTokenizerBase, source: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    frame = frame.drop_nulls()
    if frame.height == 0:
        raise ScalingError(f"dataset {source} has no documents")
    columns = [frame[name].to_list() for name in frame.columns]
    return encode(tokenizer, columns[0], columns[1] if len(columns) == 2 else None)


def _shuffle(
    ids: np.ndarray, labels: np.ndarray, lengths: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reorder whole documents by a permutation keyed by the data seed."""
    order = keyed_rng(seed).permutation(lengths.size)
    starts = np.cumsum(lengths) - lengths
    lengths = lengths[order]
    offset = starts[order] - (np.cumsum(lengths) - lengths)
    gather = np.arange(ids.size) + np.repeat(offset, lengths)
    return ids[gather], labels[gather], lengths


def train_start(lengths: np.ndarray, eval_tokens: int) -> int | None:
    """First document boundary at or after the held-out tokens (None: the data ends first)."""
    ends = np.cumsum(lengths)
    k = int(np.searchsorted(ends, eval_tokens))
    return int(ends[k]) if k < ends.size else None


def synthetic_docs_needed(
    lengths: np.ndarray, dataset: dict[str, Any], *, seq_len: int, train_sequences: int
) -> int | None:
    """How many of the synthetic examples (``lengths``, in order) a run keeps: the fewest that give
    ``dataset.tokens`` tokens, or (unset) the held-out set plus ``train_sequences`` training sequences;
    None when ``lengths`` are too few."""
    if dataset["tokens"]:
        end = int(dataset["tokens"])
    else:
        start = train_start(lengths, dataset["eval_sequences"] * seq_len)
        if start is None:
            return None
        end = start + train_sequences * seq_len
    k = int(np.searchsorted(np.cumsum(lengths), end))
    return k + 1 if k < lengths.size else None


def synthetic_chunk(dataset: dict[str, Any], first: int, count: int) -> tuple[list[str], list[str]]:
    """Prompts and responses of synthetic examples ``first .. first + count - 1``."""
    examples = [
        arithmetic_example(
            i, difficulty=dataset["difficulty"], seed=dataset["seed"], ops=dataset.get("ops", OPS)
        )
        for i in range(first, first + count)
    ]
    return [e["prompt"] for e in examples], [e["response"] for e in examples]


def synthetic_batch(want: int, have_tokens: int, have_docs: int) -> int:
    """Examples to generate next: the rest at the mean length so far, +5% (the boundary slack is at
    most one more round)."""
    if have_docs == 0:
        return 256
    return max(64, int((want - have_tokens) / have_tokens * have_docs * 1.05))


def _synthetic_tokens(
    dataset: dict[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    *,
    seq_len: int,
    train_sequences: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encode the fewest examples that give ``dataset.tokens`` tokens, or (unset) the held-out set plus
    ``train_sequences`` training sequences."""
    want = int(dataset["tokens"] or dataset["eval_sequences"] * seq_len + train_sequences * seq_len)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    n = 0
    while True:
        batch = synthetic_batch(want, sum(p[0].size for p in parts), n)
        parts.append(encode(tokenizer, *synthetic_chunk(dataset, n, batch)))
        n += batch
        ids, labels, lengths = _concat(parts)
        keep = synthetic_docs_needed(
            lengths, dataset, seq_len=seq_len, train_sequences=train_sequences
        )
        if keep is not None:
            end = int(lengths[:keep].sum())
            return ids[:end], labels[:end], lengths[:keep]


# --- packing ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TokenData:
    """Packed sequences of one dataset: ``*_ids`` int64 ``[n, seq_len]``, ``*_labels`` the same shape
    with ``-100`` where there is no loss (prompt tokens)."""

    train_ids: np.ndarray
    train_labels: np.ndarray
    eval_ids: np.ndarray
    eval_labels: np.ndarray
    source: str
    """What the data is, for logs and results: the path, the dataset name or the synthetic task."""

    @property
    def train_tokens(self) -> int:
        return int(self.train_ids.size)

    @property
    def n_train(self) -> int:
        return len(self.train_ids)

    def batch(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ids and labels of training sequences ``idx`` (what the job draws each step)."""
        return self.train_ids[idx], self.train_labels[idx]


def check_size(
    n_tokens: int,
    start: int,
    *,
    source: str,
    seq_len: int,
    eval_sequences: int,
    train_sequences: int,
    max_epochs: float | None,
) -> int:
    """Training sequences in a stream of ``n_tokens`` whose training part starts at ``start``; a
    one-line error when the held-out set does not fit or the run would need more epochs than
    ``max_epochs`` allows."""
    eval_tokens = eval_sequences * seq_len
    if n_tokens < eval_tokens:
        raise ScalingError(
            f"dataset {source} has {n_tokens:,} tokens, fewer than its {eval_sequences} held-out "
            f"sequences of {seq_len} tokens need ({eval_tokens:,}); lower dataset.eval_sequences"
        )
    n_train = (n_tokens - start) // seq_len
    if n_train * (max_epochs or 1) < train_sequences:
        epochs = f"{train_sequences / n_train:.2f} epochs" if n_train else "no training data left"
        allow = (
            "set constraints.max_epochs to allow repetition"
            if max_epochs is None
            else f"constraints.max_epochs = {max_epochs:g} allows fewer"
        )
        raise ScalingError(
            f"dataset {source} is too small: {n_tokens:,} tokens, {n_train:,} training sequences of "
            f"{seq_len} tokens after {eval_sequences} held out; the run needs {train_sequences:,} "
            f"sequences ({train_sequences * seq_len:,} tokens, {epochs}); {allow}"
        )
    return n_train


def _pack(
    ids: np.ndarray,
    labels: np.ndarray,
    lengths: np.ndarray,
    *,
    source: str,
    seq_len: int,
    eval_sequences: int,
    train_sequences: int,
    max_epochs: float | None,
) -> TokenData:
    eval_tokens = eval_sequences * seq_len
    start = train_start(lengths, eval_tokens) or ids.size  # never 0: eval_tokens > 0
    n_train = check_size(ids.size, start, source=source, seq_len=seq_len,
                         eval_sequences=eval_sequences, train_sequences=train_sequences,
                         max_epochs=max_epochs)  # fmt: skip
    train = slice(start, start + n_train * seq_len)
    return TokenData(
        train_ids=ids[train].reshape(n_train, seq_len),
        train_labels=labels[train].reshape(n_train, seq_len),
        eval_ids=ids[:eval_tokens].reshape(eval_sequences, seq_len),
        eval_labels=labels[:eval_tokens].reshape(eval_sequences, seq_len),
        source=source,
    )


def source_name(dataset: dict[str, Any]) -> str:
    """What the data is, as logs, results and the plan header name it."""
    if dataset.get("path"):
        return str(dataset["path"])
    if dataset["name"] == SYNTHETIC:
        return f"{SYNTHETIC} (difficulty {dataset['difficulty']}, seed {dataset['seed']})"
    return f"{dataset['name']} ({dataset['split']})"


def prepare(
    dataset: dict[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    *,
    seq_len: int,
    train_sequences: int,
    max_epochs: float | None,
) -> TokenData:
    """Load, tokenise, split and pack ``dataset`` (``DatasetSpec.to_dict()``) for a run that consumes
    ``train_sequences`` sequences of ``seq_len`` tokens; see the module docstring for each step.

    Raises a one-line :class:`ScalingError` for a missing path, unusable columns, or data that is too
    small for the run unless ``max_epochs`` (``constraints.max_epochs``) allows enough repetition.
    """
    source = source_name(dataset)
    if dataset.get("path"):
        tokens = _shuffle(
            *_table_tokens(file_documents(dataset), tokenizer, source), dataset["seed"]
        )
    elif dataset["name"] == SYNTHETIC:
        tokens = _synthetic_tokens(
            dataset, tokenizer, seq_len=seq_len, train_sequences=train_sequences
        )
    else:
        tokens = _shuffle(
            *_table_tokens(_hub_documents(dataset), tokenizer, source), dataset["seed"]
        )
    return _pack(
        *tokens,
        source=source,
        seq_len=seq_len,
        eval_sequences=dataset["eval_sequences"],
        train_sequences=train_sequences,
        max_epochs=max_epochs,
    )


# --- batches ------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def _epoch_order(n_sequences: int, seed: int, epoch: int) -> np.ndarray:
    order = keyed_rng(seed, epoch).permutation(n_sequences)
    order.flags.writeable = False  # shared by the cache
    return order


def batch_indices(n_sequences: int, *, seed: int, start: int, count: int) -> np.ndarray:
    """Training-sequence indices at positions ``start .. start + count - 1`` of an endless stream that
    visits every sequence once per epoch, in an order permuted by ``(seed, epoch)``.

    A pure function of its arguments: a run resumes at any step with ``start = step × batch_size``.
    """
    if n_sequences < 1:
        raise ScalingError("no training sequences to draw batches from")
    epochs, offsets = np.divmod(np.arange(start, start + count, dtype=np.int64), n_sequences)
    out = np.empty(count, dtype=np.int64)
    for epoch in np.unique(epochs):
        here = epochs == epoch
        out[here] = _epoch_order(n_sequences, seed, int(epoch))[offsets[here]]
    return out
