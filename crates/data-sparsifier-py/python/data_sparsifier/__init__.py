"""data_sparsifier: PyTorch's data sparsifier on bit-packed Rust kernels.

A drop-in for ``torch.ao.pruning._experimental.data_sparsifier``: change the import, keep the code.

>>> from data_sparsifier import DataNormSparsifier
"""

from . import _native
from ._errors import ConfigError, DataTypeError, ShapeError
from .base_data_sparsifier import EMBEDDING_TYPES, SUPPORTED_TYPES, BaseDataSparsifier
from .data_norm_sparsifier import DataNormSparsifier

__version__ = _native.__version__

__all__ = [
    "BaseDataSparsifier",
    "DataNormSparsifier",
    "EMBEDDING_TYPES",
    "SUPPORTED_TYPES",
    "ConfigError",
    "DataTypeError",
    "ShapeError",
]
