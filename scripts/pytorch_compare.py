#!/usr/bin/env python3
"""Time PyTorch's DataNormSparsifier on a generated table, and keep its mask for comparison.

Usage:
  pytorch_compare.py OUT_DIR [--rows R] [--cols C] [--block HxW] [--zeros-per-block N]
                     [--sparsity-level F] [--norm L1|L2] [--seed S]

Writes OUT_DIR/table.safetensors (tensor "table", f32, uniform in (-1, 1), so block scores do not
tie) and OUT_DIR/torch_mask.safetensors (tensor "table", U8, 1 = keep), and prints one JSON object
with PyTorch's step and squash seconds and its peak extra memory. Then compare with sparsify:

  sparsify run OUT_DIR/table.safetensors -o OUT_DIR/out.safetensors --masks OUT_DIR/masks.safetensors \
      --block HxW --sparsity-level F --norm l1 [--zeros-per-block N]
  python3 - <<'EOF'   # or any safetensors reader
  from safetensors.numpy import load_file
  a = load_file("OUT_DIR/torch_mask.safetensors")["table"]; b = load_file("OUT_DIR/masks.safetensors")["table"]
  print("masks equal:", (a == b).all(), "differing:", int((a != b).sum()))
  EOF

Needs torch (2.x, CPU is enough), numpy and safetensors. Not used by the tests: it is how the
PyTorch ratio in the README and the closing notes is measured.
"""
import argparse
import json
import os
import resource
import time

import numpy as np
import torch
from safetensors.numpy import save_file
from torch.ao.pruning._experimental.data_sparsifier import DataNormSparsifier


def peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("--rows", type=int, default=1 << 20)
    ap.add_argument("--cols", type=int, default=64)
    ap.add_argument("--block", default="1x4")
    ap.add_argument("--zeros-per-block", type=int, default=None)
    ap.add_argument("--sparsity-level", type=float, default=0.5)
    ap.add_argument("--norm", default="L1")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    bh, bw = (int(x) for x in a.block.lower().split("x"))
    os.makedirs(a.out_dir, exist_ok=True)

    rng = np.random.default_rng(a.seed)
    table = rng.uniform(-1.0, 1.0, size=(a.rows, a.cols)).astype(np.float32)
    save_file({"table": table}, os.path.join(a.out_dir, "table.safetensors"))
    data = torch.from_numpy(table.copy())
    base_rss = peak_rss_bytes()

    sp = DataNormSparsifier(
        sparsity_level=a.sparsity_level,
        sparse_block_shape=(bh, bw),
        zeros_per_block=a.zeros_per_block,
        norm=a.norm.upper(),
    )
    sp.add_data("table", data)
    t0 = time.perf_counter()
    sp.step()
    step_s = time.perf_counter() - t0
    mask = sp.get_mask("table").detach().to(torch.uint8).numpy().copy()
    t0 = time.perf_counter()
    sp.squash_mask()
    squash_s = time.perf_counter() - t0
    save_file({"table": mask}, os.path.join(a.out_dir, "torch_mask.safetensors"))

    nbytes = table.nbytes
    print(json.dumps({
        "torch": torch.__version__,
        "rows": a.rows, "cols": a.cols, "block": [bh, bw],
        "zeros_per_block": a.zeros_per_block, "sparsity_level": a.sparsity_level, "norm": a.norm,
        "bytes": nbytes,
        "step_seconds": step_s, "step_gb_per_s": nbytes / step_s / 1e9,
        "squash_seconds": squash_s, "squash_gb_per_s": nbytes / squash_s / 1e9,
        "peak_extra_bytes": max(0, peak_rss_bytes() - base_rss),
        "torch_threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
