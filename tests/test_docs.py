"""The README's analytic tables are what the code computes today (docs/generate.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_tables_are_up_to_date():
    out = subprocess.run([sys.executable, str(ROOT / "docs" / "generate.py"), "--check"],
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr
