#!/usr/bin/env python3
"""DataNormSparsifier.step() from Python on a 1M x 64 f32 nn.EmbeddingBag: ours (data_sparsifier,
the Rust kernel) against PyTorch's (torch.ao.pruning._experimental.data_sparsifier), side by side,
interleaved in one run, plus the extra memory of our step and whether the masks agree.

Usage: python scripts/python_bench.py [--rows 1000000] [--cols 64] [--reps 3] [--torch-reps 2]
       [--block 1x4] [--sparsity-level 0.5]

Run it in the venv that has torch and the installed wheel (scripts/python-env.sh prints it; build
with scripts/python-tests.sh or `maturin build --release`). Prints one JSON object.
Extra memory is the peak resident set during our step above the resident set before it (Linux:
VmHWM after resetting it through /proc/self/clear_refs), next to the packed mask's size.
"""
import argparse
import json
import statistics
import time
import warnings

import torch
from torch import nn

from data_sparsifier import DataNormSparsifier as Ours

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from torch.ao.pruning._experimental.data_sparsifier import DataNormSparsifier as Theirs


def rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--cols", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--torch-reps", type=int, default=2)
    ap.add_argument("--block", default="1x4")
    ap.add_argument("--sparsity-level", type=float, default=0.5)
    a = ap.parse_args()
    block = tuple(int(v) for v in a.block.split("x"))
    torch.manual_seed(0)
    emb = nn.EmbeddingBag(a.rows, a.cols)  # f32, N(0, 1): no score ties
    config = dict(sparsity_level=a.sparsity_level, sparse_block_shape=block)

    ours = Ours(**config)
    ours.add_data("emb", emb)
    ours.step()  # warm-up (thread pool, page faults of the scratch)

    theirs = Theirs(**config)
    theirs.add_data("emb", emb)

    t_ours, t_theirs, extra = [], [], []
    for rep in range(max(a.reps, a.torch_reps)):
        if rep < a.reps:
            before = rss_kib("VmRSS")
            measured = reset_peak()
            t0 = time.perf_counter()
            ours.step()
            t_ours.append(time.perf_counter() - t0)
            if measured:
                extra.append((rss_kib("VmHWM") - before) * 1024)
        if rep < a.torch_reps:
            t0 = time.perf_counter()
            theirs.step()
            t_theirs.append(time.perf_counter() - t0)

    kept, total, mask_bytes = ours._native.mask_stats("emb")
    mine = ours.get_mask("emb")
    ref = theirs.get_mask("emb")
    differing = int((mine != ref.to(mine.dtype)).sum())
    med_o, med_t = statistics.median(t_ours), statistics.median(t_theirs)
    print(json.dumps({
        "table": [a.rows, a.cols], "dtype": "float32", **{k: str(v) for k, v in config.items()},
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "ours_step_s": t_ours, "pytorch_step_s": t_theirs,
        "ratio_median": round(med_t / med_o, 1),
        "masks_differing_cells": differing, "density": kept / total,
        "ours_extra_peak_bytes": extra, "packed_mask_bytes": mask_bytes,
        "table_bytes": a.rows * a.cols * 4,
    }, indent=1))


if __name__ == "__main__":
    main()
