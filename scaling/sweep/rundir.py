"""A sweep's run directory: ``sweep.json``, ``manifest.parquet`` and ``runs/<run_id>/spec.json``.

    >>> from scaling import sweep
    >>> new = sweep.write(sweep.build_plan(spec, [1e11]), "runs/quickstart")   # the runs that were new

Re-planning the same sweep only adds runs it lacks (new budgets, a re-centred grid) and never touches
existing ones; a directory holding a different sweep (any spec change other than budgets and the
``[launch]`` table) is refused before anything is written.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from scaling.errors import ScalingError
from scaling.io import atomic_dir, write_json, write_parquet
from scaling.runspec import MANIFEST_FILE, SPEC_FILE, SWEEP_FILE, RunSpec
from scaling.sweep.planner import Plan


def write(p: Plan, out: str | Path) -> list[RunSpec]:
    """Write the plan's runs to ``out``; return the runs that were new (none: nothing is touched).

    A fresh directory is filled in a temporary sibling and renamed into place. A directory that
    already holds this sweep (same :meth:`SweepSpec.identity`) gets only the runs it lacks: each new
    run directory appears in one rename, then the manifest and ``sweep.json`` are replaced atomically.
    Anything else there is refused before a byte is written.
    """
    import polars as pl

    out = Path(out)
    if not p.runs:
        reason = p.dropped[0].reason if p.dropped else "no points"
        raise ScalingError(f"every point was dropped ({reason}; see --dry-run): nothing to write")
    old_meta = _existing_sweep(out, p)
    if old_meta is None:
        with atomic_dir(out) as tmp:
            for r in p.runs:
                write_json(tmp / "runs" / r.run_id / SPEC_FILE, r.to_json())
            pl.DataFrame(
                [r.manifest_row() for r in p.runs], infer_schema_length=None
            ).write_parquet(tmp / MANIFEST_FILE)
            write_json(tmp / SWEEP_FILE, _sweep_meta(p, None))
        return list(p.runs)
    manifest = pl.read_parquet(out / MANIFEST_FILE)
    have = set(manifest["run_id"].to_list())
    new = [r for r in p.runs if r.run_id not in have]
    if not new:
        return []
    for r in new:
        with atomic_dir(out / "runs" / r.run_id, owned=lambda p: (p / SPEC_FILE).is_file()) as tmp:
            write_json(tmp / SPEC_FILE, r.to_json())
    rows = pl.DataFrame([r.manifest_row() for r in new], infer_schema_length=None)
    merged = pl.concat([manifest, rows], how="diagonal_relaxed")
    write_parquet(merged, out / MANIFEST_FILE)
    write_json(out / SWEEP_FILE, _sweep_meta(p, old_meta))
    return new


def _existing_sweep(out: Path, p: Plan) -> dict[str, Any] | None:
    """The ``sweep.json`` of a directory holding this sweep; None for a missing or empty one."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise ScalingError(f"output path {out} is a file, not a directory")
    meta_path = out / SWEEP_FILE
    if not meta_path.is_file():
        if any(out.iterdir()):
            raise ScalingError(f"output directory {out} is not empty and holds no sweep")
        return None
    try:
        meta = json.loads(meta_path.read_text())
        ident = meta["spec_hash"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ScalingError(f"output directory {out} has an unreadable sweep.json") from None
    if ident != p.identity or not (out / MANIFEST_FILE).is_file():
        raise ScalingError(
            f"output directory {out} holds a different sweep ({meta.get('sweep')} {ident}, "
            f"this one is {p.spec.name} {p.identity}); choose another --out"
        )
    return meta


def _sweep_meta(p: Plan, old: dict[str, Any] | None) -> dict[str, Any]:
    entry = {
        "budgets": p.budgets,
        "fit": p.to_dict()["fit"],
        "runs": len(p.runs),
        "dropped": [dataclasses.asdict(d) for d in p.dropped],
        "warnings": p.warnings,
    }
    budgets = sorted({*p.budgets, *(old or {}).get("budgets", [])})
    history = [*(old or {}).get("history", []), entry]
    return {"sweep": p.spec.name, "spec_hash": p.identity, "spec": p.spec.to_dict(),
            "budgets": budgets, "history": history}  # fmt: skip
