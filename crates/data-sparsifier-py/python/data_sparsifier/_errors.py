"""Exception classes for the mistakes PyTorch reports with ``AssertionError``.

Each derives from the natural built-in type *and* ``AssertionError``, so code written against
PyTorch's data sparsifier (``except AssertionError``) and code that expects the natural type
(``except ValueError``) both catch them. Everything else maps to the built-in PyTorch raises:
``KeyError`` for names with '.', ``ValueError`` for unknown or squashed names, and so on.
"""


class ShapeError(ValueError, AssertionError):
    """A shape mismatch: a replacement with ``reuse_mask=True`` of another shape, a mask set by
    hand that does not fit its data, or data whose shape changed after ``add_data``."""


class DataTypeError(TypeError, AssertionError):
    """Data of a type or dtype the sparsifier does not take (PyTorch: "specified data type ... not
    supported at the moment")."""


class ConfigError(ValueError, AssertionError):
    """An invalid config value: a sparsity level outside [0, 1], a zero or negative block
    dimension, more zeros per block than cells, an unknown norm."""
