"""Task evaluations a run names in its spec: downstream accuracy beside the held-out loss.

    >>> from scaling.train import tasks
    >>> evals = tasks.prepare(run_spec["evaluations"], tokenizer, run_spec["dataset"])
    >>> evals[0].run(model).accuracy                 # exact match of the final answer, greedy

An evaluation is a table of the spec (``[[evaluations]]`` in a sweep spec; each run's ``spec.json``
carries the list; keys and checks in :data:`scaling.runspec.EVAL_CHECKS`):

- ``task = "arithmetic"``: the built-in chain-of-thought arithmetic (:mod:`scaling.train.synthetic`),
  examples drawn with their own ``seed`` (never the training data's), at the dataset's difficulty
  unless ``difficulty`` says otherwise. Greedy decoding of at most ``max_new_tokens`` tokens, stopped
  at the answer line or eos; *accuracy* is exact match of the number after ``A:``; *gen_tokens* is the
  length of the generated chain of thought (the text before ``A:``, or all of it when no answer
  came), in the backbone's tokens.
- ``task = "exact_match"``: a JSONL file of ``prompt_field`` / ``answer_field`` rows; greedy decoding,
  stopped at eos (and at the first newline when the answer is one line); accuracy is exact match of
  the stripped text, gen_tokens the tokens generated before the stop.
- ``task = "choice"``: a JSONL file of ``prompt_field`` / ``options_field`` (a list of strings) /
  ``answer_field`` (the index of the right option, or its text) rows; accuracy is how often the right
  option has the highest summed log-likelihood after the prompt (no generation).

Every task also reports its *task loss*: the mean next-token loss per token of the reference
continuation after the prompt (the response and eos; the right option), teacher-forced through the
run's loss path — what a two-step task law maps compute to before mapping it to accuracy. Prompts are
encoded as training encodes them (``[bos] + prompt``, no other special tokens), so every method sees
the same prompts, the same greedy decoding and the same token budget. ``eval_flops`` is what the
evaluation executed (forward only, padded rows and stopped rows included), from
:func:`scaling.flops.generation_flops` and, for scoring, ``seq_len`` × the forward FLOPs per token of
:func:`scaling.flops.cost`; it is never added to the run's training FLOPs.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import polars as pl
import torch
import torch.nn.functional as F
from transformers import StoppingCriteria, StoppingCriteriaList

from scaling import flops
from scaling.arch import Arch
from scaling.errors import ScalingError, one_line
from scaling.runspec import TASK_KIND
from scaling.train.records import TASK_COLUMNS
from scaling.train.synthetic import synthetic_arithmetic

EVAL_DEFAULTS: dict[str, Any] = {
    "task": "arithmetic", "examples": 64, "max_new_tokens": 128, "batch_size": 16, "every": 0,
    "path": None, "prompt_field": "prompt", "answer_field": "answer", "options_field": "options",
    "difficulty": None, "ops": "+-*", "seed": 1,
}  # fmt: skip
"""Every key of an evaluation but ``name``, at its default (the sweep spec's ``EvalSpec`` too)."""
ANSWER = re.compile(r"A:\s*(-?\d+)")
_ANSWER_LINE = re.compile(r"A:\s*-?\d+[^\S\n]*\n")


@dataclasses.dataclass(frozen=True)
class Example:
    prompt: list[int]
    """``[bos] + prompt`` token ids."""
    answer: str
    """What an exact match compares with (arithmetic: the number; exact_match: the stripped text)."""
    reference: list[int]
    """The continuation whose loss is the task loss (response + eos; answer + eos; the right option)."""
    options: list[list[int]] | None = None
    correct: int | None = None


@dataclasses.dataclass(frozen=True)
class TaskResult:
    name: str
    loss: float
    """Mean next-token loss per reference token (nats)."""
    accuracy: float
    gen_tokens: float | None
    """Mean generated chain-of-thought (arithmetic) or answer (exact_match) tokens; None for choice."""
    examples: int
    eval_flops: float

    @property
    def kind(self) -> str:
        """The ``kind`` of its metrics row."""
        return TASK_KIND + self.name

    def columns(self) -> dict[str, Any]:
        """Its metrics row's task columns (:data:`scaling.train.records.TASK_COLUMNS`)."""
        return {c: getattr(self, c) for c in TASK_COLUMNS}

    def describe(self) -> str:
        return f"accuracy {self.accuracy:.3f}, task loss {self.loss:.4f}"


def due(evals: list[TaskEval], model, step: int, steps: int, eval_every: int):
    """(evaluation, result) of each evaluation due at ``step``, run as it comes."""
    for ev in evals:
        if ev.due(step, steps, eval_every):
            yield ev, ev.run(model)


def summary(metrics: pl.DataFrame, evals: list[TaskEval]) -> dict[str, Any]:
    """What ``result.json`` adds for a run with evaluations (from every process's rows): ``tasks``,
    each evaluation's last row and how often it ran, and ``eval_flops``, every task evaluation's
    FLOPs together, apart from the training ``flops``."""
    rows = metrics.filter(pl.col("kind").str.starts_with(TASK_KIND))
    out = {}
    for ev in evals:
        mine = rows.filter(pl.col("kind") == TASK_KIND + ev.name).sort("step")
        last = mine.row(-1, named=True) if len(mine) else {}
        out[ev.name] = {"task": ev.task, "evaluations": len(mine),
                        "eval_flops": float(mine["eval_flops"].sum())}  # fmt: skip
        out[ev.name] |= {k: last.get(k) for k in ("step", "loss", "accuracy", "gen_tokens",
                                                   "examples")}  # fmt: skip
    return {"tasks": out, "eval_flops": float(rows["eval_flops"].sum())}


def eval_config(raw: dict[str, Any]) -> dict[str, Any]:
    """An evaluation table completed with the defaults."""
    return EVAL_DEFAULTS | raw


def prepare(
    evaluations: list[dict[str, Any]], tokenizer, dataset: dict[str, Any]
) -> list[TaskEval]:
    """The run's evaluations with their examples encoded: a missing or malformed file is a one-line
    ScalingError here, before the job writes anything."""
    return [TaskEval(eval_config(e), tokenizer, dataset) for e in evaluations]


class TaskEval:
    """One named evaluation and its encoded examples."""

    def __init__(self, cfg: dict[str, Any], tokenizer, dataset: dict[str, Any]) -> None:
        self.cfg, self.name, self.task = cfg, cfg["name"], cfg["task"]
        self.tokenizer = tokenizer
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
        if self.task == "arithmetic":
            rows = synthetic_arithmetic(cfg["examples"], seed=cfg["seed"], ops=cfg["ops"],
                                        difficulty=cfg["difficulty"] or dataset.get("difficulty", 3))  # fmt: skip
            self.examples = [self._example(r["prompt"], ANSWER.search(r["response"])[1],
                                           r["response"]) for r in rows]  # fmt: skip
        else:
            self.examples = [self._file_example(row) for row in self._rows()]
        if not self.examples:
            raise ScalingError(f"evaluation {self.name}: no examples in {cfg['path']}")
        # A one-line answer ends at the first newline: decoding stops there (and at eos).
        self.one_line = self.task == "exact_match" and all(
            "\n" not in e.answer for e in self.examples
        )

    # -- examples ----------------------------------------------------------------------------------

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]

    def _example(self, prompt: str, answer: str, reference: str) -> Example:
        return Example(
            self.bos + self._encode(prompt), answer, self._encode(reference) + [self.eos]
        )

    def _rows(self) -> list[dict[str, Any]]:
        path = self.cfg["path"]
        where = f"evaluation {self.name}"
        if not path:
            raise ScalingError(f"{where}: task {self.task} needs a path (a JSONL file)")
        rows, n = [], 0
        try:
            with Path(path).expanduser().open(encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        rows.append((n, json.loads(line)))
                    if len(rows) == self.cfg["examples"]:
                        break
        except OSError as e:
            raise ScalingError(
                f"{where}: cannot read {path}: {e.strerror or one_line(e)}"
            ) from None
        except ValueError as e:
            raise ScalingError(f"{where}: {path} line {n} is not JSON ({one_line(e)})") from None
        for n, row in rows:
            if not isinstance(row, dict):
                raise ScalingError(f"{where}: {path} line {n} is not a JSON object")
        return [dict(row, _line=n) for n, row in rows]

    def _file_example(self, row: dict[str, Any]) -> Example:
        c, path = self.cfg, self.cfg["path"]
        where = f"evaluation {self.name}: {path} line {row['_line']}"
        fields = [c["prompt_field"], c["answer_field"]] + (
            [c["options_field"]] if self.task == "choice" else []
        )
        missing = [f for f in fields if f not in row]
        if missing:
            raise ScalingError(f"{where} lacks {', '.join(missing)}")
        prompt, answer = row[c["prompt_field"]], row[c["answer_field"]]
        if not isinstance(prompt, str):
            raise ScalingError(f"{where}: {c['prompt_field']} must be text")
        if self.task == "exact_match":
            if not isinstance(answer, str):
                raise ScalingError(f"{where}: {c['answer_field']} must be text")
            return self._example(prompt, answer.strip(), answer)
        options = row[c["options_field"]]
        if not (isinstance(options, list) and len(options) >= 2
                and all(isinstance(o, str) and o for o in options)):  # fmt: skip
            raise ScalingError(f"{where}: {c['options_field']} must be a list of ≥ 2 texts")
        if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(options):
            correct = answer
        elif isinstance(answer, str) and answer in options:
            correct = options.index(answer)
        else:
            raise ScalingError(
                f"{where}: {c['answer_field']} must be an option's index or text; got {answer!r}"
            )
        encoded = [self._encode(o) for o in options]
        return Example(self.bos + self._encode(prompt), options[correct], encoded[correct],
                       encoded, correct)  # fmt: skip

    # -- running -----------------------------------------------------------------------------------

    def due(self, step: int, steps: int, eval_every: int) -> bool:
        """Periodic (``every`` steps; 0: with the held-out loss evaluations) and at the last step."""
        return step == steps or step % (self.cfg["every"] or eval_every) == 0

    @torch.no_grad()
    def run(self, model) -> TaskResult:
        """Evaluate ``model`` (a :class:`~scaling.methods.model.MethodModel`) on every example."""
        was_training = model.training
        model.eval()
        try:
            arch, method = model_arch(model), model.method_config
            if self.task == "choice":
                return self._choice(model, arch, method)
            pairs = [(e.prompt, e.reference) for e in self.examples]
            scores, cost = self._scores(model, arch, method, pairs)
            loss = -sum(scores) / sum(len(e.reference) for e in self.examples)
            texts, lengths, gen_cost = self.generate(model, arch, method)
            hits, gen = [], []
            for e, text, row in zip(self.examples, texts, lengths, strict=True):
                if self.task == "arithmetic":
                    hit, chain = grade_arithmetic(text, e.answer)
                    hits.append(hit)
                    gen.append(self._tokens_before(row, len(chain)))
                else:
                    pred = text.split("\n")[0] if self.one_line else text
                    hits.append(pred.strip() == e.answer)
                    gen.append(self._tokens_before(row, len(text)))
            return TaskResult(self.name, loss, sum(hits) / len(hits), sum(gen) / len(gen),
                              len(hits), cost + gen_cost)  # fmt: skip
        finally:
            model.train(was_training)

    def _choice(self, model, arch, method) -> TaskResult:
        """Every option scored once: the right one's loss is the task loss."""
        pairs = [(e.prompt, o) for e in self.examples for o in e.options]
        scores, cost = self._scores(model, arch, method, pairs)
        hits, right, k = [], 0.0, 0
        for e in self.examples:
            opts = scores[k : k + len(e.options)]
            k += len(e.options)
            hits.append(max(range(len(opts)), key=opts.__getitem__) == e.correct)
            right -= opts[e.correct]
        loss = right / sum(len(e.reference) for e in self.examples)
        return TaskResult(self.name, loss, sum(hits) / len(hits), None, len(hits), cost)

    def _scores(self, model, arch, method, pairs) -> tuple[list[float], float]:
        """Summed log-likelihood of each continuation after its prompt, and the FLOPs executed."""
        out, cost = [], 0.0
        for i in range(0, len(pairs), self.cfg["batch_size"]):
            chunk = pairs[i : i + self.cfg["batch_size"]]
            out += continuation_logprobs(model, chunk, self.pad)[0]
            width = max(len(p) + len(c) for p, c in chunk)
            cost += len(chunk) * width * flops.cost(arch, method, width).forward_flops_per_token
        return out, cost

    def _tokens_before(self, ids: list[int], chars: int) -> int:
        """How many of the generated ``ids`` lie within the first ``chars`` characters of their text:
        lengths are counted in the tokens the model generated, never re-tokenised."""
        k = 0
        while (
            k < len(ids)
            and len(self.tokenizer.decode(ids[: k + 1], skip_special_tokens=True)) <= chars
        ):
            k += 1
        return k

    def generate(self, model, arch, method) -> tuple[list[str], list[list[int]], float]:
        """Greedy continuations (text up to the stop), their token ids, and the FLOPs executed."""
        device = next(model.parameters()).device
        texts, lengths, cost = [], [], 0.0
        for i in range(0, len(self.examples), self.cfg["batch_size"]):
            prompts = [e.prompt for e in self.examples[i : i + self.cfg["batch_size"]]]
            width = max(map(len, prompts))
            ids = torch.full((len(prompts), width), self.pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, p in enumerate(prompts):  # left padding: every row's next token is at the end
                ids[r, width - len(p) :] = torch.tensor(p)
                mask[r, width - len(p) :] = 1
            stop = _Stop(self.tokenizer, width, self.task, self.one_line)
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 max_new_tokens=self.cfg["max_new_tokens"], do_sample=False,
                                 eos_token_id=self.eos, pad_token_id=self.pad,
                                 stopping_criteria=StoppingCriteriaList([stop]))  # fmt: skip
            new = out[:, width:].tolist()
            cost += len(prompts) * flops.generation_flops(arch, method, width, len(new[0]))
            for row in new:
                n = row.index(self.eos) if self.eos in row else len(row)
                text = self.tokenizer.decode(row[:n], skip_special_tokens=True)
                texts.append(stop.cut(text))
                lengths.append(row[:n])
        return texts, lengths, cost


@torch.no_grad()
def continuation_logprobs(
    model, pairs: list[tuple[list[int], list[int]]], pad: int
) -> tuple[list[float], list[bool]]:
    """For each (prompt ids, continuation ids): the continuation's summed log-likelihood after the
    prompt, and whether greedy decoding would have produced it token for token. One right-padded batch
    through the model's loss path (its final hidden states and output head, every position)."""
    device = next(model.parameters()).device
    head = model.output_head()
    width = max(len(p) + len(c) for p, c in pairs)
    ids = torch.full((len(pairs), width), pad, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    for r, (p, c) in enumerate(pairs):
        ids[r, : len(p) + len(c)] = torch.tensor(p + c)
        labels[r, len(p) : len(p) + len(c)] = torch.tensor(c)
    ids, labels = ids.to(device), labels.to(device)
    logits = head(model.hidden_states(ids).to(head.weight.dtype)).float()[:, :-1]
    target = labels[:, 1:]
    nll = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100, reduction="none")
    greedy = ((logits.argmax(-1) == target) | (target == -100)).all(-1)
    return (-nll.sum(-1)).tolist(), greedy.tolist()


def grade_arithmetic(text: str, answer: str) -> tuple[bool, str]:
    """(whether the number after the first ``A:`` is ``answer``, the chain of thought before it — all
    of ``text`` when no answer came)."""
    m = ANSWER.search(text)
    return (m is not None and m[1] == answer), (text[: m.start()] if m else text)


class _Stop(StoppingCriteria):
    """transformers ``StoppingCriteria`` protocol: a row is done once its generated text holds the
    answer line (arithmetic) or a newline (one-line exact match); eos is the generator's own stop."""

    def __init__(self, tokenizer, prompt_len: int, task: str, one_line: bool) -> None:
        self.tokenizer, self.prompt_len = tokenizer, prompt_len
        self.pattern = (
            _ANSWER_LINE if task == "arithmetic" else re.compile(r"\n") if one_line else None
        )

    def __call__(self, input_ids: torch.Tensor, scores=None, **kwargs) -> torch.Tensor:
        if self.pattern is None:
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        texts = self.tokenizer.batch_decode(
            input_ids[:, self.prompt_len :], skip_special_tokens=True
        )
        done = [self.pattern.search(t) is not None for t in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def cut(self, text: str) -> str:
        """The text up to and including the stop (what a stopped row generated before padding)."""
        m = self.pattern.search(text) if self.pattern is not None else None
        return text[: m.end()] if m else text


def model_arch(model) -> Arch:
    """The backbone architecture of a built method (what its FLOPs are counted on)."""
    if getattr(model, "arch", None) is not None:
        return model.arch
    return Arch.from_hf_config(model.base.config.to_dict(), source=model.backbone_source)
