"""Parameter, FLOP and memory accounting for every method. Pure Python: importable without torch.

    >>> from scaling import flops, methods
    >>> from scaling.arch import resolve_arch
    >>> arch = resolve_arch("qwen2.5-7b")
    >>> c = flops.cost(arch, methods.config("ladder", reduction=8), seq_len=2048)
    >>> round(c.train_flops_per_token / 1e9, 1)        # GFLOP per trained token
    17.2
    >>> m = flops.memory(arch, methods.config("qlora"), seq_len=2048, batch_size=1)
    >>> round(m.total / 2**30, 1)                       # GiB
    21.0

What is counted
---------------
Matrix-multiply FLOPs, 2 per multiply-accumulate, per *processed* token — exactly what
``torch.utils.flop_counter.FlopCounterMode`` counts (``mm``/``addmm``/``bmm``), and what the tests check
this module against on built models. Norms, activations, softmax, RoPE, residual adds, bias adds,
dropout, the loss and embedding look-ups are elementwise or gathers and are ignored (< 1% at any real
size, and not counted by the reference either).

A linear layer with W weights costs, per token (Kaplan et al. 2020, §2.1; Hoffmann et al. 2022, App. F):

* forward: 2W;
* backward, gradient w.r.t. its input: 2W — computed only if its input requires grad;
* backward, gradient w.r.t. its weight: 2W — computed only if the weight trains.

So a trained linear whose input carries a gradient costs 6W (the classic 6N), a frozen one inside the
gradient path 4W (LoRA's base layers, a frozen lm_head), a trained one fed by no-grad tensors 4W (Ladder's
down-projections: the backbone ran under ``no_grad``), and a frozen one outside the gradient path 2W
(Ladder's backbone). That is why training FLOPs per token are not 6·N here: QLoRA is ≈ 4·N_backbone,
Ladder ≈ 2·N_backbone + 6·N_side.

Attention (per token, per layer, forward) is QKᵀ plus AV over all heads: 2·s·H·hd each, so
A(s) = 4·s·H·hd when the full s×s square is computed, as eager and math-SDPA attention do ("executed",
the default here and what FlopCounterMode sees). Causal kernels (FlashAttention) skip the upper triangle:
on average (s+1)/2 keys per query, A_causal(s) = 2·(s+1)·H·hd ("causal"). Both are reported. With GQA the
keys/values are repeated to H heads before the products, so H (query heads) is the right count.
Backward of attention is 2A when Q, K and V carry gradients (dQ, dK from QKᵀ; dP, dV from AV).

Activation checkpointing re-runs each block's forward during backward. torch's non-reentrant checkpoint
(what transformers uses) stops re-running as soon as the last tensor saved for backward is restored
(``torch.utils.checkpoint`` "early stop", on by default); the inputs of a block's final matmul exist
before it runs, so that matmul (down_proj, or LoRA's B of down_proj) is never re-executed.

Per method (N_blk = block linear weights, N_head = d·V, N_q/k/v0 = the first layer's q/k/v weights):

* full:        6·(N_blk + N_head) + 3·L·A
               + checkpointing: 2·(N_blk − L·d·f) + L·A
* lora/qlora:  4·N_blk + 4·N_head + 6·N_lora + 3·L·A − 2·(N_qkv0 + r·d·3)  [first layer's q/k/v see
               the frozen embedding output, so no input-grad is computed for them — unless checkpointing
               is on: transformers then makes the embedding output require grad, and the − term goes]
               + checkpointing: 2·N_blk + 2·(N_lora − L·r·d) + L·A
* ladder:      2·N_blk + L·A (backbone fwd) + 4·N_head (frozen head: fwd + input-grad)
               + 6·N_side + 3·L_s·A_side + 4·(N_ladders + N_in) + 6·N_up
  W_in and the ladders read no-grad backbone states: forward + weight-grad only (4·W). Counting W_in at
  6·W, as a trained layer usually is, would be wrong: its input-grad is never executed, so 4·N_in.

Worked numbers (Qwen2.5-7B, s = 2048, executed attention, GFLOP/token): full 44.9, QLoRA r=64 31.7,
QLoRA + checkpointing 45.9, Ladder r=4/8/16 19.7/17.2/16.5. (Counting a re-run of the lm_head under
checkpointing would give 46.7 for QLoRA; it is outside the checkpointed blocks and is not re-run.)

Peak memory
-----------
M ≈ weights + trainable state + activations + logits, in bytes, for bf16 activations and SDPA
(no s² scores kept). Allocator fragmentation, workspaces and the CUDA context are not modelled.

* weights: NF4 with double quantisation stores 4 bits per weight plus 8-bit absmax per 64-block and
  32-bit second-level constants per 256 blocks = 4 + 8/64 + 32/(64·256) ≈ 4.127 bits (Dettmers et al.
  2023, §3); embeddings, head and norms stay in the compute dtype (2 bytes; 4 if
  ``prepare_model_for_kbit_training`` upcasts them). Unquantised: 2 bytes per weight.
* trainable state: 2 (bf16 weight) + 2 (grad) + 8 (AdamW m, v in fp32) = 12 bytes per trained parameter.
* activations kept for backward per token per Llama block ≈ 22·d + 8·f bytes (bf16: inputs of the norms,
  q/k/v/o, attention output and log-sum-exp, gate/up/act/down inputs; after Korthikanti et al. 2022,
  §4.1, adapted to gated MLPs and GQA-free estimates). Full FT and (Q)LoRA keep it for all L layers;
  with checkpointing only each block's input (2·d) plus one block's working set; Ladder keeps the
  ladder inputs (2·d each, for the W_down weight-grads) plus L_s side blocks at side width. The no-grad
  backbone keeps nothing across layers.
* logits: s·V·(2 + 4) bytes (bf16 logits and their fp32 upcast in the loss), equal for all methods.

Worked example (Qwen2.5-7B, b = 1, s = 2048): QLoRA 21.0 GiB, QLoRA + checkpointing 9.5 GiB, Ladder
r=8 10.5 GiB, r=16 8.6 GiB.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from scaling.arch import Arch, SideGeometry

GiB = 2**30
ATTENTION_CONVENTIONS = ("executed", "causal")

# Bits per NF4 weight with double quantisation (Dettmers et al. 2023 §3, blocksize 64, 256 blocks per
# second-level block, 8-bit first-level and fp32 second-level constants).
NF4_BITS = 4 + 8 / 64 + 32 / (64 * 256)
ADAMW_STATE_BYTES = 2 + 2 + 8  # bf16 weight + bf16 grad + fp32 exp_avg and exp_avg_sq
LOGIT_BYTES = 2 + 4  # bf16 logits + their fp32 upcast inside the cross-entropy


class MethodLike(Protocol):
    """What the accounting reads from a method config (see :mod:`scaling.methods`)."""

    name: str
    kind: str  # "full" | "lora" | "ladder"


# --------------------------------------------------------------------------------------------------
# Parameter counts


@dataclasses.dataclass(frozen=True)
class BackboneParams:
    block_linear: int
    """Weights of all linear layers inside the decoder blocks (the matmul weights FLOPs count)."""
    block_other: int
    """Biases and norm weights inside the blocks."""
    embeddings: int
    head: int
    """lm_head weights; 0 when tied to the embeddings (they are counted once, in ``embeddings``)."""
    final_norm: int

    @property
    def blocks(self) -> int:
        return self.block_linear + self.block_other

    @property
    def total(self) -> int:
        return self.blocks + self.embeddings + self.head + self.final_norm


def layer_linear_weights(arch: Arch) -> dict[str, int]:
    """Linear weights of one decoder block, by projection name (Llama-style gated MLP)."""
    d, f = arch.hidden_size, arch.intermediate_size
    q, kv = arch.num_heads * arch.head_dim, arch.num_kv_heads * arch.head_dim
    return dict(
        q_proj=d * q, k_proj=d * kv, v_proj=d * kv, o_proj=q * d, gate_proj=d * f, up_proj=d * f,
        down_proj=f * d,
    )  # fmt: skip


def backbone_params(arch: Arch) -> BackboneParams:
    d, f = arch.hidden_size, arch.intermediate_size
    q, kv = arch.num_heads * arch.head_dim, arch.num_kv_heads * arch.head_dim
    bias = (q + 2 * kv) * arch.qkv_bias + d * arch.o_bias + (2 * f + d) * arch.mlp_bias
    return BackboneParams(
        block_linear=arch.num_layers * sum(layer_linear_weights(arch).values()),
        block_other=arch.num_layers * (bias + 2 * d),  # + input and post-attention RMSNorm
        embeddings=arch.vocab_size * d,
        head=0 if arch.tie_word_embeddings else arch.vocab_size * d,
        final_norm=d,
    )


def lora_params(arch: Arch, rank: int) -> int:
    """LoRA on every block linear: A is r×in, B is out×r, so r·(in + out) each (Hu et al. 2021)."""
    d, f = arch.hidden_size, arch.intermediate_size
    q, kv = arch.num_heads * arch.head_dim, arch.num_kv_heads * arch.head_dim
    per_layer = (d + q) + 2 * (d + kv) + (q + d) + 3 * (d + f)
    return arch.num_layers * rank * per_layer


@dataclasses.dataclass(frozen=True)
class SideParams:
    block_linear: int
    block_other: int
    """Side biases and norm weights."""
    ladders: int
    """Down-projections W_down (d → d_s), one per connected side layer."""
    w_in: int
    w_up: int
    other: int
    """Gates, side final norm and the optional output-fusion gate."""

    @property
    def total(self) -> int:
        return (
            self.block_linear + self.block_other + self.ladders + self.w_in + self.w_up + self.other
        )


def side_arch(arch: Arch, geom: SideGeometry) -> Arch:
    """The side network as an architecture of the backbone's family (what the builder instantiates)."""
    return dataclasses.replace(
        arch,
        hidden_size=geom.hidden_size,
        intermediate_size=geom.intermediate_size,
        num_layers=geom.num_layers,
        num_heads=geom.num_heads,
        num_kv_heads=geom.num_kv_heads,
        head_dim=geom.head_dim,
        source=f"side of {arch.source}",
    )


def side_params(arch: Arch, geom: SideGeometry, fusion: str = "add") -> SideParams:
    d, ds = arch.hidden_size, geom.hidden_size
    blocks = backbone_params(side_arch(arch, geom))
    return SideParams(
        block_linear=blocks.block_linear,
        block_other=blocks.block_other,
        ladders=geom.num_ladders * d * ds,
        w_in=d * ds,
        w_up=ds * d,
        other=geom.num_ladders + ds + (d if fusion == "gate" else 0),
    )


# --------------------------------------------------------------------------------------------------
# FLOPs


@dataclasses.dataclass(frozen=True)
class Term:
    """One group of matmuls and its per-token FLOPs (forward, backward, checkpoint re-forward)."""

    name: str
    forward: float
    backward: float
    recompute: float = 0.0

    @property
    def train(self) -> float:
        return self.forward + self.backward + self.recompute


def linear(
    name: str, weights: int, *, input_grad: bool, weight_grad: bool, recompute=False
) -> Term:
    fwd = 2.0 * weights
    return Term(name, fwd, fwd * (input_grad + weight_grad), fwd if recompute else 0.0)


def attention_flops(arch: Arch, seq_len: int, convention: str = "executed") -> float:
    """Forward attention FLOPs per token per layer: QKᵀ + AV over H heads (see module docstring)."""
    width = arch.num_heads * arch.head_dim
    if convention == "executed":
        return 4.0 * seq_len * width
    if convention == "causal":
        return 2.0 * (seq_len + 1) * width
    raise ValueError(f"attention convention must be one of {ATTENTION_CONVENTIONS}")


def attention(name: str, flops: float, *, grads: bool, recompute=False) -> Term:
    return Term(name, flops, 2.0 * flops if grads else 0.0, flops if recompute else 0.0)


@dataclasses.dataclass(frozen=True)
class Cost:
    """Parameters and per-token FLOPs of one method configuration at one sequence length."""

    method: str
    seq_len: int
    backbone: BackboneParams
    trainable_params: int
    """Everything the optimizer updates (side net, adapters, or the whole model)."""
    terms: tuple[Term, ...]
    terms_causal: tuple[Term, ...]

    @property
    def forward_flops_per_token(self) -> float:
        return sum(t.forward for t in self.terms)

    @property
    def train_flops_per_token(self) -> float:
        """Executed training FLOPs per token (full-square attention): what the planner divides C by."""
        return sum(t.train for t in self.terms)

    @property
    def forward_flops_per_token_causal(self) -> float:
        return sum(t.forward for t in self.terms_causal)

    @property
    def train_flops_per_token_causal(self) -> float:
        return sum(t.train for t in self.terms_causal)

    @property
    def k(self) -> float:
        """Training FLOPs per token per trainable parameter (6 for full fine-tuning without attention)."""
        return self.train_flops_per_token / self.trainable_params

    def to_dict(self) -> dict:
        return dict(
            method=self.method,
            seq_len=self.seq_len,
            backbone_params=self.backbone.total,
            backbone_block_params=self.backbone.blocks,
            embedding_params=self.backbone.embeddings,
            head_params=self.backbone.head,
            trainable_params=self.trainable_params,
            forward_flops_per_token=self.forward_flops_per_token,
            train_flops_per_token=self.train_flops_per_token,
            forward_flops_per_token_causal=self.forward_flops_per_token_causal,
            train_flops_per_token_causal=self.train_flops_per_token_causal,
            k=self.k,
            terms={t.name: dataclasses.asdict(t) | {"train": t.train} for t in self.terms},
        )


def cost(arch: Arch, method: MethodLike, seq_len: int) -> Cost:
    """Parameter counts and per-token FLOPs of ``method`` (a config from :mod:`scaling.methods`)."""
    if not isinstance(seq_len, int) or seq_len <= 0:
        raise ValueError(f"seq_len must be a positive integer; got {seq_len!r}")
    build = {"full": _full_terms, "lora": _lora_terms, "ladder": _ladder_terms}[method.kind]
    terms, trainable = build(arch, method, seq_len, "executed")
    terms_causal, _ = build(arch, method, seq_len, "causal")
    return Cost(method.name, seq_len, backbone_params(arch), trainable, terms, terms_causal)


def _full_terms(arch: Arch, m, s: int, conv: str):
    p = backbone_params(arch)
    ckpt = m.gradient_checkpointing
    a = arch.num_layers * attention_flops(arch, s, conv)
    down = arch.num_layers * layer_linear_weights(arch)["down_proj"]  # never re-run (see docstring)
    terms = (
        linear("blocks.down", down, input_grad=True, weight_grad=True),
        linear(
            "blocks.rest", p.block_linear - down, input_grad=True, weight_grad=True, recompute=ckpt
        ),
        attention("attention", a, grads=True, recompute=ckpt),
        linear("head", arch.hidden_size * arch.vocab_size, input_grad=True, weight_grad=True),
    )
    return terms, p.total


def _lora_terms(arch: Arch, m, s: int, conv: str):
    p = backbone_params(arch)
    ckpt, r, d = m.gradient_checkpointing, m.rank, arch.hidden_size
    w = layer_linear_weights(arch)
    qkv0 = w["q_proj"] + w["k_proj"] + w["v_proj"]
    n_lora = lora_params(arch, r)
    down_b = arch.num_layers * r * d  # LoRA B of down_proj: each block's last matmul, never re-run
    # Checkpointing in transformers calls enable_input_require_grads(): the embedding output then
    # carries a gradient and the first layer's q/k/v input-grads are computed too.
    first = dict(input_grad=ckpt, recompute=ckpt)
    a = arch.num_layers * attention_flops(arch, s, conv)
    terms = (
        linear("blocks.first_qkv", qkv0, weight_grad=False, **first),
        linear(
            "blocks.rest", p.block_linear - qkv0, input_grad=True, weight_grad=False, recompute=ckpt
        ),
        linear("lora.first_qkv_A", 3 * r * d, weight_grad=True, **first),
        linear("lora.down_B", down_b, input_grad=True, weight_grad=True),
        linear(
            "lora.rest",
            n_lora - 3 * r * d - down_b,
            input_grad=True,
            weight_grad=True,
            recompute=ckpt,
        ),
        attention("attention", a, grads=True, recompute=ckpt),
        linear("head", d * arch.vocab_size, input_grad=True, weight_grad=False),
    )
    return terms, n_lora


def _ladder_terms(arch: Arch, m, s: int, conv: str):
    p = backbone_params(arch)
    geom = m.geometry(arch)
    sp = side_params(arch, geom, m.fusion)
    side = side_arch(arch, geom)
    terms = (
        linear("backbone.blocks", p.block_linear, input_grad=False, weight_grad=False),
        attention(
            "backbone.attention", arch.num_layers * attention_flops(arch, s, conv), grads=False
        ),
        linear("head", arch.hidden_size * arch.vocab_size, input_grad=True, weight_grad=False),
        linear("side.w_in", sp.w_in, input_grad=False, weight_grad=True),
        linear("side.ladders", sp.ladders, input_grad=False, weight_grad=True),
        linear("side.blocks", sp.block_linear, input_grad=True, weight_grad=True),
        attention("side.attention", side.num_layers * attention_flops(side, s, conv), grads=True),
        linear("side.w_up", sp.w_up, input_grad=True, weight_grad=True),
    )
    return terms, sp.total


# --------------------------------------------------------------------------------------------------
# Peak memory


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Analytic peak memory of one training step, in bytes (see the module docstring)."""

    weights: float
    trainable_state: float
    activations: float
    logits: float

    @property
    def total(self) -> float:
        return self.weights + self.trainable_state + self.activations + self.logits

    def fits(self, capacity_bytes: float) -> bool:
        return self.total <= capacity_bytes

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"total": self.total}


def block_activation_bytes(arch: Arch) -> int:
    """Bytes kept for backward per token by one Llama block with autograd on (bf16): 22·d + 8·f."""
    return 22 * arch.hidden_size + 8 * arch.intermediate_size


def memory(
    arch: Arch, method: MethodLike, seq_len: int, batch_size: int, *, dtype_bytes: int = 2
) -> MemoryEstimate:
    """Peak training memory of ``method`` at micro-batch ``batch_size`` × ``seq_len`` tokens."""
    p = backbone_params(arch)
    tokens = batch_size * seq_len
    quantized = getattr(method, "quantization", "none") == "nf4"
    upcast = 2 if getattr(method, "prepare_kbit", False) else 1
    ckpt = getattr(method, "gradient_checkpointing", False)
    d, L = arch.hidden_size, arch.num_layers
    # Embeddings, head and norms stay in the compute dtype (fp32 after prepare_model_for_kbit_training).
    unquantized = (p.embeddings + p.head + p.final_norm + p.block_other) * dtype_bytes * upcast
    blocks = p.block_linear * (NF4_BITS / 8 if quantized else dtype_bytes)
    c = cost(arch, method, seq_len)
    if method.kind == "full":
        weights = 0.0  # every weight is trainable state
        trainable = p.total * ADAMW_STATE_BYTES
    else:
        weights = unquantized + blocks
        trainable = c.trainable_params * ADAMW_STATE_BYTES
    if method.kind == "ladder":
        geom = method.geometry(arch)
        kept = geom.num_ladders * 2 * d + geom.num_layers * block_activation_bytes(
            side_arch(arch, geom)
        )
    elif ckpt:
        kept = L * 2 * d + block_activation_bytes(arch)
    else:
        kept = L * block_activation_bytes(arch)
    return MemoryEstimate(
        weights=float(weights),
        trainable_state=float(trainable),
        activations=float(tokens * kept),
        logits=float(tokens * arch.vocab_size * LOGIT_BYTES),
    )


def parse_bytes(text: str) -> float:
    """'12GB', '11.5GiB', '24G', '8000MB' → bytes (GB = 10⁹, GiB = 2³⁰; bare G means GiB)."""
    units = {"": 1, "B": 1, "K": 2**10, "KB": 1e3, "KIB": 2**10, "M": 2**20, "MB": 1e6,
             "MIB": 2**20, "G": 2**30, "GB": 1e9, "GIB": 2**30, "T": 2**40, "TB": 1e12, "TIB": 2**40}  # fmt: skip
    t = text.strip().upper()
    num = t.rstrip("KMGTIB")
    try:
        value = float(num)
        scale = units[t[len(num) :]]
    except (ValueError, KeyError):
        raise ValueError(f"cannot read a memory size from {text!r} (e.g. 12GB, 11.5GiB)") from None
    if not value > 0:
        raise ValueError(f"memory size must be positive; got {text!r}")
    return value * scale
