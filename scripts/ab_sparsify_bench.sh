#!/usr/bin/env bash
# A/B of `sparsify bench` between two binaries on this machine, in one run: OLD and NEW alternate,
# 3 rounds per case, 5 timed repeats each; prints medians and NEW/OLD ratios as a markdown table.
#
#   scripts/ab_sparsify_bench.sh OLD_SPARSIFY NEW_SPARSIFY
#
# Build OLD from an earlier commit: git archive REV | tar -x -C /tmp/old && (cd /tmp/old && cargo build --release -p sparsify)
set -euo pipefail
old=${1:?usage: scripts/ab_sparsify_bench.sh OLD_SPARSIFY NEW_SPARSIFY}
new=${2:?usage: scripts/ab_sparsify_bench.sh OLD_SPARSIFY NEW_SPARSIFY}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
cases=(
 "--dtype f32"
 "--dtype f16"
 "--dtype bf16"
 "--dtype f64"
 "--dtype f32 --block 2x2 --norm l2"
 "--dtype f32 --sparsity-level 1.0 --zeros-per-block 2"
 "--dtype f32 --cols 8"
)
for c in "${cases[@]}"; do
  for round in 1 2 3; do
    for bin in old new; do
      [[ $bin == old ]] && exe=$old || exe=$new
      j=$("$exe" bench --repeat 5 --report json $c 2>/dev/null | tr -d '\n')
      echo "{\"case\": \"$c\", \"bin\": \"$bin\", \"round\": $round, \"r\": $j}" >> "$out"
    done
  done
done
python3 - "$out" <<'PY'
import json, statistics as st, sys
rows=[json.loads(l) for l in open(sys.argv[1])]
cases=[]
for r in rows:
    if r['case'] not in cases: cases.append(r['case'])
print('| case | step old / new ms | step new/old | squash old / new ms | squash new/old |')
print('|---|---|---|---|---|')
for c in cases:
    m={}
    for b in ('old','new'):
        rs=[r['r'] for r in rows if r['case']==c and r['bin']==b]
        m[b]=(st.median(x['step_seconds'] for x in rs)*1e3, st.median(x['squash_seconds'] for x in rs)*1e3)
    print(f"| `{c}` | {m['old'][0]:.1f} / {m['new'][0]:.1f} | {m['new'][0]/m['old'][0]:.2f} | {m['old'][1]:.1f} / {m['new'][1]:.1f} | {m['new'][1]/m['old'][1]:.2f} |")
PY
