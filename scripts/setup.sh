#!/usr/bin/env bash
# Installs everything speechtok needs, on a fresh Debian machine: system packages, then the package itself.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
# espeak-ng / flite synthesize the test corpora; libsndfile reads audio; sox is handy for users;
# build-essential compiles pesq and pyworld (extra `eval`), which PyPI ships as source only.
if command -v apt-get >/dev/null; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq espeak-ng flite sox libsndfile1 build-essential >/dev/null
fi
PY=${PYTHON:-python3}
# Keep a torch that is already installed (a GPU machine's CUDA build); otherwise take the CPU build 2.13.0.
if ! $PY -c "import torch" 2>/dev/null; then
    $PY -m pip install -q "torch==2.13.0"
fi
$PY -m pip install -q -e '.[dev]'
$PY -m pip install -q --no-deps "pesto-pitch>=2.0"  # F0 tracker; its torchaudio requirement only reads files
echo "speechtok installed: $($PY -c 'import speechtok, torch, transformers; print(speechtok.__version__, "torch", torch.__version__, "transformers", transformers.__version__)')"
