"""The README's GPU-cluster walk-through, run as written up to what needs a GPU or the network.

Every command of the block between ``<!-- walkthrough -->`` markers is either run here (in a fresh
directory holding the repository's sweeps/) or skipped for a stated reason; a command this test does
not know fails it, so the walk-through cannot grow a step nobody ran. The sbatch scripts of the dry
run are compared with golden files (``SCALING_UPDATE_GOLDEN=1`` rewrites them).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from scaling import cli as scaling_cli
from scaling.sweep import load_spec

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "launch" / "golden"
NEEDS = {
    "make": "installs CUDA torch",
    "source": "shell environment",
    "hf": "downloads from the Hugging Face hub (network)",
}
"""First words of the steps that are not run here, and why."""


def walkthrough() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- walkthrough -->\n```bash\n(.*?)```\n<!-- /walkthrough -->", text, re.S)
    assert block, "README.md lost its walk-through block"
    lines = [re.sub(r"\s+#.*$", "", line).strip() for line in block[1].splitlines()]
    return [line for line in lines if line]


def normalise(script: str, run_dir: Path) -> str:
    script = script.replace(str(run_dir.resolve()), "/RUN_DIR").replace(str(run_dir), "/RUN_DIR")
    script = re.sub(r"/RUN_DIR/launch/[0-9]{8}-[0-9]{6}-[0-9a-f]{6}", "/RUN_DIR/launch/SUBMISSION",
                    script)  # fmt: skip
    return script.replace(shlex.quote(sys.executable), "/venv/bin/python")


def sbatch_scripts(output: str) -> list[str]:
    """The scripts of ``scaling launch --dry-run``'s output, in array order."""
    parts = re.split(r"\nsbatch script(?: \(array \d+\))?:\n", output)[1:]
    return [p.split("\n\ntime limit")[0].split("\ntime limits")[0].rstrip() + "\n" for p in parts]


def test_readme_walkthrough_runs_as_written(tmp_path, monkeypatch, capsys):
    shutil.copytree(ROOT / "sweeps", tmp_path / "sweeps")
    monkeypatch.chdir(tmp_path)
    ran, downloads, scripts = [], [], []
    for line in walkthrough():
        words = shlex.split(line)
        if words[0] in NEEDS:
            if words[:2] == ["hf", "download"]:
                downloads.append(words[2])
            continue
        assert words[0] == "scaling", f"a walk-through step this test does not know: {line}"
        command = words[1]
        dry = "--dry-run" in words
        if command == "launch" and not dry:
            continue  # submits to SLURM with GPUs: the dry run of the same command is checked
        if command == "fit" or "--from-fit" in words:
            continue  # needs the trained runs
        code = scaling_cli.main(words[1:])
        out = capsys.readouterr()
        assert code == 0, f"{line}: {out.err}"
        ran.append(line)
        if command == "launch":
            scripts = sbatch_scripts(out.out)
            assert "in " in out.out and "arrays" in out.out, out.out  # grouped by time need
            assert "time limits " in out.out
        if command == "status":
            assert "planned" in out.out
    assert {w.split()[1] for w in ran} == {"sweep", "launch", "status"}
    # The walk-through downloads exactly the backbones its spec trains.
    spec = load_spec(str(tmp_path / "sweeps" / "paper-7b-12gb.toml"))
    assert sorted(downloads) == sorted(spec.backbones)
    # The sbatch scripts, one per array, against the golden files.
    assert len(scripts) >= 2
    run_dir = tmp_path / "runs" / "paper-7b-12gb"
    for k, script in enumerate(scripts, 1):
        text = normalise(script, run_dir)
        golden = GOLDEN / f"paper-7b-12gb-array{k}.sh"
        if os.environ.get("SCALING_UPDATE_GOLDEN") == "1":
            golden.write_text(text)
        assert text == golden.read_text(), golden.name
        assert "#SBATCH --gpus-per-node=1" in text and "#SBATCH --mem=64G" in text
    limits = [int(re.search(r"#SBATCH --time=(\d+)", s)[1]) for s in scripts]
    assert limits == sorted(limits) and len(set(limits)) == len(limits)


def test_the_walkthrough_sweep_refuses_jobs_without_a_gpu(tmp_path, monkeypatch, capsys):
    shutil.copytree(ROOT / "sweeps", tmp_path / "sweeps")
    monkeypatch.chdir(tmp_path)
    assert scaling_cli.main(["sweep", "sweeps/paper-7b-12gb.toml"]) == 0
    import json

    meta_path = tmp_path / "runs" / "paper-7b-12gb" / "sweep.json"
    meta = json.loads(meta_path.read_text())
    del meta["spec"]["launch"]["gpus_per_node"]  # as if the spec asked for no GPU
    meta_path.write_text(json.dumps(meta))
    capsys.readouterr()
    code = scaling_cli.main(["launch", "runs/paper-7b-12gb", "--executor", "slurm", "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and "planned for a GPU (gpu_mem = 12GB)" in err


@pytest.mark.parametrize("spec", sorted(p.name for p in (ROOT / "sweeps").glob("*.toml")))
def test_no_shipped_spec_or_doc_uses_the_removed_hub_command(spec):
    assert "huggingface-cli" not in (ROOT / "sweeps" / spec).read_text()
    assert "huggingface-cli" not in (ROOT / "README.md").read_text()
