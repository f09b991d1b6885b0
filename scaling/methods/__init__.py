"""Methods: one torch-free config class per method (the dials), and the models they build.

    from scaling import methods
    model = methods.build("ladder", "path/to/model", reduction=8)   # or a PreTrainedModel instance
    out = model(input_ids=ids, attention_mask=mask, labels=ids)      # out.loss, out.logits
    model.save("out/adapter"); model = methods.load("out/adapter")

``methods.config(name, **dials)`` gives the torch-free config the planner and ``scaling.flops`` use.
Modules: :mod:`~scaling.methods.registry` (names → configs), ``base`` (what every config shares),
``full``, ``lora`` (LoRA and QLoRA), ``ladder``, ``xladder`` (dials), ``backbone`` (loading the frozen
backbone), ``model`` (the common model interface), ``sidenet`` (the Ladder/xLadder network),
``pruning`` (side-net initialisation from the backbone), ``cli`` (``scaling flops`` / ``memory``).
"""

from __future__ import annotations

from scaling.methods.base import MethodConfig
from scaling.methods.registry import REGISTRY, build, config, config_class, load

__all__ = ["REGISTRY", "MethodConfig", "build", "config", "config_class", "load"]
