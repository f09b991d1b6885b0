"""Independent measurements of what the accounting predicts (torch): the FLOPs a training step executes,
and the bytes of tensor storage it keeps alive.

    from scaling import measure, methods
    model = methods.build("ladder", "tiny-model", quantization="none", attn_implementation="eager")
    fwd, train = measure.flops_per_token(model, input_ids)
    with measure.LiveBytes() as mem:                      # the FlopCounterMode of memory
        ...one training step...
    mem.peak, mem.at_peak                                 # bytes; {category: bytes} alive at the peak

``torch.utils.flop_counter.FlopCounterMode`` counts every mm/addmm/bmm the step executes. It does not see
CPU SDPA kernels nor bitsandbytes 4-bit matmuls, so count on an unquantised twin with eager attention.
fvcore's ``FlopCountAnalysis`` (:func:`fvcore_flops`) is a second, independent count of the forward,
module by module: it traces the model with ``torch.jit`` and counts each matmul from its shapes, at one
flop per multiply-accumulate (converted here to two). It cannot trace bitsandbytes' 4-bit layers and
has no handle for fused attention; what it cannot count is named, never shown as zero.

:class:`LiveBytes` is hand-written because nothing in torch's public API does this: ``max_memory_allocated``
exists only on CUDA and rounds to the caching allocator's blocks, ``torch.profiler``'s memory timeline
needs a profiler run and attributes by allocation, not by what is alive, and
``torch.distributed._tools.mem_tracker`` is a private module whose interface changes between releases.
It registers the storage of every tensor an operator returns (and of every tensor handed to
:meth:`LiveBytes.track`), counts its bytes while its storage lives (a weak reference to the storage
drops them when it is freed), and records the peak of the sum and which storages made it up. Views
share their storage, so they cost nothing; in-place ops return a known storage and are not counted
twice. On CPU the count is exact and byte-deterministic.

What it cannot see: memory that is not a tensor storage (kernel workspaces such as cuBLAS's or
SDPA's scratch space, the CUDA context), allocator rounding and fragmentation (CUDA's caching allocator
rounds each block up to 512 bytes and keeps freed blocks), and buffers an operator allocates and frees
inside one call without returning them (bitsandbytes dequantises 4-bit weights inside its kernels;
fused attention kernels keep their tiles). Storages created outside the mode (before it starts, or in
a thread it does not cover) count only when tracked explicitly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import weakref
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode


def flops_per_token(model, input_ids: torch.Tensor, attention_mask=None) -> tuple[float, float]:
    """(forward, forward + backward) FLOPs per token of one step of ``model`` on ``input_ids``."""
    model.train()
    model.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as fwd_counter:
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids)
    with FlopCounterMode(display=False) as bwd_counter:
        out.loss.backward()
    tokens = input_ids.numel()
    forward = fwd_counter.get_total_flops()
    return forward / tokens, (forward + bwd_counter.get_total_flops()) / tokens


# --------------------------------------------------------------------------------------------------
# Memory


@dataclasses.dataclass
class _Storage:
    nbytes: int
    label: str
    """What was running when the storage was made (the phase set by the caller, or a tracked role)."""
    ref: weakref.ref | None = None


class LiveBytes(TorchDispatchMode):
    """The live bytes of every tensor storage while the mode is active, and their peak.

    ``label`` (settable at any time, e.g. ``"forward"``, ``"backward"``) tags the storages created from
    then on; :meth:`track` registers existing tensors (weights, optimizer state) under a role. After
    the step, :meth:`breakdown` sorts what was alive at the peak into roles (see :meth:`classify`).
    """

    def __init__(self) -> None:
        super().__init__()
        self.label = "other"
        self.live: dict[int, _Storage] = {}
        self.current = 0
        self.peak = 0
        self.peak_label = ""
        self._at_peak: list[tuple[weakref.ref | None, int, str, int]] = []
        self._peak_dirty = False

    # -- registering storages ----------------------------------------------------------------------

    def _key(self, t: torch.Tensor) -> tuple[int, torch.UntypedStorage] | None:
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return None
        st = t.untyped_storage()
        return st._cdata, st

    def _add(self, t: torch.Tensor, label: str) -> None:
        key = self._key(t)
        if key is None or key[0] in self.live:
            return
        cdata, st = key
        entry = _Storage(st.nbytes(), label)
        entry.ref = weakref.ref(st, lambda _ref, cdata=cdata: self._drop(cdata))
        self.live[cdata] = entry
        self.current += entry.nbytes
        if self.current > self.peak:
            self.peak, self.peak_label = self.current, label
            self._peak_dirty = True

    def _drop(self, cdata: int) -> None:
        entry = self.live.get(cdata)
        if entry is None:
            return
        if self._peak_dirty:  # the sum is about to fall: remember what made the peak
            self._snapshot()
        del self.live[cdata]
        self.current -= entry.nbytes

    def _snapshot(self) -> None:
        self._at_peak = [(e.ref, e.nbytes, e.label, k) for k, e in self.live.items()]
        self._peak_dirty = False

    def track(self, tensors, label: str) -> None:
        """Count existing tensors (e.g. the weights before the step) under ``label``."""
        for t in tensors:
            self._add(t, label)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            self._add(t, self.label)
        return out

    def __exit__(self, *exc):
        if self._peak_dirty:
            self._snapshot()
        return super().__exit__(*exc)

    # -- reading the peak --------------------------------------------------------------------------

    def alive_at_peak(self) -> list[tuple[torch.UntypedStorage | None, int, str]]:
        """(storage or None if freed since, bytes, label) of every storage alive at the peak."""
        if self._peak_dirty:
            self._snapshot()
        return [
            (ref() if ref is not None else None, n, label) for ref, n, label, _ in self._at_peak
        ]

    def breakdown(
        self, classify: Callable[[torch.UntypedStorage | None, str], str]
    ) -> dict[str, int]:
        """Bytes alive at the peak by ``classify(storage, label)`` (e.g. :func:`step_roles`)."""
        out: dict[str, int] = {}
        for st, n, label in self.alive_at_peak():
            role = classify(st, label)
            out[role] = out.get(role, 0) + n
        return out


def step_roles(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None):
    """A classifier for :meth:`LiveBytes.breakdown`: what a storage alive at the peak *is* at the end of
    the step — ``trainable`` and ``frozen`` weights, ``quant_state`` (bitsandbytes absmax, codebooks),
    ``buffers``, ``gradients``, ``optimizer`` state — else the label it was created under (the phase:
    ``forward``, ``loss``, ``backward``, ``optimizer_step``...)."""
    roles: dict[int, str] = {}

    def mark(t, role: str) -> None:
        if isinstance(t, torch.Tensor):
            roles.setdefault(t.untyped_storage()._cdata, role)

    for p in model.parameters():
        if p.grad is not None:
            mark(p.grad, "gradients")
    if optimizer is not None:
        for state in optimizer.state.values():
            for v in state.values():
                mark(v, "optimizer")
    for p in model.parameters():
        mark(p, "trainable" if p.requires_grad else "frozen")
        qs = getattr(p, "quant_state", None)
        if qs is not None:
            for v in _quant_state_tensors(qs):
                mark(v, "quant_state")
    for b in model.buffers():
        mark(b, "buffers")

    def classify(st: torch.UntypedStorage | None, label: str) -> str:
        return label if st is None else roles.get(st._cdata, label)

    return classify


def _quant_state_tensors(qs) -> list[torch.Tensor]:
    out = [getattr(qs, k, None) for k in ("absmax", "code", "offset")]
    if getattr(qs, "state2", None) is not None:
        out += _quant_state_tensors(qs.state2)
    return [t for t in out if isinstance(t, torch.Tensor)]


def model_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None):
    """(tensors, label) pairs of what exists before a step: weights, quantisation state, buffers,
    gradients and optimizer state — for :meth:`LiveBytes.track`."""
    weights = list(model.parameters())
    quant = [t for p in weights if getattr(p, "quant_state", None) is not None
             for t in _quant_state_tensors(p.quant_state)]  # fmt: skip
    grads = [p.grad for p in weights if p.grad is not None]
    state = [v for s in (optimizer.state.values() if optimizer else []) for v in s.values()
             if isinstance(v, torch.Tensor)]  # fmt: skip
    return [(weights, "weights"), (quant, "quant_state"), (list(model.buffers()), "buffers"),
            (grads, "gradients"), (state, "optimizer")]  # fmt: skip


@dataclasses.dataclass(frozen=True)
class StepMemory:
    """What one training step kept alive at its peak (bytes)."""

    peak: int
    phase: str
    """What was running when the peak was reached: forward, loss, backward or optimizer step."""
    breakdown: dict[str, int]
    """Bytes alive at the peak by role (:func:`step_roles`)."""
    allocated: int | None = None
    """On CUDA, ``torch.cuda.max_memory_allocated()`` over the step (the caching allocator's view,
    rounded to its blocks); None elsewhere."""


def step_memory(model, optimizer, batch, labels, *, loss: str | None = None,
                grad_clip: float | None = 1.0, steps: int = 2) -> list[StepMemory]:  # fmt: skip
    """Live tensor bytes of ``steps`` training steps of ``model`` on one micro-batch, run exactly as the
    trainer runs them (:func:`scaling.train.objective.micro_step`, clipping, the optimizer step,
    ``zero_grad(set_to_none=True)``): step 1 has no optimizer state yet, step 2 is the steady state.
    ``loss`` defaults to the model's own configuration's."""
    from scaling.train.objective import micro_step

    loss = loss or model.method_config.loss

    params = [p for p in model.parameters() if p.requires_grad]
    n = max(1, int((labels[:, 1:] != -100).sum()))
    out = []
    cuda = any(p.is_cuda for p in params)
    for _ in range(steps):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        with LiveBytes() as mem:
            for tensors, label in [*model_tensors(model, optimizer), ([batch, labels], "inputs")]:
                mem.track(tensors, label)
            micro_step(model, batch, labels, n_labels=n, loss=loss,
                       phase=lambda name: setattr(mem, "label", name))  # fmt: skip
            mem.label = "optimizer step"
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            roles = step_roles(model, optimizer)  # while the gradients still exist
            optimizer.zero_grad(set_to_none=True)
        allocated = torch.cuda.max_memory_allocated() if cuda else None
        out.append(StepMemory(mem.peak, mem.peak_label, mem.breakdown(roles), allocated))
    return out


# --------------------------------------------------------------------------------------------------
# A configuration measured on a tiny twin of its backbone


TWIN_WIDTH, TWIN_HEADS, TWIN_VOCAB = 128, 4, 512
TERMS = ("weights", "quant_state", "gradients", "optimizer")


def twin_config(arch, cfg) -> dict:
    """``config.json`` of a tiny model of ``arch``'s family and shape features: its GQA ratio, biases,
    tied embeddings and FFN ratio at width 128, 4 heads, vocabulary 512 and at most 4 layers (more when
    the method's dials need them)."""
    kv = max(1, round(TWIN_HEADS * arch.num_kv_heads / arch.num_heads))
    while TWIN_HEADS % kv:
        kv -= 1
    need = max(getattr(cfg, "delta", 0) + 1, getattr(cfg, "side_layers", None) or 0)
    out = dict(model_type=arch.family, hidden_size=TWIN_WIDTH,
               intermediate_size=round(TWIN_WIDTH * arch.intermediate_size / arch.hidden_size),
               num_hidden_layers=min(arch.num_layers, max(4, need)), num_attention_heads=TWIN_HEADS,
               num_key_value_heads=kv, vocab_size=TWIN_VOCAB, max_position_embeddings=4096,
               tie_word_embeddings=arch.tie_word_embeddings)  # fmt: skip
    if arch.family == "llama":
        out |= dict(attention_bias=arch.qkv_bias, mlp_bias=arch.mlp_bias)
    if arch.family == "mistral":
        out |= dict(sliding_window=None)
    return out


@contextlib.contextmanager
def twin_model(arch, cfg, directory=None):
    """``cfg`` built on a tiny twin of ``arch`` (:func:`twin_config`; random weights, saved with
    ``save_pretrained`` and loaded back, the path a checkpoint takes): yields (fields, twin Arch, model)."""
    import tempfile

    from transformers import AutoConfig, AutoModelForCausalLM

    from scaling.arch import Arch
    from scaling.methods.backbone import quiet_libraries

    quiet_libraries()
    fields = twin_config(arch, cfg)
    twin = Arch.from_hf_config(fields, source=f"twin of {arch.source or arch.family}")
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(AutoConfig.for_model(**fields)).save_pretrained(tmp)
        yield fields, twin, cfg.build(tmp)


def twin_memory(arch, cfg, seq_len: int, batch_size: int, *, step: str = "steady",
                directory=None) -> dict:  # fmt: skip
    """Measure one training step of ``cfg`` on a tiny twin of ``arch`` on this CPU (:func:`step_memory`)
    and set it beside :func:`scaling.flops.memory` of the same twin, term by term (bytes)."""
    from scaling import flops
    from scaling.train.objective import make_optimizer

    with twin_model(arch, cfg, directory) as (fields, twin, model):
        params = [p for p in model.parameters() if p.requires_grad]
        opt = dict(lr=1e-4, betas=[0.9, 0.999], weight_decay=0.0)
        optimizer, _ = make_optimizer(params, opt, cfg.optimizer)
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(0, twin.vocab_size, (batch_size, seq_len), generator=gen)
        steps = step_memory(model, optimizer, ids, ids.clone(), loss=cfg.loss)
    got = steps[0 if step == "first" else 1]
    est = flops.memory(twin, cfg, seq_len, batch_size, step=step, device="cpu")
    measured = {"weights": got.breakdown.get("frozen", 0) + got.breakdown.get("trainable", 0)
                + got.breakdown.get("buffers", 0)}  # fmt: skip
    measured |= {t: got.breakdown.get(t, 0) for t in TERMS[1:]}
    measured["the step's tensors"] = got.peak - sum(measured.values())
    analytic = {t: getattr(est, t) for t in TERMS}
    analytic["the step's tensors"] = est.activations + est.loss + est.temporaries
    return {"twin": ", ".join(f"{k}={v}" for k, v in fields.items() if k != "model_type"),
            "measured": measured | {"total": got.peak}, "analytic": analytic | {"total": est.total},
            "measured_peak_at": got.phase, "analytic_peak_at": est.peak_at,
            "error": est.total / got.peak - 1}  # fmt: skip


# --------------------------------------------------------------------------------------------------
# fvcore: a second independent count, module by module

ELEMENTWISE_OPS = frozenset(
    f"aten::{op}"
    for op in (
        "add add_ sub rsub mul mul_ div neg pow rsqrt sqrt exp mean sum softmax silu gelu sigmoid "
        "tanh rms_norm cos sin embedding diff ne le lt where cumsum new_ones ones_like scalar_tensor "
        "bitwise_or bitwise_and any all abs clone masked_fill_ fill_ triu tril"
    ).split()
)
"""Ops without an fvcore handle that compute no matrix product (elementwise math, one-axis reductions,
gathers, scans, mask building): :mod:`scaling.flops` leaves them out too. Any other op without a
handle (``aten::scaled_dot_product_attention``, a custom kernel) is reported as not counted."""


@dataclasses.dataclass(frozen=True)
class ModuleFlops:
    """fvcore's count of one forward pass, in FLOPs at 2 per multiply-accumulate (fvcore's own unit is
    1 per multiply-accumulate; every number here is converted)."""

    tokens: int
    macs: int
    """fvcore's total, in its own convention (one fused multiply-add = one flop)."""
    modules: dict[str, int]
    """FLOPs per module, each including its submodules (fvcore's ``by_module`` × 2)."""
    components: dict[str, float]
    """Forward FLOPs per token by :data:`scaling.flops.COMPONENTS` key, from the modules that ran
    them; "other" for products in a module outside every component."""
    not_counted: dict[str, dict[str, int]]
    """Ops fvcore could not count that may hold FLOPs → {module that ran them: calls}."""
    incomplete: tuple[str, ...]
    """Components whose count misses the ops in ``not_counted``: a lower bound, not a number."""
    elementwise: dict[str, int]
    """Ops without a handle that hold no matrix product (:data:`ELEMENTWISE_OPS`), by calls."""
    uncalled: tuple[str, ...]
    """Modules with parameters that the forward never called."""
    table: str
    """fvcore's ``flop_count_table``, in FLOPs (2 per multiply-accumulate)."""

    @property
    def total(self) -> int:
        return 2 * self.macs


def module_component(name: str) -> str:
    """The :data:`scaling.flops.COMPONENTS` key of the matmuls a module runs itself (not in a child)."""
    parts = name.split(".")
    if "lora_A" in parts or "lora_B" in parts:
        return "lora"
    if parts[-1] == "lm_head":
        return "head"
    side = parts[0] == "side"
    if side and len(parts) > 1 and parts[1] in ("w_in", "ladders", "w_up"):
        return "side.w_up" if parts[1] == "w_up" else "side.ladders"
    where = "side" if side else "backbone"
    if parts[-1] == "self_attn":  # QKᵀ and AV run in the attention module itself
        return f"{where}.attention"
    return f"{where}.blocks" if "layers" in parts else "other"


def _own(totals: dict, names: list[str]) -> dict[str, float]:
    """What each module did itself: its total less its direct children's."""
    own = dict(totals)
    for name in names:
        if name:
            parent = name.rpartition(".")[0]
            own[parent] = own.get(parent, 0) - totals.get(name, 0)
    return own


def fvcore_flops(
    model: torch.nn.Module, input_ids: torch.Tensor, *, max_depth: int = 4
) -> ModuleFlops:
    """Trace one forward of ``model`` on ``input_ids`` with fvcore's ``FlopCountAnalysis`` (eval mode,
    ``use_cache=False``) and sort what it counted by module and component (:class:`ModuleFlops`).

    fvcore traces with ``torch.jit``, which cannot trace bitsandbytes' 4-bit matmul (an autograd
    Function holding a quantisation state): a model with 4-bit layers is refused with that reason —
    count its unquantised twin, which runs the same products. Fused attention
    (``scaled_dot_product_attention``) traces but has no handle: it is named in ``not_counted``."""
    from collections import Counter

    from fvcore.nn import FlopCountAnalysis, flop_count_table

    from scaling.errors import ScalingError

    four_bit: dict[int, str] = {}  # by weight: peft's wrapper and its base layer share one
    for n, m in model.named_modules():
        w = getattr(m, "weight", None)
        if hasattr(w, "quant_state"):
            four_bit.setdefault(id(w), n)
    if four_bit:
        raise ScalingError(
            f"fvcore cannot trace bitsandbytes' 4-bit matmuls ({len(four_bit)} layers, e.g. "
            f"{next(iter(four_bit.values()))}): count the unquantised twin (quantization none), "
            "which runs the same products"
        )

    class Converted(FlopCountAnalysis):
        """fvcore's own analysis, its per-module counts (what ``flop_count_table`` prints) × 2."""

        def by_module(self):
            return Counter({k: 2 * v for k, v in super().by_module().items()})

    configs = [
        m.config for m in model.modules() if hasattr(getattr(m, "config", None), "use_cache")
    ]
    saved = [(c, c.use_cache) for c in configs]
    training = model.training
    model.eval()
    try:
        for c in configs:
            c.use_cache = False  # a KV cache object is not a tensor: jit cannot trace it
        with torch.no_grad():
            fca = Converted(model, (input_ids,)).unsupported_ops_warnings(False)
            fca.uncalled_modules_warnings(False).tracer_warnings("none")
            try:
                macs, by_module = fca.total(), fca.by_module()  # one trace, cached
            except RuntimeError as e:  # torch.jit met something it cannot trace
                line = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise ScalingError(
                    f"fvcore could not trace {type(model).__name__}: {line}"
                ) from None
            table = flop_count_table(fca, max_depth=max_depth)
            names = [n for n, _ in model.named_modules()]
            ops = {n: fca.unsupported_ops(n) for n in names}
            uncalled = fca.uncalled_modules()
    finally:
        for c, value in saved:
            c.use_cache = value
        model.train(training)
    tokens = input_ids.numel()
    components: dict[str, float] = {}
    for name, count in _own(by_module, names).items():
        if count:
            key = module_component(name)
            components[key] = components.get(key, 0.0) + count / tokens
    not_counted: dict[str, dict[str, int]] = {}
    incomplete = set()
    for op in ops[""]:
        if op in ELEMENTWISE_OPS:
            continue
        own = _own({n: c.get(op, 0) for n, c in ops.items()}, names)
        not_counted[op] = {n: c for n, c in own.items() if c}
        incomplete |= {module_component(n) for n in not_counted[op]}
    params = {n for n, m in model.named_modules() if any(True for _ in m.parameters())}
    return ModuleFlops(
        tokens=tokens, macs=int(macs), modules=dict(by_module), components=components,
        not_counted=not_counted, incomplete=tuple(sorted(incomplete)),
        elementwise={op: c for op, c in ops[""].items() if op in ELEMENTWISE_OPS},
        uncalled=tuple(sorted(uncalled & params)), table=table,
    )  # fmt: skip
