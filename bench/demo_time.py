"""Time ``make demo`` on a fresh clone of this repository and record it in docs/quickstart/timing.json.

    python bench/demo_time.py              # clone HEAD into a temporary folder, run, write the record
    python bench/demo_time.py --keep DIR   # clone into DIR and leave it there (to inspect the run)

The clone runs ``make install`` (venv and packages; pip's download cache is whatever this machine
has) and then ``make demo`` (pre-train the tiny family, plan, train on the local workers, fit); the
record holds both wall times, their sum (what a newcomer's ``make demo`` costs), the phase times the
demo's commands report, the machine (CPU model, cores) and the commit. Nothing here is estimated.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "docs" / "quickstart" / "timing.json"
PHASES = ("scaling backbone tiny", "scaling sweep", "scaling launch", "scaling fit")


def _cpu() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        return re.search(r"model name\s*:\s*(.+)", text).group(1).strip()
    except (OSError, AttributeError):
        return platform.processor() or platform.machine()


def _run(cmd: list[str], cwd: Path, log) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {log.name}")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="clone into this (new) folder and keep it")
    args = parser.parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.strip()  # fmt: skip
    where = args.keep or Path(tempfile.mkdtemp(prefix="scaling-demo-"))
    try:
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(where / "scaling")], check=True)
        clone = where / "scaling"
        env_log = (where / "demo.log").open("w")
        install = _run(["make", "install"], clone, env_log)
        phases = {}
        demo_start = time.perf_counter()
        # make demo, one recipe line at a time, so each phase is timed (the same commands, in order).
        recipe = subprocess.run(["make", "-n", "demo"], cwd=clone, capture_output=True, text=True,
                                check=True).stdout.splitlines()  # fmt: skip
        for line in recipe:
            name = next((p for p in PHASES if p in line), line)
            phases[name] = _run(["bash", "-c", line], clone, env_log)
        demo = time.perf_counter() - demo_start
        env_log.close()
    finally:
        if args.keep is None:
            shutil.rmtree(where, ignore_errors=True)
    record = {
        "commit": commit,
        "cpu": _cpu(),
        "cores": os.cpu_count(),
        "install_s": round(install, 1),
        "demo_s": round(demo, 1),
        "total_s": round(install + demo, 1),
        "phases_s": {k: round(v, 1) for k, v in phases.items()},
    }
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    RECORD.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
