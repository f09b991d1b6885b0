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
