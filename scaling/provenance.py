"""Which code this is: the git commit of the checkout the package's own files are tracked in.

    >>> from scaling.provenance import git_state
    >>> git_state()            # ("3485c95…", False), or None outside a checkout

Read by ``scaling --version`` and written into every run's ``result.json`` (``git_sha``,
``git_dirty``), so the two always agree. Hand-written: three ``git`` calls; no library is needed.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=HERE, capture_output=True, text=True, timeout=10,
                             check=True)  # fmt: skip
    except (OSError, subprocess.SubprocessError):  # no git, not a checkout, not tracked
        return None
    return out.stdout.strip()


def git_state() -> tuple[str, bool] | None:
    """(commit, whether the package's tracked files differ from it), or None. The files must be
    tracked: a package installed into a virtual environment that happens to sit inside some git
    repository is not that repository's code, and changes elsewhere in a checkout are not this
    code's."""
    if _git("ls-files", "--error-unmatch", Path(__file__).name) is None:
        return None
    sha = _git("rev-parse", "HEAD")
    if not sha:
        return None
    return sha, bool(_git("status", "--porcelain", "--untracked-files=no", "--", "."))
