"""The Ladder / xLadder side network on a frozen Hugging Face backbone.

    from scaling import methods
    model = methods.build("ladder", "path/to/model", reduction=8)         # NF4 backbone by default
    model = methods.build("xladder", "path/to/model", delta=4, quantization="none")

Design (docs/methods.md; LST = Sung et al. 2022, QST = Zhang et al. 2024):

1. The backbone is frozen and runs once per batch under ``torch.no_grad()``; forward hooks on its decoder
   layers capture the embedding output and the raw (pre-final-norm) output h_i of each layer the side net
   reads, together with the causal/padding mask and position ids that layer received.
2. Side layers are the backbone family's own decoder-layer class, built from a copy of the backbone config
   at reduced width (:func:`scaling.arch.ladder_geometry`), with their own rotary embedding.
3. s = W_in(rms(h_in)); for each side layer j with a ladder from backbone layer c(j):
   s = μ_j·s + (1 − μ_j)·W_down_j(rms(h_c(j))), μ_j = σ(α_j / T), α_j = 0 at init (LST); then
   s = side_layer_j(s). rms(·) is parameter-free: normalising the ladder inputs tames the backbone's
   massive activations [ours; QST uses a LayerNorm].
4. Output fusion (``add``, default): h = h_{L-1} + W_up(norm(s)) with W_up = 0 at init, so step 0 equals
   the backbone; logits = frozen final norm + frozen lm_head, and the loss is the backbone's own loss
   function (identical to the other methods).
5. Generation keeps two transformers caches (:class:`LadderCache`): the backbone's own ``DynamicCache``
   and one for the side layers, built from the side config so each side layer caches like the backbone
   layer whose mask it reads (sliding windows included). Every decoding step then runs the backbone and
   the side net over the new token only, O(n) per token like any causal LM. With a cache the backbone's
   decoder layers are called directly (:meth:`LadderModel.cached_backbone_states`), with the masks
   transformers' ``create_masks_for_generate`` builds as the family's model forward would: at a small
   width a decoding step is bound by per-call overhead, and the model wrapper's (output capture, hooks,
   an unused final norm) is a sizeable share of it. For the same reason a one-token step without padding
   runs without a mask, and cos/sin come from tables computed once per generation. The uncached path
   keeps the wrapper and its hooks, so the tests that compare the two also check the direct path
   against transformers' own forward.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import DynamicCache
from transformers.masking_utils import create_masks_for_generate
from transformers.modeling_outputs import CausalLMOutputWithPast

from scaling.arch import Arch, SideGeometry
from scaling.errors import ScalingError
from scaling.methods.backbone import backbone_source, compute_dtype, load_backbone
from scaling.methods.model import MethodModel

SIDE_WEIGHTS = "side.safetensors"


def _rms(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],), eps=eps)


def rotary_table(rotary: nn.Module, length: int, dtype: torch.dtype, device):
    """The (cos, sin) that ``rotary`` (a family's rotary embedding) gives positions 0..length-1, each
    (length, head_dim), for inputs of ``dtype`` on ``device``; None for the RoPE types whose frequencies
    change with the positions seen (transformers' ``dynamic_rope_update``: dynamic, longrope). Each
    position's row is the same elementwise product and cos/sin the module computes per call."""
    kind = getattr(rotary, "rope_type", "default")
    if not isinstance(kind, str) or "dynamic" in kind or kind == "longrope":
        return None
    # The module reads only its input's dtype and device; an empty tensor, not a parameter's view, so
    # that nothing asks for gradients (FlopCounterMode's module tracker hooks inputs that need them).
    like = torch.empty(0, dtype=dtype, device=device)
    cos, sin = rotary(like, torch.arange(length, device=device)[None])
    return cos[0], sin[0]


def rotary_embeddings(rotary: nn.Module, table, x: torch.Tensor, position_ids: torch.Tensor):
    """``rotary(x, position_ids)``, looked up in ``table`` (:func:`rotary_table`) when there is one."""
    if table is None:
        return rotary(x, position_ids)
    cos, sin = table
    return cos[position_ids], sin[position_ids]


def side_config(backbone_config, geom: SideGeometry):
    """The backbone's config class at side width and depth (same family, rope and attention kernel)."""
    cfg = copy.deepcopy(backbone_config)
    cfg.hidden_size = geom.hidden_size
    cfg.intermediate_size = geom.intermediate_size
    cfg.num_attention_heads = geom.num_heads
    cfg.num_key_value_heads = geom.num_kv_heads
    cfg.head_dim = geom.head_dim
    cfg.num_hidden_layers = geom.num_layers
    if getattr(cfg, "layer_types", None):
        # A side layer attends like the backbone layer it reads (free xLadder layers like the last one).
        types = backbone_config.layer_types
        cfg.layer_types = [types[c if c is not None else -1] for c in geom.connections]
    return cfg


class SideNet(nn.Module):
    """Everything that trains: W_in, ladders, gates, side layers, side norm, W_up (and fusion gate)."""

    def __init__(self, backbone, cfg, geom: SideGeometry):
        super().__init__()
        decoder = backbone.get_decoder()
        d, ds = backbone.config.hidden_size, geom.hidden_size
        self.geom = geom
        self.config = side_config(backbone.config, geom)
        layer_cls, rotary_cls = type(decoder.layers[0]), type(decoder.rotary_emb)
        self.layers = nn.ModuleList(layer_cls(self.config, j) for j in range(geom.num_layers))
        self.rotary_emb = rotary_cls(config=self.config)
        self.norm = type(decoder.norm)(ds, eps=self.config.rms_norm_eps)
        self.w_in = nn.Linear(d, ds, bias=False)
        self.ladders = nn.ModuleList(nn.Linear(d, ds, bias=False) for _ in range(geom.num_ladders))
        self.gates = nn.Parameter(torch.zeros(geom.num_ladders))
        self.w_up = nn.Linear(ds, d, bias=False)
        self.fusion_gate = nn.Parameter(torch.zeros(d)) if cfg.fusion == "gate" else None
        self.temperature = cfg.gate_temperature
        self.fusion = cfg.fusion
        self.last_layer = backbone.config.num_hidden_layers - 1
        self._init_random(getattr(self.config, "initializer_range", 0.02))

    @torch.no_grad()
    def _init_random(self, std: float) -> None:
        # The family's own init (HF _init_weights): N(0, initializer_range) weights, zero biases.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                module.weight.normal_(0.0, std)
                if module.bias is not None:
                    module.bias.zero_()
        if self.fusion == "add":
            self.w_up.weight.zero_()  # step 0 reproduces the backbone exactly

    def forward(
        self,
        states: dict,
        position_ids: torch.Tensor,
        past_key_values: DynamicCache | None = None,
        rotary=None,
    ) -> torch.Tensor:
        """W_up(norm(s)) for the positions in ``states``; with ``past_key_values`` (the side layers'
        cache, side layer j at index j) each side layer attends to the cached earlier positions too.
        ``rotary``: a :func:`rotary_table` of the side rotary embedding, to look positions up in."""
        geom = self.geom
        dtype = self.w_in.weight.dtype
        s = self.w_in(_rms(states["hidden"][geom.input_layer].to(dtype)))
        position_embeddings = rotary_embeddings(self.rotary_emb, rotary, s, position_ids)
        mu = torch.sigmoid(self.gates / self.temperature)
        # Each gate and its complement as 0-d tensors, two ops for all ladders (the same values as
        # indexing per ladder, which a decoding step would pay for at every ladder).
        gates = zip(self.ladders, mu.unbind(), (1 - mu).unbind(), strict=True)
        for c, layer in zip(geom.connections, self.layers, strict=True):
            if c is not None:
                ladder, m, m_rest = next(gates)
                s = m * s + m_rest * ladder(_rms(states["hidden"][c].to(dtype)))
            mask = states["mask"][c if c is not None else self.last_layer]
            out = layer(
                s,
                attention_mask=mask,
                position_ids=position_ids,
                position_embeddings=position_embeddings,
                past_key_values=past_key_values,
                use_cache=past_key_values is not None,
            )
            s = out[0] if isinstance(out, tuple) else out
        return self.w_up(self.norm(s))

    def fuse(self, last: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        if self.fusion == "add":
            return last + up
        if self.fusion == "replace":
            return up
        beta = torch.sigmoid(self.fusion_gate / self.temperature)  # QST-style per-dimension mix
        return beta * last + (1 - beta) * up


class LadderCache:
    """The KV caches of a side-net model during generation: ``backbone`` (the backbone's own
    ``DynamicCache``) and ``side`` (a ``DynamicCache`` over the side layers). Both hold the same
    positions, so the attention mask the backbone builds for layer c fits the side layer reading it.

    Why not ``GenerationMixin.generate``: it drives one ``PreTrainedModel`` whose forward owns a single
    cache; here two models share each step (the side net reads the backbone's hidden states through
    hooks), so :meth:`LadderModel.generate` runs the decoding loop itself over these two caches."""

    def __init__(self, backbone_config, side_config) -> None:
        self.backbone = DynamicCache(config=backbone_config)
        self.side = DynamicCache(config=side_config)
        # (backbone, side) rotary tables (:func:`rotary_table`) that :meth:`LadderModel.generate`
        # computes once for the positions it will decode, instead of cos/sin at every step.
        self.rotary = (None, None)

    def get_seq_length(self) -> int:
        return self.backbone.get_seq_length()


class LadderModel(MethodModel):
    """A frozen backbone plus a :class:`SideNet` (Ladder or xLadder, depending on the geometry)."""

    def __init__(self, backbone, cfg, arch: Arch):
        super().__init__(cfg, backbone_source(backbone))
        backbone.requires_grad_(False)
        backbone.eval()
        self.backbone = backbone
        self.arch = arch
        geom = cfg.geometry(arch)
        device = next(backbone.parameters()).device
        # The side net trains in the compute dtype (bf16 on CUDA), as QST casts its side modules.
        self.side = SideNet(backbone, cfg, geom).to(
            device=device, dtype=compute_dtype(cfg.compute_dtype)
        )
        self._states: dict | None = None
        # Looked up once: ``get_decoder``/``get_output_embeddings`` cost tens of µs a call in
        # transformers 5, a visible share of a decoding step. A tuple, so that nn.Module does not
        # register the decoder a second time.
        self._parts = (backbone.get_decoder(), backbone.get_output_embeddings())
        # Keep only the hidden states the side net reads: its ladders, its input, and the last layer
        # (fusion and the free layers' masks); every other layer's output is dropped as it goes.
        self.read_layers = sorted(
            {c for c in geom.connections if c is not None} | {geom.input_layer, arch.num_layers - 1}
        )

    @classmethod
    def build(cls, backbone, cfg) -> LadderModel:
        model = load_backbone(backbone, cfg)
        arch = Arch.from_hf_config(model.config.to_dict(), source=backbone_source(model))
        ladder = cls(model, cfg, arch)
        if cfg.init == "pruned":
            from scaling.methods.pruning import init_side_from_backbone

            init_side_from_backbone(ladder.side, model)
        return ladder.train()

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # frozen: no dropout, ever
        return self

    # -- hidden-state capture ----------------------------------------------------------------------
    def _grab_input(self, module, args, kwargs):
        if self._states is not None:
            h = args[0] if args else kwargs["hidden_states"]
            if -1 in self.read_layers:  # the embedding output
                self._states["hidden"][-1] = h
            self._states["mask"][-1] = kwargs.get("attention_mask")
            self._states["position_ids"] = kwargs.get("position_ids")

    def _grab(self, index: int):
        def hook(module, args, kwargs, output):
            if self._states is not None:
                self._states["hidden"][index] = output[0] if isinstance(output, tuple) else output
                self._states["mask"][index] = kwargs.get("attention_mask")

        return hook

    def backbone_states(self, input_ids, attention_mask=None, position_ids=None) -> dict:
        """Run the frozen backbone once (no autograd) and return the captured states.

        ``hidden[-1]`` is the embedding output, ``hidden[i]`` the raw output of decoder layer i (before
        the final norm), for each ``i`` in :attr:`read_layers`; ``mask[i]`` the attention mask layer i
        received (``mask[-1]`` layer 0's). Over a cache: :meth:`cached_backbone_states`.
        """
        # Hooks live only for this call: a layer with hooks takes torch's slower call path, which the
        # cached path (calling the layers itself) should not pay.
        layers = self._parts[0].layers
        hooks = [layers[0].register_forward_pre_hook(self._grab_input, with_kwargs=True)]
        hooks += [
            layers[i].register_forward_hook(self._grab(i), with_kwargs=True)
            for i in self.read_layers
            if i >= 0
        ]
        self._states = {"hidden": {}, "mask": {}, "position_ids": None}
        try:
            with torch.no_grad():
                self._parts[0](
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    position_ids=position_ids,
                    use_cache=False,
                )
            return self._states
        finally:
            self._states = None
            for hook in hooks:
                hook.remove()

    def cached_backbone_states(
        self, input_ids, attention_mask, position_ids, cache, rotary=None
    ) -> dict:
        """:meth:`backbone_states` over a cache (``cache``: the backbone's ``DynamicCache``), calling the
        decoder layers directly: what the family's model forward does (embed, masks, rotary, layers),
        without its per-call wrapper, hooks and final norm. The masks come from transformers'
        ``create_masks_for_generate``, which builds them as the Llama / Mistral / Qwen2 forwards do
        (one causal or sliding-window mask, or one per layer type). ``rotary``: a :func:`rotary_table`
        of the backbone's rotary embedding, to look positions up in."""
        decoder = self._parts[0]
        h = decoder.embed_tokens(input_ids)
        if position_ids is None:  # as the model forward: the positions after the cached ones
            position_ids = torch.arange(h.shape[1], device=h.device) + cache.get_seq_length()
            position_ids = position_ids.unsqueeze(0)
        if h.shape[1] == 1 and (attention_mask is None or bool(attention_mask.all())):
            # One new token and no padding: it attends to every cached position (a sliding-window
            # layer's cache keeps only its window: new_cache builds both caches from the configs the
            # layers attend by), so no mask is needed; transformers would build one per step, an
            # all-true one for the sliding layers once their window is full.
            masks = None
        else:
            masks = create_masks_for_generate(
                config=decoder.config,
                inputs_embeds=h,
                attention_mask=attention_mask,
                past_key_values=cache,
                position_ids=position_ids,
            )
        types = getattr(decoder.config, "layer_types", None)
        position_embeddings = rotary_embeddings(decoder.rotary_emb, rotary, h, position_ids)
        hidden, mask, read = {}, {}, self.read_layers
        if -1 in read:
            hidden[-1] = h
        # The model forward iterates ``layers[:num_hidden_layers]``; slicing a ModuleList builds a new
        # one (tens of µs a step), and the two are the same list for these families.
        for i, layer in enumerate(decoder.layers):
            m = masks[types[i]] if isinstance(masks, dict) else masks
            if i == 0:
                mask[-1] = m
            h = layer(
                h,
                attention_mask=m,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=True,
                position_embeddings=position_embeddings,
            )
            if i in read:
                hidden[i], mask[i] = h, m
        return {"hidden": hidden, "mask": mask, "position_ids": position_ids}

    def new_cache(self) -> LadderCache:
        """Empty caches for :meth:`forward` (``past_key_values=``) and :meth:`generate`."""
        return LadderCache(self.backbone.config, self.side.config)

    def forward(
        self, input_ids=None, attention_mask=None, labels=None, position_ids=None,
        past_key_values: LadderCache | None = None, **kwargs,
    ):  # fmt: skip
        """Logits (and the loss with ``labels``). With ``past_key_values`` (:meth:`new_cache`) only
        ``input_ids``' positions run, attending to the cached ones, and the caches are extended;
        ``attention_mask`` then covers cached and new positions, as in transformers."""
        if kwargs.get("inputs_embeds") is not None:
            raise ScalingError("Ladder models take input_ids only (no inputs_embeds)")
        if past_key_values is not None and not isinstance(past_key_values, LadderCache):
            raise ScalingError("a Ladder model's cache is a LadderCache (model.new_cache())")
        head = self.output_head()
        logits = head(self.hidden_states(input_ids, attention_mask, position_ids, past_key_values))
        loss = None
        if labels is not None:
            loss = self.backbone.loss_function(
                logits=logits, labels=labels, vocab_size=self.backbone.config.vocab_size
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=past_key_values)

    def hidden_states(
        self, input_ids, attention_mask=None, position_ids=None, past_key_values=None
    ):
        cache = past_key_values
        if cache is None:
            states = self.backbone_states(input_ids, attention_mask, position_ids)
        else:
            with torch.no_grad():
                states = self.cached_backbone_states(
                    input_ids, attention_mask, position_ids, cache.backbone, cache.rotary[0]
                )
        pos = states["position_ids"]
        if pos is None:
            pos = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        if cache is None:
            up = self.side(states, pos)
        else:
            up = self.side(states, pos, cache.side, cache.rotary[1])
        last = states["hidden"][self.arch.num_layers - 1]
        hidden = self.side.fuse(last.to(up.dtype), up)
        del states, last  # the backbone's states are not needed past this point
        decoder, head = self._parts
        return decoder.norm(hidden.to(head.weight.dtype))

    def output_head(self) -> nn.Linear:
        return self._parts[1]

    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 20,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        stopping_criteria=None,
    ) -> torch.Tensor:
        """Greedy or sampled decoding; prompt and new tokens, (batch, prompt + new). Left padding works.

        With ``use_cache`` (default) the prompt runs once and each step feeds only the new token through
        the backbone and the side net (:class:`LadderCache`): O(n) per token. ``use_cache=False``
        re-runs the whole prefix at every step (O(n²)): the reference the cached path is tested
        against, token for token. Rows that emitted ``eos_token_id``, or that any of
        ``stopping_criteria`` (transformers' ``StoppingCriteria``: ``(ids, scores) → bool per row``)
        marks done, continue with ``pad_token_id``; decoding ends when every row is done."""
        if max_new_tokens < 0:
            raise ScalingError(f"max_new_tokens must be ≥ 0; got {max_new_tokens}")
        with torch.inference_mode():  # cheaper per op than no_grad: no version counters, no views
            batch, length = input_ids.shape
            pad = pad_token_id if pad_token_id is not None else (eos_token_id or 0)
            # Token ids and attention mask live in buffers of the final length, written one column
            # per step, instead of growing by torch.cat; each step reads a view of the first
            # ``length``.
            ids = input_ids.new_full((batch, length + max_new_tokens), pad)
            ids[:, :length] = input_ids
            mask = torch.zeros_like(ids)
            mask[:, :length] = 1 if attention_mask is None else attention_mask
            done = torch.zeros(batch, dtype=torch.bool, device=ids.device)
            cache = self.new_cache() if use_cache else None
            head = self.output_head()
            if use_cache:  # cos/sin of every position this generation reaches, computed once
                decoder, end = self._parts[0], length + max_new_tokens
                embed, w_in = decoder.embed_tokens.weight, self.side.w_in.weight
                cache.rotary = (
                    rotary_table(decoder.rotary_emb, end, embed.dtype, embed.device),
                    rotary_table(self.side.rotary_emb, end, w_in.dtype, w_in.device),
                )
            position_ids = (mask[:, :length].cumsum(-1) - 1).clamp(min=0)  # the prompt's
            seen = mask[:, :length].sum(-1, keepdim=True)  # non-pad positions so far, per row
            feed = input_ids
            for _ in range(max_new_tokens):
                hidden = self.hidden_states(feed, mask[:, :length], position_ids, cache)
                logits = head(hidden[:, -1]).float()  # only the last position is decoded
                if do_sample:
                    logits = logits / max(temperature, 1e-6)
                    if top_k:
                        kth = torch.topk(logits, top_k).values[:, -1:]
                        logits = logits.masked_fill(logits < kth, -math.inf)
                    nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)
                else:
                    nxt = logits.argmax(-1)
                nxt.masked_fill_(done, pad)
                live = ~done
                ids[:, length] = nxt
                mask[:, length] = live
                seen += live[:, None]
                length += 1
                if use_cache:  # the new token only, at its position (the non-pad ones before it)
                    feed, position_ids = ids[:, length - 1 : length], (seen - 1).clamp(min=0)
                else:  # the whole prefix again
                    feed = ids[:, :length]
                    position_ids = (mask[:, :length].cumsum(-1) - 1).clamp(min=0)
                if eos_token_id is None and not stopping_criteria:
                    continue  # no row can finish early
                if eos_token_id is not None:
                    done |= nxt == eos_token_id
                for criterion in stopping_criteria or ():
                    done |= criterion(ids[:, :length], logits).to(done.device)
                if done.all():
                    break
            out = ids[:, :length]
        return out.clone()  # a normal tensor again: callers may edit it in place

    def save_weights(self, directory) -> None:
        state = {k: v.detach().contiguous().cpu() for k, v in self.side.state_dict().items()}
        save_file(state, str(directory / SIDE_WEIGHTS), metadata={"format": "pt"})

    def load_weights(self, directory) -> None:
        path = directory / SIDE_WEIGHTS
        if not path.is_file():
            raise ScalingError(f"missing {path}")
        device = self.side.w_in.weight.device
        self.side.load_state_dict({k: v.to(device) for k, v in load_file(str(path)).items()})
