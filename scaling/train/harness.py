"""A trained run as an lm-evaluation-harness model: ``scaling eval RUN_DIR --tasks ...``.

    scaling eval runs/quickstart/runs/ladder-r8-1e11-s0-1a2b3c4d --tasks hellaswag,arc_easy
    scaling eval RUN_DIR --tasks my_task --include-path my_tasks/ --limit 100   # a local task

    >>> from scaling.train.harness import evaluate_run
    >>> out = evaluate_run("RUN_DIR", ["arc_easy"])        # lm-eval's results dict, also written to
    >>> out["results"]["arc_easy"]["acc,none"]             #   RUN_DIR/lm_eval/arc_easy.json

Needs the ``eval`` extra (``pip install 'scaling[eval]'``: lm-eval). The run's trained parts
(``RUN_DIR/model``, written when it succeeded) are loaded on its backbone with
:func:`scaling.methods.load`, with the backbone's own tokenizer, and wrapped as :class:`RunLM`, an
``lm_eval.api.model.LM``: ``loglikelihood`` (multiple choice, cloze), ``loglikelihood_rolling``
(perplexity) and ``generate_until`` (greedy or sampled generation, stopped at the task's ``until``
strings). Every method goes through the same code: log-likelihoods from the model's final hidden
states and output head (:func:`scaling.train.tasks.continuation_logprobs`), generation from its
``generate`` (the KV-cached side net for Ladder and xLadder, transformers' for the peft methods).

Why not lm-eval's own ``HFLM``: it wraps a ``transformers.PreTrainedModel`` (config, device, its
loading path); a Ladder model is a frozen backbone plus a side network that is not one. Encoding
follows ``HFLM``: trailing spaces of the context move to the continuation, the pair is encoded whole
and split at the context's length, inputs are truncated on the left to the model's context length.
Any harness task runs when its data is available (offline: a task defined over local files, as the
tests do).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from scaling import io
from scaling.errors import ScalingError, one_line
from scaling.runspec import open_run

RESULTS_DIR = "lm_eval"
"""In a run directory: one JSON of lm-eval results per ``scaling eval`` call (named after its tasks)."""


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.api.model import LM
    except ImportError:
        raise ScalingError(
            "scaling eval needs lm-evaluation-harness: pip install 'scaling[eval]'"
        ) from None
    return lm_eval, LM


def load_run_model(run_dir: str | os.PathLike):
    """(model, tokenizer) of a trained run: its saved method on its backbone, in eval mode."""
    from scaling import methods
    from scaling.methods.backbone import quiet_libraries
    from scaling.train.tokenizers import backbone_path, load_tokenizer

    run = open_run(run_dir)
    if not (run.model_dir / "scaling_method.json").is_file():
        raise ScalingError(
            f"{run.path} has no trained model (model/ is written when a run succeeds)"
        )
    quiet_libraries()
    backbone = backbone_path(run.spec["backbone"])
    model = methods.load(run.model_dir, backbone if run.spec["method"] != "full" else None)
    return model.eval(), load_tokenizer(backbone)


def make_lm(model, tokenizer, *, batch_size: int = 8, max_length: int | None = None):
    """An ``lm_eval.api.model.LM`` over a built method (:class:`RunLM`)."""
    _, LM = _lm_eval()

    class RunLM(LM):
        """A :class:`~scaling.methods.model.MethodModel` seen by lm-eval (see the module docstring)."""

        def __init__(self) -> None:
            super().__init__()
            self.model, self.tokenizer, self.batch = model, tokenizer, batch_size
            cfg = getattr(getattr(model, "backbone", None) or model.base, "config", None)
            self.max_length = max_length or getattr(cfg, "max_position_embeddings", 2048)
            self.eos = tokenizer.eos_token_id
            self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
            self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []

        def _encode(self, text: str) -> list[int]:
            return self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]

        def _pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
            spaces = len(context) - len(context.rstrip())
            if spaces:
                context, continuation = context[:-spaces], context[-spaces:] + continuation
            whole = self.bos + self._encode(context + continuation)
            ctx = self.bos + self._encode(context)
            return whole[: len(ctx)], whole[len(ctx) :]

        def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
            from scaling.train.tasks import continuation_logprobs

            out = []
            for i in range(0, len(pairs), self.batch):
                chunk = []
                for ctx, cont in pairs[i : i + self.batch]:
                    keep = max(1, self.max_length + 1 - len(cont))  # left-truncate the context
                    chunk.append((ctx[-keep:] if ctx else self.bos or [self.eos], cont))
                lls, greedy = continuation_logprobs(self.model, chunk, self.pad)
                out += list(zip(lls, greedy, strict=True))
            return out

        def loglikelihood(self, requests) -> list[tuple[float, bool]]:
            return self._score([self._pair(*r.args) for r in requests])

        def loglikelihood_rolling(self, requests) -> list[float]:
            from lm_eval import utils

            out = []
            for r in requests:
                ids = self._encode(r.args[0])
                windows = utils.get_rolling_token_windows(
                    token_list=ids, prefix_token=(self.bos or [self.eos])[0],
                    max_seq_len=self.max_length, context_len=1,
                )  # fmt: skip
                pairs = [utils.make_disjoint_window(w) for w in windows]
                out.append(sum(ll for ll, _ in self._score(pairs)))
            return out

        def generate_until(self, requests) -> list[str]:
            import torch

            out = []
            for r in requests:  # one at a time: each request carries its own stops and budget
                context, kwargs = r.args
                kwargs = dict(kwargs)
                until = kwargs.pop("until", None) or []
                until = [until] if isinstance(until, str) else list(until)
                new = int(kwargs.pop("max_gen_toks", 256))
                ids = (self.bos + self._encode(context))[-max(1, self.max_length - new) :]
                device = next(self.model.parameters()).device
                prompt = torch.tensor([ids], device=device)
                temperature = kwargs.get("temperature", 1.0)
                sample = bool(kwargs.get("do_sample")) and bool(temperature) and temperature > 0
                gen = self.model.generate(
                    input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new,
                    do_sample=sample, **({"temperature": temperature} if sample else {}),
                    eos_token_id=self.eos, pad_token_id=self.pad,
                    stopping_criteria=_until(self.tokenizer, len(ids), until),
                )  # fmt: skip
                row = gen[0, len(ids) :].tolist()
                row = row[: row.index(self.eos)] if self.eos in row else row
                text = self.tokenizer.decode(row, skip_special_tokens=True)
                for stop in until:
                    text = text.split(stop)[0]
                out.append(text)
            return out

    return RunLM()


def _until(tokenizer, prompt_len: int, until: list[str]):
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Until(StoppingCriteria):
        def __call__(self, input_ids, scores=None, **kwargs):
            import torch

            texts = tokenizer.batch_decode(input_ids[:, prompt_len:], skip_special_tokens=True)
            return torch.tensor(
                [any(u in t for u in until) for t in texts], device=input_ids.device
            )

    return StoppingCriteriaList([Until()] if until else [])


def evaluate_run(
    run_dir: str | os.PathLike, tasks: list[str], *, include_path: str | None = None,
    limit: float | None = None, num_fewshot: int | None = None, batch_size: int = 8,
    out: str | os.PathLike | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Run lm-eval ``tasks`` on the trained run; write the results (atomically) to ``out`` (default
    ``RUN_DIR/lm_eval/<tasks>.json``) and return them."""
    lm_eval, _ = _lm_eval()
    from lm_eval.tasks import TaskManager

    if not tasks:
        raise ScalingError("--tasks names no task")
    if include_path is not None and not Path(include_path).is_dir():
        raise ScalingError(f"--include-path {include_path}: no such directory")
    run = open_run(run_dir)  # before the task index, which takes seconds to build
    manager = TaskManager(include_path=include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ScalingError(f"unknown lm-eval task(s) {', '.join(unknown)} (see `lm_eval ls tasks`;"
                           " a local task needs --include-path)")  # fmt: skip
    target = Path(out) if out else run.path / RESULTS_DIR / ("+".join(tasks) + ".json")
    io.check_writable(target)
    model, tokenizer = load_run_model(run_dir)
    try:
        results = lm_eval.simple_evaluate(
            model=make_lm(model, tokenizer, batch_size=batch_size), tasks=tasks,
            task_manager=manager, limit=limit, num_fewshot=num_fewshot, log_samples=False,
        )  # fmt: skip
    except (FileNotFoundError, ConnectionError, OSError) as e:
        raise ScalingError(f"lm-eval could not load a task's data: {one_line(e)}") from None
    record = {
        "run_id": run.spec["run_id"], "method": run.spec["method"], "tasks": tasks,
        "results": results["results"], "versions": results.get("versions"),
        "n-shot": results.get("n-shot"), "config": {"limit": limit, "num_fewshot": num_fewshot},
    }  # fmt: skip
    io.write_json(target, record)
    return record
