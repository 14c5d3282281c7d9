#!/usr/bin/env python3
"""EmbeddingBag speed: ours over the dense table and its compact forms, next to PyTorch's
F.embedding_bag and its quantized FBGEMM bags, on the same table and the same indices, in one run.

Usage:
  scripts/lookup_speed.py [--rows R] [--rounds N] [--out DIR]

  python: an interpreter with torch and numpy, e.g. the venv scripts/python-env.sh prints:
    "$(scripts/python-env.sh)/bin/python" scripts/lookup_speed.py

What it does, in one run:
  1. a R x 64 f32 table of N(0, 1) values (numpy, seed 3) and 2048 bags of 20 Zipf(1.05) indices
     (the hot rows scattered over the table: the distribution of benches/compact.rs);
  2. `sparsify run` sparsifies it at level 0.8 with (1, 4) blocks (L1): the dense file, and the
     compact f32 / int8 / int4 files (`--format compact [--quantize]`);
  3. ours: the `lookup_speed` example times EmbeddingBag (sum) over the dense table and each
     compact file, as read and copied into huge pages (`*_huge_pages`), each with `forward` and
     with `forward_into` (`*_into`, the output reused), its cases in turn for N rounds (medians);
  4. PyTorch, on the same squashed dense table and indices, its cases in turn for N rounds:
     F.embedding_bag (sum), torch.ops.quantized.embedding_bag_byte_rowwise_offsets over
     embedding_bag_byte_prepack, and embedding_bag_4bit_rowwise_offsets over
     embedding_bag_4bit_prepack (FBGEMM's int8 / int4 inference bags);
  5. ours again, to show how far the machine drifted while PyTorch ran.

Both use every core (torch.set_num_threads(os.cpu_count()); rayon's default). It prints a table of
looked-up rows per second, each as a ratio to our dense bag (the mean of our two runs), and the
ratios of ours to PyTorch's counterparts; `--json` prints the same as one JSON object. PyTorch's
tables are numpy arrays, which numpy backs with transparent huge pages: the like-for-like
figures are ours `*_huge_pages` (a new output per call, as PyTorch's ops make one).
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

BAGS, BAG, COLS = 2048, 20, 64
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def zipf_indices(rows, n, seed):
    """Rank k with probability proportional to 1 / k^1.05 (inverse CDF), rank k mapped to row
    (k * a large odd number) mod rows, so the hot rows are spread over the table."""
    cdf = np.cumsum(1.0 / np.arange(1, rows + 1, dtype=np.float64) ** 1.05)
    u = np.random.default_rng(seed).random(n) * cdf[-1]
    k = np.minimum(np.searchsorted(cdf, u, side="left"), rows - 1).astype(np.uint64)
    with np.errstate(over="ignore"):
        return ((k * np.uint64(0x9E3779B97F4A7C15 | 1)) % np.uint64(rows)).astype(np.int64)


def write_safetensors(path, name, array):
    header = {name: {"dtype": "F32", "shape": list(array.shape), "data_offsets": [0, array.nbytes]}}
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        f.write(np.ascontiguousarray(array, dtype="<f4").tobytes())


def read_f32(path, name):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        t = header[name]
        assert t["dtype"] == "F32", t
        a, b = t["data_offsets"]
        f.seek(8 + n + a)
        return np.frombuffer(f.read(b - a), dtype="<f4").reshape(t["shape"])


def ours(example, dense, indices, rounds, compact):
    out = subprocess.run([example, dense, indices, str(BAG), str(rounds), *compact],
                         check=True, capture_output=True, text=True).stdout
    return {r["case"]: r["rows_per_s"] for r in map(json.loads, out.splitlines())}


def torch_cases(weight, indices, rounds):
    idx = torch.from_numpy(indices)
    offsets = torch.arange(0, len(indices), BAG, dtype=torch.int64)
    w = torch.from_numpy(weight.copy())
    q8 = torch.ops.quantized.embedding_bag_byte_prepack(w)
    q4 = torch.ops.quantized.embedding_bag_4bit_prepack(w)
    cases = {
        "torch_F.embedding_bag_f32": lambda: F.embedding_bag(idx, w, offsets, mode="sum"),
        "torch_embedding_bag_byte_rowwise_offsets": lambda: torch.ops.quantized.embedding_bag_byte_rowwise_offsets(
            q8, idx, offsets, False, 0, False, None, None, False),
        "torch_embedding_bag_4bit_rowwise_offsets": lambda: torch.ops.quantized.embedding_bag_4bit_rowwise_offsets(
            q4, idx, offsets, False, 0, False, None, None, False),
    }
    times = {k: [] for k in cases}
    with torch.inference_mode():
        for f in cases.values():
            f()
        for _ in range(rounds):
            for k, f in cases.items():
                t = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t)
    return {k: len(indices) / sorted(v)[len(v) // 2] for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1 << 20)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--out", help="keep the files here (default: a temp dir, removed)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count())

    subprocess.run(["cargo", "build", "-q", "--release", "-p", "sparsify",
                    "-p", "data-sparsifier", "--example", "lookup_speed", "--bin", "sparsify"],
                   check=True, cwd=ROOT)
    sparsify = os.path.join(ROOT, "target", "release", "sparsify")
    example = os.path.join(ROOT, "target", "release", "examples", "lookup_speed")

    tmp = None if args.out else tempfile.TemporaryDirectory()
    d = args.out or tmp.name
    os.makedirs(d, exist_ok=True)
    table = np.random.default_rng(3).standard_normal((args.rows, COLS), dtype=np.float32)
    write_safetensors(os.path.join(d, "table.safetensors"), "emb", table)
    del table
    indices = zipf_indices(args.rows, BAGS * BAG, 11)
    indices.astype("<i8").tofile(os.path.join(d, "indices.i64"))

    common = ["--tensors", "emb", "--sparsity-level", "0.8", "--block", "1x4", "--quiet", "--force"]
    run = lambda out, *extra: subprocess.run(
        [sparsify, "run", os.path.join(d, "table.safetensors"), "-o", os.path.join(d, out), *common, *extra],
        check=True, stdout=subprocess.DEVNULL)
    run("dense.safetensors")
    compact = []
    for enc in ["f32", "int8", "int4"]:
        out = f"compact_{enc}.safetensors"
        run(out, "--format", "compact", *([] if enc == "f32" else ["--quantize", enc]))
        compact.append(os.path.join(d, out))
    dense = os.path.join(d, "dense.safetensors")
    idx_file = os.path.join(d, "indices.i64")

    first = ours(example, dense, idx_file, args.rounds, compact)
    theirs = torch_cases(read_f32(dense, "emb"), indices, args.rounds)
    second = ours(example, dense, idx_file, args.rounds, compact)
    mine = {k: (first[k] + second[k]) / 2 for k in first}
    base = mine["dense_f32"]
    report = {
        "rows": args.rows, "bags": BAGS, "bag": BAG, "rounds": args.rounds,
        "threads": os.cpu_count(), "torch": torch.__version__,
        "rows_per_s": {**mine, **theirs},
        "first_and_second_run_of_ours": {k: [first[k], second[k]] for k in first},
        "ratio_to_our_dense": {k: v / base for k, v in {**mine, **theirs}.items()},
        # PyTorch's tables are numpy arrays here, which numpy backs with huge pages: the like
        # for like is ours with huge pages, a new output per call (as PyTorch's ops make one).
        "ours_over_torch": {
            f"{ours_case}{suffix} / {theirs_case}": mine[ours_case + suffix] / theirs[theirs_case]
            for ours_case, theirs_case in [
                ("dense_f32", "torch_F.embedding_bag_f32"),
                ("compact_f32", "torch_F.embedding_bag_f32"),
                ("compact_int8", "torch_embedding_bag_byte_rowwise_offsets"),
                ("compact_int4", "torch_embedding_bag_4bit_rowwise_offsets"),
            ]
            for suffix in ["_huge_pages", "_huge_pages_into", ""]
        },
    }
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"{args.rows} x {COLS} f32 at level 0.8, (1, 4) blocks; {BAGS} bags of {BAG} Zipf(1.05) "
              f"indices, sum; {args.rounds} interleaved rounds, medians; {os.cpu_count()} threads; "
              f"torch {torch.__version__}")
        print(f"{'case':<44} {'Mrows/s':>9} {'vs our dense':>13}")
        for k, v in report["rows_per_s"].items():
            print(f"{k:<44} {v / 1e6:>9.2f} {v / base:>13.3f}")
        print("ours / PyTorch:")
        for k, v in report["ours_over_torch"].items():
            print(f"  {k:<68} {v:>7.3f}")
        print("our two runs (before and after PyTorch's), Mrows/s: " + ", ".join(
            f"{k} {a / 1e6:.1f}/{b / 1e6:.1f}" for k, (a, b) in report["first_and_second_run_of_ours"].items()))
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
