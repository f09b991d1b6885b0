"""Command-line overrides (``--set KEY=VALUE`` on ``sweep``, ``train`` and ``fit``) and ``scaling
--version``: values typed as TOML, keys and values checked by the same config classes as a spec
file's (an unknown key lists the valid ones), the result recorded in sweep.json, spec.json and
fits.json."""

from __future__ import annotations

import contextlib
import json
import subprocess
from importlib import metadata
from pathlib import Path

import polars as pl
import pytest
from conftest import make_tiny

from scaling import cli, flops, io, methods, sweep
from scaling.arch import resolve_arch
from scaling.config import check_override_keys, parse_overrides
from scaling.errors import ScalingError
from scaling.fit import synth
from scaling.sweep.spec import SweepSpec

ROOT = Path(__file__).resolve().parents[1]


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------------------------------
# Parsing


def test_values_are_typed_as_toml_and_keys_nest():
    got = parse_overrides([
        "optimizer.lr=1e-4", "seeds=[0, 1]", "train.report_to=['tensorboard']",
        "constraints.max_epochs=2", "dataset.name=wikitext", "name=my-sweep", "micro_batch_size=2",
        'backbone_config."org/model".hidden_size=64', "optimizer.lr=3e-4", "optimizer.grad_clip=0.5",
        "method.ladder.reduction={min = 2, max = 32, num = 5}", "train.diverge_ratio=inf",
    ])  # fmt: skip
    assert got == {
        "optimizer": {"lr": 3e-4, "grad_clip": 0.5},  # later wins; tables merge
        "seeds": [0, 1], "train": {"report_to": ["tensorboard"], "diverge_ratio": float("inf")},
        "constraints": {"max_epochs": 2}, "dataset": {"name": "wikitext"}, "name": "my-sweep",
        "micro_batch_size": 2, "backbone_config": {"org/model": {"hidden_size": 64}},
        "method": {"ladder": {"reduction": {"min": 2, "max": 32, "num": 5}}},
    }  # fmt: skip
    assert type(got["micro_batch_size"]) is int and type(got["optimizer"]["lr"]) is float
    assert parse_overrides(["train.report_to=[]"]) == {"train": {"report_to": []}}
    assert parse_overrides(None) == {}


@pytest.mark.parametrize(
    "item, message",
    [
        ("optimizer.lr", "--set 'optimizer.lr': expected KEY=VALUE, e.g. optimizer.lr=1e-4"),
        ("=3", "expected KEY=VALUE"),
        ("seeds=[0, 1", "--set seeds=[0, 1: not a TOML value"),
        ('dataset.name="wiki', "not a TOML value"),
        ("optimizer.lr=", "--set optimizer.lr=: not a TOML value"),
        ("a b=3", "'a b' is not a key path"),
    ],
)
def test_malformed_overrides_are_one_clear_error(item, message):
    with pytest.raises(ScalingError, match=__import__("re").escape(message)):
        parse_overrides([item])


def test_unknown_keys_name_the_valid_ones():
    with pytest.raises(ScalingError) as e:
        check_override_keys(SweepSpec, parse_overrides(["optimizer.lrr=1e-4"]))
    msg = str(e.value)
    assert msg.startswith("--set optimizer.lrr: unknown key 'lrr' for [optimizer] (did you mean "
                          "'optimizer.lr'?); valid keys: name, lr, lr_by_method,")  # fmt: skip
    with pytest.raises(ScalingError, match=r"--set bogus: unknown key 'bogus' for the spec; valid "
                                           r"keys: name, backbones, "):  # fmt: skip
        check_override_keys(SweepSpec, {"bogus": 1})
    with pytest.raises(ScalingError, match=r"\[optimizer\] is a table; set its keys, e.g. --set "
                                           r"optimizer.name=\.\.\."):  # fmt: skip
        check_override_keys(SweepSpec, {"optimizer": 3})
    check_override_keys(
        SweepSpec, parse_overrides(["method.anything.goes=1"])
    )  # the spec's to judge


# --------------------------------------------------------------------------------------------------
# scaling sweep --set


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> str:
    from scaling.train.tokenizers import save_byte_tokenizer

    path = tmp_path_factory.mktemp("overrides") / "tiny-llama"
    make_tiny("llama", path)
    save_byte_tokenizer(path)
    return str(path)


def write_spec(path: Path, backbone: str, steps: int = 2) -> Path:
    cfg = methods.config("ladder", reduction=8, quantization="none")
    fpt = flops.cost(resolve_arch(backbone), cfg, 32).train_flops_per_token
    path.write_text(f"""
name = "ov"
backbones = ["{backbone}"]
methods = ["ladder"]
seq_len = 32
batch_tokens = 64
budgets = [{steps * 64 * fpt}]
[method.ladder]
reduction = 8
quantization = "none"
[dataset]
eval_sequences = 4
difficulty = 2
[constraints]
min_steps = 1
[train]
log_every = 1
""")
    return path


def test_sweep_set_overrides_the_spec_and_is_recorded_in_sweep_json(tmp_path, backbone, capsys):
    spec = write_spec(tmp_path / "s.toml", backbone)
    out = tmp_path / "out"
    argv = ["sweep", str(spec), "--out", str(out), "--set", "optimizer.lr_by_method.ladder=1e-3",
            "--set", "seeds=[0, 1]", "--set", "train.report_to=['tensorboard']",
            "--set", "optimizer.lr_width_rule=none"]  # fmt: skip
    code, text, err = run_cli(argv, capsys)
    assert code == 0, err
    recorded = json.loads((out / "sweep.json").read_text())["spec"]
    assert recorded["seeds"] == [0, 1] and recorded["optimizer"]["lr_by_method"]["ladder"] == 1e-3
    assert recorded["train"]["report_to"] == ["tensorboard"] and recorded["train"]["log_every"] == 1
    assert recorded == sweep.load_spec(spec, seeds=[0, 1], train={"report_to": ["tensorboard"]},
                                       optimizer={"lr_by_method": {"ladder": 1e-3},
                                                  "lr_width_rule": "none"}).to_dict()  # fmt: skip
    runs = sorted((out / "runs").iterdir())
    assert len(runs) == 2  # one per seed
    for run in runs:
        s = json.loads((run / "spec.json").read_text())
        assert s["optimizer"]["lr"] == 1e-3 and s["train"]["report_to"] == ["tensorboard"]


@pytest.mark.parametrize(
    "sets, message",
    [
        (["optimizer.lrr=1e-4"], "--set optimizer.lrr: unknown key 'lrr' for [optimizer] (did you "
                                 "mean 'optimizer.lr'?); valid keys: name, lr,"),
        (["optimizer.lr=-1"], "optimizer.lr must be a positive number; got -1"),
        (["seq_len=abc"], "seq_len must be a positive integer; got 'abc'"),
        (["train.report_to=['mlflow']"], "train.report_to: unknown tracker 'mlflow'"),
        (["seeds=[0, 0]"], "seeds lists a seed twice"),
    ],
)  # fmt: skip
def test_sweep_set_is_validated_like_the_spec_file_and_writes_nothing(tmp_path, backbone, capsys,
                                                                      sets, message):  # fmt: skip
    spec = write_spec(tmp_path / "s.toml", backbone)
    out = tmp_path / "out"
    argv = ["sweep", str(spec), "--out", str(out)] + [a for s in sets for a in ("--set", s)]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


# --------------------------------------------------------------------------------------------------
# scaling train --set / --report-to


@pytest.fixture
def planned_run(tmp_path, backbone, capsys) -> Path:
    spec = write_spec(tmp_path / "s.toml", backbone, steps=3)
    assert cli.main(["sweep", str(spec), "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    (run,) = (tmp_path / "out" / "runs").iterdir()
    return run


def test_train_set_changes_how_the_job_runs_and_records_it_in_spec_json(planned_run, capsys):
    pytest.importorskip("tensorboard")
    before = json.loads((planned_run / "spec.json").read_text())
    argv = ["train", str(planned_run), "--set", "train.log_every=2", "--report-to", "tensorboard"]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    after = json.loads((planned_run / "spec.json").read_text())
    assert after["train"] == {**before["train"], "log_every": 2, "report_to": ["tensorboard"]}
    assert {k: v for k, v in after.items() if k != "train"} == {
        k: v for k, v in before.items() if k != "train"
    }
    rows = pl.read_parquet(planned_run / "metrics.parquet").filter(pl.col("kind") == "train")
    assert rows["step"].to_list() == [1, 2, 3]  # first, every 2nd, last
    assert any((planned_run / "tensorboard").iterdir())
    # --report-to none switches tracking off again.
    code, _, err = run_cli(["train", str(planned_run), "--report-to", "none"], capsys)
    assert code == 0 and json.loads((planned_run / "spec.json").read_text())["train"][
        "report_to"] == []  # fmt: skip


@pytest.mark.parametrize(
    "sets, message",
    [
        (["optimizer.lr=1"], "--set optimizer: `scaling train` changes only train.* (how the job "
                             "runs); optimizer changes the run's result and id: re-plan with "
                             "`scaling sweep --set`"),
        (["train.log_evry=2"], "--set: unknown key 'train.log_evry'; valid keys: log_every,"),
        (["train.log_every=0"], "--set: train.log_every must be a positive integer; got 0"),
        (["train.report_to='wandb'"], "train.report_to must be a list of trackers"),
        (["train=1"], "--set train: set its keys, e.g. --set train.log_every=5"),
    ],
)  # fmt: skip
def test_train_set_refuses_what_would_change_the_result_or_is_invalid(planned_run, capsys, sets,
                                                                      message):  # fmt: skip
    before = sorted((p.name, p.read_bytes()) for p in planned_run.iterdir())
    code, _, err = run_cli(["train", str(planned_run), *[a for s in sets for a in ("--set", s)]],
                           capsys)  # fmt: skip
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert sorted((p.name, p.read_bytes()) for p in planned_run.iterdir()) == before


def test_train_set_never_rewrites_the_spec_under_a_running_trainer(planned_run, capsys):
    before = (planned_run / "spec.json").read_bytes()
    with io.exclusive_lock(planned_run / ".train.lock", "run"):
        code, _, err = run_cli(["train", str(planned_run), "--set", "train.log_every=2"], capsys)
    assert code == 2 and "run" in err and len(err.strip().splitlines()) == 1
    assert (planned_run / "spec.json").read_bytes() == before


def test_train_set_keeps_a_concurrent_set_that_landed_before_the_lock(planned_run, capsys,
                                                                       monkeypatch):  # fmt: skip
    """Two `scaling train --set` at once: the second to take the lock applies its change to the spec
    as the first left it, not to the copy it read before waiting."""
    real, landed = io.exclusive_lock, []

    @contextlib.contextmanager
    def lock_after_another_set(path, what):
        if not landed:  # the other --set lands while this one waits for the lock
            landed.append(path)
            spec = json.loads((planned_run / "spec.json").read_text())
            io.write_json(planned_run / "spec.json",
                          {**spec, "train": {**spec["train"], "eval_every": 7}})  # fmt: skip
        with real(path, what):
            yield

    monkeypatch.setattr(io, "exclusive_lock", lock_after_another_set)
    code, _, err = run_cli(["train", str(planned_run), "--set", "train.log_every=2"], capsys)
    assert code == 0, err
    train = json.loads((planned_run / "spec.json").read_text())["train"]
    assert train["log_every"] == 2 and train["eval_every"] == 7


# --------------------------------------------------------------------------------------------------
# scaling fit --set


def test_fit_set_overrides_the_fit_spec_and_is_recorded_in_fits_json(tmp_path, capsys):
    runs = tmp_path / "sweep"
    synth.simulate(runs, curves=False)
    out = tmp_path / "fit"
    argv = ["fit", str(runs), "--out", str(out), "--no-plots", "--grid", "small",
            "--set", "bootstrap.resamples=20", "--set", "bootstrap.seed=7", "--set", "k=6.5"]  # fmt: skip
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    settings = json.loads((out / "fits.json").read_text())["settings"]
    assert settings["bootstrap"]["resamples"] == 20 and settings["bootstrap"]["seed"] == 7
    assert settings["k"] == 6.5
    # The dedicated flags are applied after --set.
    code, _, err = run_cli([*argv, "--bootstrap", "0", "--out", str(tmp_path / "fit2")], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "fit2" / "fits.json").read_text())["settings"]["bootstrap"][
        "resamples"] == 0  # fmt: skip


def test_fit_set_unknown_key_lists_the_valid_ones(tmp_path, capsys):
    runs = tmp_path / "sweep"
    synth.simulate(runs, curves=False)
    code, _, err = run_cli(["fit", str(runs), "--set", "bootstrap.resample=3"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--set bootstrap.resample: unknown key 'resample' for [bootstrap] (did you mean " \
           "'bootstrap.resamples'?); valid keys: " in err  # fmt: skip
    assert not (runs / "fit").exists()


# --------------------------------------------------------------------------------------------------
# scaling --version


def test_version_prints_the_package_version_and_the_git_commit(capsys):
    code, out, _ = run_cli(["--version"], capsys)
    assert code == 0
    version = metadata.version("scaling")
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        head = None
    if head is None:
        assert out == f"scaling {version} (git unknown)\n"
    else:
        assert out.startswith(f"scaling {version} (git {head}")
        assert out in (
            f"scaling {version} (git {head})\n",
            f"scaling {version} (git {head}-dirty)\n",
        )


def test_version_says_unknown_without_git(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable to be found
    code, out, _ = run_cli(["--version"], capsys)
    assert code == 0 and out == f"scaling {metadata.version('scaling')} (git unknown)\n"
