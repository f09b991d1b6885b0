"""Task evaluations (issue 18): graded as documented, their FLOPs equal to what FlopCounterMode counts,
logged as ``task/<name>`` rows of metrics.parquet and summarised in result.json, each once across a
resume; bad evaluation tables and files are one-line errors before anything is written."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import polars as pl
import pytest
import torch
from conftest import make_tiny
from torch.utils.flop_counter import FlopCounterMode

from scaling import cli, flops, methods, sweep
from scaling.arch import resolve_arch
from scaling.errors import ScalingError
from scaling.runspec import check_evaluations, open_run
from scaling.train import tasks, train
from scaling.train.tokenizers import load_tokenizer, save_byte_tokenizer

SEQ, BATCH = 32, 64
ARITH = {"name": "arith", "examples": 5, "max_new_tokens": 10, "batch_size": 3}


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tasks") / "tiny-llama"
    make_tiny("llama", path)
    save_byte_tokenizer(path)
    return str(path)


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def plan_run(root: Path, backbone: str, method: str, steps: int, evaluations, **dials) -> Path:
    cfg = methods.config(method, **dials)
    fpt = flops.cost(resolve_arch(backbone), cfg, SEQ).train_flops_per_token
    spec = sweep.load_spec(
        None, name="t", backbones=[backbone], methods=[method], method={method: dials},
        seq_len=SEQ, batch_tokens=BATCH, micro_batch_size=1, budgets=[steps * BATCH * fpt],
        dataset={"eval_sequences": 4, "difficulty": 2}, optimizer={"lr_by_method": {}, "lr": 3e-3},
        constraints={"min_steps": 1}, train={"log_every": 1, "eval_every": 3},
        evaluations=evaluations,
    )  # fmt: skip
    p = sweep.build_plan(spec)
    sweep.write(p, root)
    return root / "runs" / p.runs[0].run_id


# --------------------------------------------------------------------------------------------------
# Grading and FLOPs


def test_arithmetic_grading_reads_the_answer_after_the_chain_of_thought():
    text = "2+9=11, write 1, carry 1\n4+0+1=5, write 5\nA: 51\n"
    assert tasks.grade_arithmetic(text, "51") == (
        True,
        "2+9=11, write 1, carry 1\n4+0+1=5, write 5\n",
    )
    assert tasks.grade_arithmetic(text, "52")[0] is False
    assert tasks.grade_arithmetic("2+9=11\n2+9=11", "11") == (False, "2+9=11\n2+9=11")
    assert tasks.grade_arithmetic("A: -3\n", "-3") == (True, "")


@pytest.mark.parametrize(
    ("method", "dials"),
    [("ladder", {"reduction": 4}), ("xladder", {"reduction": 4, "delta": 1}), ("lora", {"rank": 4}),
     ("full", {})],
)  # fmt: skip
def test_eval_flops_are_what_the_evaluation_executes(backbone, tmp_path, method, dials):
    # Eager attention and no quantisation: FlopCounterMode sees every matmul then.
    model = methods.build(
        method, backbone, quantization="none", attn_implementation="eager", **dials
    )
    path = write_jsonl(tmp_path / "mc.jsonl", [
        {"prompt": "Q: 1+1=\n", "options": ["A: 2\n", "A: 3\n", "A: 11\n"], "answer": 0},
        {"prompt": "Q: 2+5=\n", "options": ["A: 25\n", "A: 7\n"], "answer": "A: 7\n"},
    ])  # fmt: skip
    evals = tasks.prepare(
        [ARITH, {"name": "mc", "task": "choice", "path": path, "batch_size": 2}],
        load_tokenizer(backbone),
        {"difficulty": 2},
    )
    for ev in evals:
        with FlopCounterMode(display=False) as counter:
            result = ev.run(model)
        assert result.eval_flops == counter.get_total_flops() > 0
    assert model.training  # evaluation leaves the model as it found it


def test_exact_match_and_choice_are_graded(backbone, tmp_path):
    model = methods.build("ladder", backbone, reduction=4, quantization="none").eval()
    tokenizer = load_tokenizer(backbone)
    prompts = [f"Q: {a}+{a}=\n" for a in range(4)]
    probe = write_jsonl(tmp_path / "p.jsonl", [{"prompt": p, "answer": "?"} for p in prompts])
    (ev,) = tasks.prepare([{"name": "em", "task": "exact_match", "path": probe,
                            "max_new_tokens": 6}], tokenizer, {})  # fmt: skip
    texts, _, _ = ev.generate(model, tasks.model_arch(model), model.method_config)
    said = [t.split("\n")[0].strip() for t in texts]
    # Two answers are what the model says greedily, two are not: accuracy 1/2.
    rows = [{"prompt": p, "answer": s if i < 2 else s + "#"} for i, (p, s) in
            enumerate(zip(prompts, said, strict=True))]  # fmt: skip
    (ev,) = tasks.prepare([{"name": "em", "task": "exact_match", "max_new_tokens": 6,
                            "path": write_jsonl(tmp_path / "em.jsonl", rows)}], tokenizer, {})  # fmt: skip
    result = ev.run(model)
    assert result.accuracy == 0.5 and result.examples == 4
    assert 0 < result.gen_tokens <= 6

    # Choice: the option with the highest summed log-likelihood, from the model's own logits.
    options = [["A: 2\n", "A: 3\n", "A: 11\n"], ["yes", "no"], ["A: 5\n", "A: 05\n"]]
    rows = [
        {"prompt": p, "options": o, "answer": 0} for p, o in zip(prompts, options, strict=False)
    ]
    (ev,) = tasks.prepare([{"name": "mc", "task": "choice", "batch_size": 2,
                            "path": write_jsonl(tmp_path / "mc.jsonl", rows)}], tokenizer, {})  # fmt: skip
    want_hits, right_nll, right_tokens = [], 0.0, 0
    for e in ev.examples:
        lls = []
        for o in e.options:
            ids = torch.tensor([e.prompt + o])
            with torch.no_grad():
                logp = model(ids).logits[0, :-1].float().log_softmax(-1)
            lls.append(sum(logp[len(e.prompt) - 1 + k, t].item() for k, t in enumerate(o)))
        want_hits.append(max(range(len(lls)), key=lls.__getitem__) == 0)
        right_nll -= lls[0]
        right_tokens += len(e.options[0])
    result = ev.run(model)
    assert result.accuracy == pytest.approx(sum(want_hits) / 3)
    assert result.loss == pytest.approx(right_nll / right_tokens, rel=1e-5)
    assert result.gen_tokens is None


def test_arithmetic_examples_are_not_the_training_examples(backbone):
    (ev,) = tasks.prepare([ARITH | {"examples": 50}], load_tokenizer(backbone), {"difficulty": 2})
    from scaling.train.synthetic import synthetic_arithmetic

    train_prompts = {e["prompt"] for e in synthetic_arithmetic(50, difficulty=2, seed=0)}
    tok = load_tokenizer(backbone)
    eval_prompts = [tok.decode(e.prompt, skip_special_tokens=True) for e in ev.examples]
    assert len(set(eval_prompts) - train_prompts) > 25  # seed 1, not the dataset's seed 0
    assert all(tok.decode(e.reference[-1:]) == tok.eos_token for e in ev.examples)


# --------------------------------------------------------------------------------------------------
# In the run


def test_a_run_logs_its_evaluations_and_summarises_them(tmp_path, backbone):
    mc = write_jsonl(tmp_path / "mc.jsonl", [
        {"prompt": "Q: 1+1=\n", "options": ["A: 2\n", "A: 3\n"], "answer": 0}])  # fmt: skip
    run = plan_run(tmp_path / "s", backbone, "ladder", 7, [ARITH, {"name": "mc", "task": "choice",
                   "path": mc, "every": 2}], reduction=8, quantization="none")  # fmt: skip
    assert open_run(run).spec["evaluations"][0]["max_new_tokens"] == 10  # defaults filled in
    result = train(run)
    assert result["status"] == "success"
    m = pl.read_parquet(run / "metrics.parquet")
    arith = m.filter(pl.col("kind") == "task/arith")
    assert arith["step"].to_list() == [3, 6, 7]  # with the held-out loss evaluations, and the last
    assert m.filter(pl.col("kind") == "task/mc")["step"].to_list() == [2, 4, 6, 7]
    assert arith["examples"].to_list() == [5, 5, 5]
    assert arith["accuracy"].is_between(0, 1).all() and arith["gen_tokens"].is_between(0, 10).all()
    train_flops = m.filter(pl.col("kind") == "train").sort("step")
    assert (
        arith["flops"].to_list()
        == train_flops.filter(pl.col("step").is_in([3, 6, 7]))["flops"].to_list()
    )
    assert result["flops"] == 7 * BATCH * open_run(run).spec["flops_per_token"]  # training only
    tasks_ = result["tasks"]
    assert tasks_["arith"]["step"] == 7 and tasks_["arith"]["evaluations"] == 3
    assert tasks_["arith"]["accuracy"] == arith["accuracy"][-1]
    assert tasks_["mc"]["gen_tokens"] is None
    task_rows = m.filter(pl.col("kind").str.starts_with("task/"))
    assert result["eval_flops"] == pytest.approx(task_rows["eval_flops"].sum())
    assert m.filter(pl.col("kind") == "train")["accuracy"].null_count() == 7


def _kill_at(step: int):
    def on_step(s: int) -> None:
        if s == step:
            os.kill(os.getpid(), signal.SIGTERM)

    return on_step


def test_a_resumed_run_logs_each_evaluation_once(tmp_path, backbone):
    evals = [ARITH | {"every": 2}]
    ref = plan_run(tmp_path / "a", backbone, "xladder", 8, evals, delta=1, quantization="none")
    run = plan_run(tmp_path / "b", backbone, "xladder", 8, evals, delta=1, quantization="none")
    uninterrupted = train(ref)
    assert train(run, on_step=_kill_at(4))["status"] == "cancelled"
    # A hard kill past the checkpoint would leave a task row no checkpoint covers: it is redone once.
    (segment,) = (run / "metrics.segments").iterdir()
    for path in (segment, run / "metrics.parquet"):
        m = pl.read_parquet(path)
        late = m.filter(pl.col("kind") == "task/arith").tail(1).with_columns(pl.col("step") + 2)
        pl.concat([m, late]).write_parquet(path)
    resumed = train(run)
    assert resumed["status"] == "success"
    a, b = (pl.read_parquet(r / "metrics.parquet").filter(pl.col("kind") == "task/arith")
            for r in (ref, run))  # fmt: skip
    assert b["step"].to_list() == a["step"].to_list() == [2, 4, 6, 8]
    assert b["accuracy"].to_list() == a["accuracy"].to_list()
    assert b["loss"].to_list() == pytest.approx(a["loss"].to_list(), rel=1e-6)
    assert resumed["tasks"]["arith"]["evaluations"] == 4
    assert resumed["eval_flops"] == pytest.approx(uninterrupted["eval_flops"])


def test_metrics_written_before_task_columns_still_read(tmp_path, backbone):
    from scaling.train.records import TASK_COLUMNS, MetricsLog

    run = plan_run(tmp_path / "s", backbone, "ladder", 2, [], reduction=8, quantization="none")
    assert "evaluations" not in json.loads((run / "spec.json").read_text())  # as before
    train(run)
    table = run / "metrics.parquet"
    pl.read_parquet(table).drop(TASK_COLUMNS).write_parquet(table)
    log = MetricsLog(run)
    log.open()
    assert log.earlier[0][2]["accuracy"].null_count() == len(log.earlier[0][2])


# --------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("evaluations", "message"),
    [
        ([{"name": "a", "bogus": 1}], "unknown key 'evaluation.bogus'"),
        ([{"task": "arithmetic"}], "lacks name"),
        ([{"name": "a"}, {"name": "a"}], "twice"),
        ([{"name": "a b"}], "letters, digits"),
        ([{"name": "a", "task": "exact_match"}], "needs a path"),
        ([{"name": "a", "task": "qa"}], "must be one of"),
        ([{"name": "a", "max_new_tokens": 0}], "max_new_tokens"),
        ([{"name": "a", "ops": "/"}], "ops"),
        ({"name": "a"}, "must be a list"),
    ],
)
def test_bad_evaluation_tables_are_refused(evaluations, message):
    with pytest.raises(ScalingError, match=message):
        check_evaluations(evaluations)


def test_sweep_spec_refuses_evaluating_on_the_training_seed():
    with pytest.raises(ScalingError, match="training examples"):
        sweep.load_spec(None, evaluations=[{"name": "a", "seed": 0}])
    with pytest.raises(ScalingError, match="unknown key 'bogus'"):
        sweep.load_spec(None, evaluations=[{"name": "a", "bogus": 0}])
    spec = sweep.load_spec(None, evaluations=[{"name": "a"}])
    assert spec.run_evaluations()[0] == {"name": "a", **tasks.EVAL_DEFAULTS}
    assert sweep.load_spec(None).identity() != spec.identity()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        ('{"prompt": "x"\n', "line 1 is not JSON"),
        ("[1]\n", "line 1 is not a JSON object"),
        ('{"prompt": "x"}\n', "lacks answer, options"),
        ('{"prompt": "x", "options": ["a"], "answer": 0}\n', "list of ≥ 2 texts"),
        ('{"prompt": "x", "options": ["a", "b"], "answer": 2}\n', "index or text"),
        ("\n", "no examples"),
    ],
)
def test_bad_evaluation_files_fail_before_the_run_is_touched(tmp_path, backbone, capsys,
                                                             content, message):  # fmt: skip
    path = tmp_path / "mc.jsonl"
    if content is not None:
        path.write_text(content)
    run = plan_run(tmp_path / "s", backbone, "ladder", 2,
                   [{"name": "mc", "task": "choice", "path": str(path)}], quantization="none")  # fmt: skip
    before = sorted(p.name for p in run.iterdir())
    assert cli.main(["train", str(run)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in run.iterdir()) == before


def test_a_missing_evaluation_file_stops_the_sweep_before_it_is_written(tmp_path, backbone):
    from scaling.sweep import dataprep

    missing = tmp_path / "nope.jsonl"
    spec = sweep.load_spec(None, name="t", backbones=[backbone], methods=["ladder"],
                           evaluations=[{"name": "mc", "task": "choice", "path": str(missing)}])  # fmt: skip
    with pytest.raises(ScalingError, match=f"evaluation mc: {missing}: no such file"):
        dataprep.check(spec)
    missing.write_text('{"prompt": "2+2=", "options": ["4", "5"], "answer": 0}\n')
    dataprep.check(spec)


def test_the_three_statements_of_an_evaluation_agree():
    # The planner's EvalSpec, the trainer's defaults and the spec.json checks (the trainer cannot
    # import the planner, so each restates the keys).
    from scaling.runspec import EVAL_CHECKS
    from scaling.sweep.spec import EvalSpec

    assert set(EVAL_CHECKS) == set(EvalSpec.field_names()) == {"name", *tasks.EVAL_DEFAULTS}
    assert {
        k: v for k, v in EvalSpec(name="x").to_dict().items() if k != "name"
    } == tasks.EVAL_DEFAULTS
