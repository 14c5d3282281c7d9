#!/usr/bin/env bash
# The compact format read without this library: `sparsify demo` makes a DLRM-like checkpoint,
# `sparsify run --format compact` writes its compact form, and scripts/read_compact.py (numpy and
# json only) expands it and compares every tensor, bit for bit, with `sparsify expand`'s output and
# with `sparsify run`'s dense output.
#
#   scripts/check_compact.sh PYTHON     # PYTHON: an interpreter with numpy
#
# Uses target/debug/sparsify (built here if missing; set SPARSIFY to use another binary).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:?usage: scripts/check_compact.sh PYTHON (an interpreter with numpy)}
"$python" -c 'import numpy' || { echo "check_compact: $python has no numpy" >&2; exit 2; }
sparsify=${SPARSIFY:-target/debug/sparsify}
[[ -x $sparsify ]] || cargo build -q -p sparsify
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

"$sparsify" demo --out "$dir/demo" --scale 0.05 --quiet >/dev/null
in=$dir/demo/dlrm.safetensors
# Every float tensor, f32 and the rest, at 0.8 with (1, 4) blocks.
common=(--tensors '*' --exclude train_step --sparsity-level 0.8 --block 1x4 --quiet)
"$sparsify" run "$in" -o "$dir/compact.safetensors" --format compact "${common[@]}" >/dev/null
"$sparsify" run "$in" -o "$dir/dense.safetensors" "${common[@]}" >/dev/null
"$sparsify" expand "$dir/compact.safetensors" -o "$dir/expanded.safetensors" --quiet
"$sparsify" inspect "$dir/compact.safetensors" | grep -A100 '^compact table' | head -20

"$python" scripts/read_compact.py "$dir/compact.safetensors" "$dir/expanded.safetensors"
"$python" scripts/read_compact.py "$dir/compact.safetensors" "$dir/dense.safetensors"
# Quantized: the reader's dequantized tables equal expand's (to f32 rounding).
for code in int8 int4 int2; do
    "$sparsify" run "$in" -o "$dir/$code.safetensors" --format compact --quantize "$code" "${common[@]}" >/dev/null
    "$sparsify" expand "$dir/$code.safetensors" -o "$dir/$code.dense.safetensors" --quiet
    "$python" scripts/read_compact.py "$dir/$code.safetensors" "$dir/$code.dense.safetensors"
done
echo "check_compact: ok"
