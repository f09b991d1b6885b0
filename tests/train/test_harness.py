"""The lm-evaluation-harness adapter, offline: a trained run answers tasks defined over local files
(multiple choice through ``loglikelihood``, generation through ``generate_until``, perplexity through
``loglikelihood_rolling``), with the same accuracies as the run's own task evaluations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_tiny

from scaling import cli, flops, methods, sweep
from scaling.arch import resolve_arch
from scaling.errors import ScalingError
from scaling.train import tasks, train
from scaling.train.harness import evaluate_run, load_run_model, make_lm
from scaling.train.tokenizers import save_byte_tokenizer

pytest.importorskip("lm_eval")

PROMPTS = [f"Q: {a}+{b}=\n" for a, b in ((1, 1), (2, 5), (3, 3), (4, 0), (9, 9), (7, 1))]
OPTIONS = [["A: 2\n", "A: 3\n"], ["A: 7\n", "A: 25\n", "A: 8\n"], ["yes", "no"],
           ["A: 4\n", "A: 40\n"], ["A: 18\n", "A: 99\n"], ["A: 8\n", "A: 6\n", "A: 71\n"]]  # fmt: skip

MC_YAML = """task: scaling_local_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: options
doc_to_target: answer
target_delimiter: ""
metric_list:
  - metric: acc
"""
GEN_YAML = """task: scaling_local_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: ""
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
"""
PPL_YAML = """task: scaling_local_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{prompt}}}}"
metric_list:
  - metric: word_perplexity
"""


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A Ladder run trained for two steps on the tiny Llama with the byte tokenizer."""
    root = tmp_path_factory.mktemp("harness")
    backbone = root / "tiny-llama"
    make_tiny("llama", backbone)
    save_byte_tokenizer(backbone)
    cfg = methods.config("ladder", reduction=8, quantization="none")
    fpt = flops.cost(resolve_arch(str(backbone)), cfg, 32).train_flops_per_token
    spec = sweep.load_spec(
        None, name="h", backbones=[str(backbone)], methods=["ladder"],
        method={"ladder": {"reduction": 8, "quantization": "none"}}, seq_len=32, batch_tokens=64,
        micro_batch_size=1, budgets=[2 * 64 * fpt], dataset={"eval_sequences": 2, "difficulty": 2},
        constraints={"min_steps": 1},
    )  # fmt: skip
    plan = sweep.build_plan(spec)
    sweep.write(plan, root / "sweep")
    run = root / "sweep" / "runs" / plan.runs[0].run_id
    assert train(run)["status"] == "success"
    return run


def local_tasks(folder: Path, model, tokenizer) -> tuple[Path, dict, dict]:
    """Task YAMLs over local JSONL files, and the run's own task evaluations of the same data."""
    folder.mkdir()
    mc = [{"prompt": p, "options": o, "answer": 0} for p, o in zip(PROMPTS, OPTIONS, strict=True)]
    (folder / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mc))
    # Exact match: half the answers are what the model says greedily, half are not.
    probe = [{"prompt": p, "answer": "?"} for p in PROMPTS]
    (folder / "probe.jsonl").write_text("".join(json.dumps(r) + "\n" for r in probe))
    (ev,) = tasks.prepare([{"name": "p", "task": "exact_match", "max_new_tokens": 6,
                            "path": str(folder / "probe.jsonl")}], tokenizer, {})  # fmt: skip
    texts, _, _ = ev.generate(model, tasks.model_arch(model), model.method_config)
    said = [t.split("\n")[0] for t in texts]
    gen = [{"prompt": p, "answer": s if i % 2 else s + "#"} for i, (p, s) in
           enumerate(zip(PROMPTS, said, strict=True))]  # fmt: skip
    (folder / "gen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gen))
    for name, yaml in (("mc", MC_YAML), ("gen", GEN_YAML), ("ppl", PPL_YAML)):
        data = folder / ("mc.jsonl" if name == "ppl" else f"{name}.jsonl")
        (folder / f"{name}.yaml").write_text(yaml.format(path=data))
    ours = tasks.prepare(
        [{"name": "mc", "task": "choice", "path": str(folder / "mc.jsonl")},
         {"name": "gen", "task": "exact_match", "path": str(folder / "gen.jsonl"),
          "max_new_tokens": 6}], tokenizer, {},
    )  # fmt: skip
    return folder, ours[0].run(model), ours[1].run(model)


def test_scaling_eval_runs_local_tasks_like_the_runs_own_evaluations(trained_run, tmp_path, capsys):
    model, tokenizer = load_run_model(trained_run)
    folder, mc, gen = local_tasks(tmp_path / "tasks", model, tokenizer)
    assert gen.accuracy == 0.5
    code = cli.main(["eval", str(trained_run), "--tasks",
                     "scaling_local_mc,scaling_local_gen,scaling_local_ppl",
                     "--include-path", str(folder), "--batch-size", "4"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "scaling_local_mc: acc" in printed
    written = trained_run / "lm_eval" / "scaling_local_mc+scaling_local_gen+scaling_local_ppl.json"
    record = json.loads(written.read_text())
    results = record["results"]
    assert record["method"] == "ladder"
    assert results["scaling_local_mc"]["acc,none"] == pytest.approx(mc.accuracy)
    assert results["scaling_local_gen"]["exact_match,none"] == pytest.approx(gen.accuracy)
    assert results["scaling_local_ppl"]["word_perplexity,none"] > 1


def test_the_adapter_scores_like_the_model(trained_run):
    """loglikelihood of a continuation = the sum of the model's own log-probabilities (the context's
    trailing whitespace belongs to the continuation, as lm-eval's HFLM encodes it)."""
    import torch
    from lm_eval.api.instance import Instance

    model, tokenizer = load_run_model(trained_run)
    lm = make_lm(model, tokenizer, batch_size=2)
    reqs = [
        Instance("loglikelihood", {}, (p, o[0]), 0) for p, o in zip(PROMPTS, OPTIONS, strict=True)
    ]
    got = lm.loglikelihood(reqs)
    for (ll, greedy), p, o in zip(got, PROMPTS, OPTIONS, strict=True):
        ctx = [tokenizer.bos_token_id] + tokenizer(p.rstrip(), add_special_tokens=False)[
            "input_ids"
        ]
        cont = tokenizer("\n" + o[0], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = model(torch.tensor([ctx + cont])).logits[0].float().log_softmax(-1)
        picks = [logp[len(ctx) - 1 + k] for k in range(len(cont))]
        assert ll == pytest.approx(
            sum(x[t].item() for x, t in zip(picks, cont, strict=True)), rel=1e-5
        )
        assert greedy == all(int(x.argmax()) == t for x, t in zip(picks, cont, strict=True))


def test_bad_eval_input_is_one_line(trained_run, tmp_path, capsys):
    assert cli.main(["eval", str(trained_run), "--tasks", "no_such_task_xyz"]) == 2
    assert "unknown lm-eval task" in capsys.readouterr().err
    # argparse's usage line, not a traceback in the scorer
    assert cli.main(["eval", str(trained_run), "--tasks", "x", "--batch-size", "0"]) == 2
    assert "expected a positive integer, got '0'" in capsys.readouterr().err
    # a wrong run directory is named before the tasks are looked up (the task index takes seconds)
    assert cli.main(["eval", str(tmp_path / "nowhere"), "--tasks", "no_such_task_xyz"]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "unknown lm-eval task" not in err and len(err.splitlines()) == 1
    with pytest.raises(ScalingError, match="no such directory"):
        evaluate_run(trained_run, ["x"], include_path=str(tmp_path / "missing"))
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    (untrained / "spec.json").write_text((trained_run / "spec.json").read_text())
    with pytest.raises(ScalingError, match="no trained model"):
        load_run_model(untrained)


@pytest.mark.parametrize(("method", "dials"), [("xladder", {"delta": 1}), ("lora", {"rank": 4})])
def test_the_adapter_serves_every_method(trained_run, method, dials):
    import torch
    from lm_eval.api.instance import Instance

    _, tokenizer = load_run_model(trained_run)
    backbone = json.loads((trained_run / "spec.json").read_text())["backbone"]
    model = methods.build(method, backbone, quantization="none", **dials).eval()
    lm = make_lm(model, tokenizer)
    (text,) = lm.generate_until([Instance("generate_until", {}, (PROMPTS[0], {"until": ["\n"],
                                                                              "max_gen_toks": 5}), 0)])  # fmt: skip
    ids = torch.tensor([[tokenizer.bos_token_id, *tokenizer(PROMPTS[0])["input_ids"]]])
    greedy = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=5,
                            do_sample=False, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    want = tokenizer.decode(greedy[0, ids.shape[1] :], skip_special_tokens=True).split("\n")[0]
    assert text == want
    ((ll, _),) = lm.loglikelihood([Instance("loglikelihood", {}, ("Q:", " 1"), 0)])
    assert ll < 0
