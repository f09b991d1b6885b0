"""Sweep run directories → one tidy table of runs (and one of their per-step metrics), cached as Parquet.

    >>> from scaling.fit import collect
    >>> c = collect.collect(["runs/quickstart", "runs/more"])    # several directories at once
    >>> c.runs.select("run_id", "method", "budget", "status", "final_eval_loss")
    >>> c.curves                          # run_id, kind (Categorical), step, tokens, flops, loss, …
    >>> c.table(spec)                                            # + last_k_eval_loss for spec.loss

A run directory (:mod:`scaling.sweep`, :mod:`scaling.runspec`) holds ``manifest.parquet`` (one row per planned run) and
``runs/<run_id>/spec.json``; a trained run adds ``result.json`` (status success | failed | diverged |
cancelled, final losses, realised tokens and FLOPs, parameter counts) and ``metrics.parquet`` (kind
train | eval, step, tokens, cumulative flops, loss, ...). A run without ``result.json`` is ``not
finished``; the fit excludes it and every non-success run with the reason.

One row per run: ``run_id, sweep, source, method, dial, backbone, budget, seed, status, error,
final_eval_loss, final_train_loss, steps, planned_steps, tokens, planned_tokens, flops, planned_flops,
flops_per_token, trainable_params, backbone_params, total_params, wall_time_s, tokens_per_s,
peak_memory_bytes, seq_len, micro_batch_size, batch_tokens, backbone_config, method_config`` (the last
two as JSON text). ``total_params`` is backbone + trainable (the backbone alone for full fine-tuning).

The tables are cached in ``RUN_DIR/.collect/`` and reused while no manifest, spec, result or metrics file
has changed (size and modification time); a read-only directory is simply collected every time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import polars as pl

from scaling.errors import ScalingError, one_line
from scaling.io import atomic_dir, write_json

CACHE_DIR = ".collect"
CACHE_VERSION = 3  # 3: run_id and kind are Categorical in the curves
CURVE_COLUMNS = ("run_id", "kind", "step", "tokens", "flops", "loss")
RESULT_FIELDS = ("status", "error", "final_eval_loss", "final_train_loss", "steps", "planned_steps",
                 "tokens", "planned_tokens", "flops", "planned_flops", "flops_per_token",
                 "trainable_params", "backbone_params", "wall_time_s", "tokens_per_s",
                 "peak_memory_bytes")  # fmt: skip
FLOAT_COLUMNS = ("budget", "final_eval_loss", "final_train_loss", "tokens", "planned_tokens",
                 "flops", "planned_flops", "flops_per_token", "trainable_params",
                 "backbone_params", "total_params", "wall_time_s", "tokens_per_s",
                 "peak_memory_bytes")  # fmt: skip


@dataclasses.dataclass(frozen=True, eq=False)
class Collected:
    runs: pl.DataFrame
    curves: pl.DataFrame | None
    """Per-step metrics of every run that logged any (None: no run did)."""
    sources: list[str]
    warnings: list[str]

    def table(self, spec=None) -> pl.DataFrame:
        """The runs, plus ``last_k_eval_loss`` when ``spec.loss`` is ``last_k_eval``."""
        if spec is None or spec.loss != "last_k_eval":
            return self.runs
        return add_last_k(self.runs, self.curves, spec.last_k)


def collect(dirs: list[str | Path] | str | Path, *, cache: bool = True) -> Collected:
    """Collect one or several run directories into one table (duplicate run ids: first kept)."""
    if isinstance(dirs, (str, Path)):
        dirs = [dirs]
    parts = [collect_dir(d, cache=cache) for d in dirs]
    runs = pl.concat([p.runs for p in parts], how="diagonal_relaxed")
    warnings = [w for p in parts for w in p.warnings]
    dup = runs["run_id"].is_duplicated()
    if dup.any():
        ids = sorted(set(runs.filter(dup)["run_id"].to_list()))
        warnings.append(f"{len(ids)} run id(s) appear in several directories; first kept: {ids[0]}")
        runs = runs.unique("run_id", keep="first", maintain_order=True)
    curves = [p.curves for p in parts if p.curves is not None]
    return Collected(
        runs,
        pl.concat(curves, how="diagonal_relaxed") if curves else None,
        [s for p in parts for s in p.sources],
        warnings,
    )


def collect_dir(run_dir: str | Path, *, cache: bool = True) -> Collected:
    root = Path(run_dir)
    if not root.is_dir():
        raise ScalingError(f"run directory not found: {root}")
    if not (root / "manifest.parquet").is_file() and not (root / "runs").is_dir():
        raise ScalingError(f"{root} is not a sweep run directory (no manifest.parquet, no runs/)")
    listing = _listing(root)
    key = _fingerprint(listing)
    cached = _read_cache(root, key) if cache else None
    if cached is not None:
        return cached
    runs, curves, warnings = _collect(root, listing)
    result = Collected(runs, curves, [str(root)], warnings)
    if cache:
        try:
            with atomic_dir(root / CACHE_DIR, owned=lambda p: (p / "key.json").is_file()) as tmp:
                runs.write_parquet(tmp / "runs.parquet")
                if curves is not None:
                    curves.write_parquet(tmp / "curves.parquet")
                write_json(tmp / "key.json", {"key": key, "warnings": warnings})
        except OSError as e:
            warnings.append(f"{root}: cache not written ({e.strerror or e})")
        except ScalingError as e:  # a .collect that is not our cache is left alone: the fit goes on
            warnings.append(f"{root}: cache not written ({e})")
    return result


def _listing(root: Path) -> dict[str, dict[str, os.stat_result]]:
    """Every run folder's collected files and their stats, from one ``os.scandir`` per folder
    (``""`` → the manifest): the fingerprint and the reader both use it, so each file is stat'ed
    once (pathlib's ``is_file``/``stat`` calls stat'ed each file three times; timed by
    ``bench/analysis_scale.py``)."""
    out: dict[str, dict[str, os.stat_result]] = {}
    manifest = root / "manifest.parquet"
    if manifest.is_file():
        out[""] = {"manifest.parquet": manifest.stat()}
    try:
        folders = sorted((e.name, e.path) for e in os.scandir(root / "runs") if e.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        folders = []
    for name, path in folders:
        files: dict[str, os.stat_result] = {}
        try:
            for e in os.scandir(path):
                if e.name in RUN_FILES and e.is_file():
                    files[e.name] = e.stat()
        except OSError:  # a folder that vanished or cannot be read: a run without files
            pass
        out[name] = files
    return out


RUN_FILES = ("spec.json", "result.json", "metrics.parquet")


def _fingerprint(listing: dict[str, dict[str, os.stat_result]]) -> str:
    h = hashlib.sha1(f"collect-v{CACHE_VERSION}".encode())
    for rid, files in listing.items():
        for name in ("manifest.parquet", *RUN_FILES):
            st = files.get(name)
            if st is not None:
                where = name if rid == "" else f"runs/{rid}/{name}"
                h.update(f"{where}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _read_cache(root: Path, key: str) -> Collected | None:
    d = root / CACHE_DIR
    try:
        meta = json.loads((d / "key.json").read_text())
        if meta.get("key") != key:
            return None
        runs = pl.read_parquet(d / "runs.parquet")
        curves = pl.read_parquet(d / "curves.parquet") if (d / "curves.parquet").is_file() else None
    except (OSError, ValueError, pl.exceptions.PolarsError):
        return None
    return Collected(runs, curves, [str(root)], list(meta.get("warnings", [])))


def _read_json(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"unreadable {path.name}: {e}"
    if not isinstance(data, dict):
        return None, f"unreadable {path.name}: not a JSON object"
    return data, None


RESULT_TEXT = ("status", "error", "method", "dial", "sweep", "backbone")
"""Fields of result.json the fit reads as text; the others it reads (numbers) are below."""
RESULT_NUMBERS = (*(f for f in RESULT_FIELDS if f not in RESULT_TEXT), "budget", "seed")
SPEC_TEXT = ("sweep", "method", "dial", "dial_name", "backbone")
SPEC_NUMBERS = ("budget", "seed", "steps", "tokens", "realised_flops", "flops_per_token",
                "trainable_params", "backbone_params", "seq_len", "micro_batch_size",
                "batch_tokens")  # fmt: skip
INT64 = (-(2**63), 2**63 - 1)
CURVE_TYPES = {"kind": "text", "step": "numbers", "tokens": "numbers", "flops": "numbers",
               "loss": "numbers"}  # fmt: skip
"""What the curve columns of a metrics.parquet hold; a run whose file disagrees has no curve."""


def _manifest(root: Path) -> list[dict[str, Any]]:
    """The manifest's rows, or a one-line error naming it (not Parquet, unreadable, no run ids)."""
    path = root / "manifest.parquet"
    try:
        table = pl.read_parquet(path)
    except OSError as e:
        raise ScalingError(f"cannot read {path}: {e.strerror or one_line(e)}") from None
    except pl.exceptions.PolarsError as e:
        raise ScalingError(f"corrupt {path}: {one_line(e).split(': ', 1)[-1]}") from None
    if "run_id" not in table.columns:
        raise ScalingError(f"corrupt {path}: it has no run_id column")
    return list(table.iter_rows(named=True))


def _mistyped(data: dict[str, Any], name: str, text: tuple[str, ...],
              numbers: tuple[str, ...]) -> str | None:  # fmt: skip
    """Why a field the fit reads from ``name`` has the wrong type (a string loss, a list for a
    status, a count beyond int64), or None. A run with one is treated as if the file were corrupt
    (excluded, or collected without it, with the reason) instead of failing the whole table."""
    for key in (*text, *numbers):
        value = data.get(key)
        if value is None:
            continue
        if key in text and not isinstance(value, str):
            return f"mistyped {name}: {key} must be text; got {_short(value)}"
        if key in numbers and not _is_number(value):
            return f"mistyped {name}: {key} must be a number; got {_short(value)}"
    if not isinstance(data.get("optimizer") or {}, dict):
        return f"mistyped {name}: optimizer must be a table; got {_short(data['optimizer'])}"
    return None


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return not isinstance(value, int) or INT64[0] <= value <= INT64[1]


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _curve(path: Path, rid: str) -> tuple[pl.DataFrame | None, str | None]:
    """A run's metrics.parquet with its run id, or why it is left out (unreadable, mistyped)."""
    try:
        m = pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as e:
        return None, f"{rid}: unreadable metrics.parquet ({one_line(e)})"
    for col, what in CURVE_TYPES.items():
        dtype = m.schema.get(col)
        if dtype is not None and not (dtype == pl.String if what == "text" else dtype.is_numeric()):
            return None, f"{rid}: metrics.parquet column {col} holds {dtype}, not {what}; no curve"
    m = m.with_columns(pl.lit(rid, dtype=pl.Categorical).alias("run_id"))
    if m.schema.get("kind") == pl.String:
        m = m.with_columns(pl.col("kind").cast(pl.Categorical))
    return m.select("run_id", pl.exclude("run_id")), None


def _read_all(metrics: dict[str, Path]) -> pl.DataFrame | None:
    """Every run's metrics.parquet in one multi-file scan (polars reads the files in parallel and
    never builds a frame per run: ~10× faster than one read per file at 10,000 runs), or None when
    the files do not share a schema or a curve column has the wrong type — then :func:`_curve`
    reads them one by one and says which run is at fault.

    Each row's file path becomes its run id inside the scan (``replace_strict``, no join), and the
    run id and kind are :data:`polars.Categorical`: 4 bytes a row instead of a string each (the
    peak memory at 10⁷ rows: ``bench/analysis_scale.py``)."""
    if not metrics:
        return None
    rids = list(metrics)
    paths = [str(metrics[r]) for r in rids]
    try:
        lf = pl.scan_parquet(paths, include_file_paths="__path", missing_columns="insert",
                             extra_columns="ignore")  # fmt: skip
        schema = lf.collect_schema()
        for col, what in CURVE_TYPES.items():
            dtype = schema.get(col)
            if dtype is not None and not (
                dtype == pl.String if what == "text" else dtype.is_numeric()
            ):
                return None
        # The first file's columns are the table's (extra_columns="ignore"): when it lacks a curve
        # column that others may have, read them one by one (their union) instead.
        if any(c not in schema for c in CURVE_COLUMNS if c != "run_id"):
            return None
        run_id = pl.col("__path").replace_strict(paths, rids, return_dtype=pl.Categorical)
        table = (lf.select(run_id.alias("run_id"), pl.exclude("__path", "run_id"))
                 .with_columns(pl.col("kind").cast(pl.Categorical)).collect())  # fmt: skip
    except (OSError, pl.exceptions.PolarsError):
        return None
    return None if table.height == 0 else table


def _collect(root: Path, listing: dict[str, dict[str, os.stat_result]]
             ) -> tuple[pl.DataFrame, pl.DataFrame | None, list[str]]:  # fmt: skip
    warnings: list[str] = []
    planned: dict[str, dict[str, Any]] = {}
    if "" in listing:
        for row in _manifest(root):
            planned[str(row["run_id"])] = row
    for rid in listing:
        if rid:
            planned.setdefault(rid, {"run_id": rid})
    rows: list[dict[str, Any]] = []
    metrics: dict[str, Path] = {}
    for rid, man in planned.items():
        d = root / "runs" / rid
        present = listing.get(rid, {})
        spec, err = _read_json(d / "spec.json") if "spec.json" in present else ({}, None)
        err = err or _mistyped(spec, "spec.json", SPEC_TEXT, SPEC_NUMBERS)
        if err:
            warnings.append(f"{rid}: {err}")
            spec = {}
        base = {**man, **spec}
        row = {
            "run_id": rid, "sweep": base.get("sweep"), "source": str(root),
            "method": base.get("method"), "dial": base.get("dial"),
            "dial_name": base.get("dial_name"),
            "lr": (base.get("optimizer") or {}).get("lr", base.get("optimizer_lr")),
            "lr_multiplier": (base.get("optimizer") or {}).get(
                "lr_multiplier", base.get("optimizer_lr_multiplier", 1.0)
            ),
            "backbone": base.get("backbone"), "budget": base.get("budget"),
            "seed": base.get("seed"), "status": "not finished", "error": "no result.json",
            "steps": None, "planned_steps": base.get("steps"), "tokens": None,
            "planned_tokens": base.get("tokens"), "flops": None,
            "planned_flops": base.get("realised_flops"),
            "flops_per_token": base.get("flops_per_token"),
            "trainable_params": base.get("trainable_params"),
            "backbone_params": base.get("backbone_params"),
            "final_eval_loss": None, "final_train_loss": None, "wall_time_s": None,
            "tokens_per_s": None, "peak_memory_bytes": None, "seq_len": base.get("seq_len"),
            "micro_batch_size": base.get("micro_batch_size"),
            "batch_tokens": base.get("batch_tokens"),
            "backbone_config": _json(spec.get("backbone_config")),
            "method_config": _json(spec.get("method_config")),
        }  # fmt: skip
        if "result.json" in present:
            result, err = _read_json(d / "result.json")
            err = err or _mistyped(result, "result.json", RESULT_TEXT, RESULT_NUMBERS)
            if err:
                row |= {"status": "unreadable", "error": err}
            else:
                row["error"] = None
                row |= {k: result[k] for k in RESULT_FIELDS if k in result}
                for k in ("method", "dial", "budget", "seed", "sweep", "backbone"):
                    if row[k] is None and result.get(k) is not None:
                        row[k] = result[k]
                if row["method_config"] is None and result.get("method_config") is not None:
                    row["method_config"] = _json(result["method_config"])
        if "metrics.parquet" in present:
            metrics[rid] = d / "metrics.parquet"
        full = row["method"] == "full"
        if row["trainable_params"] is not None and row["backbone_params"] is not None:
            row["total_params"] = row["backbone_params"] + (0 if full else row["trainable_params"])
        else:
            row["total_params"] = None
        rows.append(row)
    if not rows:
        raise ScalingError(f"{root} holds no runs")
    try:
        table = pl.DataFrame(rows, infer_schema_length=None).with_columns(
            [pl.col(c).cast(pl.Float64) for c in FLOAT_COLUMNS]
        )
    except (pl.exceptions.PolarsError, OverflowError, TypeError, ValueError) as e:
        # result.json and spec.json are checked run by run above: what is left is the manifest's
        raise ScalingError(f"{root}: mistyped fields in manifest.parquet "
                           f"({(str(e).splitlines() or [repr(e)])[0]})") from None  # fmt: skip
    curve_table = _read_all(metrics)
    curves = []
    if curve_table is None and metrics:  # files that disagree: read one by one, each explained
        for rid, path in metrics.items():
            curve, why = _curve(path, rid)
            if curve is not None:
                curves.append(curve)
            else:
                warnings.append(why)
    if curves:
        try:
            curve_table = pl.concat(curves, how="diagonal_relaxed")
        except pl.exceptions.PolarsError as e:  # other columns that disagree in type across runs
            warnings.append(
                f"{root}: the runs' metrics do not agree in type ({one_line(e)}); no curves"
            )
            return table, None, warnings
        missing = [c for c in CURVE_COLUMNS if c not in curve_table.columns]
        if missing:
            warnings.append(f"{root}: metrics lack column(s) {', '.join(missing)}; no curves")
            curve_table = None
    return table, curve_table, warnings


def _json(v: Any) -> str | None:
    return None if v is None else json.dumps(v, sort_keys=True)


def add_last_k(runs: pl.DataFrame, curves: pl.DataFrame | None, k: int) -> pl.DataFrame:
    """``last_k_eval_loss``: mean of each run's last ``k`` eval losses (fewer if it logged fewer);
    ``n_eval``: how many it logged."""
    if curves is None:
        return runs.with_columns(
            pl.lit(None, dtype=pl.Float64).alias("last_k_eval_loss"),
            pl.lit(0, dtype=pl.Int64).alias("n_eval"),
        )
    ev = (
        curves.filter(pl.col("kind") == "eval")
        .sort("run_id", "step")
        .group_by("run_id", maintain_order=True)
        .agg(pl.col("loss").tail(k).mean().alias("last_k_eval_loss"), pl.len().alias("n_eval"))
    )
    out = runs.join(ev.with_columns(pl.col("run_id").cast(pl.String)), on="run_id", how="left")
    return out.with_columns(pl.col("n_eval").fill_null(0))
