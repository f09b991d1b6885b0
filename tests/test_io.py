"""Atomic writes honour the umask (mkstemp/mkdtemp alone would publish 0600 files and 0700 folders)
and leave nothing behind when the writer fails."""

from __future__ import annotations

import os
import stat

import pytest

from scaling import io


@pytest.fixture(params=[0o022, 0o002, 0o077])
def mask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_and_folders_get_the_umask_mode(tmp_path, mask):
    io.write_text(tmp_path / "a.txt", "x")
    io.write_json(tmp_path / "b.json", {"a": 1})
    with io.atomic_path(tmp_path / "c.bin") as tmp:
        tmp.write_bytes(b"1")
    with io.atomic_dir(tmp_path / "d") as tmp:
        (tmp / "inner").write_text("y")
    for name in ("a.txt", "b.json", "c.bin"):
        assert mode(tmp_path / name) == 0o666 & ~mask, name
    assert mode(tmp_path / "d") == 0o777 & ~mask
    assert io.umask() == mask


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "kept.txt"
    io.write_text(path, "old")
    with pytest.raises(RuntimeError), io.atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer died")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.txt"]


def test_fit_outputs_are_readable_by_the_group(tmp_path, mask):
    from scaling.cli import main
    from scaling.fit import synth

    synth.simulate(tmp_path / "sweep", curves=False)
    assert (
        main(["fit", str(tmp_path / "sweep"), "--out", str(tmp_path / "fit"), "--bootstrap", "0"])
        == 0
    )
    for path in (tmp_path / "fit").iterdir():
        assert mode(path) == 0o666 & ~mask, path.name


def test_strict_json_writes_null_and_names_what_was_not_finite(tmp_path):
    import json

    io.write_json(
        tmp_path / "r.json", {"loss": float("nan"), "curve": [1.0, float("inf")], "ok": 1}
    )
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text)  # a strict parser would reject a bare NaN
    assert data == {"loss": None, "curve": [1.0, None], "ok": 1, "non_finite": ["curve[1]", "loss"]}


def test_atomic_dir_never_replaces_what_it_did_not_write(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    with pytest.raises(io.ScalingError, match="non-empty folder this tool did not write"):
        with io.atomic_dir(user):
            raise AssertionError("never entered")
    assert (user / "notes.txt").read_text() == "keep me"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(io.ScalingError, match="exists and is not a folder"):
        with io.atomic_dir(tmp_path / "afile"):
            pass
    assert (tmp_path / "afile").read_text() == "x"
    ours = tmp_path / "ours"
    with io.atomic_dir(ours) as tmp:
        (tmp / "marker").write_text("1")
    with io.atomic_dir(ours, owned=lambda p: (p / "marker").is_file()) as tmp:
        (tmp / "marker").write_text("2")
    assert (ours / "marker").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "mine", "ours"]


def test_exclusive_lock_refuses_a_second_holder_and_dies_with_its_process(tmp_path):
    import subprocess
    import sys
    import time

    lock = tmp_path / ".lock"
    assert not io.is_locked(lock)
    with io.exclusive_lock(lock, "run x"):
        assert io.is_locked(lock)
        with pytest.raises(io.ScalingError, match="run x is in use by another process"):
            with io.exclusive_lock(lock, "run x"):
                pass
    assert not io.is_locked(lock)
    # A holder killed with SIGKILL leaves no stale lock: the kernel releases it.
    code = ("import sys, time; from scaling import io\n"
            "with io.exclusive_lock(sys.argv[1], 'r'):\n    print('held', flush=True); time.sleep(60)")  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    assert io.is_locked(lock)
    proc.kill()
    proc.wait()
    deadline = time.time() + 5
    while io.is_locked(lock) and time.time() < deadline:
        time.sleep(0.05)
    assert not io.is_locked(lock)
