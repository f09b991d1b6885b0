"""Loading a frozen backbone for a method: local directory, hub id or an already loaded model; NF4
through bitsandbytes when the method asks for it (torch, transformers).

    >>> from scaling.methods.backbone import load_backbone
    >>> model = load_backbone("path/to/model", methods.config("qlora"))    # 4-bit NF4, double quant
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, PreTrainedModel

from scaling.errors import ScalingError


def quiet_libraries() -> None:
    """Keep output to our own lines: no per-load progress bars, deprecation chatter or notices about
    optional bitsandbytes CPU kernels."""
    import logging
    import warnings

    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def compute_dtype(name: str) -> torch.dtype:
    """``auto`` → bfloat16 on CUDA, float32 on CPU (bf16 matmuls are several times slower on CPU)."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return getattr(torch, name)


def load_backbone(backbone: str | os.PathLike | PreTrainedModel, cfg) -> PreTrainedModel:
    """A causal LM for method config ``cfg``: NF4 through bitsandbytes when ``cfg.quantization == 'nf4'``.

    ``backbone`` is a local model directory, a hub name (needs network or a warm cache), or an
    already-loaded model, used as is after checking its quantisation matches the config.
    """
    if isinstance(backbone, PreTrainedModel):
        quantized = bool(getattr(backbone, "is_loaded_in_4bit", False))
        if quantized != (cfg.quantization == "nf4"):
            raise ScalingError(
                f"{cfg.name}: quantization={cfg.quantization!r} but the given model is "
                f"{'4-bit' if quantized else 'not quantized'}; pass a path to let the method load it"
            )
        return backbone
    source = str(backbone)
    # "org/name" is a hub id; an absolute, ./relative or ~ path that does not exist is a typo.
    looks_local = source.startswith((os.sep, ".", "~")) or Path(source).exists()
    if looks_local and not Path(source).is_dir():
        raise ScalingError(f"model path not found: {source}")
    dtype = compute_dtype(cfg.compute_dtype)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if cfg.quantization == "nf4":
        # QLoRA's storage format: NF4 with double quantisation (Dettmers et al. 2023).
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    if torch.cuda.is_available():
        kwargs["device_map"] = {"": default_device()}
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ScalingError(f"cannot load model {source!r}: {first}") from None
    for module in model.modules():
        # bitsandbytes repacks 4-bit weights in place for its AVX512-BF16 CPU inference kernel the first
        # time a layer runs without autograd — always, for Ladder's no-grad backbone. The repacking
        # rewrites the stored quantisation state (so the backbone is no longer bit-identical) and fails
        # on shapes it does not support (in_features % 64, out_features % 32). Keep the portable path.
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


def backbone_source(model: PreTrainedModel) -> str:
    return str(getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", ""))
