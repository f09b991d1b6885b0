"""The command line as a user runs it: output, --json keys, --help examples, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "scaling.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_flops_json_keys_and_values():
    out = run("flops", "--model", "qwen2.5-7b", "--method", "ladder", "--reduction", "8",
              "--seq-len", "2048", "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    for key in (
        "train_flops_per_token",
        "forward_flops_per_token",
        "trainable_params",
        "backbone_params",
    ):
        assert key in data
    assert data["train_flops_per_token"] == pytest.approx(17.17e9, rel=1e-3)
    assert data["k"] == pytest.approx(data["train_flops_per_token"] / data["trainable_params"])


def test_flops_table_from_model_directory(tiny_llama):
    out = run("flops", "--model", tiny_llama, "--method", "qlora", "--rank", "4", "--seq-len", "24")
    assert out.returncode == 0, out.stderr
    assert "train FLOPs/token" in out.stdout and "trainable params" in out.stdout


def test_flops_breakdown_beside_fvcore():
    """``--breakdown``: the analytic components at the model's size, and fvcore's count on a tiny
    unquantised twin beside the analytic count of that twin (equal: the text and --json say the same),
    with fvcore's convention stated and converted."""
    base = ("flops", "--model", "qwen2.5-0.5b", "--method", "qlora", "--rank", "8", "--seq-len", "64",
            "--breakdown")  # fmt: skip
    text, js = run(*base), run(*base, "--json")
    assert text.returncode == 0 and js.returncode == 0, text.stderr + js.stderr
    words = " ".join(text.stdout.split())  # notes are wrapped at 100 columns
    assert "one multiply-accumulate as one flop" in words
    assert "cannot trace bitsandbytes' 4-bit matmuls" in words  # QLoRA's twin is unquantised
    assert "| module" in text.stdout and "not counted" not in text.stdout
    split = json.loads(js.stdout)["breakdown"]
    fv = split["fvcore"]
    assert list(fv["components"]) == ["backbone.blocks", "backbone.attention", "lora", "head"]
    for row in fv["components"].values():
        assert row["fvcore"] == row["analytic"] > 0
        assert f"{row['analytic']:>12.6g}  {row['fvcore']:>12.6g}" in text.stdout
    assert fv["total"] == sum(r["fvcore"] for r in fv["components"].values())
    assert fv["not_counted"] == {} and fv["seq_len"] == 64
    analytic = split["analytic"]
    data = json.loads(js.stdout)
    assert sum(t["train"] for t in analytic.values()) == pytest.approx(
        data["train_flops_per_token"]
    )
    assert sum(t["forward"] for t in analytic.values()) == pytest.approx(
        data["forward_flops_per_token"]
    )


def test_memory_fits_verdict():
    base = (
        "memory",
        "--model",
        "qwen2.5-7b",
        "--seq-len",
        "2048",
        "--batch-size",
        "1",
        "--gpu-mem",
        "12GB",
    )
    qlora = run(*base, "--method", "qlora")
    ladder = run(*base, "--method", "ladder", "--reduction", "8", "--loss", "efficient", "--json")
    assert qlora.returncode == 0 and "does NOT fit" in qlora.stdout
    data = json.loads(ladder.stdout)
    assert data["fits"] is True and data["bytes"]["total"] < 12e9


def test_memory_measure_on_a_tiny_twin():
    out = run("memory", "--model", "qwen2.5-7b", "--method", "xladder", "--delta", "2",
              "--seq-len", "64", "--batch-size", "2", "--measure", "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    m = json.loads(out.stdout)["measured"]
    assert m["measured"]["total"] > 0 and abs(m["error"]) < 0.05
    assert "num_hidden_layers=4" in m["twin"] and "num_key_value_heads=1" in m["twin"]


def test_bool_dial_forms():
    a = run("flops", "--model", "qwen2.5-0.5b", "--method", "qlora", "--seq-len", "512",
            "--gradient-checkpointing", "--json")  # fmt: skip
    b = run("flops", "--model", "qwen2.5-0.5b", "--method", "qlora", "--seq-len", "512",
            "--gradient-checkpointing", "false", "--json")  # fmt: skip
    assert (
        json.loads(a.stdout)["train_flops_per_token"]
        > json.loads(b.stdout)["train_flops_per_token"]
    )


@pytest.mark.parametrize("command", [[], ["flops"], ["memory"], ["demo"]])
def test_help_shows_an_example(command):
    out = run(*command, "--help")
    assert out.returncode == 0
    assert "example" in out.stdout and "scaling " in out.stdout


Q7B = "--model qwen2.5-7b --method qlora --seq-len 8"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("flops --model qwen2.5-7b --method prefix --seq-len 8", "invalid choice"),
        ("flops --model qwen2.5-7b --method ladder --rank 8 --seq-len 8", "unknown key 'rank'"),
        ("flops --model qwen2.5-7b --method ladder --reduction 5 --seq-len 8", "does not divide"),
        ("flops --model /no/such/model --method qlora --seq-len 8", "model not found"),
        ("flops --model qwen2.5-7b --method qlora --seq-len 0", "--seq-len must be positive"),
        ("flops --model qwen2.5-7b --method qlora --seq-len -3", "--seq-len must be positive"),
        ("flops --model qwen2.5-7b --method qlora --seq-len x", "invalid int value"),
        (f"memory {Q7B} --batch-size 1 --gpu-mem 12XB", "--gpu-mem"),
        (f"memory {Q7B} --batch-size 0", "--batch-size must be positive"),
    ],
)
def test_bad_input_one_line_exit_2(args, message):
    out = run(*args.split())
    assert out.returncode == 2
    assert message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert out.stdout == ""


def test_unreadable_config(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    out = run("flops", "--model", str(tmp_path), "--method", "qlora", "--seq-len", "8")
    assert out.returncode == 2 and "unreadable config" in out.stderr
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 8}))
    out = run("flops", "--model", str(tmp_path), "--method", "qlora", "--seq-len", "8")
    assert out.returncode == 2 and "unsupported model family 'gpt2'" in out.stderr


def test_sweep_submit_plans_trains_and_reports(tmp_path, capsys):
    """`scaling sweep --submit` = plan + `scaling launch`: here in-process (debug), with real training."""
    from conftest import make_tiny

    from scaling import cli
    from scaling.train.tokenizers import save_byte_tokenizer

    model = make_tiny("llama", tmp_path / "tiny")
    save_byte_tokenizer(model)
    spec = tmp_path / "s.toml"
    spec.write_text(
        f'name = "s"\nbackbones = ["{model}"]\nmethods = ["ladder"]\nseq_len = 32\n'
        "batch_tokens = 64\nmicro_batch_size = 2\nbudgets = [4e8]\n"
        '[method.ladder]\nreduction = [4, 8]\nquantization = "none"\n'
        "[dataset]\neval_sequences = 2\n[constraints]\nmin_steps = 5\n"
    )
    out = tmp_path / "runs"
    assert cli.main(["sweep", str(spec), "--out", str(out), "--submit", "--executor", "debug"]) == 0
    text = capsys.readouterr().out
    assert "wrote 2 new run(s)" in text and "submitted 2 run(s) to debug" in text
    assert "2 success" in text  # the status table after the in-process runs
    results = [json.loads(p.read_text()) for p in out.glob("runs/*/result.json")]
    assert sorted(r["status"] for r in results) == ["success", "success"]
    # Submitting again: nothing left to launch.
    assert cli.main(["sweep", str(spec), "--out", str(out), "--submit", "--executor", "debug"]) == 0
    assert "nothing to launch" in capsys.readouterr().out
