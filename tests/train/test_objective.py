"""The training objective and what runs it: the memory-efficient loss equals the plain one (values and
gradients), the optimizers the method configs name, the precision trainable modules train in, and the
states a Ladder keeps."""

from __future__ import annotations

import pytest
import torch

from scaling import methods
from scaling.train.objective import loss_kernel, loss_sum, make_optimizer

OPT = dict(lr=1e-3, betas=[0.9, 0.999], weight_decay=0.0)


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize(("method", "dials"), [("full", {}), ("lora", {"rank": 4}),
                                               ("ladder", {"reduction": 4, "quantization": "none"})])  # fmt: skip
def test_efficient_loss_equals_plain(tiny_models, family, method, dials):
    """Same summed loss to 1e-5 relative and the same gradients (full fine-tuning: the head's too),
    with some positions unlabelled (-100) and two sequences (the shifted copy path)."""
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[0, :7] = -100
    out = {}
    for loss in ("plain", "efficient"):
        torch.manual_seed(0)
        model = methods.build(method, tiny_models[family], **dials)
        value = loss_sum(model, ids, labels, loss)
        value.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        out[loss] = (value.item(), grads)
    (plain, gp), (eff, ge) = out["plain"], out["efficient"]
    assert eff == pytest.approx(plain, rel=1e-5)
    assert gp.keys() == ge.keys() and gp
    for name in gp:
        torch.testing.assert_close(ge[name], gp[name], rtol=1e-4, atol=1e-6, msg=name)


def test_efficient_loss_runs_chunked_on_cpu():
    assert loss_kernel("efficient", torch.device("cpu")) == "chunked"
    assert loss_kernel("plain", torch.device("cpu")) == "plain"


def test_efficient_loss_without_gradients_is_the_plain_loss(tiny_llama):
    model = methods.build("ladder", tiny_llama, reduction=4)
    ids = torch.randint(0, 300, (3, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert loss_sum(model, ids, ids, "efficient").item() == pytest.approx(
            loss_sum(model, ids, ids, "plain").item(), rel=1e-5
        )


def test_qlora_defaults_are_the_reference():
    cfg = methods.config("qlora")
    assert (cfg.quantization, cfg.prepare_kbit, cfg.optimizer) == ("nf4", True, "paged_adamw_32bit")
    assert methods.config("lora").optimizer == "adamw" and not methods.config("lora").prepare_kbit
    assert methods.config("qlora", prepare_kbit=False, optimizer="adamw").optimizer == "adamw"


def test_optimizers_off_cuda():
    p = [torch.nn.Parameter(torch.zeros(4, 4))]
    opt, used = make_optimizer(p, OPT, "paged_adamw_32bit")  # paging needs CUDA: torch's AdamW
    assert used == "adamw" and isinstance(opt, torch.optim.AdamW)
    import bitsandbytes as bnb

    opt, used = make_optimizer(p, OPT, "adamw_8bit")
    assert used == "adamw_8bit" and isinstance(opt, bnb.optim.AdamW8bit)


@pytest.mark.parametrize(("method", "dials"), [("ladder", {"reduction": 4}), ("qlora", {"rank": 4}),
                                               ("lora", {"rank": 4})])  # fmt: skip
def test_trainable_modules_train_in_the_compute_dtype(tiny_llama, method, dials):
    """bf16 compute: the side net and the LoRA adapters are bf16 (as QST and QLoRA's reference cast
    them), so their activations and gradients are bf16 too; after prepare_kbit the norms stay fp32."""
    model = methods.build(method, tiny_llama, **dials, compute_dtype="bfloat16")
    dtypes = {p.dtype for p in model.parameters() if p.requires_grad}
    assert dtypes == {torch.bfloat16}
    ids = torch.randint(0, 300, (1, 12), generator=torch.Generator().manual_seed(0))
    loss_sum(model, ids, ids).backward()
    assert {p.grad.dtype for p in model.parameters() if p.requires_grad} == {torch.bfloat16}
    if method == "qlora":
        norms = {p.dtype for n, p in model.named_parameters() if "norm" in n}
        assert norms == {torch.float32}
        assert model.output_head().weight.dtype == torch.bfloat16


def test_ladder_keeps_only_the_states_it_reads(tiny_llama):
    """xLadder δ=1 on 3 layers reads layer 1's output (its input), layer 2's (ladder and fusion)."""
    model = methods.build("xladder", tiny_llama, reduction=4, delta=1)
    assert model.read_layers == [1, 2]
    ids = torch.randint(0, 300, (1, 8), generator=torch.Generator().manual_seed(0))
    states = model.backbone_states(ids)
    assert sorted(states["hidden"]) == [1, 2]
    ladder = methods.build("ladder", tiny_llama, reduction=4, side_layers=1)
    assert ladder.read_layers == [-1, 2] and sorted(ladder.backbone_states(ids)["hidden"]) == [
        -1,
        2,
    ]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="liger-kernel's fused loss needs CUDA")
def test_fused_loss_on_cuda_equals_plain(tiny_llama):
    pytest.importorskip("liger_kernel", reason="liger-kernel is not installed")
    model = methods.build("ladder", tiny_llama, reduction=4, quantization="none")
    assert loss_kernel("efficient", next(model.parameters()).device) == "liger"
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(0)).cuda()
    values = [loss_sum(model, ids, ids, loss).item() for loss in ("plain", "efficient")]
    assert values[1] == pytest.approx(values[0], rel=1e-3)  # bf16 compute: the kernels round apart
