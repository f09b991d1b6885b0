"""The accounting module against independent counts: FlopCounterMode on built models, parameter counts
of built models, published parameter totals, and the worked Qwen2.5-7B numbers the design started from
(docs/methods.md derives every formula)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from scaling import flops, methods
from scaling.arch import resolve_arch

GiB = 2**30

# (method, dials) covering every method, both LoRA checkpointing modes, ladder depth/width/fusion options.
CASES = [
    ("full", {}),
    ("full", {"gradient_checkpointing": True}),
    ("lora", {"rank": 4}),
    ("lora", {"rank": 4, "gradient_checkpointing": True}),
    ("qlora", {"rank": 8}),
    ("ladder", {"reduction": 4}),
    ("ladder", {"reduction": 2, "side_layers": 2}),
    ("ladder", {"side_width": 24, "fusion": "gate"}),
    ("xladder", {"reduction": 4, "delta": 2}),
    ("xladder", {"reduction": 4, "delta": 3, "side_layers": 4}),
]


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize(("method", "dials"), CASES, ids=lambda x: str(x))
def test_train_flops_match_flop_counter(tiny_models, batch, family, method, dials):
    from scaling import measure

    # FlopCounterMode sees neither 4-bit matmuls nor CPU SDPA: count on the eager, unquantised twin.
    cfg = methods.config(method, **dials, quantization="none", attn_implementation="eager")
    model = cfg.build(tiny_models[family])
    forward, train = measure.flops_per_token(model, batch)
    cost = flops.cost(resolve_arch(tiny_models[family]), cfg, batch.shape[1])
    assert cost.forward_flops_per_token == pytest.approx(forward, rel=0.01)
    assert cost.train_flops_per_token == pytest.approx(train, rel=0.01)
    assert cost.trainable_params == model.num_trainable_params()


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize(("method", "dials"), CASES, ids=lambda x: str(x))
def test_forward_flops_match_fvcore(tiny_models, batch, family, method, dials):
    """fvcore's FlopCountAnalysis, a second independent count, traced on the same eager unquantised twin:
    the analytic forward FLOPs per token are its count × 2 (it counts one multiply-accumulate as one
    flop), exactly, in total and component by component (the modules that ran each matmul). Nothing is
    left unexplained: every op it has no handle for is elementwise (scaling.measure.ELEMENTWISE_OPS:
    RMSNorm's pow/mean/rsqrt/mul, SiLU, softmax, RoPE's cos/sin/neg, residual adds, the embedding
    gather, mask building), which the analytic count leaves out too; none is a matrix product."""
    from scaling import measure

    cfg = methods.config(method, **dials, quantization="none", attn_implementation="eager")
    model = cfg.build(tiny_models[family])
    counted = measure.fvcore_flops(model, batch)
    cost = flops.cost(resolve_arch(tiny_models[family]), cfg, batch.shape[1])
    assert counted.not_counted == {} and counted.incomplete == ()
    assert set(counted.elementwise) <= measure.ELEMENTWISE_OPS
    assert 2 * counted.macs == cost.forward_flops_per_token * batch.numel()
    assert counted.components == {k: t.forward for k, t in cost.by_component().items()}
    assert counted.uncalled == ()  # every module with weights ran


def test_fvcore_names_what_it_cannot_count(tiny_llama, batch):
    """Fused attention has no fvcore handle: the breakdown names the op and the modules that ran it and
    marks the component incomplete instead of counting it as zero; 4-bit layers cannot be traced at all,
    and the refusal says so and what to count instead."""
    from scaling import measure
    from scaling.errors import ScalingError

    cfg = methods.config("qlora", rank=4, quantization="none", attn_implementation="sdpa")
    counted = measure.fvcore_flops(cfg.build(tiny_llama), batch)
    sdpa = counted.not_counted["aten::scaled_dot_product_attention"]
    assert set(counted.not_counted) == {"aten::scaled_dot_product_attention"}
    assert len(sdpa) == resolve_arch(tiny_llama).num_layers
    assert all(name.endswith("self_attn") for name in sdpa)
    assert counted.incomplete == ("backbone.attention",)
    assert "backbone.attention" not in counted.components
    cost = flops.cost(resolve_arch(tiny_llama), cfg, batch.shape[1]).by_component()
    assert counted.components == {
        k: t.forward for k, t in cost.items() if k != "backbone.attention"
    }
    with pytest.raises(ScalingError, match="cannot trace bitsandbytes' 4-bit matmuls"):
        measure.fvcore_flops(methods.config("qlora", rank=4).build(tiny_llama), batch)


def test_breakdown_says_not_counted_instead_of_zero(capsys):
    """``scaling flops --breakdown`` on a twin with fused attention: the attention row reads "not
    counted" (None in --json), the op is named with the modules that ran it, and every other component
    still matches the analytic count."""
    from scaling.methods.cli import breakdown, print_breakdown

    split = breakdown(resolve_arch("qwen2.5-0.5b"), methods.config("lora", rank=2), 16,
                      attention="sdpa")  # fmt: skip
    rows = split["fvcore"]["components"]
    assert (
        rows["backbone.attention"]["fvcore"] is None and rows["backbone.attention"]["analytic"] > 0
    )
    assert all(r["fvcore"] == r["analytic"] for k, r in rows.items() if k != "backbone.attention")
    assert list(split["fvcore"]["not_counted"]) == ["aten::scaled_dot_product_attention"]
    print_breakdown(split)
    out = " ".join(capsys.readouterr().out.split())
    assert f"backbone attention {rows['backbone.attention']['analytic']:.6g} not counted" in out
    assert "NOT COUNTED by fvcore: aten::scaled_dot_product_attention in 4 modules" in out


def test_components_add_up_to_the_terms():
    arch = resolve_arch("qwen2.5-7b")
    for method, dials in CASES:
        c = flops.cost(arch, methods.config(method, **dials), 2048)
        for causal in (False, True):
            parts = c.by_component(causal).values()
            terms = c.terms_causal if causal else c.terms
            assert sum(t.train for t in parts) == pytest.approx(sum(t.train for t in terms))
            assert sum(t.forward for t in parts) == pytest.approx(sum(t.forward for t in terms))
    assert set(flops.TERM_COMPONENT.values()) == set(flops.COMPONENTS)


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_backbone_params_match_built_model(tiny_models, family):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_models[family])
    assert flops.backbone_params(resolve_arch(tiny_models[family])).total == model.num_parameters()


# Published totals (model cards / safetensors metadata on the Hugging Face hub).
PUBLISHED_TOTALS = {
    "llama-2-7b": 6_738_415_616,
    "llama-3.2-1b": 1_235_814_400,
    "llama-3.2-3b": 3_212_749_824,
    "llama-3.1-8b": 8_030_261_248,
    "qwen2.5-0.5b": 494_032_768,
    "qwen2.5-1.5b": 1_543_714_304,
    "qwen2.5-3b": 3_085_938_688,
    "qwen2.5-7b": 7_615_616_512,
    "mistral-7b": 7_241_732_096,
}


@pytest.mark.parametrize("preset", sorted(PUBLISHED_TOTALS))
def test_preset_params_match_published_and_built(preset):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from scaling.arch import preset_config

    total = flops.backbone_params(resolve_arch(preset)).total
    assert total == PUBLISHED_TOTALS[preset]
    cfg = preset_config(preset)
    hf = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    with torch.device("meta"):  # shapes only, no memory
        built = AutoModelForCausalLM.from_config(hf)
    assert total == built.num_parameters()


def test_worked_numbers_qwen25_7b():
    """Qwen2.5-7B at s=2048 (GFLOP/token, executed attention), worked out by hand from the formulas."""
    arch = resolve_arch("qwen2.5-7b")

    def g(method, **dials):
        return flops.cost(arch, methods.config(method, **dials), 2048).train_flops_per_token / 1e9

    assert g("full") == pytest.approx(44.9, abs=0.05)
    assert g("qlora") == pytest.approx(31.7, abs=0.05)
    assert g("ladder", reduction=8) == pytest.approx(17.2, abs=0.05)
    assert g("ladder", reduction=16) == pytest.approx(16.5, abs=0.05)
    # A hand count of 46.7 re-runs the lm_head under checkpointing; only the blocks are (measured).
    assert g("qlora", gradient_checkpointing=True) == pytest.approx(45.9, abs=0.05)
    # Ladder ≈ 2·N_backbone + 6·N_side; QLoRA ≈ 4·N (mission statement), to within attention and head.
    assert g("qlora") / g("ladder", reduction=16) == pytest.approx(2, rel=0.1)


def test_attention_conventions():
    arch = resolve_arch("llama-3.2-1b")
    cfg = methods.config("qlora")
    c = flops.cost(arch, cfg, 4096)
    width = arch.num_heads * arch.head_dim
    attn = 3 * arch.num_layers * 4 * 4096 * width
    attn_causal = 3 * arch.num_layers * 2 * 4097 * width
    assert c.train_flops_per_token - c.train_flops_per_token_causal == pytest.approx(
        attn - attn_causal
    )


def test_memory_at_7b_2k_context():
    """Qwen2.5-7B, 2048 tokens, batch 1, bf16 on CUDA (the paper's 12 GB setting): the loss term is the
    12·(s−1)·V fp32 bytes of the loss backward; plain-loss Ladder r=8 misses a 12 GB card by that term,
    the memory-efficient loss brings it under; QLoRA without checkpointing is far over; its paged
    optimizer state is reported apart from the device peak."""
    arch = resolve_arch("qwen2.5-7b")

    def mem(method, **dials):
        return flops.memory(arch, methods.config(method, **dials), 2048, 1)

    ladder = mem("ladder", reduction=8)
    assert ladder.peak_at == "loss backward"
    assert ladder.loss == 12 * 2047 * arch.vocab_size
    assert not ladder.fits(12e9) and mem("ladder", reduction=8, loss="efficient").fits(12e9)
    qlora = mem("qlora")
    assert not qlora.fits(12e9) and not mem("qlora", loss="efficient").fits(12e9)
    assert ladder.total < 0.5 * qlora.total
    trainable = flops.cost(arch, methods.config("qlora"), 2048).trainable_params
    assert qlora.optimizer == 0 and qlora.paged == 8 * trainable
    assert mem("qlora", gradient_checkpointing=True, loss="efficient").fits(12e9)
    # steady vs first step: only the optimizer state differs before the update
    first = flops.memory(arch, methods.config("ladder", reduction=8), 2048, 1, step="first")
    assert ladder.total - first.total == ladder.optimizer > 0


def test_nf4_bytes_match_quantized_model(tiny_llama):
    """Packed weights and quantisation state as bitsandbytes stores them, byte for byte."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    model = AutoModelForCausalLM.from_pretrained(
        tiny_llama,
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True
        ),
    )
    packed = state = 0
    for module in model.modules():
        w = getattr(module, "weight", None)
        if w is not None and hasattr(w, "quant_state"):
            qs = w.quant_state
            packed += w.untyped_storage().nbytes()
            state += sum(t.untyped_storage().nbytes() for t in
                         (qs.absmax, qs.code, qs.offset, qs.state2.absmax, qs.state2.code))  # fmt: skip
    arch = resolve_arch(tiny_llama)
    expected = [flops.nf4_linear_bytes(n) for n in flops.layer_linear_weights(arch).values()]
    assert packed == arch.num_layers * sum(p for p, _ in expected)
    assert state == arch.num_layers * sum(q for _, q in expected)


def test_seq_len_must_be_positive():
    with pytest.raises(ValueError, match="seq_len"):
        flops.cost(resolve_arch("qwen2.5-0.5b"), methods.config("qlora"), 0)


def test_flops_module_does_not_import_torch():
    code = "import sys, scaling.flops, scaling.methods, scaling.arch, scaling.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("12GB", 12e9), ("11.5GiB", 11.5 * GiB), ("24G", 24 * GiB), ("800MB", 8e8)],
)
def test_parse_bytes(text, expected):
    assert flops.parse_bytes(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "GB", "-1GB", "12XB", "0GB"])
def test_parse_bytes_rejects(text):
    with pytest.raises(ValueError):
        flops.parse_bytes(text)


def test_a_bare_number_names_the_unit_it_lacks():
    with pytest.raises(ValueError, match=r"12GB\? 12GiB\?"):
        flops.parse_bytes("12")
