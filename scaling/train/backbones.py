"""A built-in family of tiny Llama backbones, pre-trained on the spot so fine-tuning them means something.

    scaling backbone tiny                      # → runs/backbones/tiny-llama-{32,48,64,96,128,192}, cached

Each backbone is a 4-layer Llama (GQA, untied head, the byte tokenizer of :mod:`scaling.train.tokenizers`) at
one of six widths, pre-trained briefly on synthetic addition and subtraction of difficulty 2 (data
seed 1000) and saved with ``save_pretrained``, so every later step loads it through the same
``from_pretrained`` path as a real model. Fine-tuning sweeps then train on harder problems that also
multiply (difficulty 3, data seed 0): the backbone's hidden states carry digits, operators and the
column-by-column format, which the side network or adapter must adapt, and multiplication is a
skill only fine-tuning teaches — so fine-tuning tokens matter beside backbone size, which is what
gives an isoFLOP sweep over the family an interior optimum (a random backbone would leave Ladder's
ladders nothing to read; a backbone already fluent in the task would leave the tokens nothing to do).

A backbone is rebuilt only when its ``pretrain.json`` differs from what is asked (or ``force``). Each
one is built in a temporary sibling and swapped in whole; a ``tiny-llama-<width>`` folder that is not a
saved backbone, or an ``--out`` that is a file, is refused before any training, never replaced.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scaling import io
from scaling.arch import TINY_DIR, TINY_WIDTHS, tiny_config
from scaling.errors import ScalingError, one_line
from scaling.train.data import prepare
from scaling.train.tokenizers import byte_tokenizer, save_byte_tokenizer

DEFAULT_DIR = Path(TINY_DIR)
PRETRAIN = dict(corpus="synthetic-arithmetic", difficulty=2, ops="+-", data_seed=1000, seq_len=128,
                batch=8, lr=3e-3, warmup=10, seed=0)  # fmt: skip


def is_backbone(path: Path) -> bool:
    """A folder this module wrote: a saved model with its config (a random or pre-trained backbone)."""
    return (path / "config.json").is_file() and (path / "tokenizer_config.json").is_file()


@contextlib.contextmanager
def _backbone_dir(directory: str | Path) -> Iterator[Path]:
    """``io.atomic_dir`` for a backbone, with an OS failure (read-only parent, full disk) as one line."""
    try:
        with io.atomic_dir(directory, owned=is_backbone) as tmp:
            yield tmp
    except OSError as e:
        raise ScalingError(f"cannot write {directory}: {e.strerror or one_line(e)} (nothing "
                           "written; what was there is untouched)") from None  # fmt: skip


def save_random(directory: str | Path, width: int = 128) -> Path:
    """A randomly initialised tiny Llama (seed 0) and the byte tokenizer, saved with ``save_pretrained``."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    fields = {k: v for k, v in tiny_config(width).items() if k != "model_type"}
    torch.manual_seed(0)
    with _backbone_dir(directory) as tmp:
        AutoModelForCausalLM.from_config(LlamaConfig(**fields)).save_pretrained(tmp)
        save_byte_tokenizer(tmp)  # 259 byte tokens ≤ the 512-row vocabulary
    return Path(directory)


def pretrain(directory: str | Path, width: int, steps: int, *, force: bool = False,
             log=print) -> dict[str, Any]:  # fmt: skip
    """Build (or reuse) the pre-trained tiny Llama of ``width`` in ``directory``; return its record."""
    import torch

    from scaling.train.objective import schedule, token_loss_sum

    directory = Path(directory)
    wanted = _wanted(width, steps)
    record = None if force else _cached(directory, wanted)
    if record is not None:
        return record
    io.check_replaceable(directory, is_backbone)  # before training, not after
    from transformers import AutoModelForCausalLM, LlamaConfig

    start = time.perf_counter()
    torch.manual_seed(PRETRAIN["seed"])
    fields = {k: v for k, v in tiny_config(width).items() if k != "model_type"}
    model = AutoModelForCausalLM.from_config(LlamaConfig(**fields, attn_implementation="sdpa"))
    tokenizer = byte_tokenizer()
    corpus = {"name": PRETRAIN["corpus"], "path": None, "tokens": None, "split": "train",
              "text_field": "text", "prompt_field": "prompt", "response_field": "response",
              "eval_sequences": 8, "seed": PRETRAIN["data_seed"],
              "difficulty": PRETRAIN["difficulty"], "ops": PRETRAIN["ops"]}  # fmt: skip
    b, seq = PRETRAIN["batch"], PRETRAIN["seq_len"]
    tokens = prepare(corpus, tokenizer, seq_len=seq, train_sequences=steps * b, max_epochs=None)
    opt = torch.optim.AdamW(model.parameters(), lr=PRETRAIN["lr"], weight_decay=0.1)
    sched = schedule(
        opt, dict(schedule="cosine", warmup_steps=PRETRAIN["warmup"], min_lr_ratio=0.1), steps
    )
    model.train()
    losses = []
    for step in range(steps):
        ids = torch.from_numpy(tokens.train_ids[step * b : (step + 1) * b])
        # Language modelling on every token: prompts too (the arithmetic format is the "language").
        n = ids[:, 1:].numel()
        loss = token_loss_sum(model(input_ids=ids).logits, ids) / n
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if (step + 1) % max(1, steps // 4) == 0:
            log(f"  tiny-llama-{width}: step {step + 1}/{steps} loss {loss.item():.3f}")
    model.eval()
    with torch.no_grad():
        ev = torch.from_numpy(tokens.eval_ids)
        eval_loss = (token_loss_sum(model(input_ids=ev).logits, ev) / ev[:, 1:].numel()).item()
    if not math.isfinite(eval_loss):
        raise ScalingError(f"pre-training tiny-llama-{width} diverged (eval loss {eval_loss})")
    record = {**wanted, "final_train_loss": sum(losses[-10:]) / len(losses[-10:]),
              "eval_loss": eval_loss, "seconds": time.perf_counter() - start,
              "params": sum(p.numel() for p in model.parameters())}  # fmt: skip
    with _backbone_dir(directory) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        io.write_json(tmp / "pretrain.json", record)
    return record


def _wanted(width: int, steps: int) -> dict[str, Any]:
    """What a backbone's ``pretrain.json`` must record for it to be reused."""
    return {"width": width, "steps": steps, **PRETRAIN, "config": tiny_config(width)}


def _cached(directory: Path, wanted: dict[str, Any]) -> dict[str, Any] | None:
    """The record of the backbone in ``directory`` when it was built as ``wanted`` asks, else None."""
    record_path = directory / "pretrain.json"
    if not record_path.is_file():
        return None
    record = io.read_json(record_path, "pretrain record")
    if isinstance(record, dict) and {k: record.get(k) for k in wanted} == wanted:
        return record
    return None


def build_family(out: str | Path = DEFAULT_DIR, *, steps: int = 150, widths=None, force: bool = False,
                 log=print) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Pre-train (or reuse) every tiny backbone under ``out``; name → its ``pretrain.json`` record."""
    from scaling.methods.backbone import quiet_libraries

    out = Path(out)
    names = {width: f"tiny-llama-{width}" for width in widths or TINY_WIDTHS}
    # Every member's place is checked before the first one trains: a refusal costs seconds.
    if out.exists() and not out.is_dir():
        raise ScalingError(f"{out} exists and is not a folder: the backbones go in a folder")
    for name in names.values():
        io.check_replaceable(out / name, is_backbone)
    stale = [name for width, name in names.items()
             if force or _cached(out / name, _wanted(width, steps)) is None]  # fmt: skip
    if stale:  # a read-only folder of cached backbones is fine: nothing is written to it
        io.check_writable(out / stale[0])
    quiet_libraries()
    return {name: pretrain(out / name, width, steps, force=force, log=log)
            for width, name in names.items()}  # fmt: skip
