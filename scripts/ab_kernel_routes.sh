#!/usr/bin/env bash
# Interleaved A/B of the DataNorm kernel routes (the docs/data-norm.md "Kernel routes" table): for
# each table shape x dtype x route, OLD then NEW, one `sparsify bench --repeat $REP` each (level
# 0.5, L1); prints a markdown table of step/read and squash/copy, before and after, with the targets
# (f32 as issued, f16/bf16 half of them).
#
#   scripts/ab_kernel_routes.sh OLD_SPARSIFY NEW_SPARSIFY > table.md
#   (SHAPES="1000000x64 4000000x16 4000000x64" DTYPES="f32 bf16 f16" REP=7 OUT=runs.jsonl)
set -euo pipefail
old=${1:?usage: scripts/ab_kernel_routes.sh OLD_SPARSIFY NEW_SPARSIFY}
new=${2:?usage: scripts/ab_kernel_routes.sh OLD_SPARSIFY NEW_SPARSIFY}
rep=${REP:-7}
out=${OUT:-$(mktemp)}; : > "$out"
shapes=${SHAPES:-"1000000x64 4000000x16 4000000x64"}
dtypes=${DTYPES:-"f32 bf16 f16"}
routes=("(1,4) whole:--block 1x4" "(4,4) whole:--block 4x4" "(1,4) 2 zeros:--block 1x4 --zeros-per-block 2" "(4,4) 4 zeros:--block 4x4 --zeros-per-block 4")
for s in $shapes; do r=${s%x*}; c=${s#*x}
 for d in $dtypes; do for rt in "${routes[@]}"; do n=${rt%%:*}; f=${rt#*:}
  for bin in old new; do [[ $bin == old ]] && exe=$old || exe=$new
   j=$("$exe" bench --rows $r --cols $c --dtype $d $f --sparsity-level 0.5 --repeat $rep --report json 2>/dev/null | tr -d '\n')
   echo "{\"route\": \"$n\", \"shape\": \"$s\", \"dtype\": \"$d\", \"bin\": \"$bin\", \"r\": $j}" >> "$out"
  done
 done; done; done
python3 - "$out" <<'PY'
import json, sys
rows=[json.loads(l) for l in open(sys.argv[1])]
tgt={'(1,4) whole':0.7,'(4,4) whole':0.7,'(1,4) 2 zeros':0.5,'(4,4) 4 zeros':0.4}
print('| route | table | dtype | step/read before | step/read after | target | squash/copy before | squash/copy after |')
print('|---|---|---|---|---|---|---|---|')
seen=[]; met=0; tot=0; sq_ok=0
for r in rows:
    key=(r['route'],r['shape'],r['dtype'])
    if key in seen: continue
    o=[x['r'] for x in rows if (x['route'],x['shape'],x['dtype'])==key and x['bin']=='old']
    n=[x['r'] for x in rows if (x['route'],x['shape'],x['dtype'])==key and x['bin']=='new']
    if not o or not n: continue
    seen.append(key); o=o[0]; n=n[0]
    t=tgt[key[0]]*(1 if key[2]=='f32' else 0.5)
    ok=n['step_vs_read']>=t; met+=ok; tot+=1; sq_ok+= n['squash_vs_copy']>=0.6
    print(f"| {key[0]} | {key[1].replace('x',' × ').replace('000000','M ').replace('M  ×','M ×')} | {key[2]} | {o['step_vs_read']:.2f} | **{n['step_vs_read']:.2f}** | ≥ {t:.2f} {'met' if ok else 'not met'} | {o['squash_vs_copy']:.2f} | {n['squash_vs_copy']:.2f} |")
print(f"\nstep targets met: {met}/{tot}; squash >= 0.6: {sq_ok}/{tot}", file=sys.stderr)
PY
