"""Method registry: one config class per method, one line each.

    from scaling import methods
    model = methods.build("ladder", "path/to/model", reduction=8)   # or a PreTrainedModel instance
    out = model(input_ids=ids, attention_mask=mask, labels=ids)      # out.loss, out.logits
    model.save("out/adapter"); model = methods.load("out/adapter")

``methods.config(name, **dials)`` gives the torch-free config the planner and ``scaling.flops`` use.
"""

from __future__ import annotations

from typing import Any

from scaling.errors import ScalingError
from scaling.methods.base import MethodConfig
from scaling.methods.full import FullConfig
from scaling.methods.ladder import LadderConfig
from scaling.methods.lora import LoraConfig, QLoraConfig
from scaling.methods.xladder import XLadderConfig

REGISTRY: dict[str, type[MethodConfig]] = {
    FullConfig.name: FullConfig,
    LoraConfig.name: LoraConfig,
    QLoraConfig.name: QLoraConfig,
    LadderConfig.name: LadderConfig,
    XLadderConfig.name: XLadderConfig,
}

__all__ = ["REGISTRY", "MethodConfig", "build", "config", "config_class", "load"]


def config_class(name: str) -> type[MethodConfig]:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ScalingError(f"unknown method {name!r}; methods: {', '.join(REGISTRY)}") from None


def config(name: str, **dials: Any) -> MethodConfig:
    """The validated dials of method ``name``; an unknown dial is an error listing the valid ones."""
    return config_class(name).from_dict(dials)


def build(name: str, backbone: Any, **dials: Any):
    """Build method ``name`` on ``backbone`` (model directory, hub name, or ``PreTrainedModel``)."""
    return config(name, **dials).build(backbone)


def load(directory: Any, backbone: Any = None):
    """Rebuild a saved method (``MethodModel.save``) on ``backbone`` or the backbone it recorded."""
    from scaling.modeling import load_method

    return load_method(directory, backbone)
