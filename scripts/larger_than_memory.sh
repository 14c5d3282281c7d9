#!/usr/bin/env bash
# Proves the CLI's memory bound on a checkpoint larger than the memory the process may use.
#
#   scripts/larger_than_memory.sh [SPARSIFY]        (default: target/release/sparsify)
#
# Writes a checkpoint of TENSORS (4) f32 tensors of TENSOR_MIB (1024) MiB each, 64 columns (4 GiB
# by default), then runs `sparsify run` on it:
#   * inside a memory cgroup limited to LIMIT_MIB (512) MiB, less than the checkpoint and less
#     than one tensor, where the machine allows one (cgroup v2 `memory.max` or v1
#     `memory.limit_in_bytes`, writable as root); the page cache of the mapped input and of the
#     output counts against that limit too and is reclaimed as the run goes;
#   * polling the process's peak anonymous memory (`RssAnon` in /proc/PID/status: heap, stacks,
#     no mapped file pages; RSS would count the mapped input) every 5 ms.
# It checks that peak RssAnon stays within the README's formula, 10% of the largest selected
# tensor plus 8 MiB, that the run succeeded and that the output is right (half its values zero),
# and exits non-zero otherwise. Env: DIR (a folder on a disk with 2 × the checkpoint free).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:-target/release/sparsify}")
tensors=${TENSORS:-4}
tensor_mib=${TENSOR_MIB:-1024}
limit_mib=${LIMIT_MIB:-512}
dir=$(mktemp -d "${DIR:-${TMPDIR:-/tmp}}/larger-than-memory-XXXXXX")
cg=""
cleanup() {
  rm -rf "$dir"
  if [[ -n $cg && -d $cg ]]; then rmdir "$cg" 2>/dev/null || true; fi
}
trap cleanup EXIT

rows=$((tensor_mib * 1024 * 1024 / 256))
bytes=$((rows * 256))
python3 - "$dir/in.safetensors" "$tensors" "$rows" "$bytes" <<'EOF'
import json, struct, sys
path, n, rows, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
h = {f"emb.{i}.weight": {"dtype": "F32", "shape": [rows, 64], "data_offsets": [i * size, (i + 1) * size]}
     for i in range(n)}
h = json.dumps(h).encode()
h += b" " * ((8 - len(h) % 8) % 8)
open(path, "wb").write(struct.pack("<Q", len(h)) + h)
EOF
# Random finite f32 values: random bytes with every byte's top bit cleared (no all-ones exponent).
head -c $((bytes * tensors)) /dev/urandom | tr '\200-\377' '\000-\177' >> "$dir/in.safetensors"
sync "$dir/in.safetensors"
echo "checkpoint: $(du -h "$dir/in.safetensors" | cut -f1), $tensors tensors of $tensor_mib MiB"

# A memory cgroup, if this machine lets us make one.
if [[ -w /sys/fs/cgroup/cgroup.subtree_control && -f /sys/fs/cgroup/cgroup.controllers ]] &&
  grep -qw memory /sys/fs/cgroup/cgroup.controllers; then
  cg=/sys/fs/cgroup/sparsify-ltm-$$
  mkdir "$cg" 2>/dev/null && echo $((limit_mib << 20)) > "$cg/memory.max" || cg=""
  limit_file=memory.max
elif [[ -w /sys/fs/cgroup/memory ]]; then
  cg=/sys/fs/cgroup/memory/sparsify-ltm-$$
  mkdir "$cg" 2>/dev/null && echo $((limit_mib << 20)) > "$cg/memory.limit_in_bytes" || cg=""
  limit_file=memory.limit_in_bytes
fi
if [[ -n $cg ]]; then
  echo "memory cgroup: $cg, $limit_file = $limit_mib MiB (the checkpoint is $((tensors * tensor_mib)) MiB)"
else
  echo "no writable memory cgroup here: reporting peak RssAnon only"
fi

python3 - "$bin" "$dir" "$cg" "$tensor_mib" <<'EOF'
import json, os, subprocess, sys, time
bin, d, cg, tensor_mib = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def enter_cgroup():
    if cg:
        with open(os.path.join(cg, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
# Evict the input from the page cache (it was just written, and its pages are charged to this
# shell's cgroup): the run must read it from disk, and its page cache is charged to its own cgroup.
fd = os.open(f"{d}/in.safetensors", os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
os.close(fd)
args = [bin, "run", f"{d}/in.safetensors", "-o", f"{d}/out.safetensors", "--report", "json", "-q"]
t0 = time.time()
p = subprocess.Popen(args, stdout=subprocess.PIPE, preexec_fn=enter_cgroup)
peak_anon = peak_hwm = 0
def field(status, key):
    for line in status.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0
while p.poll() is None:
    try:
        with open(f"/proc/{p.pid}/status") as f:
            s = f.read()
        peak_anon = max(peak_anon, field(s, "RssAnon"))
        peak_hwm = max(peak_hwm, field(s, "VmHWM"))
    except (FileNotFoundError, ProcessLookupError):
        break
    time.sleep(0.005)
out, _ = p.communicate()
secs = time.time() - t0
if p.returncode != 0:
    sys.exit(f"FAIL: sparsify run exited with {p.returncode}")
r = json.loads(out)
largest = tensor_mib << 20
bound = 0.10 * largest + (8 << 20)
mib = lambda b: f"{b / 2**20:.1f} MiB"
print(f"run: {secs:.1f} s, sparsity {r['totals']['sparsity']:.3f}")
print(f"peak RssAnon (polled every 5 ms): {mib(peak_anon)}; peak heap (the binary's counting allocator): "
      f"{mib(r['totals']['peak_alloc_bytes'])}; peak RSS (VmHWM, counts mapped file pages): {mib(peak_hwm)}")
if cg:
    for name in ("memory.peak", "memory.max_usage_in_bytes", "memory.failcnt"):
        path = os.path.join(cg, name)
        if os.path.exists(path):
            v = int(open(path).read().split()[0])
            print(f"cgroup {name}: {mib(v) if 'fail' not in name else v}")
print(f"README bound (10% of the largest selected tensor, {tensor_mib} MiB, plus 8 MiB): {mib(bound)}")
if abs(r["totals"]["sparsity"] - 0.5) > 0.01:
    sys.exit("FAIL: the output is not half zeros")
if peak_anon > bound:
    sys.exit(f"FAIL: peak RssAnon {mib(peak_anon)} is above the bound {mib(bound)}")
print(f"PASS: peak anonymous memory is {peak_anon / bound:.2f} of the bound, "
      f"{peak_anon / (largest * len(r['tensors'])):.3f} of the checkpoint's tensors")
EOF
