"""KV-cached generation of the side-net methods: the same tokens as re-running the whole prefix, on every
supported family (GQA Llama, Qwen2 with qkv bias and tied head, Mistral with a sliding window shorter
than the generated text)."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES, TINY, make_tiny

from scaling import methods
from scaling.errors import ScalingError

SIDE_NETS = [("ladder", {"reduction": 4}), ("xladder", {"reduction": 4, "delta": 1})]


def trained_like(model):
    """Perturb every side weight (W_up included, zero at init) so the side net changes the output."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.side.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


def prompts():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, TINY["vocab_size"], (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding, two different amounts
    mask[2, :1] = 0
    return ids, mask


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize(("method", "dials"), SIDE_NETS)
def test_cached_generation_equals_uncached(tiny_models, family, method, dials):
    model = trained_like(methods.build(method, tiny_models[family], quantization="none", **dials))
    ids, mask = prompts()
    cached = model.generate(ids, mask, max_new_tokens=24)  # 31 > Mistral's window of 8
    uncached = model.generate(ids, mask, max_new_tokens=24, use_cache=False)
    assert cached.shape == (3, 31)
    assert torch.equal(cached, uncached)
    # The side net matters: with W_up back at zero (the backbone alone) the tokens differ.
    with torch.no_grad():
        model.side.w_up.weight.zero_()
    assert not torch.equal(model.generate(ids, mask, max_new_tokens=24), cached)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize(("method", "dials"), SIDE_NETS)
def test_unpadded_cached_generation_equals_uncached(tiny_models, family, method, dials):
    # Without padding a one-token step runs without an attention mask (a path of its own): past
    # Mistral's window of 8 too, and for one row and several.
    model = trained_like(methods.build(method, tiny_models[family], quantization="none", **dials))
    ids = prompts()[0]
    for rows in (ids[:1], ids):
        cached = model.generate(rows, max_new_tokens=24)
        assert torch.equal(cached, model.generate(rows, max_new_tokens=24, use_cache=False))
    assert not cached.is_inference()  # a normal tensor: callers may edit it in place
    cached[:, -1] = 0
    # The hooks that capture the backbone's states live only during an uncached forward.
    assert not any(layer._forward_hooks or layer._forward_pre_hooks
                   for layer in model.backbone.get_decoder().layers)  # fmt: skip


@pytest.mark.parametrize(("method", "dials"), SIDE_NETS)
def test_cached_generation_on_a_hybrid_sliding_window_backbone(tmp_path, method, dials):
    # Qwen2 with sliding-window layers after a full-attention one: one mask per layer type, and
    # side layers that cache and attend like the backbone layer they read.
    path = make_tiny("qwen2", tmp_path / "hybrid", use_sliding_window=True, sliding_window=8,
                     max_window_layers=1)  # fmt: skip
    model = trained_like(methods.build(method, path, quantization="none", **dials))
    assert model.backbone.config.layer_types == ["full_attention"] + ["sliding_attention"] * 2
    ids, mask = prompts()
    for m in (mask, None):  # left padding, and none
        cached = model.generate(ids, m, max_new_tokens=24)
        assert torch.equal(cached, model.generate(ids, m, max_new_tokens=24, use_cache=False))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_cached_forward_logits_match_full_forward(tiny_models, family):
    model = trained_like(
        methods.build("xladder", tiny_models[family], quantization="none", delta=1)
    )
    ids, mask = prompts()
    with torch.no_grad():
        full = model(ids, mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
        cache = model.new_cache()
        head = model(ids[:, :4], mask[:, :4], position_ids=(mask[:, :4].cumsum(-1) - 1).clamp(min=0),
                     past_key_values=cache).logits  # fmt: skip
        assert cache.get_seq_length() == 4 and cache.side.get_seq_length() == 4
        steps = [head]
        for t in range(4, ids.shape[1]):
            pos = (mask[:, : t + 1].cumsum(-1) - 1).clamp(min=0)[:, -1:]
            out = model(
                ids[:, t : t + 1], mask[:, : t + 1], position_ids=pos, past_key_values=cache
            )
            steps.append(out.logits)
    rows = mask.bool()  # padded positions attend to nothing: their logits are meaningless
    torch.testing.assert_close(torch.cat(steps, 1)[rows], full[rows], rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_cached_forward_without_mask_or_positions_matches_full_forward(tiny_models, family):
    # No attention_mask and no position_ids: the positions follow the cached ones, and each
    # one-token step runs without a mask (12 tokens: past Mistral's window of 8).
    model = trained_like(methods.build("ladder", tiny_models[family], quantization="none"))
    ids = prompts()[0].repeat(1, 2)[:, :12]
    with torch.no_grad():
        full = model(ids).logits
        cache = model.new_cache()
        steps = [model(ids[:, :5], past_key_values=cache).logits]
        steps += [model(ids[:, t : t + 1], past_key_values=cache).logits for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=0, atol=1e-5)


def test_cached_sampling_and_eos_equal_uncached(tiny_llama):
    model = trained_like(methods.build("ladder", tiny_llama, quantization="none", reduction=4))
    ids, mask = prompts()
    kw = dict(max_new_tokens=16, do_sample=True, top_k=20, temperature=0.8)
    a = model.generate(ids, mask, generator=torch.Generator().manual_seed(3), **kw)
    b = model.generate(ids, mask, generator=torch.Generator().manual_seed(3), use_cache=False, **kw)
    assert torch.equal(a, b)
    eos = int(a[0, 9])  # a token row 0 emits: that row stops there and is padded after it
    a = model.generate(ids, mask, max_new_tokens=16, eos_token_id=eos, pad_token_id=0)
    b = model.generate(
        ids, mask, max_new_tokens=16, eos_token_id=eos, pad_token_id=0, use_cache=False
    )
    assert torch.equal(a, b)


def test_cached_generation_on_an_nf4_backbone(tiny_llama):
    model = trained_like(methods.build("ladder", tiny_llama, reduction=4))  # NF4 by default
    ids, mask = prompts()
    assert torch.equal(model.generate(ids, mask, max_new_tokens=12),
                       model.generate(ids, mask, max_new_tokens=12, use_cache=False))  # fmt: skip


def test_rotary_tables_give_the_rotary_embeddings(tiny_models):
    # generate looks cos/sin up in tables computed once; they are the per-step module outputs.
    from scaling.methods.sidenet import rotary_table

    model = methods.build("xladder", tiny_models["qwen2"], quantization="none", delta=1)
    decoder = model.backbone.get_decoder()
    pos = torch.tensor([[0, 7, 39], [3, 3, 20]])
    for rotary, like in ((decoder.rotary_emb, decoder.embed_tokens.weight[:0]),
                         (model.side.rotary_emb, model.side.w_in.weight[:0])):  # fmt: skip
        cos, sin = rotary_table(rotary, 40, like.dtype, like.device)
        assert cos.shape == (40, rotary.inv_freq.numel() * 2)
        want_cos, want_sin = rotary(like, pos)
        torch.testing.assert_close(cos[pos], want_cos)
        torch.testing.assert_close(sin[pos], want_sin)
    # Frequencies that change with the positions seen (dynamic NTK, LongRoPE): no table.
    rotary.rope_type = "dynamic"
    assert rotary_table(rotary, 40, like.dtype, like.device) is None


def test_foreign_cache_is_a_clear_error(tiny_llama):
    from transformers import DynamicCache

    model = methods.build("ladder", tiny_llama, quantization="none")
    with pytest.raises(ScalingError, match="LadderCache"):
        model(torch.ones(1, 3, dtype=torch.long), past_key_values=DynamicCache())


def test_a_negative_token_count_is_a_clear_error(tiny_llama):
    model = methods.build("ladder", tiny_llama, quantization="none")
    ids = torch.ones(1, 3, dtype=torch.long)
    with pytest.raises(ScalingError, match="max_new_tokens must be ≥ 0; got -1"):
        model.generate(ids, max_new_tokens=-1)
    assert torch.equal(model.generate(ids, max_new_tokens=0), ids)  # nothing to add: the prompt
