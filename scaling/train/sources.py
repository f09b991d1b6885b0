"""Documents of a dataset read in bounded chunks, for preparing token shards (:mod:`scaling.train.shards`).

    >>> from scaling.train import sources
    >>> sources.check(dataset)                      # plan time: path, files, fields, not empty
    >>> for texts, responses in sources.chunks(dataset):   # ≤ CHUNK_DOCS documents at a time
    ...     ...

The same documents, in the same order and with the same text, as :func:`scaling.train.data.prepare`
reads whole (files sorted, rows in order, ``.txt``/``.md`` split at blank lines, nulls dropped, values
cast to text), but never more than a chunk at a time: JSONL in blocks of :data:`BLOCK_BYTES` cut at a
line end, Parquet by row groups through pyarrow, text line by line, and a Hugging Face dataset through
``datasets.load_dataset(..., streaming=True)``. A ``.json`` array cannot be read in pieces and is read
whole (use JSONL for large corpora).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from scaling.errors import ScalingError, one_line
from scaling.train.data import ENCODE_CHUNK, TEXT_SUFFIXES, fields_of, input_files
from scaling.train.synthetic import SYNTHETIC

BLOCK_BYTES = 64 << 20
"""JSONL read per polars call: bounds the memory of one read whatever the file's size."""
CHUNK_DOCS = ENCODE_CHUNK
"""Most documents per chunk handed to the tokenizer."""
CHUNK_CHARS = 1 << 19
"""Most characters per chunk (beyond its first document): a fast tokenizer holds ~100–300 bytes per
token while it encodes a batch, so this, not the document count, bounds a worker's memory."""
HF_EXTRA = "pip install -e '.[hf]'"

Chunk = tuple[list[str], list[str] | None]
"""Texts (or prompts) and, for prompt/response data, responses."""


def kind(dataset: dict[str, Any]) -> str:
    """``synthetic``, ``files`` or ``hub``: where the documents come from."""
    if dataset.get("path"):
        return "files"
    return "synthetic" if dataset["name"] == SYNTHETIC else "hub"


def files(dataset: dict[str, Any]) -> list[Path]:
    return input_files(dataset["path"])


# --- plan-time checks ---------------------------------------------------------------------------------


def check(dataset: dict[str, Any]) -> None:
    """A one-line ScalingError unless the dataset can be read: local files exist and have the fields
    and at least one document (only the first chunk of each file is read); a hub dataset needs the
    ``datasets`` package (its name and fields are checked when the data is prepared)."""
    where = kind(dataset)
    if where == "synthetic":
        return
    if where == "hub":
        _datasets_module(dataset["name"])
        return
    shape, found = None, False
    for file in files(dataset):
        first = next(_file_frames(file, dataset), None)
        if first is None:
            continue
        if shape is not None and first.columns != shape:
            raise _mixed(dataset)
        shape = first.columns
        found = found or first.height > 0
        if found:
            break  # one file with documents is enough: reading every file is the prepare step's
    if not found:
        raise ScalingError(f"dataset {dataset['path']} has no documents")


def _mixed(dataset: dict[str, Any]) -> ScalingError:
    return ScalingError(
        f"dataset path {dataset['path']} mixes plain-text and prompt/response files; "
        "point it at one kind (a glob can select them)"
    )


# --- chunks -------------------------------------------------------------------------------------------


def chunks(dataset: dict[str, Any], size: int = CHUNK_DOCS) -> Iterator[Chunk]:
    """The dataset's documents (files or a hub dataset, not the synthetic task) in chunks of at most
    ``size`` documents and about :data:`CHUNK_CHARS` characters."""
    frames = _hub_frames(dataset, size) if kind(dataset) == "hub" else _all_file_frames(dataset)
    for frame in frames:
        frame = frame.drop_nulls()
        if frame.height == 0:
            continue
        chars = frame.select(pl.sum_horizontal(pl.all().str.len_chars())).to_series().to_numpy()
        ends = np.cumsum(chars)
        i = 0
        while i < frame.height:
            done = int(ends[i - 1]) if i else 0
            j = int(np.searchsorted(ends, done + CHUNK_CHARS, side="right"))
            j = min(max(j, i + 1), i + size)
            part = frame.slice(i, j - i)
            columns = [part[name].to_list() for name in part.columns]
            yield columns[0], (columns[1] if len(columns) == 2 else None)
            i = j


def _all_file_frames(dataset: dict[str, Any]) -> Iterator[pl.DataFrame]:
    shape = None
    for file in files(dataset):
        for frame in _file_frames(file, dataset):
            if shape is not None and frame.columns != shape:
                raise _mixed(dataset)
            shape = frame.columns
            yield frame


def _select(frame: pl.DataFrame, fields: list[str]) -> pl.DataFrame:
    """The fields as text; one a block lacks is null there (as in a whole-file read)."""
    return frame.select(
        pl.col(n).cast(pl.String) if n in frame.columns else pl.lit(None, pl.String).alias(n)
        for n in fields
    )


def _file_frames(file: Path, dataset: dict[str, Any]) -> Iterator[pl.DataFrame]:
    suffix = file.suffix.lower()
    try:
        if suffix in TEXT_SUFFIXES:
            yield from _text_frames(file, dataset["text_field"])
        elif suffix == ".parquet":
            yield from _parquet_frames(file, dataset)
        elif suffix == ".json":
            frame = pl.read_json(file)
            yield _select(frame, fields_of(frame.columns, dataset, f"dataset file {file}"))
        else:
            yield from _jsonl_frames(file, dataset)
    except (OSError, UnicodeDecodeError, pl.exceptions.PolarsError) as e:
        raise ScalingError(f"cannot read dataset file {file}: {one_line(e)}") from None


def _jsonl_frames(file: Path, dataset: dict[str, Any]) -> Iterator[pl.DataFrame]:
    fields, rest = None, b""
    with open(file, "rb") as f:
        while True:
            block = f.read(BLOCK_BYTES)
            data = rest + block
            cut = len(data) if not block else data.rfind(b"\n") + 1
            if cut == 0 and block:  # one line longer than a block: read on
                rest = data
                continue
            rest = data[cut:]
            if data[:cut].strip():
                frame = pl.read_ndjson(io.BytesIO(data[:cut]))
                if fields is None:
                    fields = fields_of(frame.columns, dataset, f"dataset file {file}")
                yield _select(frame, fields)
            if not block:
                return


def _parquet_frames(file: Path, dataset: dict[str, Any]) -> Iterator[pl.DataFrame]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        reader = pq.ParquetFile(file)
        fields = fields_of(reader.schema_arrow.names, dataset, f"dataset file {file}")
        for batch in reader.iter_batches(batch_size=CHUNK_DOCS, columns=fields):
            yield _select(pl.from_arrow(batch), fields)
    except (pa.ArrowException, ValueError) as e:
        raise ScalingError(f"cannot read dataset file {file}: {one_line(e)}") from None


def _text_frames(file: Path, field: str) -> Iterator[pl.DataFrame]:
    """Paragraphs of a text file, as :func:`scaling.train.data.read_file` splits it (at
    ``\\n`` followed by lines of only spaces and tabs), found line by line."""
    paragraphs: list[str] = []
    current: list[str] = []
    ends_line = separating = False
    with open(file) as f:
        for line in f:
            blank = line.endswith("\n") and not line.strip(" \t\n")
            if blank and separating:
                continue
            if blank and ends_line:
                paragraphs.append("".join(current)[:-1])
                current, ends_line, separating = [], False, True
            else:
                current.append(line)
                ends_line, separating = line.endswith("\n"), False
            if len(paragraphs) >= CHUNK_DOCS:
                yield _paragraphs(paragraphs, field)
                paragraphs = []
    paragraphs.append("".join(current))
    yield _paragraphs(paragraphs, field)


def _paragraphs(paragraphs: list[str], field: str) -> pl.DataFrame:
    texts = [p.rstrip() for p in paragraphs if p.strip()]
    return pl.DataFrame({field: texts}, schema={field: pl.String})


# --- Hugging Face -------------------------------------------------------------------------------------


def _datasets_module(name: str):
    try:
        import datasets
    except ImportError:
        raise ScalingError(
            f"dataset {name!r} needs the Hugging Face `datasets` package: {HF_EXTRA} (or set "
            f"dataset.path to local files, or use dataset.name = {SYNTHETIC!r}, which runs offline)"
        ) from None
    return datasets


def _hub_frames(dataset: dict[str, Any], size: int) -> Iterator[pl.DataFrame]:
    """A hub dataset (or a local dataset folder ``datasets`` can read) streamed: never whole."""
    name, split = dataset["name"], dataset["split"]
    datasets = _datasets_module(name)
    try:
        stream = datasets.load_dataset(name, split=split, streaming=True)
        fields = None
        for batch in stream.iter(batch_size=size):
            if fields is None:
                fields = fields_of(list(batch), dataset, f"dataset {name!r}")
            yield _select(pl.DataFrame({f: batch[f] for f in fields}), fields)
    except ScalingError:
        raise
    except Exception as e:  # no network, unknown name or split, bad files: one line for the user
        raise ScalingError(f"cannot load dataset {name!r} split {split!r}: {one_line(e)}") from None


def fingerprint(dataset: dict[str, Any]) -> list[list[Any]]:
    """What identifies the documents beyond the dataset table: each local file's absolute path, size
    and modification time (an edited file is a new corpus); nothing for the hub or synthetic data."""
    if kind(dataset) != "files":
        return []
    out = []
    for file in files(dataset):
        stat = file.stat()
        out.append([os.path.abspath(file), stat.st_size, stat.st_mtime_ns])
    return out


def total_bytes(dataset: dict[str, Any]) -> int | None:
    """Bytes of the local files (for the progress bar); None for the hub."""
    return sum(row[1] for row in fingerprint(dataset)) if kind(dataset) == "files" else None
