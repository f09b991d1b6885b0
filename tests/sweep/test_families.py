"""A backbone family as the size axis: expansion in the spec, planning across it, and ``--from-fit``
picking the members nearest N*(C) per budget."""

from __future__ import annotations

import pytest

from scaling import flops, sweep
from scaling.arch import TINY_WIDTHS, family_members, resolve_arch, tiny_config
from scaling.errors import ScalingError
from scaling.sweep.spec import GridSpec

LADDER = {"ladder": {"reduction": 4}, "qlora": {"rank": 8}}


def family_spec(**over):
    base = dict(backbones=["family:tiny"], methods=["ladder", "qlora"], method=LADDER,
                seq_len=128, batch_tokens=256, micro_batch_size=2,
                constraints={"min_steps": 20, "tolerance": 0.03})  # fmt: skip
    return sweep.load_spec("sweeps/quickstart.toml", **(base | over))


def backbone_sizes(spec):
    return {ref: flops.backbone_params(resolve_arch_inline(ref, cfg)).total
            for ref, cfg in spec.backbone_refs().items()}  # fmt: skip


def resolve_arch_inline(ref, cfg):
    from scaling.arch import Arch

    return Arch.from_hf_config(cfg, source=ref)


def test_family_expands_to_every_member_smallest_first():
    spec = family_spec()
    refs = spec.backbone_refs()
    assert list(refs) == [f"runs/backbones/tiny-llama-{w}" for w in TINY_WIDTHS]
    assert all(cfg == tiny_config(int(r.rsplit("-", 1)[1])) for r, cfg in refs.items())
    sizes = list(backbone_sizes(spec).values())
    assert sizes == sorted(sizes) and len(set(sizes)) == 6
    qwen = [ref for ref, _ in family_members("qwen2.5")]
    assert qwen[0] == "qwen2.5-0.5b" and qwen[-1] == "qwen2.5-14b" and len(qwen) == 5
    assert [r for r, _ in family_members("llama-3")] == [
        "llama-3.2-1b",
        "llama-3.2-3b",
        "llama-3.1-8b",
    ]
    assert resolve_arch("qwen2.5-14b").hidden_size == 5120


@pytest.mark.parametrize(
    "backbones, message",
    [
        (["family:gpt"], "unknown backbone family 'gpt'; families: tiny, qwen2.5, llama-3"),
        (["family:tiny", "runs/backbones/tiny-llama-64"], "lists a backbone twice"),
    ],
)
def test_bad_family_entries_are_spec_errors(backbones, message):
    with pytest.raises(ScalingError, match=message):
        family_spec(backbones=backbones)


def test_plan_across_the_family_before_the_backbones_exist():
    """Inline configs plan a family that has not been pre-trained yet; constraints cut a diagonal
    band (large backbones drop at small budgets: too few steps)."""
    spec = family_spec()
    plan = sweep.build_plan(spec, [1e10, 3e11])
    on = {(r.budget, r.backbone, r.method) for r in plan.runs}
    small, big = "runs/backbones/tiny-llama-32", "runs/backbones/tiny-llama-192"
    assert (1e10, small, "ladder") in on and (1e10, big, "ladder") not in on
    assert (3e11, big, "ladder") in on and (3e11, small, "qlora") not in on
    why = {(d.budget, d.backbone, d.method): d.reason for d in plan.dropped}
    assert "min_steps" in why[(1e10, big, "ladder")]
    assert "epochs > max_epochs" in why[(3e11, small, "qlora")]
    # With one fixed dial per backbone, the backbones are the grid: no per-backbone "1 point" noise.
    assert not any("only 1 grid point" in w for w in plan.warnings)
    sizes = backbone_sizes(spec)
    assert {r.backbone_params for r in plan.runs if r.budget == 3e11} == set(sizes.values()) - {
        sizes[small]  # a full epoch's worth of tokens is not enough for the smallest at 3e11
    }


def test_from_fit_picks_the_members_nearest_n_star():
    spec = family_spec()
    sizes = backbone_sizes(spec)
    mid = sizes["runs/backbones/tiny-llama-64"]
    budgets = [3e10, 3e11]
    # N*(C) = A·C^a through the 64-wide backbone at 3e10 and ×10^0.5 per decade of C.
    a = 0.5
    fit = {"methods": {"ladder": {"optimal_params": {"A": mid / budgets[0] ** a, "a": a,
                                                      "n": "backbone"}}}}  # fmt: skip
    plan = sweep.build_plan(spec.replace(grid=GridSpec(points=3, half_width=0.35)), budgets,
                            from_fit=fit)  # fmt: skip
    chosen = {b: {r.backbone for r in plan.runs if r.method == "ladder" and r.budget == b}
              for b in budgets}  # fmt: skip
    # Targets ×10^±0.35 around N*: 1.1e5, 2.5e5, 5.6e5 at 3e10; 3.5e5, 7.9e5, 1.8e6 at 3e11.
    member = lambda *ws: {f"runs/backbones/tiny-llama-{w}" for w in ws}  # noqa: E731
    assert chosen[budgets[0]] == member(48, 64, 96)
    assert chosen[budgets[1]] == member(64, 128, 192)
    assert any(w.startswith("3e10 ladder across backbones: 1 point(s) below and 1 above")
               for w in plan.warnings)  # fmt: skip
    # qlora has no law: its runs are the whole family's, as without a fit, and it is said so.
    unfitted = sweep.build_plan(spec, budgets)
    assert [r.run_id for r in plan.runs if r.method == "qlora"] == [
        r.run_id for r in unfitted.runs if r.method == "qlora"
    ]
    assert "qlora: the fit has no entry for it; its grid is not re-centred" in plan.warnings


def test_from_fit_says_when_the_family_has_no_member_near_n_star():
    spec = family_spec()
    top = max(backbone_sizes(spec).values())
    fit = {"methods": {"ladder": {"optimal_params": {"A": 10 * top / 1e11, "a": 1.0,
                                                      "n": "backbone"}}}}  # fmt: skip
    plan = sweep.build_plan(spec, [1e11], from_fit=fit)
    note = [w for w in plan.warnings if w.startswith("1e11 ladder: N*(C)=")]
    assert len(note) == 1 and "outside the family" in note[0] and "add larger backbones" in note[0]
    assert {r.backbone for r in plan.runs if r.method == "ladder"} == {
        "runs/backbones/tiny-llama-192"
    }


def test_backbone_law_never_sizes_a_dial_on_one_backbone():
    ref = "runs/backbones/tiny-llama-128"
    spec = sweep.load_spec("sweeps/quickstart.toml", backbones=[ref],
                           backbone_config={ref: tiny_config(128)},
                           method={"ladder": {"reduction": [2, 4, 8]}})  # fmt: skip
    before = sweep.build_plan(spec)
    fit = {"methods": {"ladder": {"optimal_params": {"A": 1e-3, "a": 0.5, "n": "backbone"}}}}
    after = sweep.build_plan(spec, from_fit=fit)
    assert [r.run_id for r in after.runs if r.method == "ladder"] == [
        r.run_id for r in before.runs if r.method == "ladder"
    ]
    assert any("counts backbone parameters, but this sweep has one backbone" in w
               for w in after.warnings)  # fmt: skip
