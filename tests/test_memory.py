"""The memory oracle (:class:`scaling.measure.LiveBytes`) on steps counted by hand, and the analytic
memory model (:func:`scaling.flops.memory`) against it: every method, plain and efficient loss, fp32 and
bf16 compute, a Llama-like and a Qwen2-like backbone, two sequence lengths, the first step (no optimizer
state) and a steady one — the analytic peak within 5% of the measured one. Attention is pinned to SDPA,
AdamW to its single-tensor (CPU default) update, the device to this CPU."""

from __future__ import annotations

import pytest
import torch

from scaling import flops, measure, methods
from scaling.arch import Arch
from scaling.train.objective import make_optimizer

TOLERANCE = 0.05
SHAPE = dict(hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=512, max_position_embeddings=512)  # fmt: skip
FAMILIES = {"llama": dict(tie_word_embeddings=False), "qwen2": dict(tie_word_embeddings=True)}
CASES = {
    "full": ("full", {}),
    "lora": ("lora", {"rank": 8}),
    "qlora": ("qlora", {"rank": 8}),
    "qlora-ckpt": ("qlora", {"rank": 8, "gradient_checkpointing": True}),
    "ladder": ("ladder", {"reduction": 4}),
    "xladder": ("xladder", {"reduction": 4, "delta": 2}),
}
BATCH = 2


# --------------------------------------------------------------------------------------------------
# The oracle, by hand


def test_linear_step_counted_by_hand():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32, bias=False)  # 64·32·4 = 8192 bytes
    x = torch.randn(8, 64)  # 2048 bytes
    with measure.LiveBytes() as mem:
        mem.track([lin.weight], "weights")
        mem.track([x], "input")
        mem.label = "forward"
        y = lin(x)  # 8·32·4 = 1024, kept: pow saves it
        loss = y.pow(2).sum()  # pow's 1024-byte output dies inside sum; the loss is 4 bytes
        mem.label = "backward"
        loss.backward()  # grad of the loss 4, of y 1024, of the weight 8192
    assert mem.peak == 8192 + 2048 + 1024 + 4 + 4 + 1024 + 8192
    assert mem.peak_label == "backward"
    roles = mem.breakdown(measure.step_roles(lin))
    assert roles == {"trainable": 8192, "input": 2048, "forward": 1028, "backward": 1028,
                     "gradients": 8192}  # fmt: skip
    assert mem.current == mem.peak - 1024 - 4  # y's and the loss's gradients are gone


def test_views_and_in_place_ops_cost_nothing_and_frees_are_seen():
    with measure.LiveBytes() as mem:
        a = torch.zeros(1000)  # 4000
        view = a[10:20].view(2, 5)
        a.add_(1.0)
        b = torch.ones(500)  # 2000: peak 6000
        del b
        c = torch.ones(250)  # 1000, after b was freed: no new peak
    assert mem.peak == 6000 and mem.current == 5000
    assert sorted(n for _, n, _ in mem.alive_at_peak()) == [2000, 4000]
    del view, c


def test_the_oracle_is_byte_deterministic(tiny_models):
    cfg = methods.config("ladder", reduction=4)
    peaks = []
    for _ in range(2):
        torch.manual_seed(0)
        model = cfg.build(tiny_models["llama"])
        opt, _ = make_optimizer([p for p in model.parameters() if p.requires_grad],
                                dict(lr=1e-3, betas=[0.9, 0.999], weight_decay=0.0), "adamw")  # fmt: skip
        ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(0))
        peaks.append([(s.peak, s.breakdown) for s in measure.step_memory(model, opt, ids, ids)])
    assert peaks[0] == peaks[1]


# --------------------------------------------------------------------------------------------------
# The analytic model against the oracle


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    from transformers import AutoConfig, AutoModelForCausalLM

    out = {}
    for family, extra in FAMILIES.items():
        fields = dict(model_type=family, **SHAPE, **extra)
        path = tmp_path_factory.mktemp(family)
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(AutoConfig.for_model(**fields)).save_pretrained(path)
        out[family] = (str(path), Arch.from_hf_config(fields, source=family))
    return out


@pytest.mark.parametrize("seq_len", [48, 160])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("case", sorted(CASES))
def test_analytic_peak_within_5_percent_of_the_oracle(backbones, case, family, dtype, seq_len):
    path, arch = backbones[family]
    name, dials = CASES[case]
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, arch.vocab_size, (BATCH, seq_len), generator=gen)
    report = []
    for loss in ("plain", "efficient"):
        cfg = methods.config(name, **dials, compute_dtype=dtype, attn_implementation="sdpa",
                             loss=loss)  # fmt: skip
        torch.manual_seed(0)
        model = cfg.build(path)
        params = [p for p in model.parameters() if p.requires_grad]
        opt, _ = make_optimizer(params, dict(lr=1e-3, betas=[0.9, 0.999], weight_decay=0.0),
                                cfg.optimizer)  # fmt: skip
        assert isinstance(opt, torch.optim.AdamW) and not opt.defaults["foreach"]
        measured = measure.step_memory(model, opt, ids, ids.clone(), loss=loss)
        for step, got in zip(("first", "steady"), measured, strict=True):
            est = flops.memory(arch, cfg, seq_len, BATCH, step=step, device="cpu", foreach=False)
            report.append((loss, step, got.peak, est.total, est.total / got.peak - 1))
    bad = [r for r in report if abs(r[-1]) > TOLERANCE]
    assert not bad, "\n".join(f"{r[0]} {r[1]}: measured {r[2]:,} analytic {r[3]:,.0f} ({r[4]:+.1%})"
                              for r in bad)  # fmt: skip


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("case", ["full", "ladder"])
def test_foreach_adamw_update_as_modelled(backbones, case, dtype):
    """CUDA's default AdamW is the foreach one (one sqrt(v) temporary the size of every trained
    tensor at once); pinned here on the CPU, where it also runs."""
    path, arch = backbones["llama"]
    name, dials = CASES[case]
    cfg = methods.config(name, **dials, compute_dtype=dtype, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = cfg.build(path)
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-3, foreach=True
    )
    ids = torch.randint(0, arch.vocab_size, (BATCH, 16), generator=torch.Generator().manual_seed(0))
    for step, got in zip(
        ("first", "steady"), measure.step_memory(model, opt, ids, ids), strict=True
    ):
        est = flops.memory(arch, cfg, 16, BATCH, step=step, device="cpu", foreach=True)
        assert est.total == pytest.approx(got.peak, rel=TOLERANCE), (step, got.phase, est.peak_at)


def test_efficient_loss_in_several_chunks(backbones, monkeypatch):
    """With chunks of 16 positions the chunked loss runs 6 chunks; only one chunk's logits may be alive
    at a time (the oracle caught two: a Python name holding the previous chunk)."""
    path, arch = backbones["llama"]
    monkeypatch.setattr(flops, "CHUNK_BYTES", 16 * 4 * arch.vocab_size)
    assert flops.chunk_rows(arch.vocab_size) == 16
    cfg = methods.config("ladder", reduction=4, loss="efficient", attn_implementation="sdpa")
    torch.manual_seed(0)
    model = cfg.build(path)
    opt, _ = make_optimizer([p for p in model.parameters() if p.requires_grad],
                            dict(lr=1e-3, betas=[0.9, 0.999], weight_decay=0.0), "adamw")  # fmt: skip
    ids = torch.randint(0, arch.vocab_size, (BATCH, 48), generator=torch.Generator().manual_seed(0))
    for step, got in zip(
        ("first", "steady"), measure.step_memory(model, opt, ids, ids), strict=True
    ):
        est = flops.memory(arch, cfg, 48, BATCH, step=step, device="cpu", foreach=False)
        assert est.total == pytest.approx(got.peak, rel=0.01)
