"""Parameter, FLOP and memory accounting for every method. Pure Python: importable without torch.

    >>> from scaling import flops, methods
    >>> from scaling.arch import resolve_arch
    >>> arch = resolve_arch("qwen2.5-7b")
    >>> c = flops.cost(arch, methods.config("ladder", reduction=8), seq_len=2048)
    >>> round(c.train_flops_per_token / 1e9, 1)        # GFLOP per trained token
    17.2
    >>> m = flops.memory(arch, methods.config("ladder", reduction=8), seq_len=2048, batch_size=1)
    >>> round(m.total / 2**30, 1), m.peak_at            # GiB, bf16 on CUDA
    (11.5, 'loss backward')

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

By component (:meth:`Cost.by_component`, ``scaling flops --breakdown``) the terms are summed by the
modules that run them: the backbone's block projections and its attention products (QKᵀ, AV), the
LoRA factors, the side net's W_in and ladders (they read the backbone), its block projections, its
attention and W_up, and the head. Embedding look-ups are gathers and belong to none. fvcore's
``FlopCountAnalysis`` counts one multiply-accumulate as one flop, so each component's forward here is
2× fvcore's count of those modules — exactly: the ops fvcore has no handle for in an eager, unquantised
model (norms, SiLU, softmax, RoPE, residual adds, the embedding gather) are the ones ignored here.

Peak memory
-----------
The peak of the tensor storage one training step keeps alive, in bytes, at micro-batch b, sequence s,
T = b·s tokens, T' = b·(s−1) scored positions, e bytes per activation (2 in bf16, 4 in fp32). Every
term below is what autograd actually keeps, read off the operators transformers' Llama/Qwen2 blocks,
peft's LoRA layers, bitsandbytes and torch's AdamW run — and checked against
:class:`scaling.measure.LiveBytes` (live tensor bytes of a real step, ``tests/test_memory.py``: every
method, plain and efficient loss, fp32 and bf16, two families and sequence lengths, the first and a
steady step, within 5%; most within 1%). Kernel workspaces, allocator rounding and fragmentation and the
CUDA context are outside it.

* weights: NF4 with double quantisation stores N/2 bytes of packed codes per linear, a uint8 absmax per
  64 weights, an fp32 absmax per 256 blocks and 1,092 bytes of code books and offset
  (:func:`nf4_linear_bytes`; Dettmers et al. 2023 §3); embeddings, head, norms and biases stay in the
  compute dtype — norms and biases in fp32 after ``prepare_model_for_kbit_training``. Trained parameters
  are in the compute dtype (the side net and LoRA adapters are cast to it, as QST and QLoRA's reference
  cast them).
* optimizer state: torch's AdamW keeps two moments in the parameter's dtype (2·e per parameter, plus a
  4-byte step count per tensor), created inside the first step; bitsandbytes' 32-bit AdamW 8 bytes, its
  8-bit one 2 bytes plus block absmax and code books. A paged optimizer's state lives in CUDA unified
  memory and is reported apart (``paged``), not in the device peak. The update itself needs one
  parameter-sized temporary with foreach (CUDA's default) or two of the largest tensor without.
* activations, per token per block (:func:`_block_saved`): each RMSNorm on the gradient path keeps its
  fp32 input and rsqrt (4·d + 4; a trained norm weight also its normalised input); attention (SDPA) keeps
  q and k after RoPE, v, its output and an fp32 log-sum-exp per head ((2·qw + 2·kw)·e + 4·H); the gated
  MLP keeps SiLU's input and output and up's output (3·f·e); trained projections keep their inputs (the
  norm outputs once, the MLP product); RoPE's cos and sin are kept once per step (2·s·hd·e). A LoRA
  branch keeps its dropped-out input and A's output (r·e), and dropout its mask where a gradient flows
  through it — one byte per element with CUDA's fused kernel, the e-byte scaled noise on CPU. The first
  block of a LoRA model has no gradient on its input (frozen embeddings), so its q/k/v norm keeps
  nothing. With fp32 norms (prepare_kbit) every bitsandbytes projection returns fp32 (it casts its
  output to its input's dtype), so the blocks' activations are fp32 even under bf16 compute.
  Checkpointing keeps each block's input, and in backward one recomputed block with two MLP-wide
  gradient temporaries; the peak is at the last block (every checkpoint) or the first (every gradient).
  Ladder keeps, besides its side blocks, each ladder's normalised input and output and the state it mixes
  into (W_in's input too), the side norm and W_up's input, and the frozen final norm's; the backbone runs
  without autograd and only the states the side net reads live, until the side forward ends.
* loss (:func:`_loss_bytes`): the final hidden states, then the logits (T·V·e), their shifted copy, fp32
  upcast and log-softmax (T'·V·4) at the end of the loss forward, and three fp32 T'·V tensors (kept
  log-probabilities, NLL gradient, log-softmax input gradient) at the start of its backward: 12·T'·V
  bytes, about 3.7 GB at Qwen2.5-7B's 152k vocabulary and 2k context. The memory-efficient loss keeps
  only one chunk's logits and the (T'·d) input gradient it computes in forward.
* the peak is the largest of the moments where it can fall: the end of Ladder's side forward, the end
  of the loss forward, the start of its backward, a checkpointed block's backward, and the optimizer
  step (weights, gradients, state and the update's temporaries); ``step="first"`` has no optimizer state
  before the update. ``scaling memory`` prints the terms at that moment.
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

    def by_component(self, causal: bool = False) -> dict[str, Term]:
        """The terms summed per component (:data:`COMPONENTS`, in its order; absent ones left out)."""
        out: dict[str, list[float]] = {}
        for t in self.terms_causal if causal else self.terms:
            acc = out.setdefault(TERM_COMPONENT[t.name], [0.0, 0.0, 0.0])
            acc[:] = acc[0] + t.forward, acc[1] + t.backward, acc[2] + t.recompute
        return {k: Term(k, *out[k]) for k in COMPONENTS if k in out}

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


COMPONENTS = {"backbone.blocks": "backbone block linears", "backbone.attention": "backbone attention",
              "lora": "LoRA factors", "side.ladders": "side: W_in + ladders", "side.blocks": "side block linears",
              "side.attention": "side attention", "side.w_up": "side: W_up", "head": "head"}  # fmt: skip
"""Where a method's FLOPs go (key → label), as the modules that run them (see the module docstring)."""
TERM_COMPONENT = {"blocks.down": "backbone.blocks", "blocks.rest": "backbone.blocks",
                  "blocks.first_qkv": "backbone.blocks", "backbone.blocks": "backbone.blocks",
                  "attention": "backbone.attention", "backbone.attention": "backbone.attention",
                  "lora.first_qkv_A": "lora", "lora.down_B": "lora", "lora.rest": "lora",
                  "side.w_in": "side.ladders", "side.ladders": "side.ladders", "side.blocks": "side.blocks",
                  "side.attention": "side.attention", "side.w_up": "side.w_up", "head": "head"}  # fmt: skip


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
# Peak memory (derived in the module docstring; checked against scaling.measure.LiveBytes)

DEVICES = ("cuda", "cpu")
CHUNK_BYTES = 2**26
"""fp32 logits per chunk of the chunked cross-entropy (64 MiB: 1,024 positions of a 16k vocabulary)."""


def chunk_rows(vocab_size: int) -> int:
    """Positions per chunk of :func:`scaling.train.objective.chunked_loss_sum`."""
    return max(1, CHUNK_BYTES // (4 * vocab_size))


NF4_LINEAR_FIXED = 64 + 4 + 1024
"""Bytes per NF4 linear besides its packed weights and absmax: the 16-value fp32 NF4 code book, the
fp32 offset and the 256-value fp32 code book of the second-level (double) quantisation."""


def nf4_linear_bytes(n: int) -> tuple[int, int]:
    """(packed weights, quantisation state) of one NF4 linear with ``n`` weights, double quantised:
    4 bits per weight, a uint8 absmax per 64-weight block, an fp32 absmax per 256 blocks (Dettmers et
    al. 2023 §3; the layout bitsandbytes stores)."""
    blocks = -(-n // 64)
    return (n + 1) // 2, blocks + 4 * -(-blocks // 256) + NF4_LINEAR_FIXED


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Analytic peak of the tensor memory of one training step, in bytes (see the module docstring).

    ``total`` is what the device must hold at the peak; ``paged`` (a paged optimizer's state, kept in
    CUDA unified memory that the driver moves to host RAM when the card is full) is reported apart and
    not counted in it, as ``torch.cuda.max_memory_allocated`` does not count it either."""

    weights: float
    """Every parameter's storage: packed NF4 blocks, unquantised embeddings/head/norms, trained parts."""
    quant_state: float
    """bitsandbytes' absmax and code books of the NF4 weights."""
    gradients: float
    optimizer: float
    """Optimizer state on the device (none before the first step's update)."""
    activations: float
    """Tensors kept for backward at the peak (with checkpointing: each block's input plus one
    recomputed block); for Ladder also the backbone states the side net reads, while it reads them."""
    loss: float
    """Final hidden states, logits and the loss's own tensors and gradients at the peak."""
    temporaries: float
    """Other transients at the peak: a block's backward working set, the optimizer's update buffers."""
    peak_at: str
    """``side forward``, ``loss forward``, ``loss backward``, ``backward`` (checkpointed block) or
    ``optimizer step``."""
    step: str = "steady"
    """``first`` (no optimizer state before the update) or ``steady``."""
    paged: float = 0.0

    @property
    def total(self) -> float:
        return (self.weights + self.quant_state + self.gradients + self.optimizer
                + self.activations + self.loss + self.temporaries)  # fmt: skip

    def fits(self, capacity_bytes: float) -> bool:
        return self.total <= capacity_bytes

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"total": self.total}


@dataclasses.dataclass(frozen=True)
class _Widths:
    """What one decoder block keeps depends on: its widths, the activation width ``e`` (bytes), whether
    its weights train, its input carries a gradient, and its LoRA adapters (rank 0: none)."""

    d: int
    qw: int
    kw: int
    f: int
    heads: int
    head_dim: int


def _widths(arch: Arch) -> _Widths:
    return _Widths(arch.hidden_size, arch.num_heads * arch.head_dim, arch.num_kv_heads * arch.head_dim,
                   arch.intermediate_size, arch.num_heads, arch.head_dim)  # fmt: skip


def _norm_saved(d: int, e: int, *, in_grad: bool, weight_trains: bool) -> int:
    """RMSNorm (transformers' Llama/Qwen2): x.to(fp32) · rsqrt(mean(x²) + ε), times the weight. With a
    gradient through it, the fp32 input (the input itself when it is fp32) and the rsqrt (one fp32 per
    token) are kept; a trained weight also keeps the normalised input in the activation dtype."""
    out = (4 * d + 4) if in_grad else 0
    return out + (e * d if weight_trains else 0)


def _lora_saved(width: int, e: int, r: int, dropout: float, *, in_grad: bool, device: str) -> int:
    """peft's LoRA branch B(A(dropout(x))) on an input of ``width``: A keeps its (dropped-out) input and
    B keeps A's output. Dropout keeps its mask when a gradient flows through it: CUDA's fused kernel a
    bool per element, CPU's composite implementation the scaled noise in the activation dtype."""
    out = r * e
    if dropout > 0:
        out += width * e + (((1 if device == "cuda" else e) * width) if in_grad else 0)
    return out


def _block_saved(w: _Widths, e: int, seq_len: int, *, trains: bool, in_grad: bool, lora: int,
                 dropout: float, device: str, attention: str, norm_out: int, lora_e: int) -> int:  # fmt: skip
    """Bytes kept for backward per token by one decoder block (input norm, attention, MLP).

    ``e``: bytes per element of the block's activations; ``trains``: its weights train (full
    fine-tuning, side layers); ``lora``: LoRA rank on all seven projections (0: none), with adapters
    of ``lora_e`` bytes; ``in_grad``: its input carries a gradient (not the first block of a LoRA
    model whose embeddings are frozen); ``norm_out``: bytes per element of a norm's output."""
    d, qw, kw, f = w.d, w.qw, w.kw, w.f
    out = _norm_saved(d, e, in_grad=in_grad, weight_trains=trains)
    if trains:
        out += norm_out * d  # q, k and v keep the norm's output (one storage)
    # RoPE keeps only cos/sin (per forward, counted once); attention keeps q and k after RoPE, v,
    # its output and the fp32 log-sum-exp per head (SDPA: flash/efficient kernels, CPU's flash kernel).
    out += (qw + kw + kw + qw) * e + 4 * w.heads
    if attention == "eager":  # the (H × s) probabilities per token: fp32 softmax and its cast
        out += (
            w.heads * seq_len * (4 + (e if e != 4 else 0)) + (qw - kw) * 2 * e
        )  # + repeat_kv copies
    # o_proj keeps the attention output (the same storage SDPA keeps) when it trains.
    out += _norm_saved(d, e, in_grad=True, weight_trains=trains)  # post-attention norm
    if trains:
        out += norm_out * d  # gate and up keep the norm's output
    out += 3 * f * e  # SiLU keeps gate's output; the product keeps SiLU's output and up's output
    if trains:
        out += f * e  # down_proj keeps its input
    if lora:
        # q, k, v and gate, up read the norms' outputs (the first block's q/k/v input has no gradient);
        # o reads the attention output; down the MLP product.
        # peft casts each adapter's input to the adapters' dtype first (a transient copy).
        out += 3 * _lora_saved(d, lora_e, lora, dropout, in_grad=in_grad, device=device)
        out += _lora_saved(qw, lora_e, lora, dropout, in_grad=True, device=device)
        out += 2 * _lora_saved(d, lora_e, lora, dropout, in_grad=True, device=device)
        out += _lora_saved(f, lora_e, lora, dropout, in_grad=True, device=device)
    return out


def _block_backward(w: _Widths, e: int) -> int:
    """Gradient temporaries alive at once while one recomputed block runs backward (per token): two
    MLP-wide gradients (measured with the memory oracle)."""
    return 2 * w.f * e


def _loss_bytes(arch: Arch, method, b: int, s: int, e: int, head_trains: bool,
                norm_out: int) -> tuple[int, int]:  # fmt: skip
    """(at the end of the loss forward, at the start of its backward), in bytes, for the whole
    micro-batch: the final hidden states and everything of size tokens × vocabulary.

    plain: the head's logits (T·V·e), their slice [:, :-1] made contiguous (T'·V·e, T' = b·(s−1); a view
    when b = 1), its fp32 upcast (when e < 4) and log-softmax's fp32 output, which it keeps. The backward
    then holds three fp32 T'·V tensors at once: the kept log-probabilities, the NLL gradient and the
    log-softmax input gradient (12·T'·V).
    efficient (chunked): the shifted hidden states (a copy when b > 1), the input gradient the forward
    computes (T'·d·e; plus the fp32 head gradient when the head trains), and one chunk's fp32 logits and
    softmax (and their e-byte copies when e < 4); the backward scales the gradient (T'·d·e) and scatters
    it back into the unshifted shape (T·d·e)."""
    V, d = arch.vocab_size, arch.hidden_size
    T, Tp = b * s, b * (s - 1)
    # the final norm's output, and its cast to the head's dtype when the norm is fp32 (prepare_kbit)
    hidden = T * d * norm_out + (T * d * e if norm_out != e else 0)
    if getattr(method, "loss", "plain") == "plain":
        fwd = T * V * e + (Tp * V * e if b > 1 else 0) + (Tp * V * 4 if e != 4 else 0) + Tp * V * 4
        fwd += Tp * 8 if b > 1 else 0  # the shifted labels, made contiguous (int64)
        return hidden + fwd, 12 * Tp * V + (hidden if head_trains else 0)
    c = min(chunk_rows(V), Tp)
    shifted = Tp * d * e if b > 1 else 0
    grad_h = Tp * d * e
    grad_w = V * d * 4 if head_trains else 0
    chunk = c * V * (4 + (e if e != 4 else 0)) + c * d * e
    fwd = hidden + shifted + grad_h + grad_w + chunk
    bwd = grad_h + grad_w + Tp * d * e + T * d * e + (hidden if head_trains else 0)
    return fwd, bwd


def _tensors(arch: Arch, method) -> int:
    """Trainable parameter tensors (each carries a 4-byte step count in torch's AdamW)."""
    L = arch.num_layers
    per_block = (
        9 + (3 if arch.qkv_bias else 0) + (1 if arch.o_bias else 0) + (3 if arch.mlp_bias else 0)
    )
    if method.kind == "full":
        return L * per_block + 2 + (0 if arch.tie_word_embeddings else 1)
    if method.kind == "lora":
        return 2 * 7 * L
    geom = method.geometry(arch)
    return geom.num_layers * per_block + 4 + geom.num_ladders + (method.fusion == "gate")


def memory(arch: Arch, method: MethodLike, seq_len: int, batch_size: int, *, step: str = "steady",
           device: str = "cuda", foreach: bool | None = None) -> MemoryEstimate:  # fmt: skip
    """Peak tensor memory of one training step of ``method`` at micro-batch ``batch_size`` ×
    ``seq_len`` tokens on ``device`` (which decides the compute dtype under ``compute_dtype = "auto"``,
    how dropout stores its mask, whether paged optimizers page, and torch AdamW's foreach default)."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}; got {device!r}")
    if step not in ("first", "steady"):
        raise ValueError(f"step must be 'first' or 'steady'; got {step!r}")
    b, s, L = batch_size, seq_len, arch.num_layers
    T = b * s
    w = _widths(arch)
    dtype = getattr(method, "compute_dtype", "auto")
    e = 4 if dtype == "float32" or (dtype == "auto" and device == "cpu") else 2
    attention = getattr(method, "attn_implementation", None) or "sdpa"
    quantized = getattr(method, "quantization", "none") == "nf4"
    prepared = getattr(method, "prepare_kbit", False)
    ckpt = getattr(method, "gradient_checkpointing", False)
    p = backbone_params(arch)
    c = cost(arch, method, seq_len)
    n_train = c.trainable_params

    # -- weights: frozen backbone (NF4 or the compute dtype) and the trained parameters (compute dtype)
    small = 4 if prepared else e  # norms (and Linear4bit biases) stay fp32 after prepare_kbit
    weights = quant = 0
    if method.kind == "full":
        weights = p.total * e
    else:
        if quantized:
            for n in layer_linear_weights(arch).values():
                packed, state = nf4_linear_bytes(n)
                weights, quant = weights + L * packed, quant + L * state
        else:
            weights = p.block_linear * e
        weights += (p.block_other + p.final_norm) * small + (p.embeddings + p.head) * e
        weights += n_train * e
    # -- optimizer state (paged state lives in unified memory, apart from the device's peak)
    name = getattr(method, "optimizer", "adamw")
    if name.startswith("paged_") and device != "cuda":
        name = "adamw"  # what scaling.train.objective.make_optimizer falls back to
    tensors = _tensors(arch, method)
    if name == "adamw":
        state = 2 * n_train * e + 4 * tensors
        foreach = device == "cuda" if foreach is None else foreach
        # foreach: sqrt(v) for every tensor at once; else two temporaries of the largest tensor
        update = n_train * e if foreach else 2 * _largest_trainable(arch, method) * e
    elif name.endswith("32bit"):
        state, update = 8 * n_train, 0
    else:  # 8-bit: one byte per moment, an fp32 absmax per 256 values and two 256-entry code books
        state, update = 2 * n_train + 2 * 4 * -(-n_train // 256) + tensors * 2 * 256 * 4, 0
    paged = state if name.startswith("paged_") else 0
    on_device = 0 if paged else state
    before = 0 if step == "first" else on_device

    # -- activations kept for backward
    lora = getattr(method, "rank", 0) if method.kind == "lora" else 0
    dropout = getattr(method, "dropout", 0.0)
    norm_out = 4 if prepared else e
    # fp32 norms (prepare_kbit) make every bitsandbytes projection return fp32 (it casts its output to
    # its input's dtype), so the blocks' activations are fp32 under bf16 compute; adapters stay in e.
    act = norm_out
    rope = 2 * s * w.head_dim * e  # cos and sin, (1, s, hd) each, kept by every block's RoPE
    base = dict(device=device, attention=attention, norm_out=norm_out, lora_e=e)
    loss_fwd, loss_bwd = _loss_bytes(arch, method, b, s, e, head_trains=method.kind == "full",
                                     norm_out=e if method.kind == "ladder" else norm_out)  # fmt: skip
    candidates: list[tuple[str, dict[str, float]]] = []
    if method.kind == "ladder":
        geom = method.geometry(arch)
        side = _widths(side_arch(arch, geom))
        side_rope = 2 * s * side.head_dim * e
        ds = side.d
        # W_in keeps its normalised input; each ladder its normalised input, its output and the side
        # state it mixes into (the gates' products keep both).
        per_token = w.d * e + geom.num_ladders * (w.d * e + 2 * ds * e)
        per_token += geom.num_layers * _block_saved(side, e, s, trains=True, in_grad=True, lora=0,
                                                    dropout=0.0, **base | {"norm_out": e})  # fmt: skip
        per_token += (
            _norm_saved(ds, e, in_grad=True, weight_trains=True) + ds * e
        )  # side norm, W_up
        per_token += _norm_saved(w.d, e, in_grad=True, weight_trains=False)  # the frozen final norm
        kept = T * per_token + side_rope
        read = len({cc for cc in geom.connections if cc is not None} | {geom.input_layer, L - 1})
        candidates.append(("side forward", {"activations": kept + T * read * w.d * e,
                                            "loss": T * w.d * e}))  # fmt: skip
        saved = kept
    elif ckpt:
        # Each block's input is kept by its checkpoint; backward recomputes one block at a time. The
        # peak is at the last block (every checkpoint alive, no gradient yet) or at the first (one
        # checkpoint, nearly every gradient): both are candidates.
        block = T * _block_saved(w, act, s, trains=method.kind == "full", in_grad=True, lora=lora,
                                 dropout=dropout, **base) + rope  # fmt: skip
        temp = T * _block_backward(w, act)
        for kept_blocks, grads in ((L, 0), (1, n_train * e)):
            candidates.append(("backward", {"activations": T * kept_blocks * w.d * act + block,
                                            "temporaries": temp, "gradients": grads}))  # fmt: skip
        saved = T * L * w.d * act + T * _norm_saved(w.d, e, in_grad=True,
                                                  weight_trains=method.kind == "full")  # fmt: skip
    else:
        trains = method.kind == "full"
        first_in_grad = trains  # a frozen embedding gives the first block's input no gradient
        blocks = _block_saved(w, act, s, trains=trains, in_grad=first_in_grad, lora=lora,
                              dropout=dropout, **base)  # fmt: skip
        blocks += (L - 1) * _block_saved(w, act, s, trains=trains, in_grad=True, lora=lora,
                                         dropout=dropout, **base)  # fmt: skip
        final = _norm_saved(w.d, e, in_grad=True, weight_trains=trains)
        saved = T * (blocks + final) + rope
    candidates.append(("loss forward", {"activations": saved, "loss": loss_fwd}))
    candidates.append(("loss backward", {"activations": saved, "loss": loss_bwd}))
    fixed = {"weights": weights, "quant_state": quant}
    options = [{**fixed, "optimizer": before, **parts, "peak_at": at} for at, parts in candidates]
    options.append({**fixed, "gradients": n_train * e, "optimizer": on_device,
                    "temporaries": update, "peak_at": "optimizer step"})  # fmt: skip
    keys = (
        "weights",
        "quant_state",
        "gradients",
        "optimizer",
        "activations",
        "loss",
        "temporaries",
    )
    best = max(options, key=lambda o: sum(o.get(k, 0) for k in keys))
    return MemoryEstimate(**{k: float(best.get(k, 0)) for k in keys}, peak_at=best["peak_at"],
                          step=step, paged=float(paged))  # fmt: skip


def _largest_trainable(arch: Arch, method) -> int:
    """Elements of the largest trainable tensor (the non-foreach AdamW update's temporaries)."""
    d, V = arch.hidden_size, arch.vocab_size
    if method.kind == "full":
        return max(V * d, max(layer_linear_weights(arch).values()))
    if method.kind == "lora":
        r = method.rank
        return r * max(arch.intermediate_size, d, arch.num_heads * arch.head_dim)
    side = side_arch(arch, method.geometry(arch))
    return max(d * side.hidden_size, max(layer_linear_weights(side).values()))


def parse_bytes(text: str) -> float:
    """'12GB', '11.5GiB', '24G', '8000MB' → bytes (GB = 10⁹, GiB = 2³⁰; bare G means GiB). A number
    without a unit is an error: is 12 twelve gigabytes or twelve gibibytes?"""
    units = {"B": 1, "K": 2**10, "KB": 1e3, "KIB": 2**10, "M": 2**20, "MB": 1e6,
             "MIB": 2**20, "G": 2**30, "GB": 1e9, "GIB": 2**30, "T": 2**40, "TB": 1e12, "TIB": 2**40}  # fmt: skip
    t = text.strip().upper()
    num = t.rstrip("KMGTIB")
    if t and num == t:
        try:
            float(t)
        except ValueError:
            pass
        else:
            raise ValueError(f"memory size {text!r} needs a unit: {t}GB? {t}GiB?")
    try:
        value = float(num)
        scale = units[t[len(num) :]]
    except (ValueError, KeyError):
        raise ValueError(f"cannot read a memory size from {text!r} (e.g. 12GB, 11.5GiB)") from None
    # float() reads "inf", "nan" and "1e400" (→ inf): no card has that much memory, and an infinite
    # capacity would make every configuration "fit".
    if not 0 < value * scale < float("inf"):  # False for nan too
        raise ValueError(f"memory size must be a positive, finite amount; got {text!r}")
    return value * scale


def generation_flops(arch: Arch, method: MethodLike, prompt_len: int, new_tokens: int) -> float:
    """Forward FLOPs per sequence of decoding ``new_tokens`` after ``prompt_len`` with a KV cache. With R
    the per-token forward of every linear but the head, a the attention per query-key pair (4·H·hd over
    all layers, backbone and side: :func:`cost`'s attention terms at ``seq_len=1``) and h = 2·d·V: the
    prompt runs once (P·R, the P² pairs executed, the head on its last position only), then n − 1 steps
    feed one token that meets P + k keys and calls the head once: F = (P + n − 1)·R + a·(P² + (n − 1)·P
    + n(n − 1)/2) + n·h. A batch counts every row, padded or stopped (sliding windows: not modelled)."""
    if prompt_len < 1 or new_tokens < 0:
        raise ValueError(f"need prompt_len ≥ 1 and new_tokens ≥ 0; got {prompt_len}, {new_tokens}")
    terms, p, n = cost(arch, method, 1).terms, prompt_len, new_tokens
    a = sum(t.forward for t in terms if t.name.endswith("attention"))
    h = sum(t.forward for t in terms if t.name == "head")
    r = sum(t.forward for t in terms) - a - h
    return 0.0 if n == 0 else (p + n - 1) * r + a * (p * p + (n - 1) * p + n * (n - 1) / 2) + n * h
