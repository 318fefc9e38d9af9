#!/usr/bin/env bash
# Build .wheelhouse/ (git-ignored): speechtok as a wheel plus the packages it needs that the GPU device image
# lacks, as binary wheels for the device's Python, to travel with `benchmarks/gpu_suite.py` in the device
# tool's `carry` (64 MiB in all, with the working tree) and install there offline with
# `pip install --no-index --no-deps`. See benchmarks/README.md for the run command.
#
#   scripts/build_wheelhouse.sh            # Python 3.12 (the device image's, per /work/.library/device/KINDS.md)
#   scripts/build_wheelhouse.sh 3.11       # another Python version
#   NO_FAISS=1 scripts/build_wheelhouse.sh # without faiss-cpu (the k-means part then times torch on the CPU)
#
# The device image already has torch, transformers, safetensors, numpy, click, tqdm, pyyaml, tensorboard,
# matplotlib, scipy, packaging and typing-extensions. It lacks soxr and soundfile (with cffi/pycparser),
# which speechtok imports, and faiss-cpu, the k-means baseline. The eval extras (pesq, pystoi, pyworld) are
# not needed by the suite and stay out (tests/test_gpu_suite.py checks they are not imported on its path).
set -euo pipefail
cd "$(dirname "$0")/.."
PYV="${1:-3.12}"
OUT=.wheelhouse
LIMIT_MIB=48  # of the 64 MiB the device call may carry, leaving the rest for the working tree
# Versions this checkout is tested with (pip show here); change them together with the main environment.
PACKAGES=(soxr==1.1.0 soundfile==0.14.0 cffi==2.0.0 pycparser==3.0)
[ -z "${NO_FAISS:-}" ] && PACKAGES+=(faiss-cpu==1.15.1)

rm -rf "$OUT"
mkdir -p "$OUT"
made=()  # remove only the build outputs this run creates
for d in build speechtok.egg-info; do [ -e "$d" ] || made+=("$d"); done
python3 -m pip wheel -q --no-deps --no-build-isolation -w "$OUT" .
for d in "${made[@]}"; do rm -rf "$d"; done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$OUT" "${PACKAGES[@]}"

echo "wheelhouse for Python $PYV in $OUT:"
for w in "$OUT"/*.whl; do
    printf '  %-90s %6.1f MiB\n' "$(basename "$w")" "$(echo "$(stat -c %s "$w") / 1048576" | bc -l)"
    unzip -p "$w" '*.dist-info/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' | sed 's/^/      /' || true
done
total=$(du -cb "$OUT"/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
printf 'total: %.1f MiB of wheels + %.1f MiB of tracked files (the device call carries at most 64 MiB)\n' \
    "$(echo "$total / 1048576" | bc -l)" "$(echo "$tree / 1048576" | bc -l)"
if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
    echo "error: the wheelhouse is over $LIMIT_MIB MiB" >&2
    exit 1
fi
