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


def test_quickstart_summary_is_what_the_code_makes_of_the_committed_runs():
    """docs/quickstart/summary.txt is the fit of the committed run table by the committed code and
    fit spec (docs/quickstart.py refits it; the README's quickstart numbers come from its fits.json)."""
    import importlib.util

    from scaling.fit.report import summary

    spec = importlib.util.spec_from_file_location("quickstart_doc", ROOT / "docs" / "quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    committed = (ROOT / "docs" / "quickstart" / "summary.txt").read_text()
    assert summary(module.refit()) + "\n" == committed


def test_cli_reference_is_up_to_date():
    """docs/cli.md is every command's --help as the code prints it (docs/cli_reference.py)."""
    out = subprocess.run([sys.executable, str(ROOT / "docs" / "cli_reference.py"), "--check"],
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr
