#!/usr/bin/env bash
# The prepared GPU run: one call of the device tool, at most 8 minutes, the first and only try.
#
#   device run, carry [".whl"], timeout_s 570:   bench/gpu/run.sh
#   CPU rehearsal (this machine):                 PYTHON=.venv/bin/python bench/gpu/run.sh --rehearse
#
# The GPU machine has torch, transformers and peft but not bitsandbytes (nor polars, submitit or this
# package, which the GPU path does not need: the package runs from the working tree). Before the call,
# once, in the repository root:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_24_x86_64 --platform any -d .whl bitsandbytes==0.50.2 liger-kernel==0.8.5
#
# (43 MB + 1 MB: the call carries at most 64 MiB). It installs them, records the versions and the GPU,
# runs bench/headline.py (7B in NF4, 2k context: each method's measured and analytic peak, tokens/s,
# and the 12 GB cap test) and writes everything into $OUT (results/ of this folder when unset), which
# the device tool brings back: headline-cuda.json, headline.log, machine.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-bench/gpu/results}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$PYTHON" -c "import torch, transformers, peft, bitsandbytes; print('torch', torch.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__, '| bitsandbytes', bitsandbytes.__version__, '| cuda', torch.cuda.is_available())"
} 2>&1 | tee "$OUT/machine.txt"
name=$([ "${1:-}" = "--rehearse" ] && echo cpu-rehearsal || echo cuda)
timeout "${HEADLINE_TIMEOUT_S:-480}" "$PYTHON" bench/headline.py --out "$OUT/headline-$name.json" "$@" \
  2>&1 | grep -v "gemm_4bit\|warnings.warn" | tee "$OUT/headline.log"
