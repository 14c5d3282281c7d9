"""Parity with PyTorch's DataNormSparsifier: the 300 golden cases PyTorch 2.15 made, and random
tables run through torch's own sparsifier in the same test.

The rules (shared/conformance/README.md): ``exact`` cases match bit for bit (ties to the lowest
flat index); the others, where PyTorch's unstable sort decided a tie, must be tie-equivalent.
"""

import json
import math
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from data_sparsifier import DataNormSparsifier

GOLDEN = Path(__file__).resolve().parents[2] / "data-sparsifier/tests/data/conformance/data_norm"
CASES = json.loads((GOLDEN / "index_1.json").read_text())

_ST_DTYPES = {"F32": torch.float32, "F64": torch.float64, "F16": torch.float16,
              "BF16": torch.bfloat16, "U8": torch.uint8}


def read_safetensors(path):
    """(tensors, metadata) of a safetensors file, read with the standard library."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    body = raw[8 + n :]
    out = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        buf = bytearray(body[start:end])
        t = torch.frombuffer(buf, dtype=torch.uint8) if end > start else torch.empty(0, dtype=torch.uint8)
        out[name] = t.view(_ST_DTYPES[info["dtype"]]).reshape(info["shape"]).clone()
    return out, meta


def ours(data, sl, block, zpb, norm):
    sp = DataNormSparsifier(sparsity_level=sl, sparse_block_shape=block, zeros_per_block=zpb, norm=norm)
    sp.add_data("x", data)
    sp.step()
    return sp.get_mask("x").to(torch.uint8)


def tie_equivalent(data, mask, sl, block, zpb, norm):
    """The conformance README's rule for cases whose ties PyTorch broke arbitrarily."""
    x = data.double().reshape(1, -1) if data.dim() == 1 else data.double()
    m = mask.reshape(x.shape).bool()
    score = x.abs() if norm == "L1" else x * x
    eps = {torch.float16: 1e-2, torch.bfloat16: 2e-2}.get(data.dtype, 1e-9)
    h, w = x.shape
    bh, bw = block
    blocks = []
    for i in range(0, h, bh):
        for j in range(0, w, bw):
            s, mm = score[i : i + bh, j : j + bw], m[i : i + bh, j : j + bw]
            blocks.append((s.mean().item(), s.flatten(), mm.flatten()))
    k = round(sl * len(blocks))
    pruned = [b for b in blocks if not bool(b[2].all())]
    kept = [b for b in blocks if bool(b[2].all())]
    if zpb == 0:
        return not pruned
    if len(pruned) != k:
        return False
    if pruned and kept and max(b[0] for b in pruned) > min(b[0] for b in kept) * (1 + eps) + 1e-12:
        return False
    for _, s, mm in pruned:
        if int((~mm).sum()) != min(zpb, s.numel()):
            return False
        if bool(mm.any()) and s[~mm].max() > s[mm].min() * (1 + eps) + 1e-12:
            return False
    return True


@pytest.mark.parametrize("case", CASES, ids=[c["file"] for c in CASES])
def test_golden_case(case):
    tensors, meta = read_safetensors(GOLDEN / case["file"])
    data, want = tensors["data"], tensors["mask"]
    sl = float(meta["sparsity_level"])
    block = tuple(int(v) for v in meta["sparse_block_shape"].split(","))
    zpb = int(meta["zeros_per_block"])
    got = ours(data, sl, block, zpb, meta["norm"])
    assert got.shape == data.shape  # 1-D and (n, 1) data keep their shape (a fix)
    if meta["exact"] == "true":
        assert torch.equal(got, want), case
    else:
        assert tie_equivalent(data, got, sl, block, zpb, meta["norm"]), case


def test_golden_set_is_complete():
    assert len(CASES) == 300
    assert sum(c["exact"] == "true" for c in CASES) == 286


def _torch_sparsifier():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.pruning._experimental.data_sparsifier import DataNormSparsifier as Reference
    return Reference


CONFIGS = [
    (0.5, (1, 4), 4), (0.3, (2, 3), 6), (0.8, (1, 1), 1), (1.0, (1, 4), 2),
    (0.6, (4, 4), 5), (0.25, (3, 2), 2), (0.9, (2, 2), 0), (0.7, (5, 7), 35),
]


@pytest.mark.parametrize("norm", ["L1", "L2"])
@pytest.mark.parametrize("sl,block,zpb", CONFIGS)
@pytest.mark.parametrize("shape", [(37, 19), (64, 16), (3, 100), (128, 8)])
def test_random_tables_equal_torch(shape, sl, block, zpb, norm):
    torch.manual_seed(zlib.crc32(repr((shape, sl, block, zpb, norm)).encode()))
    Reference = _torch_sparsifier()
    for dtype in (torch.float32, torch.float64):
        data = torch.randn(*shape, dtype=dtype)
        ref = Reference(sparsity_level=sl, sparse_block_shape=block, zeros_per_block=zpb, norm=norm)
        ref.add_data("x", data.clone())
        ref.step()
        want = ref.get_mask("x").to(torch.uint8)
        got = ours(data, sl, block, zpb, norm)
        assert torch.equal(got, want), (shape, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_random_half_tables_tie_equivalent_to_torch(dtype, norm):
    torch.manual_seed(7)
    Reference = _torch_sparsifier()
    for sl, block, zpb in CONFIGS:
        data = torch.randn(48, 24).to(dtype)
        ref = Reference(sparsity_level=sl, sparse_block_shape=block, zeros_per_block=zpb, norm=norm)
        ref.add_data("x", data.clone())
        ref.step()
        want = ref.get_mask("x").to(torch.uint8)
        got = ours(data, sl, block, zpb, norm)
        if not torch.equal(got, want):  # a rounded f16/bf16 score tie: the README's rule 2
            assert tie_equivalent(data, got, sl, block, zpb, norm)
        assert int(got.sum()) == int(want.sum())
