"""Tiny models of each supported family, built from configs and saved with ``save_pretrained`` so tests
load them through the same ``from_pretrained`` path users take. Nothing is downloaded."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest

REFERENCE_DATA = Path(
    os.environ.get("SCALING_REFERENCE_DATA")
    or Path(__file__).resolve().parents[2] / "shared" / "data"
)
"""Public reference data whose licence does not allow shipping it (e.g. Chinchilla's digitised points,
Epoch AI): looked for beside the repository (``../shared/data``) or in ``$SCALING_REFERENCE_DATA``;
tests that need a file skip, with the reason, when it is absent."""


@pytest.fixture(autouse=True, scope="session")
def data_cache(tmp_path_factory) -> Path:
    """Token shards prepared by tests go to a temporary cache, never the user's
    (``$SCALING_DATA_CACHE``, inherited by the jobs and CLIs tests start)."""
    path = tmp_path_factory.mktemp("data-cache")
    os.environ["SCALING_DATA_CACHE"] = str(path)
    return path


TINY = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
            max_position_embeddings=128, vocab_size=300)  # fmt: skip

FAMILIES = {
    # GQA, untied head
    "llama": dict(num_key_value_heads=2, tie_word_embeddings=False),
    # qkv bias (built into Qwen2), tied embeddings
    "qwen2": dict(num_key_value_heads=2, tie_word_embeddings=True),
    # multi-query attention, sliding window shorter than the test sequences
    "mistral": dict(num_key_value_heads=1, tie_word_embeddings=False, sliding_window=8),
}


def make_tiny(family: str, directory, **overrides):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[family]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cls(**{**TINY, **FAMILIES[family], **overrides}))
    model.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """family → directory of a saved tiny model."""
    root = tmp_path_factory.mktemp("models")
    return {family: make_tiny(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="session")
def tiny_llama(tiny_models) -> str:
    return tiny_models["llama"]


@pytest.fixture
def batch():
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.randint(0, TINY["vocab_size"], (2, 24), generator=g)
