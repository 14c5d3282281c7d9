"""What the bindings add beyond PyTorch's suite: the data types, zero-copy holding and in-place
squash, masks packed back from Python, errors of PyTorch's types, state dicts exchanged with
PyTorch's own sparsifier, and the GIL released while the kernel runs."""

import threading
import time
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import data_sparsifier
from data_sparsifier import BaseDataSparsifier, DataNormSparsifier


def _reference():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.pruning._experimental.data_sparsifier import DataNormSparsifier as Ref
    return Ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_dtypes_squash_in_place(dtype):
    w = nn.Parameter(torch.randn(16, 8).to(dtype))
    ptr, before = w.data_ptr(), w.detach().clone()
    sp = DataNormSparsifier(sparsity_level=0.5, sparse_block_shape=(1, 4))
    sp.add_data("w", w)
    sp.step()
    mask = sp.get_mask("w")
    assert mask.shape == w.shape and mask.dtype == torch.int8
    masked = sp.get_data("w", return_original=False)
    assert masked.dtype == dtype and torch.equal(masked, before * mask.to(dtype))
    sp.squash_mask()
    assert w.data_ptr() == ptr and w.requires_grad  # the parameter's own storage, written
    assert torch.equal(w.detach(), before * mask.to(dtype))
    assert sp.get_data("w", return_original=False) is w


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_numpy_arrays(dtype):
    a = np.random.default_rng(0).standard_normal((6, 8)).astype(dtype)
    before = a.copy()
    sp = DataNormSparsifier(sparsity_level=0.5, sparse_block_shape=(2, 2))
    sp.add_data("a", a)
    assert sp.get_data("a") is a
    sp.step()
    sp.squash_mask()
    m = sp.get_mask("a").numpy().astype(dtype)
    np.testing.assert_array_equal(a, before * m)
    assert (a == 0).sum() == 24


def test_embedding_bag_zero_copy_and_same_object():
    emb = nn.EmbeddingBag(50, 8)
    weight = emb.weight
    sp = DataNormSparsifier(sparsity_level=0.5, sparse_block_shape=(1, 8))
    sp.add_data("emb", emb)
    assert sp.get_data("emb") is weight
    with torch.no_grad():
        weight[0] = 100.0  # seen by the sparsifier: it reads the caller's storage
    sp.step()
    assert bool(sp.get_mask("emb")[0].all())  # the largest row is kept
    sp.squash_mask()
    assert emb.weight is weight
    assert int((weight == 0).all(dim=1).sum()) == 25


def test_python_update_mask_is_packed_back():
    class EveryOther(BaseDataSparsifier):
        def update_mask(self, name, data, **config):
            mask = self.get_mask(name)
            mask.data = torch.zeros_like(mask)  # the README's third in-place form
            mask[:, ::2] = 1

    t = torch.arange(1.0, 13.0).reshape(3, 4)
    sp = EveryOther()
    sp.add_data("t", t)
    sp.step()
    assert torch.equal(sp.get_data("t", return_original=False), t * torch.tensor([1.0, 0, 1, 0]))
    held = sp.get_mask("t")
    held[0] = 0  # an edit outside update_mask is packed back before the next read
    assert sp.get_data("t", return_original=False)[0].abs().sum() == 0


def test_errors_have_pytorch_types():
    sp = DataNormSparsifier()
    with pytest.raises(KeyError):
        sp.add_data("emb.weight", torch.randn(4, 4))
    with pytest.raises(ValueError, match="emb_weight"):
        sp.get_data("emb_weight")
    with pytest.raises(ValueError):
        sp.get_mask("nope")
    with pytest.raises(AssertionError):
        DataNormSparsifier(norm="L3")
    with pytest.raises(ValueError, match="more than|at most"):
        DataNormSparsifier(sparse_block_shape=(1, 4), zeros_per_block=5)
    with pytest.raises(ValueError, match="sparsity_level"):
        DataNormSparsifier(sparsity_level=-0.5)  # a deliberate fix: PyTorch prunes blocks
    with pytest.raises(ValueError, match="2-D|dims"):
        sp.add_data("cube", torch.randn(2, 3, 4))
    with pytest.raises(TypeError):
        sp.add_data("ints", torch.arange(8))
    with pytest.raises(AssertionError):
        sp.add_data("lst", [1.0, 2.0])
    sp.add_data("x", torch.randn(4, 4))
    with pytest.raises(AssertionError), pytest.warns(UserWarning):
        sp.add_data("x", torch.randn(2, 8))  # reuse_mask=True with another shape
    sp.step()
    sp.squash_mask()
    with pytest.raises(ValueError):
        sp.squash_mask()  # squashed twice
    with pytest.raises(ValueError, match="nan|NaN"):
        bad = DataNormSparsifier()
        bad.add_data("n", torch.tensor([[float("nan"), 1.0, 2.0, 3.0]]))
        bad.step()


def test_gpu_like_tensors_refused_naming_cpu():
    sp = DataNormSparsifier()
    with pytest.raises(ValueError, match=r"\.cpu\(\)"):
        sp.add_data("m", torch.empty(4, 4, device="meta"))
    with pytest.raises(ValueError, match="contiguous"):
        sp.add_data("t", torch.randn(4, 8).t())


def test_one_dim_and_column_shapes_work():
    # deliberate fixes: PyTorch's squeeze() breaks these shapes at squash time
    for shape, block in (((12,), (1, 4)), ((12, 1), (4, 1))):
        x = torch.arange(1.0, 13.0).reshape(shape)
        sp = DataNormSparsifier(sparsity_level=0.5, sparse_block_shape=block)
        sp.add_data("x", x)
        sp.step()
        assert sp.get_mask("x").shape == x.shape
        sp.squash_mask()
        # 3 blocks of 4, round_half_even(1.5) = 2 pruned: the two smallest
        assert int((x == 0).sum()) == 8 and bool((x.flatten()[:8] == 0).all())


def test_stable_ties():
    x = torch.ones(1, 40)
    sp = DataNormSparsifier(sparsity_level=0.5, sparse_block_shape=(1, 1))
    sp.add_data("x", x)
    sp.step()
    assert torch.equal(sp.get_mask("x")[0, :20], torch.zeros(20, dtype=torch.int8))


def test_state_dict_round_trip_and_pickle():
    import copy
    import pickle

    a, b = torch.randn(8, 8), nn.Parameter(torch.randn(4, 12))
    sp = DataNormSparsifier(sparsity_level=0.4, sparse_block_shape=(2, 2), norm="L2")
    sp.add_data("a", a)
    sp.add_data("b", b, sparsity_level=0.7)
    sp.step()
    sp.squash_mask(names=["b"])
    sd = sp.state_dict()
    other = DataNormSparsifier(norm="L2")
    other.load_state_dict(sd)
    sd2 = other.state_dict()
    assert sd2["data_groups"] == sd["data_groups"]
    for name in ("a", "b"):
        assert torch.equal(sd2["state"][name]["mask"].to_dense(), sd["state"][name]["mask"].to_dense())
    assert set(sd2["_container"]) == {"parametrizations.a.original", "b"}
    for k in sd["_container"]:
        assert torch.equal(sd2["_container"][k], sd["_container"][k])
    for clone in (copy.deepcopy(sp), pickle.loads(pickle.dumps(sp))):
        assert clone.norm == "L2" and clone.enable_mask_update
        clone.step() if False else None
        assert torch.equal(clone.get_mask("a"), sp.get_mask("a"))


def test_state_dicts_cross_load_with_pytorch():
    Ref = _reference()
    torch.manual_seed(3)
    x, y = torch.randn(6, 8), torch.randn(1, 12)
    theirs = Ref(sparsity_level=0.5, sparse_block_shape=(1, 4))
    theirs.add_data("x", x.clone())
    theirs.add_data("y", y.clone(), sparsity_level=0.3)
    theirs.step()
    mine = DataNormSparsifier()
    mine.load_state_dict(theirs.state_dict())
    for name in ("x", "y"):
        assert torch.equal(mine.get_mask(name), theirs.get_mask(name))
        assert mine.data_groups[name] == theirs.data_groups[name]
    mine.step()  # our kernel on the loaded data gives the same masks
    for name in ("x", "y"):
        assert torch.equal(mine.get_mask(name), theirs.get_mask(name))

    back = Ref()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        back.load_state_dict(mine.state_dict())
    for name in ("x", "y"):
        assert torch.equal(back.get_mask(name), mine.get_mask(name))
        assert torch.equal(back.get_data(name, return_original=False), mine.get_data(name, return_original=False))


def test_repr_layout():
    sp = DataNormSparsifier()
    sp.add_data("w", torch.randn(2, 4))
    assert repr(sp) == (
        "DataNormSparsifier (\n\tData Group\n\t    name: w\n"
        "\t    sparse_block_shape: (1, 4)\n\t    sparsity_level: 0.5\n\t    zeros_per_block: 4\n)"
    )


def test_gil_released_during_step():
    w = torch.randn(2_000_000, 16)
    sp = DataNormSparsifier(sparsity_level=0.5, sparse_block_shape=(1, 4))
    sp.add_data("w", w)
    ticks = []
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    th = threading.Thread(target=ticker)
    th.start()
    time.sleep(0.02)
    t0 = time.perf_counter()
    sp.step()
    t1 = time.perf_counter()
    stop.set()
    th.join()
    during = [t for t in ticks if t0 <= t <= t1]
    # A thread that needs the GIL ran while the kernel did (it would be starved otherwise).
    assert len(during) >= 2, (t1 - t0, len(during))


def test_package_exports():
    assert data_sparsifier.SUPPORTED_TYPES == {torch.Tensor, nn.Parameter, nn.Embedding, nn.EmbeddingBag}
    assert data_sparsifier.EMBEDDING_TYPES == {nn.Embedding, nn.EmbeddingBag}


def test_registry_rule_by_kind():
    # Any rule registered in the Rust library is reachable by its kind, configs as dicts.
    from data_sparsifier import _native

    assert {"datanorm", "magnitude"} <= set(_native.Sparsifier.kinds())
    sp = _native.Sparsifier.rule("magnitude", {"threshold": 0.5})
    sp.add_data("x", np.array([0.1, -0.7, 0.4, 2.0], dtype=np.float32), {}, True)
    sp.step()
    assert sp.mask_u8("x").tolist() == [0, 1, 0, 1]
    assert sp.config("x")["threshold"] == 0.5
    with pytest.raises(TypeError, match="unknown config key"):
        sp.add_data("y", np.zeros(4, dtype=np.float32), {"sparsity_level": 0.5}, True)
    with pytest.raises(ValueError, match="unknown rule"):
        _native.Sparsifier.rule("nope", {})
