"""The common model interface of every method (torch): forward, generate, save, parameter bookkeeping.

from scaling import methods
model = methods.build("qlora", "path/to/model", rank=16)
out = model(input_ids=ids, attention_mask=mask, labels=ids)   # out.loss, out.logits
model.save("adapter/")                                         # trained parts + scaling_method.json
again = methods.load("adapter/")                               # same logits (scaling.methods.registry)
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn
from transformers import AutoModelForCausalLM

from scaling import io
from scaling.methods.backbone import backbone_source

METHOD_FILE = "scaling_method.json"
FORMAT_VERSION = 1


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

    def hidden_states(self, input_ids, attention_mask=None):
        """The final-normed hidden states the output head reads, (batch, seq, d): what the loss
        takes, so that a memory-efficient loss never needs the full logits."""
        raise NotImplementedError

    def output_head(self) -> nn.Linear:
        """The (frozen, unless fully fine-tuned) output projection to the vocabulary."""
        raise NotImplementedError

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the trained parts and ``scaling_method.json`` atomically into ``directory``."""
        with io.atomic_dir(directory, owned=lambda p: (p / METHOD_FILE).is_file()) as tmp:
            self.save_weights(tmp)
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

    def save_weights(self, directory: Path) -> None:
        raise NotImplementedError

    def load_weights(self, directory: Path) -> None:
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

    @property
    def base(self) -> nn.Module:
        """The transformers model (inside peft's wrapper for LoRA)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def hidden_states(self, input_ids, attention_mask=None):
        out = self.base.get_decoder()(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        )
        return out.last_hidden_state

    def output_head(self) -> nn.Linear:
        return self.base.get_output_embeddings()

    def generate(self, *args, **kwargs):
        return self.model.generate(*args, **kwargs)

    def save_weights(self, directory: Path) -> None:
        # peft writes only the adapter (adapter_config.json + adapter_model.safetensors).
        self.model.save_pretrained(directory)

    def load_weights(self, directory: Path) -> None:
        if self.method_config.kind == "lora":
            from peft import set_peft_model_state_dict
            from peft.utils import load_peft_weights

            set_peft_model_state_dict(self.model, load_peft_weights(str(directory)))
        else:
            state = AutoModelForCausalLM.from_pretrained(
                directory, dtype=self.model.dtype
            ).state_dict()
            self.model.load_state_dict(state)
