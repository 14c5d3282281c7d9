"""``DataNormSparsifier``: PyTorch's block-norm data sparsifier, on the Rust kernel."""

import math

from . import _native
from ._errors import ConfigError
from .base_data_sparsifier import BaseDataSparsifier

try:
    import torch
except ImportError:  # numpy-only use
    torch = None

__all__ = ["DataNormSparsifier"]


class DataNormSparsifier(BaseDataSparsifier):
    r"""Zeroes the ``sparsity_level`` fraction of ``sparse_block_shape`` blocks with the smallest
    mean L1 (``|x|``) or L2 (``x²``) norm; inside each pruned block, the ``zeros_per_block``
    smallest elements (the whole block by default).

    A drop-in for PyTorch's ``DataNormSparsifier``; ``step()`` runs the Rust kernel with the GIL
    released. Deliberate differences (see the package README): sparsity levels outside [0, 1] are
    refused, 1-D and ``(n, 1)`` data work, ties go to the lowest index, NaN data is an error
    unless ``nan_policy="rank_last"`` (PyTorch's behaviour).

    Args:
        data_list: optional list of ``(name, data)``.
        sparsity_level: fraction of blocks to prune, in [0, 1].
        sparse_block_shape: ``(rows, cols)`` of a block.
        zeros_per_block: zeros in a pruned block; default all its cells.
        norm: ``"L1"`` or ``"L2"``, for every data of this sparsifier.
        nan_policy: ``"error"`` (default) or ``"rank_last"``.
    """

    def __init__(
        self,
        data_list=None,
        sparsity_level=0.5,
        sparse_block_shape=(1, 4),
        zeros_per_block=None,
        norm="L1",
        nan_policy="error",
    ):
        if norm not in ["L1", "L2"]:
            raise ConfigError("only L1 and L2 norm supported at the moment")
        if zeros_per_block is None:
            zeros_per_block = math.prod(sparse_block_shape)
        self._norm = norm
        self._nan_policy = nan_policy
        defaults = {
            "sparsity_level": sparsity_level,
            "sparse_block_shape": sparse_block_shape,
            "zeros_per_block": zeros_per_block,
        }
        super().__init__(data_list=data_list, **defaults)

    @property
    def norm(self):
        """``"L1"`` or ``"L2"``: fixed at construction, for every data."""
        return self._norm

    def _make_native(self, defaults):
        return _native.Sparsifier.data_norm(
            defaults["sparsity_level"],
            tuple(defaults["sparse_block_shape"]),
            defaults["zeros_per_block"],
            self._norm,
            self._nan_policy,
        )

    def _after_step(self):
        if torch is not None:
            for name in self._native.names():
                self._mask_dtypes[name] = torch.int8

    def update_mask(
        self, name, data, sparsity_level, sparse_block_shape, zeros_per_block, **kwargs
    ):
        """Recomputes the mask of ``name`` for ``data`` with the kernel (``step()`` does this for
        every name at once; this is for callers and subclasses that call it directly)."""
        one = _native.Sparsifier.data_norm(
            sparsity_level, tuple(sparse_block_shape), zeros_per_block, self._norm, self._nan_policy
        )
        one.add_data("data", self._extract_weight(data), {}, True)
        one.step()
        mask = self.get_mask(name)
        fresh = torch.from_numpy(one.mask_u8("data")).to(torch.int8)
        if fresh.shape != mask.shape:
            raise ValueError(f"data for {name!r} has shape {tuple(fresh.shape)}, its mask {tuple(mask.shape)}")
        mask.data = fresh
        self._mask_dtypes[name] = torch.int8
