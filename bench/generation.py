"""Generation speed of the side-net methods: tokens/s with the KV cache vs re-running the prefix.

    python bench/generation.py                          # CPU: the tiny shape, three families
    python bench/generation.py --width 1024 --layers 8  # a GPU: a wider shape
    python bench/generation.py --readme                 # re-render bench/README.md's table

For each family (Llama with GQA, Qwen2 with qkv bias and a tied head, Mistral with a sliding window)
a backbone of the built-in tiny shape (4 layers, width 128 unless ``--width``/``--layers`` say
otherwise, the byte tokenizer's 512 tokens) is built with random weights (seed 0) and saved with
``save_pretrained``; Ladder (r=4) and xLadder (r=4, δ=2) are built on it through ``methods.build``
and their side weights perturbed so the side net shapes every token. Each then decodes ``--new``
tokens greedily after a ``--prompt``-token prompt (at each batch size of ``--batch``), with
``generate(use_cache=True)`` and ``use_cache=False`` (``--threads`` torch threads, default one),
alternately; the best of ``--repeats`` timings of each is kept, and the two outputs are compared
token for token (``identical``). Writes ``bench/results/generation-<cpu|cuda>.json`` and renders the
table between ``<!-- generated:generation-<device> -->`` markers of bench/README.md
(``--out DIR`` writes the JSON into DIR instead and leaves the README alone).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = (("ladder r=4", "ladder", {"reduction": 4}),
           ("xladder r=4 δ=2", "xladder", {"reduction": 4, "delta": 2}))  # fmt: skip
FAMILIES = {
    "llama": dict(num_key_value_heads=2, tie_word_embeddings=False),
    "qwen2": dict(num_key_value_heads=2, tie_word_embeddings=True),
    "mistral": dict(num_key_value_heads=1, tie_word_embeddings=False, sliding_window=64),
}


def make_backbone(family: str, width: int, layers: int, directory: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

    from scaling.arch import TINY_SHAPE, TINY_WIDTHS

    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[family]
    shape = {**TINY_SHAPE, **FAMILIES[family], "num_hidden_layers": layers, "hidden_size": width,
             "intermediate_size": TINY_WIDTHS.get(width, int(width * 2.75)),
             "max_position_embeddings": 4096}  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cls(**shape)).save_pretrained(directory)
    return directory


def timed(fn):
    """Wall time of one call of ``fn`` (the device synchronised on both sides) and its result."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    tic = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - tic, out


def measure(model, prompt, args) -> dict:
    import torch

    kw = dict(max_new_tokens=args.new)
    model.generate(prompt[:, :4], max_new_tokens=4)  # warm-up (allocations, kernels)
    t_cached = t_full = float("inf")
    for _ in range(args.repeats):  # alternated, so that a change of load hits both alike
        t, cached = timed(lambda: model.generate(prompt, **kw))
        t_cached = min(t_cached, t)
        t, full = timed(lambda: model.generate(prompt, use_cache=False, **kw))
        t_full = min(t_full, t)
    new = prompt.shape[0] * args.new
    return dict(cached_s=t_cached, uncached_s=t_full, cached_tokens_per_s=new / t_cached,
                uncached_tokens_per_s=new / t_full, speedup=t_full / t_cached,
                identical=bool(torch.equal(cached, full)))  # fmt: skip


def run(args, save=None) -> dict:
    import torch

    from scaling import methods
    from scaling.methods.backbone import quiet_libraries

    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    started, load = time.time(), os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in FAMILIES:
            path = make_backbone(family, args.width, args.layers, Path(tmp) / family)
            for label, method, dials in CONFIGS:
                model = methods.build(method, str(path), quantization=args.quantization, **dials)
                model.eval()
                torch.manual_seed(1)
                with torch.no_grad():  # a trained-looking side net: W_up is zero at init
                    for p in model.side.parameters():
                        p.add_(torch.randn_like(p) * 0.3)
                for batch in args.batch:
                    g = torch.Generator().manual_seed(0)
                    prompt = torch.randint(0, 512, (batch, args.prompt), generator=g).to(device)
                    rows.append(measure(model, prompt, args) | dict(
                        family=family, label=label, method=method, dials=dials, batch=batch,
                        side_params=model.num_trainable_params()))  # fmt: skip
                    r = rows[-1]
                    print(f"{family:<8} {label:<16} batch {batch:<3} cached "
                          f"{r['cached_tokens_per_s']:8.1f} tok/s  uncached "
                          f"{r['uncached_tokens_per_s']:8.1f} tok/s  ×{r['speedup']:.1f}  "
                          f"identical={r['identical']}", flush=True)  # fmt: skip
                    if save is not None:  # what is measured so far survives an interruption
                        save(record(args, device, started, load, rows, complete=False))
    return record(args, device, started, load, rows, complete=True)


def record(args, device: str, started: float, load: float, rows: list, complete: bool) -> dict:
    import torch

    return {
        "complete": complete,
        "command": "python bench/generation.py " + " ".join(sys.argv[1:]),
        "device": device if device == "cpu" else torch.cuda.get_device_name(),
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(), "load_avg_1m_before_after": [load, os.getloadavg()[0]],
        "width": args.width, "layers": args.layers, "quantization": args.quantization,
        "batch": args.batch, "prompt_tokens": args.prompt, "new_tokens": args.new,
        "repeats": args.repeats, "decoding": "greedy", "wall_s": time.time() - started, "rows": rows,
    }  # fmt: skip


def table(out: dict) -> str:
    lines = [
        f"Machine: {out['device']} ({out['machine']}, {out['threads']} torch thread(s), torch "
        f"{out['torch']}), load average {out['load_avg_1m_before_after'][0]:.2f} before and "
        f"{out['load_avg_1m_before_after'][1]:.2f} after. Backbones: width {out['width']}, "
        f"{out['layers']} layers, random weights, quantization {out['quantization']}. Greedy decoding "
        f"of {out['new_tokens']} new tokens after a {out['prompt_tokens']}-token prompt; tokens/s "
        f"counts every sequence of the batch; best of {out['repeats']}. Command: `{out['command']}`; "
        f"{out['wall_s']:.0f} s."
        + (
            ""
            if out.get("complete", True)
            else " **Interrupted: the rows measured before it stopped.**"
        ),
        "",
        "| family | method | side params | batch | cached tokens/s | uncached tokens/s | speed-up "
        "| same tokens |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in out["rows"]:
        lines.append(f"| {r['family']} | {r['label']} | {r['side_params']:,} | {r['batch']} | "
                     f"{r['cached_tokens_per_s']:,.1f} | {r['uncached_tokens_per_s']:,.1f} | "
                     f"{r['speedup']:.1f}× | {'yes' if r['identical'] else 'NO'} |")  # fmt: skip
    lines.append("")
    for batch in out["batch"]:
        speedups = [r["speedup"] for r in out["rows"] if r["batch"] == batch]
        if not speedups:
            continue
        lines.append(f"Speed-up from the cache at batch {batch}: {min(speedups):.1f}× to "
                     f"{max(speedups):.1f}×.  ")  # fmt: skip
    return "\n".join(lines)


def render_readme(results: Path, readme: Path) -> None:
    text = readme.read_text()
    for path in sorted(results.glob("generation-*.json")):
        out, name = json.loads(path.read_text()), path.stem
        pattern = re.compile(
            rf"(<!-- generated:{name} -->\n)(?:.*?\n)?(<!-- /generated:{name} -->)", re.S
        )
        text = pattern.sub(lambda m, out=out: m[1] + table(out) + "\n" + m[2], text)
    readme.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=128, help="backbone hidden size")
    ap.add_argument("--layers", type=int, default=4, help="backbone depth")
    ap.add_argument("--quantization", default="none", choices=("none", "nf4"))
    ap.add_argument(
        "--batch",
        type=lambda t: [int(b) for b in t.split(",")],
        default=[1, 8],
        help="batch sizes, comma-separated",
    )
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    ap.add_argument("--new", type=int, default=256, help="new tokens")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (0: torch's default); one is fastest and steadiest for tiny "
                         "models on a shared CPU")  # fmt: skip
    ap.add_argument("--out", default=str(HERE / "results"),
                    help="results folder; bench/README.md's table is re-rendered only from the "
                         "default one, so a trial run elsewhere leaves the README alone")  # fmt: skip
    ap.add_argument("--readme", action="store_true", help="only re-render bench/README.md's table")
    args = ap.parse_args()
    default = Path(args.out).resolve() == (HERE / "results").resolve()
    if args.readme and not default:
        ap.error("--readme renders bench/README.md from the committed results: drop --out")
    if not args.readme:
        import torch

        from scaling import io

        name = "generation-cuda" if torch.cuda.is_available() else "generation-cpu"
        path = Path(args.out) / f"{name}.json"
        out = run(args, save=lambda partial: io.write_json(path, partial))
        io.write_json(path, out)
        print(table(out))
        print(json.dumps({"written": str(path)}))
    if default:
        render_readme(Path(args.out), HERE / "README.md")


if __name__ == "__main__":
    main()
