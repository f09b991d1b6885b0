"""Token shards: a dataset tokenised once into flat memory-mapped files that every run streams.

    >>> from scaling.train import shards
    >>> prepared = shards.prepare(dataset, tokenizer, seq_len=1024, train_sequences=6400)  # or reuse
    >>> view = shards.open_run(prepared, dataset, seq_len=1024, train_sequences=6400, max_epochs=1.0)
    >>> ids, labels = view.batch(data.batch_indices(view.n_train, seed=0, start=0, count=64))

The layout of nanoGPT's and OLMo's pre-tokenised corpora: one flat file of token ids (``tokens.bin``,
``uint16`` when the vocabulary fits, else ``uint32``) that jobs memory-map, plus per document its length
(``lengths.npy``) and, for prompt/response data, how many of its leading tokens carry no loss
(``masked.npy``). Documents are stored already shuffled by ``dataset.seed`` (the synthetic task is not
shuffled), so the packed stream of :func:`scaling.train.data.prepare` is a contiguous slice: training
sequence ``i`` is ``tokens[start + i·L : start + (i+1)·L]`` and labels are rebuilt from the masks.
``index.json`` holds the format version, the cache key, counts, and each file's size and sha256.

Cache. Entries live under ``$SCALING_DATA_CACHE`` (default ``~/.cache/scaling/data``), one folder per
(documents, tokenizer, :data:`FORMAT_VERSION`): the key hashes the dataset fields that change the
tokens, each local file's path, size and modification time, and the tokenizer's serialised form, so
backbones that share a tokenizer share one copy and another sweep over the same corpus reuses it (a
hub dataset is keyed by its name and split: delete its entry to fetch a newer version). The
held-out split and the packing are not in the key: they are a view (:class:`RunData`) of the same
files for any ``seq_len`` and ``eval_sequences``. A folder is built in a temporary sibling and renamed
into place (:func:`scaling.io.atomic_dir`) under a lock, so concurrent jobs build it once and never see
half of one. An entry whose index is unreadable, of another format, or whose files have the wrong size
(a partial copy) is rebuilt; ``scaling sweep`` also re-hashes every file (a corrupted one is rebuilt,
never used), while jobs, which start by the hundred, check sizes only.

Memory. A job maps the token file through a file descriptor it holds for its life, and drops the
mapping after every batch, so its resident memory holds one batch of tokens and, for prompt/response
data, two int64 arrays per document (start, masked prefix) to rebuild labels, never the corpus.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import time
import weakref
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from scaling import io
from scaling.errors import ScalingError, one_line
from scaling.train import data, sources

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

FORMAT_VERSION = 1
CACHE_ENV = "SCALING_DATA_CACHE"
INDEX, TOKENS, LENGTHS, MASKED = "index.json", "tokens.bin", "lengths.npy", "masked.npy"
GATHER_TOKENS = 1 << 23  # tokens per step of the shuffling copy: bounds its index arrays (64 MiB)
PARALLEL_BYTES = 32 << 20  # smaller corpora are tokenised in-process (workers take ~1 s to start)
MAX_WORKERS = 8
LOCK_WAIT_S = 24 * 3600.0  # a job waits this long at most for another one's build
KEY_FIELDS = {
    "synthetic": ("name", "difficulty", "seed", "tokens", "ops"),
    "files": ("path", "text_field", "prompt_field", "response_field", "seed"),
    "hub": ("name", "split", "text_field", "prompt_field", "response_field", "seed"),
}
"""The dataset fields that change the stored tokens (``eval_sequences`` and ``max_epochs`` do not)."""


def cache_root() -> Path:
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "scaling" / "data"


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 of what decides the ids: the serialised tokenizer, its bos/eos and vocabulary size."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = (
        backend.to_str()
        if backend is not None
        else json.dumps(sorted(tokenizer.get_vocab().items()))
    )
    identity = [type(tokenizer).__name__, text, tokenizer.bos_token_id, tokenizer.eos_token_id,
                len(tokenizer)]  # fmt: skip
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()


def cache_key(dataset: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    where = sources.kind(dataset)
    fields = {k: dataset.get(k) for k in KEY_FIELDS[where]}
    if where == "synthetic" and not dataset.get("tokens"):
        fields["tokens"] = None  # open-ended: one entry, grown when a run needs more
    return {"format_version": FORMAT_VERSION, "kind": where, "dataset": fields,
            "files": sources.fingerprint(dataset), "tokenizer": tokenizer_fingerprint(tokenizer)}  # fmt: skip


def entry_path(key: dict[str, Any], root: Path | None = None) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    label = key["dataset"].get("path") or key["dataset"]["name"]
    slug = "".join(c if c.isalnum() or c in "._-" else "-" for c in Path(str(label)).name)[:40]
    return (root or cache_root()) / f"{slug.strip('-.') or 'data'}-{digest}"


# --- a prepared entry ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Shards:
    """A checked cache entry: its folder and index (per-document arrays loaded on demand)."""

    path: Path
    index: dict[str, Any]
    reused: bool = False

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.index["dtype"])

    @property
    def tokens(self) -> int:
        return int(self.index["tokens"])

    def lengths(self) -> np.ndarray:
        return np.load(self.path / LENGTHS).astype(np.int64)

    def masked(self) -> np.ndarray | None:
        return np.load(self.path / MASKED).astype(np.int64) if self.index["supervised"] else None

    def disk_bytes(self) -> int:
        return sum(f["bytes"] for f in self.index["files"].values())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:  # plain reads: hashing does not map the file into this process
        while block := f.read(16 << 20):
            h.update(block)
    return h.hexdigest()


def _problem(path: Path, key: dict[str, Any], verify: bool) -> tuple[str | None, dict[str, Any]]:
    """Why the entry at ``path`` cannot be used (None: it can), and its index."""
    try:
        index = json.loads((path / INDEX).read_text())
    except FileNotFoundError:
        return "missing", {}
    except (OSError, ValueError) as e:
        return f"unreadable index ({one_line(e)})", {}
    if not isinstance(index, dict) or index.get("format_version") != FORMAT_VERSION:
        return "another format version", {}
    if index.get("key") != key:
        return "its index belongs to another dataset or tokenizer", {}
    for name, meta in index["files"].items():
        try:
            size = (path / name).stat().st_size
        except OSError:
            return f"{name} is missing", {}
        if size != meta["bytes"]:
            return f"{name} has {size:,} bytes, not {meta['bytes']:,} (partial)", {}
        if verify and _sha256(path / name) != meta["sha256"]:
            return f"{name} does not match its sha256 (corrupt)", {}
    return None, index


def _enough(shards: Shards, dataset: dict[str, Any], seq_len: int, train_sequences: int) -> bool:
    """Open-ended synthetic data is generated as far as the largest run asked so far needs."""
    if shards.index["kind"] != "synthetic" or dataset.get("tokens"):
        return True
    return data.synthetic_docs_needed(shards.lengths(), dataset, seq_len=seq_len,
                                      train_sequences=train_sequences) is not None  # fmt: skip


def _note(message: str) -> None:
    print(f"data: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _entry_lock(path: Path) -> Iterator[None]:
    """Hold the entry's lock, waiting (up to :data:`LOCK_WAIT_S`) while another process builds it."""
    lock = path.with_name(f".{path.name}.lock")
    deadline, told = time.monotonic() + LOCK_WAIT_S, False
    while True:
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(io.exclusive_lock(lock, f"data cache entry {path.name}"))
        except ScalingError:
            if time.monotonic() > deadline:
                raise
            if not told:
                _note(f"waiting for another process preparing {path}")
                told = True
            time.sleep(0.5)
            continue
        except OSError as e:
            raise ScalingError(f"cannot lock {lock}: {e.strerror or one_line(e)}") from None
        with stack:
            yield
        return


def prepare(
    dataset: dict[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    *,
    seq_len: int,
    train_sequences: int,
    verify: bool = True,
    root: Path | None = None,
) -> Shards:
    """The dataset's shards for this tokenizer: reused from the cache when a usable entry is there
    (``verify``: also every file's sha256), else built (see the module docstring). ``seq_len`` and
    ``train_sequences`` (the largest run's) only size open-ended synthetic data."""
    key = cache_key(dataset, tokenizer)
    path = entry_path(key, root)
    problem, index = _problem(path, key, verify)
    if problem is None:
        shards = Shards(path, index, reused=True)
        if _enough(shards, dataset, seq_len, train_sequences):
            return shards
    try:
        io.check_writable(path.parent)
    except ScalingError as e:
        raise ScalingError(
            f"cannot prepare the data: {e} (set ${CACHE_ENV} to a writable folder)"
        ) from None
    with _entry_lock(path):
        problem, index = _problem(path, key, verify)  # again: another process may have built it
        if problem is None:
            shards = Shards(path, index, reused=True)
            if _enough(shards, dataset, seq_len, train_sequences):
                return shards
            problem = None  # open-ended synthetic data, grown for a larger run: nothing wrong
        if problem not in (None, "missing"):
            _note(f"rebuilding {path}: {problem}")
        return _build(
            path, key, dataset, tokenizer, seq_len=seq_len, train_sequences=train_sequences
        )


# --- building -----------------------------------------------------------------------------------------

_TOKENIZER = None


def _init_worker(tokenizer) -> None:
    global _TOKENIZER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already
    _TOKENIZER = tokenizer


def _encode_chunk(job: tuple[Any, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token ids, document lengths and masked-prefix lengths of one chunk of documents."""
    dtype, chunk = job[0], job[1:]
    if chunk[0] == "synthetic":
        texts, responses = data.synthetic_chunk(*chunk[1:])
    else:
        texts, responses = chunk
    ids, labels, lengths = data.encode(_TOKENIZER, texts, responses)
    starts = np.cumsum(lengths) - lengths
    masked = np.add.reduceat((labels == data.IGNORE).astype(np.int64), starts)
    return ids.astype(dtype), lengths.astype(np.uint32), masked.astype(np.uint32)


def _workers(dataset: dict[str, Any], seq_len: int, train_sequences: int) -> int:
    """Processes to tokenise with: one for a small corpus (workers take about a second to start)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if sources.kind(dataset) == "synthetic":
        want = dataset["tokens"] or (dataset["eval_sequences"] + train_sequences) * seq_len
        small = want < PARALLEL_BYTES
    else:
        size = sources.total_bytes(dataset)
        small = size is not None and size < PARALLEL_BYTES
    return 1 if small else min(cores or 1, MAX_WORKERS)


def _encoded(jobs: Iterator[tuple[Any, ...]], tokenizer, workers: int):
    """``_encode_chunk`` over ``jobs`` in order: in this process, or on ``workers`` processes with at
    most two chunks each in flight (the corpus is never queued whole)."""
    if workers <= 1:
        _init_worker(tokenizer)
        yield from map(_encode_chunk, jobs)
        return
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                             initargs=(tokenizer,)) as pool:  # fmt: skip
        pending: deque = deque()
        for job in jobs:
            pending.append(pool.submit(_encode_chunk, job))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _build(path: Path, key: dict[str, Any], dataset: dict[str, Any], tokenizer, *, seq_len: int,
           train_sequences: int) -> Shards:  # fmt: skip
    from tqdm import tqdm

    dtype = np.dtype(np.uint16 if len(tokenizer) <= 1 << 16 else np.uint32)
    source = data.source_name(dataset)
    synthetic = key["kind"] == "synthetic"
    total = sources.total_bytes(dataset)
    owned = lambda p: (p / INDEX).is_file() or (p / TOKENS).is_file()  # noqa: E731
    started = time.monotonic()
    with io.atomic_dir(path, owned=owned) as tmp:
        raw = tmp / (TOKENS if synthetic else "unshuffled.bin")
        lengths: list[np.ndarray] = []
        masked: list[np.ndarray] = []
        n_tokens = 0
        bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"tokenising {source}",
                   disable=None, mininterval=2.0)  # fmt: skip
        with open(raw, "wb") as out, bar:
            if synthetic:
                jobs = _synthetic_jobs(dataset, dtype, seq_len, train_sequences, lengths)
            else:
                jobs = ((dtype, *chunk) for chunk in _counted(sources.chunks(dataset), bar, total))
            for ids, n, m in _encoded(jobs, tokenizer, _workers(dataset, seq_len, train_sequences)):
                out.write(ids.tobytes())
                lengths.append(n)
                masked.append(m)
                n_tokens += ids.size
                if total is None:
                    bar.update(ids.size)
        all_lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.uint32)
        all_masked = np.concatenate(masked) if masked else np.zeros(0, np.uint32)
        if all_lengths.size == 0:
            raise ScalingError(f"dataset {source} has no documents")
        if synthetic:
            keep = data.synthetic_docs_needed(all_lengths.astype(np.int64), dataset, seq_len=seq_len,
                                              train_sequences=train_sequences)  # fmt: skip
            all_lengths, all_masked = all_lengths[:keep], all_masked[:keep]
            n_tokens = int(all_lengths.sum(dtype=np.int64))
            os.truncate(raw, n_tokens * dtype.itemsize)
        else:
            order = data.keyed_rng(dataset["seed"]).permutation(all_lengths.size)
            _shuffled_copy(raw, tmp / TOKENS, dtype, all_lengths.astype(np.int64), order)
            raw.unlink()
            all_lengths, all_masked = all_lengths[order], all_masked[order]
        supervised = bool(all_masked.any())
        np.save(tmp / LENGTHS, all_lengths)
        names = [TOKENS, LENGTHS]
        if supervised:
            np.save(tmp / MASKED, all_masked)
            names.append(MASKED)
        index = {
            "format_version": FORMAT_VERSION, "key": key, "source": source, "dtype": dtype.name,
            "tokens": n_tokens, "documents": int(all_lengths.size), "supervised": supervised,
            "kind": key["kind"], "shuffled": not synthetic,
            "files": {n: {"bytes": (tmp / n).stat().st_size, "sha256": _sha256(tmp / n)} for n in names},
            "source_bytes": total, "build_seconds": round(time.monotonic() - started, 3),
        }  # fmt: skip
        io.write_json(tmp / INDEX, index)
    return Shards(path, io.read_json(path / INDEX, "data index"))


def _counted(chunks: Iterator[sources.Chunk], bar, total: int | None) -> Iterator[sources.Chunk]:
    """The chunks, advancing the progress bar by their text's size (close to the file bytes read)."""
    for texts, responses in chunks:
        if total is not None:
            size = sum(map(len, texts)) + (sum(map(len, responses)) if responses else 0)
            bar.update(min(size, max(0, total - bar.n)))
        yield texts, responses


def _synthetic_jobs(dataset: dict[str, Any], dtype: np.dtype, seq_len: int, train_sequences: int,
                    lengths: list[np.ndarray]) -> Iterator[tuple[Any, ...]]:  # fmt: skip
    """Ranges of synthetic examples until those encoded so far (``lengths``, filled by the caller as
    results arrive) are enough; the estimate of :func:`scaling.train.data.synthetic_batch`."""
    want = int(dataset["tokens"] or (dataset["eval_sequences"] + train_sequences) * seq_len)
    first = 0
    while True:
        have = np.concatenate(lengths).astype(np.int64) if lengths else np.zeros(0, np.int64)
        if have.size and data.synthetic_docs_needed(have, dataset, seq_len=seq_len,
                                                    train_sequences=train_sequences) is not None:  # fmt: skip
            return
        count = data.synthetic_batch(want, int(have.sum()), int(have.size))
        if first != have.size:  # workers still busy: keep going, the rest is cut at the end
            count = sources.CHUNK_DOCS
        yield dtype, "synthetic", dataset, first, count
        first += count


def _shuffled_copy(raw: Path, out: Path, dtype: np.dtype, lengths: np.ndarray,
                   order: np.ndarray) -> None:  # fmt: skip
    """Write the documents of ``raw`` into ``out`` in ``order``, a bounded piece at a time."""
    starts = np.cumsum(lengths) - lengths
    ends = np.cumsum(lengths[order])
    with open(raw, "rb") as src, open(out, "wb") as dst:
        a = 0
        while a < order.size:
            done = int(ends[a - 1]) if a else 0
            b = max(a + 1, int(np.searchsorted(ends, done + GATHER_TOKENS, side="right")))
            docs = order[a:b]
            n = lengths[docs]
            gather = np.arange(int(n.sum())) + np.repeat(starts[docs] - (np.cumsum(n) - n), n)
            tokens = np.memmap(src, dtype=dtype, mode="r")  # mapped per piece: bounded residency
            dst.write(np.asarray(tokens[gather]).tobytes())
            del tokens
            a = b


# --- a run's view -------------------------------------------------------------------------------------


def layout(shards: Shards, dataset: dict[str, Any], *, seq_len: int, train_sequences: int,
           max_epochs: float | None) -> tuple[np.ndarray, np.ndarray | None, int, int]:  # fmt: skip
    """Per-document lengths and masked prefixes a run uses, where its training part starts, and how
    many training sequences it has (:func:`scaling.train.data.check_size`'s one-line error when the
    data is too small for the run)."""
    lengths, masked, n_tokens = shards.lengths(), shards.masked(), shards.tokens
    if shards.index["kind"] == "synthetic" and not dataset.get("tokens"):
        keep = data.synthetic_docs_needed(lengths, dataset, seq_len=seq_len,
                                          train_sequences=train_sequences)  # fmt: skip
        if keep is None:
            raise ScalingError(f"{shards.path} holds too few synthetic examples for this run")
        lengths = lengths[:keep]
        masked = masked[:keep] if masked is not None else None
        n_tokens = int(lengths.sum())
    eval_sequences = dataset["eval_sequences"]
    start = data.train_start(lengths, eval_sequences * seq_len) or n_tokens
    n_train = data.check_size(n_tokens, start, source=shards.index["source"], seq_len=seq_len,
                              eval_sequences=eval_sequences, train_sequences=train_sequences,
                              max_epochs=max_epochs)  # fmt: skip
    return lengths, masked, start, n_train


class RunData:
    """One run's packed view of prepared shards: the same held-out set, training sequences and labels as
    :func:`scaling.train.data.prepare` builds in memory, read from the token file batch by batch.

    ``eval_ids``/``eval_labels`` (``[eval_sequences, seq_len]``, int64) are read once; training
    sequences only through :meth:`batch`. ``n_train`` and ``source`` as :class:`~scaling.train.data.TokenData`.
    """

    def __init__(self, shards: Shards, dataset: dict[str, Any], *, seq_len: int,
                 train_sequences: int, max_epochs: float | None) -> None:  # fmt: skip
        self.shards, self.seq_len = shards, seq_len
        self.source = shards.index["source"]
        lengths, masked, self.start, self.n_train = layout(
            shards, dataset, seq_len=seq_len, train_sequences=train_sequences, max_epochs=max_epochs
        )
        eval_sequences = dataset["eval_sequences"]
        eval_tokens = eval_sequences * seq_len
        self.train_tokens = self.n_train * seq_len
        # per-document arrays, kept only when labels need them (prompt/response data)
        self.doc_starts = None if masked is None else np.cumsum(lengths) - lengths
        self.masked = masked
        self._file = open(shards.path / TOKENS, "rb")  # noqa: SIM115 (held for the run's life)
        weakref.finalize(self, self._file.close)  # closed with the view, however the job ends
        positions = np.arange(eval_tokens, dtype=np.int64).reshape(eval_sequences, seq_len)
        self.eval_ids, self.eval_labels = self._read(positions)

    def batch(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ids and labels (int64 ``[len(idx), seq_len]``) of training sequences ``idx``."""
        positions = self.start + np.asarray(idx, np.int64)[:, None] * self.seq_len
        return self._read(positions + np.arange(self.seq_len, dtype=np.int64))

    def _read(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Mapped from the descriptor opened at the start (the same file even if the cache entry is
        # rebuilt meanwhile) and unmapped at once: resident memory holds this batch, not the corpus.
        tokens = np.memmap(self._file, dtype=self.shards.dtype, mode="r")
        ids = tokens[positions].astype(np.int64)
        del tokens
        labels = ids.copy()
        if self.doc_starts is not None:
            doc = np.searchsorted(self.doc_starts, positions, side="right") - 1
            labels[positions - self.doc_starts[doc] < self.masked[doc]] = data.IGNORE
        return ids, labels

    def close(self) -> None:
        self._file.close()


def open_run(shards: Shards, dataset: dict[str, Any], *, seq_len: int, train_sequences: int,
             max_epochs: float | None) -> RunData:  # fmt: skip
    return RunData(shards, dataset, seq_len=seq_len, train_sequences=train_sequences,
                   max_epochs=max_epochs)  # fmt: skip


def for_run(dataset: dict[str, Any], tokenizer: PreTrainedTokenizerBase, *, seq_len: int,
            train_sequences: int, max_epochs: float | None) -> RunData:  # fmt: skip
    """What a job trains on: the prepared shards (built here, once, if no usable entry exists; sizes
    checked, not hashes) as this run's view."""
    shards = prepare(dataset, tokenizer, seq_len=seq_len, train_sequences=train_sequences,
                     verify=False)  # fmt: skip
    return open_run(shards, dataset, seq_len=seq_len, train_sequences=train_sequences,
                    max_epochs=max_epochs)  # fmt: skip
