#!/usr/bin/env bash
# Sets up a GPU host for Booth's Python trainer: a virtual environment with trainer/ installed
# (pinned torch, diffusers, transformers, accelerate, peft, safetensors; bitsandbytes for 8-bit
# AdamW unless --no-8bit), then runs `python -m booth_trainer check` and prints its report.
# The worker runs the trainer with $BOOTH_PYTHON, by default this venv's python when it exists.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/setup-gpu-host.sh [options]

Creates (or updates) a Python virtual environment for Booth's trainer, installs trainer/ into it
and checks the host (Python, packages, CUDA, GPUs with free memory).

Options:
  --venv DIR          where to create the venv (default: $BOOTH_TRAINER_VENV or
                      ~/.cache/booth/trainer-venv)
  --python PATH       Python 3.10+ used to create the venv (default: python3)
  --no-8bit           do not install bitsandbytes (8-bit AdamW then fails with a clear error;
                      use optimizer.type "adamw")
  --torch-index URL   install torch from this index first, e.g. a CUDA-specific build:
                      https://download.pytorch.org/whl/cu126
  --spec PATH         also check that this job spec can run here
  -h, --help          show this help

After it succeeds, the worker finds the venv by itself; elsewhere set
  export BOOTH_PYTHON=<venv>/bin/python
Reruns are safe: pip only changes what differs from the pins in trainer/pyproject.toml.
USAGE
}

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${BOOTH_TRAINER_VENV:-$HOME/.cache/booth/trainer-venv}"
python="python3"
extras="[8bit]"
torch_index=""
spec=""

while [[ $# -gt 0 ]]; do
  case "$1" in
    --venv) venv="${2:?--venv needs a directory}"; shift 2 ;;
    --python) python="${2:?--python needs a path}"; shift 2 ;;
    --no-8bit) extras=""; shift ;;
    --torch-index) torch_index="${2:?--torch-index needs a URL}"; shift 2 ;;
    --spec) spec="${2:?--spec needs a path}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "setup-gpu-host: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

if ! command -v "$python" >/dev/null 2>&1; then
  echo "setup-gpu-host: $python not found; install Python 3.10 or newer or pass --python" >&2
  exit 1
fi
if ! "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
  echo "setup-gpu-host: $("$python" --version 2>&1) is too old; the trainer needs Python 3.10 or newer" >&2
  exit 1
fi
if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "setup-gpu-host: warning: nvidia-smi not found; training needs an NVIDIA GPU with a working driver" >&2
fi

echo "setup-gpu-host: venv $venv" >&2
mkdir -p "$(dirname "$venv")"
if [[ ! -x "$venv/bin/python" ]]; then
  "$python" -m venv "$venv"
fi
vpy="$venv/bin/python"
"$vpy" -m pip install --upgrade --quiet pip
if [[ -n "$torch_index" ]]; then
  torch_pin="$(grep -o '"torch==[^"]*"' "$root/trainer/pyproject.toml" | tr -d '"')"
  echo "setup-gpu-host: installing $torch_pin from $torch_index" >&2
  "$vpy" -m pip install "$torch_pin" --index-url "$torch_index"
fi
echo "setup-gpu-host: installing trainer${extras} (this downloads torch and CUDA libraries the first time)" >&2
"$vpy" -m pip install "$root/trainer${extras}"

echo "setup-gpu-host: checking the host" >&2
if [[ -n "$spec" ]]; then
  "$vpy" -m booth_trainer check --spec "$spec"
else
  "$vpy" -m booth_trainer check
fi
echo "setup-gpu-host: done. The worker uses $vpy (or set BOOTH_PYTHON=$vpy)." >&2
