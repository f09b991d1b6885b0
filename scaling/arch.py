"""Backbone architectures (from a model directory, a ``config.json`` or a built-in preset) and the
geometry of a Ladder / xLadder side network. Pure Python: no torch.

    >>> from scaling.arch import resolve_arch
    >>> arch = resolve_arch("qwen2.5-7b")            # or "path/to/model" or "path/to/config.json"
    >>> arch.hidden_size, arch.num_layers
    (3584, 28)

Presets hold the fields of each model's published ``config.json`` that matter for counting and for
building a randomly initialised twin (no weights are stored or downloaded).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from scaling.errors import ScalingError
from scaling.io import read_json

SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2")

_LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}

# Fields copied from each model's published config.json on the Hugging Face hub.
PRESETS: dict[str, dict[str, Any]] = {
    "llama-2-7b": dict(
        model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
    ),
    "llama-3.2-1b": dict(
        model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
        max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling=_LLAMA3_ROPE, tie_word_embeddings=True,
    ),
    "llama-3.2-3b": dict(
        model_type="llama", hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
        num_attention_heads=24, num_key_value_heads=8, head_dim=128, vocab_size=128256,
        max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling=_LLAMA3_ROPE, tie_word_embeddings=True,
    ),
    "llama-3.1-8b": dict(
        model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
        max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling={**_LLAMA3_ROPE, "factor": 8.0}, tie_word_embeddings=False,
    ),
    "qwen2.5-0.5b": dict(
        model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
        max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
    ),
    "qwen2.5-1.5b": dict(
        model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
        max_position_embeddings=131072, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
    ),
    "qwen2.5-3b": dict(
        model_type="qwen2", hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
        num_attention_heads=16, num_key_value_heads=2, vocab_size=151936,
        max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
    ),
    "qwen2.5-7b": dict(
        model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
        max_position_embeddings=131072, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False,
    ),
    "qwen2.5-14b": dict(
        model_type="qwen2", hidden_size=5120, intermediate_size=13824, num_hidden_layers=48,
        num_attention_heads=40, num_key_value_heads=8, vocab_size=152064,
        max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=1000000.0, tie_word_embeddings=False,
    ),
    "mistral-7b": dict(
        model_type="mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=32000, max_position_embeddings=32768,
        rms_norm_eps=1e-5, rope_theta=10000.0, sliding_window=4096, tie_word_embeddings=False,
    ),
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Arch:
    """What the accounting needs to know about a Llama-style decoder (Llama, Mistral, Qwen2)."""

    family: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    qkv_bias: bool = False
    """Bias on q/k/v projections (Qwen2: yes; Llama: ``attention_bias``)."""
    o_bias: bool = False
    mlp_bias: bool = False
    source: str = ""
    """Preset name or path the architecture came from (provenance only)."""

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any], source: str = "") -> Arch:
        family = cfg.get("model_type")
        if family not in SUPPORTED_FAMILIES:
            raise ScalingError(
                f"unsupported model family {family!r} in {source or 'config'}; "
                f"supported: {', '.join(SUPPORTED_FAMILIES)}"
            )
        try:
            d, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
            attention_bias = bool(cfg.get("attention_bias", False))
            return cls(
                family=family,
                hidden_size=d,
                intermediate_size=int(cfg["intermediate_size"]),
                num_layers=int(cfg["num_hidden_layers"]),
                num_heads=heads,
                num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
                head_dim=int(cfg.get("head_dim") or d // heads),
                vocab_size=int(cfg["vocab_size"]),
                tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                # Qwen2 hard-codes bias=True on q/k/v and none on o_proj (modeling_qwen2.py).
                qkv_bias=True if family == "qwen2" else attention_bias,
                o_bias=False if family == "qwen2" else attention_bias,
                mlp_bias=bool(cfg.get("mlp_bias", False)) if family == "llama" else False,
                source=source,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ScalingError(f"config {source or ''} lacks or mangles field {e}") from None


# Where each preset's weights live: training a run planned on a preset loads these (network or cache).
PRESET_HUB_IDS: dict[str, str] = {
    "llama-2-7b": "meta-llama/Llama-2-7b-hf",
    "llama-3.2-1b": "meta-llama/Llama-3.2-1B",
    "llama-3.2-3b": "meta-llama/Llama-3.2-3B",
    "llama-3.1-8b": "meta-llama/Llama-3.1-8B",
    "qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B",
    "qwen2.5-1.5b": "Qwen/Qwen2.5-1.5B",
    "qwen2.5-3b": "Qwen/Qwen2.5-3B",
    "qwen2.5-7b": "Qwen/Qwen2.5-7B",
    "qwen2.5-14b": "Qwen/Qwen2.5-14B",
    "mistral-7b": "mistralai/Mistral-7B-v0.1",
}


# The built-in tiny family (``scaling backbone tiny``): 4-layer Llamas of six widths, pre-trained on
# the spot so the quickstart has a ladder of backbones to put on the size axis.
TINY_SHAPE = dict(num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                  max_position_embeddings=256, tie_word_embeddings=False)  # fmt: skip
TINY_WIDTHS = {32: 88, 48: 128, 64: 176, 96: 264, 128: 352, 192: 528}
"""Hidden size → MLP size (≈ 2.75×, Llama's ratio)."""
TINY_DIR = "runs/backbones"
FAMILIES = {
    "tiny": "the built-in tiny Llamas (scaling backbone tiny), in runs/backbones/",
    "qwen2.5": "Qwen2.5 0.5B … 14B presets",
    "llama-3": "Llama 3.x 1B, 3B and 8B presets",
}
"""Backbone ladders a sweep can name as ``family:<name>`` (each member is one size on the N axis)."""


def tiny_config(width: int) -> dict[str, Any]:
    """``config.json`` fields of the tiny Llama of this width."""
    if width not in TINY_WIDTHS:
        raise ScalingError(
            f"no tiny backbone of width {width}; widths: {', '.join(map(str, TINY_WIDTHS))}"
        )
    return dict(model_type="llama", hidden_size=width, intermediate_size=TINY_WIDTHS[width],
                **TINY_SHAPE)  # fmt: skip


def family_members(name: str) -> list[tuple[str, dict[str, Any] | None]]:
    """(backbone reference, inline config.json or None) of each member of a backbone family, smallest
    first: the tiny family's model directories (with their configs, usable before they are built),
    or presets."""
    if name == "tiny":
        return [(f"{TINY_DIR}/tiny-llama-{w}", tiny_config(w)) for w in TINY_WIDTHS]
    prefix = {"qwen2.5": "qwen2.5-", "llama-3": "llama-3."}.get(name)
    if prefix is None:
        raise ScalingError(f"unknown backbone family {name!r}; families: {', '.join(FAMILIES)}")
    members = [p for p in PRESETS if p.startswith(prefix)]
    size = lambda p: PRESETS[p]["hidden_size"] ** 2 * PRESETS[p]["num_hidden_layers"]  # noqa: E731
    return [(p, None) for p in sorted(members, key=size)]


def preset_config(name: str) -> dict[str, Any]:
    """The stored ``config.json`` fields of an architecture preset (a copy)."""
    try:
        return dict(PRESETS[name.lower()])
    except KeyError:
        raise ScalingError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}") from None


def hub_cached_config(ref: str) -> dict[str, Any] | None:
    """A hub model's config.json from the local Hugging Face cache only (never the network)."""
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", ref):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(ref, "config.json")
        return json.loads(Path(path).read_text()) if isinstance(path, str) else None
    except Exception:  # not installed, bad cache entry: fall through to the other sources
        return None


def preset_alias(ref: str) -> str | None:
    """The preset a hub id names (``Qwen/Qwen2.5-7B`` → ``qwen2.5-7b``), if any."""
    for name, hub_id in PRESET_HUB_IDS.items():
        if ref.lower() == hub_id.lower():
            return name
    if "/" in ref and ref.rsplit("/", 1)[-1].lower() in PRESETS:
        return ref.rsplit("/", 1)[-1].lower()
    return None


def read_hf_config(model: str | Path) -> dict[str, Any]:
    """The config dict of a preset, a model directory, a ``config.json`` file, or a hub id (from the
    local cache, else the preset of the same name)."""
    if str(model).lower() in PRESETS:
        return preset_config(str(model))
    path = Path(model)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        if (cached := hub_cached_config(str(model))) is not None:
            return cached
        if (alias := preset_alias(str(model))) is not None:
            return preset_config(alias)
        raise ScalingError(
            f"model not found: {model} (not a preset, a model directory, a config.json or a cached "
            f"hub model; presets: {', '.join(PRESETS)})"
        )
    cfg = read_json(path, "config")
    if not isinstance(cfg, dict):
        raise ScalingError(f"unreadable config {path}: not a JSON object")
    return cfg


def resolve_arch(model: str | Path) -> Arch:
    """An :class:`Arch` from a preset name, a model directory or a ``config.json`` path."""
    return Arch.from_hf_config(read_hf_config(model), source=str(model))


# ---------------------------------------------------------------------------------------------------
# Side-network geometry (Ladder / xLadder), shared by the builder (scaling.methods.sidenet) and the accounting
# (scaling.flops) so the two can never disagree about what is trained.


@dataclasses.dataclass(frozen=True)
class SideGeometry:
    """Shape and wiring of a side network.

    ``connections[j]`` is the backbone layer whose output feeds side layer ``j`` through a ladder
    (``None``: a free xLadder layer with no ladder). ``input_layer`` is the backbone layer whose output
    feeds the side input projection W_in (-1: the embedding output).
    """

    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    connections: tuple[int | None, ...]
    input_layer: int

    @property
    def num_layers(self) -> int:
        return len(self.connections)

    @property
    def num_ladders(self) -> int:
        return sum(c is not None for c in self.connections)


def side_width(arch: Arch, reduction: int | None, width: int | None) -> int:
    """Side hidden size from either a reduction factor r (d/r) or an explicit width."""
    d = arch.hidden_size
    if (reduction is None) == (width is None):
        raise ScalingError("give exactly one of reduction and side_width")
    if width is None:
        if d % reduction:
            raise ScalingError(
                f"reduction {reduction} does not divide the hidden size {d} of {arch.source or 'the model'}"
            )
        width = d // reduction
    if not 0 < width <= d:
        raise ScalingError(f"side_width must be in [1, {d}]; got {width}")
    return width


def side_heads(arch: Arch, width: int, min_head_dim: int) -> tuple[int, int, int]:
    """(heads, kv heads, head dim) of the side net.

    LST keeps the backbone's head count and shrinks each head by the reduction factor. When that makes
    heads narrower than ``min_head_dim`` (or odd, which RoPE cannot rotate), we fall back to fewer heads
    of ``min_head_dim`` each, keeping the backbone's query/kv group ratio where it divides [ours].
    """
    d, hd, heads = arch.hidden_size, arch.head_dim, arch.num_heads
    scaled = hd * width / d
    if scaled == int(scaled) and int(scaled) % 2 == 0 and scaled >= min_head_dim:
        return heads, arch.num_kv_heads, int(scaled)
    head_dim = min(min_head_dim, width) // 2 * 2 or 2
    n_heads = max(1, width // head_dim)
    group = heads // arch.num_kv_heads
    n_kv = max(1, n_heads // group)
    while n_heads % n_kv:
        n_kv -= 1
    return n_heads, n_kv, head_dim


def ladder_geometry(
    arch: Arch,
    *,
    reduction: int | None,
    width: int | None,
    side_layers: int | None,
    min_head_dim: int,
) -> SideGeometry:
    """Ladder: ``side_layers`` (default: one per backbone layer) evenly spaced over the backbone.

    Side layer j reads backbone layer c(j) = round((j+1)·L/L_s) - 1, so the last side layer always reads
    the last backbone layer and L_s = L gives c(j) = j (LST's one-to-one ladder).
    """
    L = arch.num_layers
    n = L if side_layers is None else side_layers
    if not 1 <= n <= L:
        raise ScalingError(f"side_layers must be in [1, {L}] for ladder; got {n}")
    # Round half up in integers: floor((j+1)·L/n + 1/2) - 1.
    connections = tuple((2 * (j + 1) * L + n) // (2 * n) - 1 for j in range(n))
    return _geometry(arch, reduction, width, min_head_dim, connections, input_layer=-1)


def xladder_geometry(
    arch: Arch,
    *,
    reduction: int | None,
    width: int | None,
    delta: int,
    side_layers: int | None,
    min_head_dim: int,
) -> SideGeometry:
    """xLadder: side layer j < δ reads backbone layer L-δ+j; layers δ..l-1 are free (default l = 2δ).

    The side input is W_in applied to the output of backbone layer L-δ-1 (the embedding when δ = L),
    so the side stack continues the backbone's last δ layers and adds l-δ more: effective depth L+l-δ.
    """
    L = arch.num_layers
    if not 1 <= delta <= L:
        raise ScalingError(f"delta must be in [1, {L}] for xladder; got {delta}")
    n = 2 * delta if side_layers is None else side_layers
    if n < delta:
        raise ScalingError(f"side_layers ({n}) must be at least delta ({delta}) for xladder")
    connections = tuple(L - delta + j if j < delta else None for j in range(n))
    return _geometry(arch, reduction, width, min_head_dim, connections, input_layer=L - delta - 1)


def _geometry(arch, reduction, width, min_head_dim, connections, input_layer) -> SideGeometry:
    w = side_width(arch, reduction, width)
    heads, kv, hd = side_heads(arch, w, min_head_dim)
    return SideGeometry(
        hidden_size=w,
        intermediate_size=max(1, round(arch.intermediate_size * w / arch.hidden_size)),
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=hd,
        connections=connections,
        input_layer=input_layer,
    )
