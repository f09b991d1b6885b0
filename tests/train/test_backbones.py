"""The tiny pre-trained backbone family: saved through save_pretrained, loadable as users load models,
actually pre-trained, and cached."""

from __future__ import annotations

import json

import pytest

from scaling import cli
from scaling.arch import resolve_arch
from scaling.errors import ScalingError
from scaling.train import backbones, tokenizers


def test_pretrained_tiny_backbone_loads_like_a_user_model_and_is_cached(tmp_path):
    from transformers import AutoModelForCausalLM

    records = backbones.build_family(tmp_path, steps=12, widths=[64], log=lambda _: None)
    path = tmp_path / "tiny-llama-64"
    record = records["tiny-llama-64"]
    assert json.loads((path / "pretrain.json").read_text()) == record
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 4
    assert resolve_arch(path).hidden_size == 64
    assert len(tokenizers.load_tokenizer(path)) == tokenizers.BYTE_VOCAB
    uniform = 6.238  # ln 512: a uniform guess over the vocabulary
    assert record["eval_loss"] < 0.8 * uniform  # it learned something
    assert record["params"] == sum(p.numel() for p in model.parameters())

    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert backbones.build_family(tmp_path, steps=12, widths=[64]) == records  # cached
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    backbones.build_family(tmp_path, steps=13, widths=[64], log=lambda _: None)  # other settings
    assert (path / "model.safetensors").stat().st_mtime_ns != stamp


def test_quickstart_plans_the_tiny_family_this_module_builds():
    from scaling.sweep import load_spec

    refs = load_spec("sweeps/quickstart.toml").backbone_refs()
    assert refs == {str(backbones.DEFAULT_DIR / f"tiny-llama-{w}"): backbones.tiny_config(w)
                    for w in backbones.TINY_WIDTHS}  # fmt: skip


def test_unknown_width_and_bad_steps(capsys):
    with pytest.raises(ScalingError, match="widths: 32, 48, 64, 96, 128, 192"):
        backbones.tiny_config(256)
    assert cli.main(["backbone", "tiny", "--steps", "0"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
