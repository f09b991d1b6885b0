"""Invariants every method must keep, parametrised over methods (PEFT's test_only_params_are_updated)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from scaling import methods
from scaling.errors import ScalingError

METHODS = [
    ("full", {}),
    ("lora", {"rank": 4}),
    ("qlora", {"rank": 4}),
    ("ladder", {"reduction": 4}),
    ("ladder", {"reduction": 2, "quantization": "none", "init": "pruned"}),
    ("ladder", {"reduction": 2, "side_layers": 2, "fusion": "replace", "quantization": "none"}),
    ("xladder", {"reduction": 4, "delta": 2}),
]
IDS = [f"{m}-{'-'.join(f'{k}={v}' for k, v in d.items())}" for m, d in METHODS]


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _train(model, ids, steps: int, lr: float = 1e-2) -> list[float]:
    model.train()
    opt = torch.optim.Adam(model.trainable_parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize(("method", "dials"), METHODS, ids=IDS)
def test_only_trainable_parameters_change(tiny_llama, batch, method, dials):
    model = methods.build(method, tiny_llama, **dials)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "nothing trains"
    before = _snapshot(model)
    _train(model, batch, steps=2)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "an optimizer step changed nothing"
    assert changed <= trainable, f"frozen tensors changed: {sorted(changed - trainable)[:5]}"
    if method != "full":
        frozen = [k for k in before if k not in trainable]
        assert frozen and all(
            torch.equal(before[k], after[k]) for k in frozen
        )  # backbone bit-identical


@pytest.mark.parametrize(("method", "dials"), METHODS, ids=IDS)
def test_loss_decreases_on_overfit_batch(tiny_llama, batch, method, dials):
    model = methods.build(method, tiny_llama, **dials)
    losses = _train(model, batch, steps=30, lr=3e-3 if method == "full" else 1e-2)
    assert losses[-1] < losses[0] - 0.5, losses  # nats; noise on this batch is ~0.05


@pytest.mark.parametrize(("method", "dials"), METHODS, ids=IDS)
def test_save_load_reproduces_logits(tiny_llama, batch, tmp_path, method, dials):
    model = methods.build(method, tiny_llama, **dials)
    _train(model, batch, steps=2)
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=batch).logits
    model.save(tmp_path / "saved")
    saved = {p.name for p in (tmp_path / "saved").iterdir()}
    assert "scaling_method.json" in saved
    if method in ("lora", "qlora"):
        assert "adapter_model.safetensors" in saved  # peft's adapter format, not the backbone
    if method in ("ladder", "xladder"):
        assert saved == {"scaling_method.json", "side.safetensors"}
    again = methods.load(tmp_path / "saved")
    again.eval()
    assert again.method_config == model.method_config
    with torch.no_grad():
        got = again(input_ids=batch).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("method", ["ladder", "xladder"])
@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_side_net_at_step0_reproduces_backbone(tiny_models, batch, family, method, quantization):
    from scaling.methods.backbone import load_backbone

    cfg = methods.config(method, reduction=4, quantization=quantization)
    ref = load_backbone(tiny_models[family], cfg)
    mask = torch.ones_like(batch)
    mask[1, :5] = 0  # left padding exercises the captured padding mask
    with torch.no_grad():
        expected = ref(input_ids=batch, attention_mask=mask).logits
        got = cfg.build(tiny_models[family])(input_ids=batch, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_ladder_generate_matches_backbone_at_step0(tiny_llama, batch):
    model = methods.build("ladder", tiny_llama, reduction=4, quantization="none")
    ref = AutoModelForCausalLM.from_pretrained(tiny_llama)
    prompt = batch[:, :6]
    ours = model.generate(prompt, max_new_tokens=8)
    theirs = ref.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8,
                          do_sample=False, eos_token_id=None, pad_token_id=0)  # fmt: skip
    assert ours.shape == (2, 14)
    assert torch.equal(ours, theirs)
    sampled = model.generate(prompt, max_new_tokens=4, do_sample=True, top_k=5,
                             generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert sampled.shape == (2, 10) and torch.equal(sampled[:, :6], prompt)


def test_ladder_structure(tiny_llama):
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    model = methods.build("ladder", tiny_llama, reduction=4, quantization="none")
    side = model.side
    assert all(isinstance(layer, LlamaDecoderLayer) for layer in side.layers)
    assert side.config.hidden_size == 16 and side.config.intermediate_size == 40
    assert len(side.layers) == 3 and len(side.ladders) == 3
    assert torch.allclose(torch.sigmoid(side.gates / side.temperature), torch.full((3,), 0.5))
    assert torch.count_nonzero(side.w_up.weight) == 0  # zero-initialised: step 0 is the backbone
    assert not any(p.requires_grad for p in model.backbone.parameters())
    x = methods.build("xladder", tiny_llama, reduction=4, delta=1, quantization="none")
    assert x.side.geom.connections == (2, None) and x.side.geom.input_layer == 1


def test_pruned_init_copies_backbone_slices(tiny_models):
    # reduction 1 keeps every dimension: side layers must equal the backbone layers they read.
    model = methods.build("ladder", tiny_models["qwen2"], reduction=1, quantization="none",
                          init="pruned", side_layers=3)  # fmt: skip
    for side_layer, layer in zip(
        model.side.layers, model.backbone.get_decoder().layers, strict=True
    ):
        for name, p in side_layer.named_parameters():
            torch.testing.assert_close(p, layer.get_parameter(name), rtol=0, atol=0)
    half = methods.build(
        "ladder", tiny_models["qwen2"], reduction=2, quantization="none", init="pruned"
    )
    q_side, q_full = (
        half.side.layers[0].self_attn.q_proj.weight,
        half.backbone.model.layers[0].self_attn.q_proj.weight,
    )
    # every side row is a backbone row restricted to the kept residual columns
    assert q_side.shape == (32, 32)
    row = q_side[0]
    assert any(
        torch.equal(row, torch.index_select(r, 0, half.side.w_in.weight.argmax(1))) for r in q_full
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: methods.build("prefix", p), "unknown method 'prefix'"),
        (lambda p: methods.build("ladder", p, rank=8), "unknown key 'rank'"),
        (lambda p: methods.build("ladder", p, reduction=5), "does not divide the hidden size 64"),
        (lambda p: methods.build("qlora", p, rank=0), "rank must be a positive integer"),
        (lambda p: methods.build("ladder", p + "/missing"), "model path not found"),
        (lambda p: methods.build("xladder", p, delta=9), "delta must be in"),
        (lambda p: methods.build("full", p, quantization="nf4"), "quantization = 'none'"),
        (lambda p: methods.load(p), "no saved method"),
    ],
)
def test_bad_input_is_a_clear_error(tiny_llama, call, message):
    with pytest.raises(ScalingError, match=message):
        call(tiny_llama)


def test_build_on_a_loaded_model(tiny_llama, batch):
    backbone = AutoModelForCausalLM.from_pretrained(tiny_llama)
    model = methods.build("ladder", backbone, reduction=4, quantization="none")
    assert model.backbone is backbone and model.backbone_source == tiny_llama
    with pytest.raises(ScalingError, match="not quantized"):
        methods.build("qlora", backbone)  # nf4 by default: a loaded fp32 model does not match


def test_hub_name_offline_is_a_clear_error():
    with pytest.raises(ScalingError, match="cannot load model 'no-org/no-model'"):
        methods.build("lora", "no-org/no-model")


def test_lora_update_scale_is_rank_stabilised(tiny_llama):
    """rsLoRA: the update is (α/√r)·B·A with α = 2, i.e. QLoRA's 16/64 at its rank 64, so it does not
    change 128× across the ranks a sweep varies; a config recorded before rsLoRA keeps α/r."""
    from peft.tuners.lora import LoraLayer

    from scaling.runspec import recorded_config

    def scale(**dials):
        model = methods.build("lora", tiny_llama, **dials)
        layer = next(m for m in model.modules() if isinstance(m, LoraLayer))
        return layer.scaling["default"]

    assert scale(rank=4) == pytest.approx(2 / 4**0.5)
    assert scale(rank=64) == pytest.approx(16 / 64)
    assert scale(rank=16) / scale(rank=1) == pytest.approx(1 / 4)
    old = recorded_config({"rank": 8, "alpha": 16.0}, methods.config_class("lora").field_names())
    assert old["use_rslora"] is False and scale(**old) == pytest.approx(16 / 8)
