"""Initialise a side network by structured magnitude pruning of the backbone (LST, Sung et al. 2022 §3.2).

    model = methods.build("ladder", path, reduction=8, init="pruned")

* One set of d_s residual dimensions for the whole stream: those with the largest summed |W| over every
  block's input columns (q, k, v, gate, up) and output rows (o, down).
* Per side layer j, from the backbone layer c(j) it reads: the top f_s FFN units by |gate|+|up|+|down|,
  and per kv head the top hd_s/2 RoPE pairs (i, i + hd/2) by |q|+|k|+|v| over the head's group, kept
  together so rotate_half still pairs them; q, k, v and o use the same dimensions.
* W_in and the ladders start as selections of the kept residual dimensions; W_up keeps its fusion init
  (zero for ``add``), so step 0 still equals the backbone.
* Free xLadder layers (no backbone layer) keep the random init.

Known approximation: the side rotary embedding uses the frequencies of a head of width hd_s, not the
original frequencies of the kept pairs (one rotary table is shared by all heads).
Importance is weight magnitude (|W|); Fisher importance (LST's alternative) needs data and is not done.
"""

from __future__ import annotations

import torch

from scaling.errors import ScalingError


def dense_weight(linear: torch.nn.Module) -> torch.Tensor:
    """A linear layer's weight as a float tensor, dequantising bitsandbytes 4-bit weights."""
    w = linear.weight
    if hasattr(w, "quant_state"):
        import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(w.data, w.quant_state).float()
    return w.detach().float()


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    return scores.topk(k).indices.sort().values


@torch.no_grad()
def init_side_from_backbone(side, backbone) -> None:
    geom, cfg = side.geom, backbone.config
    decoder = backbone.get_decoder()
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    if (geom.num_heads, geom.num_kv_heads) != (heads, kv_heads):
        raise ScalingError(
            "init='pruned' needs the side net to keep the backbone's heads, but head_dim "
            f"{hd} scaled to width {geom.hidden_size} is below min_head_dim; lower min_head_dim"
        )
    blocks = decoder.layers
    importance = torch.zeros(cfg.hidden_size)
    for b in blocks:
        a, m = b.self_attn, b.mlp
        for lin in (a.q_proj, a.k_proj, a.v_proj, m.gate_proj, m.up_proj):
            importance += dense_weight(lin).abs().sum(0).cpu()
        for lin in (a.o_proj, m.down_proj):
            importance += dense_weight(lin).abs().sum(1).cpu()
    res = _top(importance, geom.hidden_size)

    group, half, side_half = heads // kv_heads, hd // 2, geom.head_dim // 2
    for j, layer in enumerate(side.layers):
        c = geom.connections[j]
        if c is None:
            continue
        src = blocks[c]
        q, k, v, o = (
            dense_weight(getattr(src.self_attn, n)).cpu()
            for n in ("q_proj", "k_proj", "v_proj", "o_proj")
        )
        dims = []
        for g in range(kv_heads):
            score = k[g * hd : (g + 1) * hd].abs().sum(1) + v[g * hd : (g + 1) * hd].abs().sum(1)
            for h in range(g * group, (g + 1) * group):
                score += q[h * hd : (h + 1) * hd].abs().sum(1)
            keep = _top(score[:half] + score[half:], side_half)
            dims.append(torch.cat([keep, keep + half]))
        q_rows = torch.cat([h * hd + dims[h // group] for h in range(heads)])
        kv_rows = torch.cat([g * hd + dims[g] for g in range(kv_heads)])
        attn = layer.self_attn
        _copy(attn.q_proj, q[q_rows][:, res], src.self_attn.q_proj, q_rows)
        _copy(attn.k_proj, k[kv_rows][:, res], src.self_attn.k_proj, kv_rows)
        _copy(attn.v_proj, v[kv_rows][:, res], src.self_attn.v_proj, kv_rows)
        _copy(attn.o_proj, o[res][:, q_rows], src.self_attn.o_proj, res)

        gate, up, down = (
            dense_weight(getattr(src.mlp, n)).cpu() for n in ("gate_proj", "up_proj", "down_proj")
        )
        units = _top(
            gate.abs().sum(1) + up.abs().sum(1) + down.abs().sum(0), geom.intermediate_size
        )
        _copy(layer.mlp.gate_proj, gate[units][:, res], src.mlp.gate_proj, units)
        _copy(layer.mlp.up_proj, up[units][:, res], src.mlp.up_proj, units)
        _copy(layer.mlp.down_proj, down[res][:, units], src.mlp.down_proj, res)
        for name in ("input_layernorm", "post_attention_layernorm"):
            getattr(layer, name).weight.copy_(getattr(src, name).weight.detach().cpu()[res])
    side.norm.weight.copy_(decoder.norm.weight.detach().cpu()[res])
    select = torch.zeros(geom.hidden_size, cfg.hidden_size)
    select[torch.arange(geom.hidden_size), res] = 1.0
    for lin in (side.w_in, *side.ladders):
        lin.weight.copy_(select)


def _copy(dst: torch.nn.Linear, weight: torch.Tensor, src: torch.nn.Linear, bias_rows) -> None:
    dst.weight.copy_(weight)
    if dst.bias is not None and src.bias is not None:
        dst.bias.copy_(src.bias.detach().float().cpu()[bias_rows])
