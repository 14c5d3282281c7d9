#!/usr/bin/env python3
"""Reads a data-sparsifier compact safetensors file with numpy and json only (no safetensors, no
torch, no data-sparsifier): the reader of docs/compact-format.md.

    python3 scripts/read_compact.py COMPACT.safetensors            # lists the tables
    python3 scripts/read_compact.py COMPACT.safetensors DENSE.safetensors
        # expands every table and checks each tensor equals DENSE's bit for bit (exit 1 if not)

As a module: read_compact(path) -> {name: (dtype, array)} in the dense file's order, tables
expanded; read_safetensors(path) the same for any safetensors file. BF16 arrays (numpy has no
bfloat16) are returned as their uint16 bit patterns; bf16_to_f32 converts them.
"""
import json
import struct
import sys

import numpy as np

KEY = "data_sparsifier.compact"
# safetensors dtype -> numpy dtype (little endian); BF16 as its bit pattern.
DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}


def read_safetensors(path):
    """(metadata, {name: (dtype, array)}) with tensors in data-offset order."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {}) or {}
    base = 8 + n
    out = {}
    for name, t in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"]):
        a, b = t["data_offsets"]
        arr = np.frombuffer(data[base + a:base + b], dtype=DTYPES[t["dtype"]])
        out[name] = (t["dtype"], arr.reshape(t["shape"]))
    return meta, out


def bf16_to_f32(bits):
    """BF16 bit patterns (uint16) as float32."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def expand_table(info, tensors, name):
    """The dense table `name` from its stored parts."""
    rows, cols, bw = info["rows"], info["cols"], info["block_width"]
    nbc = -(-cols // bw)
    stored = info["stored_rows"]
    # Block mask: bit i is bit i % 8 of byte i / 8 (LSB first); stored_rows x nbc bits.
    blocks = np.unpackbits(tensors[name + "@blocks"][1], bitorder="little")
    blocks = blocks[:stored * nbc].reshape(stored, nbc).astype(bool)
    # Kept blocks' cells, row-major: a cell mask of stored_rows x cols.
    cells = np.repeat(blocks, bw, axis=1)[:, :cols]
    values = tensors[name + "@values"][1]
    if info["encoding"] in ("int8", "int4", "int2"):
        values = dequantize(info, tensors[name + "@params"][1], values, cells.sum(axis=1))
    dense_stored = np.zeros((stored, cols), dtype=values.dtype)
    dense_stored[cells] = values  # boolean assignment fills in row-major order
    out = np.zeros((rows, cols), dtype=values.dtype)
    if info["remap"]:
        remap = tensors[name + "@remap"][1]  # int32, -1 = pruned row
        kept = remap >= 0
        out[kept] = dense_stored[remap[kept]]
    else:
        out[:stored] = dense_stored
    return info["dtype"], out.reshape(info["shape"])


def dequantize(info, params, codes, counts):
    """The kept values of a quantized table, in the table's dtype: per stored row, its codes start
    at a byte boundary (int4: two a byte, int2: four a byte, element 0 in the low bits) and
    decode to code * scale + bias (params[s] = scale, bias), rounded once to f32."""
    params = params.astype(np.float64)
    bits = {"int8": 8, "int4": 4, "int2": 2}[info["encoding"]]
    per = 8 // bits
    out = []
    at = 0
    for s, n in enumerate(counts):
        nbytes = -(-n // per)
        row = codes[at:at + nbytes]
        at += nbytes
        if per > 1:
            shifts = np.arange(per, dtype=np.uint8) * bits
            row = ((row[:, None] >> shifts) & ((1 << bits) - 1)).reshape(-1)[:n]
        out.append((row.astype(np.float64) * params[s, 0] + params[s, 1]).astype(np.float32))
    vals = np.concatenate(out) if out else np.zeros(0, np.float32)
    return to_dtype(vals, info["dtype"])


def to_dtype(f32, dtype):
    """f32 values as the table's dtype (BF16 as its bit patterns, rounded to nearest even)."""
    if dtype == "BF16":
        bits = f32.view(np.uint32).astype(np.uint64)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return f32.astype({"F32": np.float32, "F64": np.float64, "F16": np.float16}[dtype])


def read_compact(path):
    """{name: (dtype, array)} of the dense file, in its order, compact tables expanded."""
    meta, tensors = read_safetensors(path)
    if KEY not in meta:
        raise SystemExit(f"{path}: not a compact file (no {KEY!r} in __metadata__)")
    m = json.loads(meta[KEY])
    assert m["format"] == "data-sparsifier-compact" and m["version"] == 1, m["format"]
    out = {}
    for name in m["order"]:
        info = m["tables"].get(name)
        out[name] = expand_table(info, tensors, name) if info else tensors[name]
    return out


def main(argv):
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    compact = read_compact(argv[1])
    if len(argv) == 2:
        for name, (dtype, arr) in compact.items():
            print(f"{name}\t{dtype}\t{list(arr.shape)}\tnonzero {np.count_nonzero(arr)}")
        return 0
    _, dense = read_safetensors(argv[2])
    if list(dense) != list(compact):
        print(f"tensor names or order differ: {list(compact)} vs {list(dense)}", file=sys.stderr)
        return 1
    # Quantized tables: code * scale + bias is one f32 rounding here (through f64) and one fused
    # multiply-add in the library; the two agree but in rare double-rounding cases (1 ulp).
    meta, _ = read_safetensors(argv[1])
    tables = json.loads(meta[KEY])["tables"]
    quantized = {n for n, t in tables.items() if t["encoding"] in ("int8", "int4", "int2")}

    def same(n):
        (da, a), (db, b) = dense[n], compact[n]
        if da != db or a.shape != b.shape:
            return False
        if n in quantized and da != "BF16":
            return np.allclose(a, b, rtol=1e-6, atol=0)
        return a.tobytes() == b.tobytes()

    bad = [n for n in dense if not same(n)]
    if bad:
        print(f"tensors differ from {argv[2]}: {bad}", file=sys.stderr)
        return 1
    how = f" ({len(quantized)} quantized tables to f32 rounding)" if quantized else ""
    print(f"read_compact: {len(dense)} tensors of {argv[1]} equal {argv[2]} bit for bit{how}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
