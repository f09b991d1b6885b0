"""Data at scale: tokenise a corpus once into memory-mapped shards, then how a job starts on them.

    python bench/data.py                                  # 0.1 and 1 GB corpora (today's path: 25, 100 MB)
    python bench/data.py --sizes 0.02 --memory-sizes 0.01 # a quick look (sizes in GB)
    python bench/data.py --readme                         # re-render bench/README.md's table

The corpus is synthetic plain text (JSONL, one ``{"text": ...}`` document of 50–600 pseudo-words per
line, seed 0) in files of ``--sizes`` GB; the tokenizer is the byte tokenizer of the tiny backbones
(one token per byte, ``uint16`` ids), so the numbers are per byte of text. For each size:

- **prepare** (:func:`scaling.train.shards.prepare`, in a child process): wall time, MB/s of corpus
  and tokens/s, bytes per token on disk (all files of the entry), peak RSS of the process and of its
  tokenising workers; then the same call again as ``scaling sweep`` makes it on a warm cache (every
  file's sha256 verified);
- **job** (the real ``scaling train`` loop on a tiny Llama, in a child process): seconds from the
  process's start to the end of its first optimizer step and the process's peak RSS then, on the
  prepared shards and, for ``--memory-sizes``, on today's in-memory path
  (:func:`scaling.train.data.prepare`, which the job used before shards). The job's run trains
  ``--steps`` steps of 16 × 512 tokens; only its first step is timed.

Writes ``bench/results/data.json``; ``--readme`` renders the table between ``<!-- generated:data -->``
markers of bench/README.md from that file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GB, MB = 1e9, 1e6
SEQ_LEN, SEQS = 512, 16


def make_corpus(path: Path, size: float) -> dict:
    """``size`` bytes (at least) of JSONL text documents, deterministic."""
    import numpy as np

    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = np.array(["".join(rng.choice(letters, n)) for n in rng.integers(2, 11, 5000)])
    written = docs = 0
    started = time.perf_counter()
    with open(path, "w") as f:
        while written < size:
            lengths = rng.integers(50, 600, 1000)
            picks = np.split(rng.integers(0, words.size, lengths.sum()), np.cumsum(lengths)[:-1])
            block = "".join(json.dumps({"text": " ".join(words[p])}) + "\n" for p in picks)
            f.write(block)
            written += len(block)
            docs += lengths.size
    return {"bytes": path.stat().st_size, "documents": docs,
            "seconds": time.perf_counter() - started}  # fmt: skip


def make_backbone(directory: Path) -> str:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from scaling.train.tokenizers import save_byte_tokenizer

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=300,
                         max_position_embeddings=SEQ_LEN)  # fmt: skip
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    save_byte_tokenizer(directory)
    return str(directory)


def plan_run(corpus: Path, backbone: str, out: Path, steps: int) -> Path:
    """One ladder run on ``corpus`` of ``steps`` steps, written as ``scaling sweep`` writes it (the
    data is prepared separately, so that step is timed on its own)."""
    from scaling import sweep

    def spec(budget: float):
        return sweep.load_spec(
            name="bench-data", backbones=[backbone], methods=["ladder"], seq_len=SEQ_LEN,
            batch_tokens=SEQ_LEN * SEQS, micro_batch_size=SEQS, budgets=[budget],
            method={"ladder": {"reduction": 8, "quantization": "none"}},
            dataset={"path": str(corpus), "eval_sequences": 4}, constraints={"min_steps": 1},
            train={"log_every": 1, "eval_every": 10**6, "checkpoint_every_minutes": 1e6},
        )  # fmt: skip

    probe = sweep.build_plan(spec(1e12)).runs[0]
    budget = probe.flops_per_token * SEQ_LEN * SEQS * steps
    plan = sweep.build_plan(spec(budget))
    sweep.write(plan, out)
    return out / "runs" / plan.runs[0].run_id


def peak_rss(who: int = resource.RUSAGE_SELF) -> int:
    return resource.getrusage(who).ru_maxrss * 1024  # kilobytes on Linux


# --- children -----------------------------------------------------------------------------------------


def child_prepare(corpus: str) -> dict:
    from scaling.sweep import DatasetSpec
    from scaling.train import shards
    from scaling.train.tokenizers import byte_tokenizer

    dataset = {**DatasetSpec(path=corpus).to_dict(), "max_epochs": None}
    tok = byte_tokenizer()
    started = time.perf_counter()
    prepared = shards.prepare(dataset, tok, seq_len=SEQ_LEN, train_sequences=1)
    seconds = time.perf_counter() - started
    out = {"seconds": seconds, "reused": prepared.reused, "tokens": prepared.tokens,
           "documents": prepared.index["documents"], "disk_bytes": prepared.disk_bytes(),
           "path": str(prepared.path), "peak_rss": peak_rss(),
           "peak_rss_workers": peak_rss(resource.RUSAGE_CHILDREN)}  # fmt: skip
    started = time.perf_counter()
    again = shards.prepare(dataset, tok, seq_len=SEQ_LEN, train_sequences=1, verify=True)
    out["verify_seconds"] = time.perf_counter() - started
    assert again.reused and again.path == prepared.path
    return out


def child_job(run: str, mode: str, report: str) -> None:
    """Train ``run``; at the end of step 1 write the time and peak RSS to ``report`` and exit."""
    from scaling.train import data, job

    if mode == "memory":  # the path every job took before shards: read, tokenise, pack in RAM

        def in_memory(spec, backbone, tokenizer):
            return data.prepare(spec["dataset"], tokenizer, seq_len=spec["seq_len"],
                                train_sequences=spec["steps"] * SEQS,
                                max_epochs=spec["dataset"]["max_epochs"])  # fmt: skip

        job._prepare_data = in_memory
    prepare, timing = job._prepare_data, {}

    def timed(spec, backbone, tokenizer):  # the data's share of the start-up (the rest: imports,
        started = time.perf_counter()  # tokenizer and model)
        out = prepare(spec, backbone, tokenizer)
        timing["data_s"] = time.perf_counter() - started
        return out

    job._prepare_data = timed

    def on_step(step: int) -> None:
        if step == 1:
            Path(report).write_text(
                json.dumps({"time": time.time(), "peak_rss": peak_rss(), **timing})
            )
            os._exit(0)

    job.train(run, on_step=on_step)


# --- the parent ---------------------------------------------------------------------------------------


def child(*args: str, env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, __file__, "--child", *args], env=env, text=True,
                          capture_output=True)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"child {args[0]} failed:\n{done.stderr[-3000:]}")
    return done


def measure_job(run: Path, mode: str, work: Path, env: dict) -> dict:
    report = work / f"job-{mode}-{run.name}.json"
    started = time.time()
    child("job", str(run), mode, str(report), env=env)
    got = json.loads(report.read_text())
    return {"mode": mode, "first_step_s": got["time"] - started, "data_s": got["data_s"],
            "peak_rss": got["peak_rss"]}  # fmt: skip


def run(args) -> dict:
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-data-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SCALING_DATA_CACHE": str(work / "cache"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(HERE.parent)}  # fmt: skip
    backbone = make_backbone(work / "backbone")
    sizes = sorted(set(args.sizes) | set(args.memory_sizes))
    rows, load = [], [os.getloadavg()[0]]
    for size in sizes:
        corpus = work / f"corpus-{size:g}GB.jsonl"
        made = make_corpus(corpus, size * GB)
        row = {"size_gb": size, "corpus": made}
        print(f"{size:g} GB corpus: {made['bytes'] / MB:,.0f} MB, {made['documents']:,} documents",
              flush=True)  # fmt: skip
        run_dir = plan_run(corpus, backbone, work / f"runs-{size:g}", args.steps)
        if size in args.sizes:
            done = child("prepare", str(corpus), env=env)
            row["prepare"] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"  prepare: {row['prepare']['seconds']:.1f} s", flush=True)
            row["job_shards"] = measure_job(run_dir, "shards", work, env)
            print(f"  job on shards: {row['job_shards']}", flush=True)
        if size in args.memory_sizes:
            row["job_memory"] = measure_job(run_dir, "memory", work, env)
            print(f"  job in memory: {row['job_memory']}", flush=True)
        rows.append(row)
        corpus.unlink()
    load.append(os.getloadavg()[0])
    import numpy as np
    import transformers

    return {
        "rows": rows, "seq_len": SEQ_LEN, "sequences_per_step": SEQS, "steps": args.steps,
        "cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(), "numpy": np.__version__,
        "transformers": transformers.__version__, "load_average": load,
        "command": "python bench/data.py" + (
            f" --sizes {' '.join(map(str, args.sizes))} --memory-sizes "
            f"{' '.join(map(str, args.memory_sizes))}" if args.sizes != [0.1, 1.0] or
            args.memory_sizes != [0.025, 0.1] else ""),
    }  # fmt: skip


def table(out: dict) -> str:
    lines = [
        f"Machine: {out['cpus']} CPUs ({out['cpu']}), Python {out['python']}, load average "
        f"{out['load_average'][0]:.2f} before and {out['load_average'][1]:.2f} after. "
        f"Command: `{out['command']}`. Byte tokenizer (1 token per byte of text, uint16 ids); a job "
        f"is the real `scaling train` loop on a tiny Llama, {out['sequences_per_step']} × "
        f"{out['seq_len']} tokens per step.",
        "",
        "| corpus | documents | prepare s | MB/s | tokens/s | prepare peak RSS (main / workers) | "
        "bytes/token on disk | re-verify s (sweep, warm cache) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in out["rows"]:
        p = r.get("prepare")
        if p is None:
            continue
        lines.append(
            f"| {r['corpus']['bytes'] / MB:,.0f} MB | {p['documents']:,} | {p['seconds']:.1f} | "
            f"{r['corpus']['bytes'] / MB / p['seconds']:.1f} | {p['tokens'] / p['seconds']:,.0f} | "
            f"{p['peak_rss'] / MB:,.0f} / {p['peak_rss_workers'] / MB:,.0f} MB | "
            f"{p['disk_bytes'] / p['tokens']:.3f} | {p['verify_seconds']:.1f} |"
        )
    lines += ["", "| corpus | data path | job: start → end of step 1 (s) | of which data ready (s) | "
              "job peak RSS |", "|---|---|---|---|---|"]  # fmt: skip
    for r in out["rows"]:
        for key, name in (("job_shards", "prepared shards (memory-mapped)"),
                          ("job_memory", "in memory (before shards)")):  # fmt: skip
            if key in r:
                j = r[key]
                lines.append(f"| {r['corpus']['bytes'] / MB:,.0f} MB | {name} | "
                             f"{j['first_step_s']:.1f} | {j['data_s']:.2f} | "
                             f"{j['peak_rss'] / MB:,.0f} MB |")  # fmt: skip
    return "\n".join(lines)


def render_readme(results: Path, readme: Path) -> None:
    out = json.loads((results / "data.json").read_text())
    text = readme.read_text()
    pattern = re.compile(r"(<!-- generated:data -->\n)(?:.*?\n)?(<!-- /generated:data -->)", re.S)
    if pattern.search(text):
        readme.write_text(pattern.sub(lambda m: m[1] + table(out) + "\n" + m[2], text))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[0.1, 1.0],
                    help="corpus sizes (GB) prepared into shards, a job started on each")  # fmt: skip
    ap.add_argument("--memory-sizes", type=float, nargs="*", default=[0.025, 0.1],
                    help="corpus sizes (GB) a job also starts on with the in-memory path")  # fmt: skip
    ap.add_argument("--steps", type=int, default=20, help="steps of the planned run")
    ap.add_argument("--work", help="scratch folder (default: a new temporary one)")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--readme", action="store_true", help="only re-render bench/README.md's table")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "prepare":
            print(json.dumps(child_prepare(*rest)))
        else:
            child_job(*rest)
        return
    if args.readme:
        render_readme(Path(args.out), HERE / "README.md")
        return
    out = run(args)
    from scaling import io

    path = Path(args.out) / "data.json"
    io.write_json(path, out)
    # The README shows the committed results only, never a scratch run's.
    if Path(args.out).resolve() == (HERE / "results").resolve():
        render_readme(Path(args.out), HERE / "README.md")
    print(table(out))
    print(json.dumps({"written": str(path)}))


if __name__ == "__main__":
    main()
