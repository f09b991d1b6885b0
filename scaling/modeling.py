"""Loading backbones and the common model interface of every method (torch, transformers, peft).

from scaling import methods
model = methods.build("qlora", "path/to/model", rank=16)
out = model(input_ids=ids, attention_mask=mask, labels=ids)   # out.loss, out.logits
model.save("adapter/")                                         # trained parts + scaling_method.json
again = methods.load("adapter/")                               # same logits
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, PreTrainedModel

from scaling import io
from scaling.errors import ScalingError

METHOD_FILE = "scaling_method.json"
FORMAT_VERSION = 1


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


class MethodModel(nn.Module):
    """Common interface: ``forward`` (HF-style output with ``loss``/``logits``), ``generate``,
    ``save``/``methods.load`` of the trained parts, and parameter bookkeeping."""

    def __init__(self, cfg, source: str):
        super().__init__()
        self.method_config = cfg
        self.backbone_source = source

    @property
    def method(self) -> str:
        return self.method_config.name

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def num_trainable_params(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the trained parts and ``scaling_method.json`` atomically into ``directory``."""
        with io.atomic_dir(directory) as tmp:
            self._save_weights(tmp)
            io.write_json(
                tmp / METHOD_FILE,
                {
                    "format_version": FORMAT_VERSION,
                    "method": self.method,
                    "config": self.method_config.to_dict(),
                    "backbone": self.backbone_source,
                },
            )
        return Path(directory)

    def _save_weights(self, directory: Path) -> None:
        raise NotImplementedError

    def _load_weights(self, directory: Path) -> None:
        raise NotImplementedError


class HFMethodModel(MethodModel):
    """Full fine-tuning, LoRA and QLoRA: a transformers model, possibly wrapped by peft."""

    def __init__(self, model: nn.Module, cfg):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        super().__init__(cfg, backbone_source(base))
        self.model = model
        self.train()  # from_pretrained returns eval mode; a built method is ready to train

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs
        )

    def generate(self, *args, **kwargs):
        return self.model.generate(*args, **kwargs)

    def _save_weights(self, directory: Path) -> None:
        # peft writes only the adapter (adapter_config.json + adapter_model.safetensors).
        self.model.save_pretrained(directory)

    def _load_weights(self, directory: Path) -> None:
        if self.method_config.kind == "lora":
            from peft import set_peft_model_state_dict
            from peft.utils import load_peft_weights

            set_peft_model_state_dict(self.model, load_peft_weights(str(directory)))
        else:
            state = AutoModelForCausalLM.from_pretrained(
                directory, dtype=self.model.dtype
            ).state_dict()
            self.model.load_state_dict(state)


def load_method(directory: str | os.PathLike, backbone: Any = None) -> MethodModel:
    """Rebuild the method saved in ``directory`` on ``backbone`` (default: the recorded backbone)."""
    from scaling import methods

    directory = Path(directory)
    meta_path = directory / METHOD_FILE
    if not meta_path.is_file():
        raise ScalingError(f"no saved method in {directory} (missing {METHOD_FILE})")
    meta = io.read_json(meta_path, "method file")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ScalingError(
            f"{meta_path} has format {meta.get('format_version')}, expected {FORMAT_VERSION}"
        )
    cfg = methods.config(meta["method"], **meta["config"])
    if cfg.kind == "full" and backbone is None:
        backbone = directory  # the saved model is the whole model
    elif getattr(cfg, "init", None) == "pruned":
        cfg = cfg.replace(init="random")  # weights are loaded next; skip the pruning work
    model = cfg.build(backbone if backbone is not None else meta["backbone"])
    model.method_config = methods.config(meta["method"], **meta["config"])
    if cfg.kind != "full" or Path(str(backbone)) != directory:
        model._load_weights(directory)
    return model
