"""Tokenizers for training: the backbone's own (``AutoTokenizer``), or a byte tokenizer built locally for
the tiny test and demo backbones (nothing downloaded).

    >>> from scaling.train.tokenizers import byte_tokenizer, load_tokenizer
    >>> tok = load_tokenizer("path/to/backbone")          # eos as pad when the tokenizer has none
    >>> byte_tokenizer()("Q: 1+2=")["input_ids"]           # one token per byte
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from scaling.arch import PRESET_HUB_IDS
from scaling.errors import ScalingError, one_line

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

BYTE_SPECIALS = ("<pad>", "<bos>", "<eos>")
BYTE_VOCAB = 256 + len(BYTE_SPECIALS)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _byte_chars() -> list[str]:
    """GPT-2's byte → printable character table: the alphabet the ``ByteLevel`` pre-tokenizer emits."""
    printable = {*range(33, 127), *range(161, 173), *range(174, 256)}
    spare = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(spare)) for b in range(256)]


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer built locally (token id = byte value, then ``<pad>``, ``<bos>``, ``<eos>``).

    For tiny test and demo backbones (vocabulary ≥ ``BYTE_VOCAB``): any text round-trips and nothing is
    downloaded. A BPE model with no merges over the byte alphabet is exactly one token per byte.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {char: b for b, char in enumerate(_byte_chars())}
    vocab.update({token: 256 + i for i, token in enumerate(BYTE_SPECIALS)})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(BYTE_SPECIALS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
    )


def save_byte_tokenizer(directory: str | os.PathLike) -> None:
    """Save :func:`byte_tokenizer` so ``AutoTokenizer.from_pretrained(directory)`` loads it."""
    byte_tokenizer().save_pretrained(str(directory))


def backbone_path(ref: str) -> str:
    """What ``from_pretrained`` should load for a planned backbone reference."""
    if ref.lower() in PRESET_HUB_IDS:
        return PRESET_HUB_IDS[ref.lower()]  # a preset is a shape; its weights live on the hub
    path = Path(ref).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if path.exists() and path.name == "config.json":
        return str(path.parent.resolve())
    if ref.count("/") == 1 and not ref.startswith((".", "/", "~")):
        return ref  # org/name: a hub id (network or a warm cache)
    raise ScalingError(f"backbone not found: {ref} (no such model directory)")


def load_tokenizer(backbone: str | os.PathLike) -> PreTrainedTokenizerBase:
    """The backbone's own tokenizer, with eos as the pad token when it has none (packing never pads)."""
    from transformers import AutoTokenizer

    path = Path(backbone)
    if path.is_dir() and not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ScalingError(
            f"no tokenizer in {path}: expected one of {', '.join(TOKENIZER_FILES)} "
            "(save one next to the model with tokenizer.save_pretrained)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(backbone))
    except Exception as e:  # missing files, no network, unknown class: all for the user to fix
        raise ScalingError(f"cannot load the tokenizer of {backbone}: {one_line(e)}") from None
    if tokenizer.eos_token_id is None:
        raise ScalingError(f"the tokenizer of {backbone} has no eos token to end documents with")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
