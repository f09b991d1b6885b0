"""Side-network geometry and config strictness (pure Python)."""

from __future__ import annotations

import dataclasses

import pytest

from scaling import methods
from scaling.arch import ladder_geometry, resolve_arch, xladder_geometry
from scaling.errors import ScalingError


def test_ladder_connections_evenly_spaced():
    arch = resolve_arch("qwen2.5-7b")  # L = 28
    full = ladder_geometry(arch, reduction=8, width=None, side_layers=None, min_head_dim=8)
    assert full.connections == tuple(range(28)) and full.input_layer == -1
    seven = ladder_geometry(arch, reduction=8, width=None, side_layers=7, min_head_dim=8)
    assert seven.connections == (3, 7, 11, 15, 19, 23, 27)
    assert (seven.hidden_size, seven.intermediate_size, seven.num_heads, seven.head_dim) == (
        448,
        2368,
        28,
        16,
    )


def test_xladder_wiring():
    arch = resolve_arch("llama-3.2-1b")  # L = 16
    g = xladder_geometry(arch, reduction=8, width=None, delta=4, side_layers=None, min_head_dim=8)
    assert g.connections == (12, 13, 14, 15, None, None, None, None)
    assert g.input_layer == 11 and g.num_ladders == 4
    everything = xladder_geometry(
        arch, reduction=8, width=None, delta=16, side_layers=16, min_head_dim=8
    )
    assert everything.input_layer == -1  # δ = L reads the embedding output


def test_head_fallback_keeps_group_ratio():
    arch = resolve_arch("qwen2.5-7b")  # 28 heads of 128, 4 kv heads
    g = ladder_geometry(arch, reduction=32, width=None, side_layers=None, min_head_dim=8)
    assert g.head_dim == 8 and g.num_heads * g.head_dim == g.hidden_size == 112
    assert g.num_heads % g.num_kv_heads == 0


def test_unknown_key_lists_valid_ones():
    with pytest.raises(
        ScalingError, match=r"unknown key 'rnak'.*did you mean 'rank'.*valid keys: .*rank"
    ):
        methods.config("qlora", rnak=8)


@pytest.mark.parametrize(
    ("method", "dials", "message"),
    [
        ("ladder", {"fusion": "concat"}, "fusion must be one of"),
        ("ladder", {"side_layers": 0}, "side_layers must be a positive integer"),
        ("lora", {"dropout": 1.5}, "dropout must be in"),
        ("qlora", {"quantization": "int8"}, "quantization must be one of"),
    ],
)
def test_dial_validation(method, dials, message):
    with pytest.raises(ScalingError, match=message):
        methods.config(method, **dials)


def test_side_layers_out_of_range():
    with pytest.raises(ScalingError, match="side_layers must be in"):
        methods.config("ladder", side_layers=40).geometry(resolve_arch("qwen2.5-7b"))


def test_hub_ids_resolve_offline_to_presets():
    from scaling.arch import preset_alias

    expected = dataclasses.replace(resolve_arch("qwen2.5-7b"), source="Qwen/Qwen2.5-7B")
    assert resolve_arch("Qwen/Qwen2.5-7B") == expected
    assert preset_alias("meta-llama/Llama-3.2-1B") == "llama-3.2-1b"
    with pytest.raises(ScalingError, match="model not found: no-org/no-model"):
        resolve_arch("no-org/no-model")
