"""What ``scaling fit`` reads: sweep run directories (collected into one table) or one table of runs
(CSV or Parquet, with the user's column names), checked before anything is fitted or written.

    >>> from scaling.fit.inputs import load_inputs
    >>> data = load_inputs([Path("runs/quickstart")], spec)                     # run directories
    >>> data = load_inputs([Path("chinchilla.csv")], spec,
    ...                    table_columns={"params": "N", "tokens": "D", "loss": "loss"})
    >>> fit.fit(data.table, spec, data.cols, curves=data.curves, source=data.source)
"""

from __future__ import annotations

import codecs
import dataclasses
from pathlib import Path
from typing import Any

from scaling.errors import ScalingError, one_line
from scaling.fit import collect
from scaling.fit.points import Columns, flops_warning
from scaling.fit.spec import FitSpec

TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
TABLE_COLUMNS = ("params", "tokens", "loss", "flops", "method", "budget", "run_id")
"""What a table's columns may be named for (``--params-col`` ...); run directories have fixed ones."""


@dataclasses.dataclass(frozen=True, eq=False)
class Inputs:
    table: Any
    """polars DataFrame, one row per run."""
    cols: Columns
    curves: Any | None
    """Per-step metrics of collected runs (approach 1); None for a table."""
    source: str
    default_out: Path
    """Where the outputs go unless told: ``RUN_DIR/fit`` or ``TABLE-fit`` beside the table."""
    warnings: list[str]
    described: str | None = None
    """What was read, for the summary's header (a table's columns; None for run directories)."""


COMMON_NAMES: dict[str, tuple[str, ...]] = {
    "params": ("params", "n", "n_params", "num_params", "parameters", "model_size", "model_params",
               "size", "non_embedding_params", "trainable_params"),
    "tokens": ("tokens", "d", "n_tokens", "num_tokens", "train_tokens", "training_tokens", "data"),
    "flops": ("flops", "c", "compute", "training_flops", "train_flops", "flop"),
    "loss": ("loss", "l", "final_loss", "eval_loss", "val_loss", "validation_loss", "test_loss",
             "final_eval_loss"),
    "method": ("method",),
    "budget": ("budget", "isoflop_budget", "compute_budget", "flops_budget"),
    "run_id": ("run_id", "run", "id", "name"),
}  # fmt: skip
"""Column names a table's roles are recognised by (case-insensitive; ``-`` and spaces read as ``_``),
for a table named as researchers publish them. A ``--<role>-col`` flag always wins."""


def _norm(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def table_columns_for(table, named: dict[str, str], spec: FitSpec,
                      source: str) -> tuple[Columns, str, list[str]]:  # fmt: skip
    """The columns of a user's table: those named by flags, the others recognised by their common
    names (:data:`COMMON_NAMES`); N, D or C may be missing when the other two are there (derived
    with ``k``). Returns the Columns, the header's description of what was read, and warnings."""
    for role, col in named.items():
        if col not in table.columns:
            raise ScalingError(f"--{role.replace('_', '-')}-col {col!r}: no such column in "
                               f"{source}; columns: {', '.join(table.columns)}")  # fmt: skip
    found = dict(named)
    taken = set(named.values())
    for role, names in COMMON_NAMES.items():
        if role in found:
            continue
        hits = [c for c in table.columns if _norm(c) in names and c not in taken]
        if len(hits) > 1:
            raise ScalingError(f"{source}: columns {', '.join(map(repr, hits))} could each be "
                               f"{role}; name one with --{role.replace('_', '-')}-col")  # fmt: skip
        if hits:
            found[role] = hits[0]
            taken.add(hits[0])
    if "loss" not in found:
        raise ScalingError(f"{source}: no loss column (looked for {', '.join(COMMON_NAMES['loss'])}"
                           f"); name it with --loss-col; columns: {', '.join(table.columns)}")  # fmt: skip
    have = [r for r in ("params", "tokens", "flops") if r in found]
    if len(have) < 2:
        raise ScalingError(
            f"{source}: two of parameters N, tokens D and FLOPs C are needed (found "
            f"{', '.join(f'{r} = {found[r]!r}' for r in have) or 'none'}); name them with "
            f"--params-col, --tokens-col, --flops-col; columns: {', '.join(table.columns)}"
        )
    k = f"{spec.k:g}"
    parts = [f"N = {found['params']!r}" if "params" in found else f"N = C/({k}·D) (derived)",
             f"D = {found['tokens']!r}" if "tokens" in found else f"D = C/({k}·N) (derived)",
             f"C = {found['flops']!r}" if "flops" in found else f"C = {k}·N·D (derived)",
             f"loss = {found['loss']!r}"]  # fmt: skip
    inferred = sorted(set(found) - set(named))
    warnings = []
    if inferred:
        warnings.append("columns recognised by name: " + ", ".join(
            f"{r} = {found[r]!r}" for r in inferred) + " (override with --<role>-col)")  # fmt: skip
    if "flops" not in found:
        warnings.append(flops_warning(spec.k))
    described = f"table {source}: " + ", ".join(parts)
    return Columns(**{"params": None, **found}), described, warnings


def read_table(path: Path):
    """A CSV or Parquet table, or a one-line error (missing, a folder, unreadable, corrupt)."""
    import polars as pl

    if path.is_dir():
        raise ScalingError(f"table {path} is a folder, not a CSV or Parquet file")
    if not path.is_file():
        raise ScalingError(f"table not found: {path}")
    try:
        if path.suffix == ".csv":
            _check_text(path)
            return pl.read_csv(path, infer_schema_length=None)
        return pl.read_parquet(path)
    except OSError as e:
        raise ScalingError(f"cannot read {path}: {e.strerror or one_line(e)}") from None
    except pl.exceptions.PolarsError as e:
        raise ScalingError(f"cannot read {path}: {str(e).splitlines()[0]}") from None


def _check_text(path: Path, chunk: int = 1 << 20) -> None:
    """Raise unless ``path`` is UTF-8 text without NUL bytes. polars reads binary junk as a table
    with one mangled column and no rows (invalid UTF-8 in the header becomes U+FFFD), which the fit
    would then call "empty": a corrupt file must be reported as corrupt."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            nul = block.find(b"\0")
            if nul >= 0:
                raise ScalingError(f"corrupt CSV {path}: binary data (a NUL byte at offset "
                                   f"{offset + nul}), not text")  # fmt: skip
            try:
                decoder.decode(block)
            except UnicodeDecodeError:
                raise ScalingError(
                    f"corrupt CSV {path}: not UTF-8 text (near byte {offset})"
                ) from None
            offset += len(block)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise ScalingError(f"corrupt CSV {path}: not UTF-8 text (it ends mid-character)") from None


def load_inputs(paths: list[Path], spec: FitSpec, *, table_columns: dict[str, str | None] | None = None,
                cache: bool = True) -> Inputs:  # fmt: skip
    """One table of runs from ``paths``: several run directories, or one table whose columns
    ``table_columns`` names (keys: :data:`TABLE_COLUMNS`)."""
    if not paths:
        raise ScalingError("no input: give sweep run directories or a CSV/Parquet table")
    named = {k: v for k, v in (table_columns or {}).items() if v}
    unknown = sorted(set(named) - set(TABLE_COLUMNS))
    if unknown:
        raise ScalingError(
            f"unknown table column role {unknown[0]!r}; roles: {', '.join(TABLE_COLUMNS)}"
        )
    if any(p.suffix in TABLE_SUFFIXES for p in paths):
        if len(paths) > 1:
            raise ScalingError("give one table, or run directories, not both")
        table = read_table(paths[0])
        cols, described, warnings = table_columns_for(table, named, spec, str(paths[0]))
        return Inputs(table, cols, None, str(paths[0]), paths[0].with_name(paths[0].stem + "-fit"),
                      warnings, described)  # fmt: skip
    if named:
        flag = "--" + next(iter(named)).replace("_", "-") + "-col"
        raise ScalingError(f"{flag} is for CSV/Parquet tables; run directories have fixed columns")
    c = collect.collect(paths, cache=cache)
    return Inputs(c.table(spec), Columns.for_runs(spec), c.curves, ", ".join(map(str, paths)),
                  paths[0] / "fit", list(c.warnings))  # fmt: skip
