#!/usr/bin/env python3
"""Check that `sparsify run` output loads with the reference safetensors loader.

Usage: check_load.py INPUT.safetensors OUTPUT.safetensors [MASKS.safetensors]

Loads both files with `safetensors.numpy.load_file` (the same Rust parser behind
`safetensors.torch.load_file`) and checks that:
  * the output holds the same tensor names, dtypes and shapes as the input, in the same order;
  * the input's __metadata__ is kept and one key, "sparsify", is added (JSON with the configs);
  * tensors not listed in "sparsify" are byte-identical to the input;
  * sparsified tensors equal input * mask (with MASKS), or keep every nonzero they have left.
Needs `pip install safetensors numpy`. BF16 tensors (which numpy lacks) are compared as raw bytes.
Exits 0 when everything holds, 1 with a message otherwise.
"""
import json
import struct
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file


def header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
    meta = h.pop("__metadata__", {}) or {}
    order = sorted(h, key=lambda k: h[k]["data_offsets"][0])
    return h, order, meta, 8 + n


def raw(path, h, base, name):
    a, b = h[name]["data_offsets"]
    with open(path, "rb") as f:
        f.seek(base + a)
        return f.read(b - a)


def load(path, h):
    """Every tensor numpy can hold, through the official loader (BF16 is skipped)."""
    if any(v["dtype"] == "BF16" for v in h.values()):
        out = {}
        with safe_open(path, framework="np") as f:
            for k in f.keys():
                if h[k]["dtype"] != "BF16":
                    out[k] = f.get_tensor(k)
        return out
    return load_file(path)


def main(argv):
    if len(argv) not in (3, 4):
        print(__doc__)
        return 2
    inp, out = argv[1], argv[2]
    masks_path = argv[3] if len(argv) == 4 else None
    ih, iorder, imeta, ibase = header(inp)
    oh, oorder, ometa, obase = header(out)
    a, b = load(inp, ih), load(out, oh)
    assert iorder == oorder, f"tensor order differs: {iorder} vs {oorder}"
    for k in iorder:
        assert ih[k]["dtype"] == oh[k]["dtype"] and ih[k]["shape"] == oh[k]["shape"], k
    assert set(ometa) == set(imeta) | {"sparsify"}, f"metadata keys: {sorted(ometa)}"
    assert all(ometa[k] == v for k, v in imeta.items() if k != "sparsify"), "metadata changed"
    info = json.loads(ometa["sparsify"])
    sparsified = set(info["tensors"])
    masks = load_file(masks_path) if masks_path else {}
    for k in iorder:
        ri, ro = raw(inp, ih, ibase, k), raw(out, oh, obase, k)
        if k not in sparsified:
            assert ri == ro, f"{k}: not sparsified but changed"
            if k in a:
                assert a[k].tobytes() == b[k].tobytes(), k
            continue
        if k in a and k in masks:
            m = masks[k]
            assert m.dtype == np.uint8 and m.shape == a[k].shape, k
            assert np.array_equal(np.where(m == 1, a[k], 0).astype(a[k].dtype), b[k]), f"{k}: output != input * mask"
        elif k in a:
            kept = b[k] != 0
            assert np.array_equal(a[k][kept], b[k][kept]), f"{k}: kept values changed"
    print(f"ok: {len(iorder)} tensors, {len(sparsified)} sparsified, sparsify {info.get('version')}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except AssertionError as e:
        print(f"check_load: FAILED: {e}")
        sys.exit(1)
