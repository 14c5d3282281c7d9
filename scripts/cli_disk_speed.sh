#!/usr/bin/env bash
# `sparsify run` end to end against the disk's own limit, in one run: each round times every case
# of every binary given, in turn, each right after `cp IN OUT && sync OUT` on the same 1 GiB, and
# prints the medians and each case's ratio to its cp+sync (the issue's target: at most 1.5).
#
#   scripts/cli_disk_speed.sh [SPARSIFY ...]     (default: target/release/sparsify)
#
# Env: SIZE_MIB (1024: a 1 GiB single-tensor f32 file, 64 columns), ROUNDS (7), DIR (a temp dir
# on the disk under test; it needs about 5 × SIZE_MIB free). Cases: a single file; with --masks;
# the same tensor split into a 4-shard checkpoint (4 tensors, index included). Pass an old and a
# new binary to A/B them in the same rounds.
set -euo pipefail
cd "$(dirname "$0")/.."
bins=("$@")
[[ ${#bins[@]} -gt 0 ]] || bins=(target/release/sparsify)
size_mib=${SIZE_MIB:-1024}
rounds=${ROUNDS:-7}
dir=$(mktemp -d "${DIR:-${TMPDIR:-/tmp}}/cli-disk-XXXXXX")
trap 'rm -rf "$dir"' EXIT

# A safetensors file of one f32 tensor [rows, 64] of random finite values: random bytes with the
# top bit of every byte cleared, so no exponent is all ones (no NaN or infinity).
make_file() { # PATH NAME ROWS
  local n=$(($3 * 64 * 4))
  python3 - "$1" "$2" "$3" "$n" <<'EOF'
import json, struct, sys
path, name, rows, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
h = json.dumps({name: {"dtype": "F32", "shape": [rows, 64], "data_offsets": [0, n]}}).encode()
h += b" " * ((8 - len(h) % 8) % 8)
open(path, "wb").write(struct.pack("<Q", len(h)) + h)
EOF
  head -c "$n" /dev/urandom | tr '\200-\377' '\000-\177' >> "$1"
}
rows=$((size_mib * 1024 * 1024 / 256))
make_file "$dir/in.safetensors" emb.weight "$rows"
mkdir "$dir/ck"
map=""
for s in 1 2 3 4; do
  f=$(printf 'model-%05d-of-00004.safetensors' "$s")
  make_file "$dir/ck/$f" "emb.$s.weight" $((rows / 4))
  map+="${map:+, }\"emb.$s.weight\": \"$f\""
done
echo "{\"metadata\": {}, \"weight_map\": {$map}}" > "$dir/ck/model.safetensors.index.json"
cat "$dir/in.safetensors" "$dir"/ck/*.safetensors > /dev/null # into the page cache, as cp finds it

now() { date +%s.%N; }
results="$dir/results"
for ((r = 1; r <= rounds; r++)); do
  for b in "${bins[@]}"; do
    for c in single masks sharded; do
      # cp+sync right before each case, so each ratio compares two runs seconds apart.
      rm -rf "$dir/out"*
      t0=$(now); cp "$dir/in.safetensors" "$dir/out.cp" && sync "$dir/out.cp"; t1=$(now)
      rm -rf "$dir/out"*
      case $c in
        single) args=("$dir/in.safetensors" -o "$dir/out.st") ;;
        masks) args=("$dir/in.safetensors" -o "$dir/out.st" --masks "$dir/out.masks") ;;
        sharded) args=("$dir/ck" -o "$dir/out.dir") ;;
      esac
      t2=$(now); "$b" run "${args[@]}" -q > /dev/null; t3=$(now)
      echo "$c $b $(echo "$t1 - $t0" | bc) $(echo "$t3 - $t2" | bc)" >> "$results"
    done
  done
done
python3 - "$results" "$size_mib" "$rounds" <<'EOF'
import statistics, sys
# Each line: case, binary, cp+sync seconds just before, the case's seconds.
runs = {}
for line in open(sys.argv[1]):
    case, b, cp, t = line.split()
    runs.setdefault((case, b), []).append((float(cp), float(t)))
cps = [cp for v in runs.values() for cp, _ in v]
print(f"{sys.argv[2]} MiB f32, {sys.argv[3]} rounds; cp IN OUT && sync OUT: median {statistics.median(cps):.3f} s "
      f"(min {min(cps):.3f}, max {max(cps):.3f})\n")
print("| case | binary | median seconds | median ratio to the cp+sync just before | min–max ratio |")
print("|---|---|---|---|---|")
for (case, b), v in runs.items():
    ratios = [t / cp for cp, t in v]
    print(f"| {case} | {b} | {statistics.median(t for _, t in v):.3f} | {statistics.median(ratios):.2f} | "
          f"{min(ratios):.2f}–{max(ratios):.2f} |")
EOF
