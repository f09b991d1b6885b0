"""The method registry: one config class per method name, and building or reloading a method by name.

    >>> from scaling.methods import registry
    >>> registry.config("ladder", reduction=16)          # validated, torch-free dials
    >>> registry.build("qlora", "path/to/model", rank=8)  # the trainable model (imports torch)
    >>> registry.load("runs/q/runs/<id>/model")            # a saved method, rebuilt on its backbone

``scaling.methods`` re-exports these names; this module is the only one that knows every method.
"""

from __future__ import annotations

import os
from pathlib import Path
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


def load(directory: str | os.PathLike, backbone: Any = None):
    """Rebuild the method saved in ``directory`` (``MethodModel.save``) on ``backbone`` (default: the
    backbone it recorded), with its trained weights."""
    from scaling import io
    from scaling.methods.model import FORMAT_VERSION, METHOD_FILE

    directory = Path(directory)
    meta_path = directory / METHOD_FILE
    if not meta_path.is_file():
        raise ScalingError(f"no saved method in {directory} (missing {METHOD_FILE})")
    meta = io.read_json(meta_path, "method file")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ScalingError(
            f"{meta_path} has format {meta.get('format_version')}, expected {FORMAT_VERSION}"
        )
    from scaling.runspec import recorded_config

    recorded = recorded_config(meta["config"], config_class(meta["method"]).field_names())
    cfg = config(meta["method"], **recorded)
    if cfg.kind == "full" and backbone is None:
        backbone = directory  # the saved model is the whole model
    elif getattr(cfg, "init", None) == "pruned":
        cfg = cfg.replace(init="random")  # weights are loaded next; skip the pruning work
    model = cfg.build(backbone if backbone is not None else meta["backbone"])
    model.method_config = config(meta["method"], **recorded)
    if cfg.kind != "full" or Path(str(backbone)) != directory:
        model.load_weights(directory)
    return model
