"""LoRA (Hu et al. 2021) and QLoRA (Dettmers et al. 2023) through peft, on every linear block layer.

QLoRA is LoRA on a bitsandbytes NF4 + double-quant backbone; the two share this module and differ only
in their defaults. LoRA and quantisation come from peft and bitsandbytes, never hand-written.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from scaling.config import MAX_DIM, check, check_positive_int, check_positive_number
from scaling.methods.base import MethodConfig

# Every linear layer of a Llama/Mistral/Qwen2 block; not lm_head (QLoRA paper, §4 "all linear layers").
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoraConfig(MethodConfig):
    name: ClassVar[str] = "lora"
    kind: ClassVar[str] = "lora"
    dial: ClassVar[str] = "rank"

    rank: int = 64
    """LoRA rank r (QLoRA's default 64): adapter params = r·(in + out) per targeted linear."""
    alpha: float | None = None
    """LoRA scaling numerator. Unset: 2 with ``use_rslora`` (the update is (2/√r)·B·A, QLoRA's scale
    16/64 at its reference rank 64), 16 without ((16/r)·B·A, QLoRA's)."""
    use_rslora: bool = True
    """Rank-stabilised scaling α/√r (Kalajdzievski 2023, peft's ``use_rslora``) instead of α/r, so the
    update's scale stays comparable across the ranks a sweep varies: with α/r and a fixed α it would
    change 128× between rank 1 and 128, confounding rank with learning rate."""
    dropout: float = 0.1
    """Dropout on the LoRA branch input (QLoRA: 0.1 up to 13B, 0.05 above)."""
    gradient_checkpointing: bool = False
    """Recompute block activations in backward (QLoRA's paper setting; off for memory comparisons)."""
    prepare_kbit: bool = False
    """Call peft's ``prepare_model_for_kbit_training`` (upcasts embeddings/head/norms to fp32); with a
    bf16 compute dtype the embeddings and head then go back to bf16 and the norms stay fp32, as the QLoRA
    reference does."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int("rank", self.rank, maximum=MAX_DIM)
        # inf passes "> 0" and would make every LoRA update infinite: a finite α only.
        check_positive_number("alpha", self.alpha, allow_none=True)
        check(
            _is_number(self.dropout) and 0 <= self.dropout < 1,
            f"dropout must be in [0, 1); got {self.dropout!r}",
        )

    @property
    def lora_alpha(self) -> float:
        """The α peft gets (see ``alpha``)."""
        if self.alpha is not None:
            return float(self.alpha)
        return 2.0 if self.use_rslora else 16.0

    def build(self, backbone: Any):
        import peft
        import torch

        from scaling.methods.backbone import compute_dtype, load_backbone
        from scaling.methods.model import HFMethodModel

        model = load_backbone(backbone, self)
        model.requires_grad_(False)
        ckpt_kwargs = {"use_reentrant": False}
        if self.prepare_kbit:
            model = peft.prepare_model_for_kbit_training(
                model,
                use_gradient_checkpointing=self.gradient_checkpointing,
                gradient_checkpointing_kwargs=ckpt_kwargs,
            )
        if self.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)
        lora = peft.LoraConfig(
            r=self.rank,
            lora_alpha=self.lora_alpha,
            use_rslora=self.use_rslora,
            lora_dropout=self.dropout,
            target_modules=list(TARGET_MODULES),
            bias="none",
            task_type="CAUSAL_LM",
        )
        model = peft.get_peft_model(model, lora)
        dtype = compute_dtype(self.compute_dtype)
        if dtype != torch.float32:
            _cast_like_qlora(model, dtype, self.prepare_kbit)
        return HFMethodModel(model, self)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cast_like_qlora(model, dtype, prepared: bool) -> None:
    """LoRA adapters in the compute dtype; after ``prepare_model_for_kbit_training`` also the embeddings
    and head back in it, the norms left in fp32 (Dettmers et al.'s ``qlora.py``). peft creates adapters in
    fp32 and casts every adapter input up to them: under bf16 compute that would keep fp32 activations and
    fp32 weight gradients, twice the memory the reference uses."""
    import torch
    from peft.tuners.lora import LoraLayer

    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            for adapters in (module.lora_A, module.lora_B):
                adapters.to(dtype)
        elif (
            prepared and ("lm_head" in name or "embed_tokens" in name) and hasattr(module, "weight")
        ):
            if module.weight.dtype == torch.float32:
                module.to(dtype)
            if "lm_head" in name:  # the fp32 final norm's output meets a bf16 head: cast it, as
                module.register_forward_pre_hook(_input_to_weight_dtype)  # autocast would


def _input_to_weight_dtype(module, args):
    return (args[0].to(module.weight.dtype), *args[1:])


@dataclasses.dataclass(frozen=True, kw_only=True)
class QLoraConfig(LoraConfig):
    """QLoRA as its reference trains it: NF4 backbone, ``prepare_model_for_kbit_training`` and
    bitsandbytes' ``paged_adamw_32bit`` (Dettmers et al. 2023, ``qlora.py``)."""

    name: ClassVar[str] = "qlora"
    quantization: str = "nf4"
    prepare_kbit: bool = True
    optimizer: str = "paged_adamw_32bit"
