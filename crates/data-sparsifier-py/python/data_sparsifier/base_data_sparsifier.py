"""``BaseDataSparsifier``: PyTorch's base class, on the Rust container.

The container semantics (adding and replacing data, stepping, squashing, state) are the Rust
library's ``DataSparsifier``; this module only gives it PyTorch's Python API. Data is held without a
copy: the sparsifier keeps the caller's tensor object and reads its storage on every step. Masks are
bit-packed in Rust; ``get_mask`` hands out a dense tensor made from the bits, which stays live
(changes to it are packed back, steps update it in place).
"""

import copy
import warnings
import weakref
from collections.abc import Mapping, MutableMapping

import numpy as np

from . import _native
from ._errors import DataTypeError

try:
    import torch
    from torch import nn

    EMBEDDING_TYPES = {nn.Embedding, nn.EmbeddingBag}
    SUPPORTED_TYPES = {torch.Tensor, nn.Parameter, nn.Embedding, nn.EmbeddingBag}
except ImportError:  # numpy-only use
    torch = None
    nn = None
    EMBEDDING_TYPES = set()
    SUPPORTED_TYPES = set()

__all__ = ["BaseDataSparsifier", "EMBEDDING_TYPES", "SUPPORTED_TYPES"]

_NP_DTYPES = {"float32": np.float32, "float64": np.float64, "float16": np.float16}


def _is_torch(x):
    return torch is not None and isinstance(x, torch.Tensor)


def _wrap_array(arr, dtype_name, like):
    """A numpy array from the native module (16-bit floats as int16 bits) as ``like``'s kind."""
    if _is_torch(like):
        t = torch.from_numpy(arr)
        if dtype_name in ("float16", "bfloat16"):
            t = t.view(getattr(torch, dtype_name))
        return t
    if dtype_name == "float16":
        return arr.view(np.float16)
    return arr


def _to_u8(mask):
    """A dense mask (any dtype, nonzero = keep) as a C-contiguous uint8 numpy array."""
    if _is_torch(mask):
        if mask.is_sparse:
            mask = mask.to_dense()
        return (mask.detach() != 0).to(torch.uint8).cpu().contiguous().numpy()
    return np.ascontiguousarray(np.asarray(mask) != 0, dtype=np.uint8)


class _GroupView(MutableMapping):
    """``data_groups[name]``: a live view of one entry's config in the Rust container."""

    def __init__(self, native, name):
        self._native, self._name = native, name

    def _dict(self):
        return self._native.config(self._name)

    def __getitem__(self, key):
        return self._dict()[key]

    def __setitem__(self, key, value):
        self._native.set_config(self._name, key, value)

    def __delitem__(self, key):
        self._native.del_config(self._name, key)

    def __iter__(self):
        return iter(self._dict())

    def __len__(self):
        return len(self._dict())

    def __repr__(self):
        return repr(self._dict())

    def __deepcopy__(self, memo):
        return copy.deepcopy(self._dict(), memo)

    def copy(self):
        return self._dict()


class _GroupsView(Mapping):
    """``data_groups``: name -> live config view, in insertion order."""

    def __init__(self, native):
        self._native = native

    def __getitem__(self, name):
        if name not in self._native:
            raise KeyError(name)
        return _GroupView(self._native, name)

    def __iter__(self):
        return iter(self._native.names())

    def __len__(self):
        return len(self._native)

    def __repr__(self):
        return repr({n: self._native.config(n) for n in self._native.names()})

    def __deepcopy__(self, memo):
        return {n: self._native.config(n) for n in self._native.names()}


class _NameState(MutableMapping):
    """``state[name]``: the mask (key ``"mask"``) plus whatever a subclass keeps per name."""

    def __init__(self, owner, name):
        self._owner, self._name = owner, name

    def _extra(self):
        return self._owner._extras.setdefault(self._name, {})

    def __getitem__(self, key):
        if key == "mask":
            return self._owner.get_mask(self._name)
        return self._extra()[key]

    def __setitem__(self, key, value):
        if key == "mask":
            self._owner._set_mask(self._name, value)
        else:
            self._extra()[key] = value

    def __delitem__(self, key):
        if key == "mask":
            raise KeyError("the mask of a held name cannot be deleted")
        del self._extra()[key]

    def __iter__(self):
        yield "mask"
        yield from self._extra()

    def __len__(self):
        return 1 + len(self._extra())

    def __repr__(self):
        return repr(dict(self.items()))


class _StateView(Mapping):
    """``state``: name -> per-name state."""

    def __init__(self, owner):
        self._owner = owner

    # The per-name extras hold one key per held name (kept in step with the container by add_data
    # and load_state_dict), so the view also works from inside update_mask, during a step.
    def __getitem__(self, name):
        if name not in self._owner._extras:
            raise KeyError(name)
        return _NameState(self._owner, name)

    def __iter__(self):
        return iter(list(self._owner._extras))

    def __len__(self):
        return len(self._owner._extras)


class BaseDataSparsifier:
    r"""Base class for data sparsifiers: subclass it and write ``update_mask``.

    A drop-in for ``torch.ao.pruning._experimental.data_sparsifier.BaseDataSparsifier``. A subclass
    implements ``update_mask(self, name, data, **config)``, which modifies ``self.get_mask(name)``
    in place; the container (adding, replacing, stepping, squashing, state) is the Rust library's.

    Args:
        data_list: optional list of ``(name, data)`` added with the default config.
        **defaults: the default config of every data added.
    """

    def __init__(self, data_list=None, **defaults):
        self.defaults = dict(defaults)
        self.groups = []
        self._extras = {}
        self._mask_dtypes = {}
        self._views = weakref.WeakValueDictionary()
        self._stepping = False
        self._native = self._make_native(self.defaults)
        if data_list is not None:
            for name, data in data_list:
                self.add_data(name, data, **self.defaults)

    # -- hooks for subclasses --------------------------------------------------------------------

    def _make_native(self, defaults):
        """The Rust container; the base class's rule calls back into ``update_mask``."""
        return _native.Sparsifier.python(weakref.ref(self), defaults)

    def _after_step(self):
        """Called after a successful ``step`` (DataNorm records that its masks are now int8)."""

    def update_mask(self, name, data, **kwargs):
        """Modifies ``self.get_mask(name)`` in place for ``data``. Subclasses implement it."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement update_mask(self, name, data, **config)"
        )

    def prepare(self, model, config):
        raise NotImplementedError("this function is undefined for this class")

    # -- attributes ------------------------------------------------------------------------------

    @property
    def data_groups(self):
        """name -> config (a live view: ``data_groups[name][key] = value`` sets the config)."""
        return _GroupsView(self._nat)

    @property
    def state(self):
        """name -> ``{"mask": mask, **extras}``; a subclass may keep its own keys per name."""
        return _StateView(self)

    @property
    def enable_mask_update(self):
        return self._native.enable_mask_update

    @enable_mask_update.setter
    def enable_mask_update(self, enabled):
        self._native.enable_mask_update = bool(enabled)

    @property
    def _nat(self):
        if self._stepping:
            raise RuntimeError(
                "this sparsifier method cannot be called from inside update_mask: use the data "
                "and config passed to update_mask, self.get_mask(name) and self.state[name]"
            )
        return self._native

    # -- the API ---------------------------------------------------------------------------------

    @staticmethod
    def _extract_weight(data):
        if type(data) in EMBEDDING_TYPES or (
            nn is not None and isinstance(data, (nn.Embedding, nn.EmbeddingBag))
        ):
            return data.weight
        return data

    def add_data(self, name, data, reuse_mask=True, **config):
        """Adds ``data`` under ``name`` (or replaces it: the old config is kept and updated with
        ``config``, and the old mask kept unless ``reuse_mask=False``). Returns ``mask * data``."""
        weight = self._extract_weight(data)
        if not (_is_torch(weight) or isinstance(weight, np.ndarray)):
            raise DataTypeError(f"specified data type:{type(data)} not supported at the moment")
        native = self._nat
        replacing = isinstance(name, str) and name in native
        if replacing:
            warnings.warn(
                "Replacing existing data of the same name. - Did you mean a different name?",
                stacklevel=2,
            )
        if not isinstance(name, str):
            raise TypeError(f"buffer name should be a string. Got {type(name).__name__}")
        self._flush()
        native.add_data(name, weight, config, reuse_mask)
        if not replacing or not reuse_mask:
            self._mask_dtypes[name] = weight.dtype
            self._views.pop(name, None)
        self._extras[name] = {}
        return self.get_data(name, return_original=False)

    def get_data(self, name, return_original=True):
        """The original data (the caller's own object), or ``mask * data`` as a new tensor."""
        native = self._nat
        if return_original:
            return native.original(name)
        self._flush()
        obj, dtype = native.masked(name)
        if dtype is None:
            return obj
        return _wrap_array(obj, dtype, self._like(name))

    def _like(self, name):
        try:
            return self._native.original(name)
        except ValueError:
            return torch.empty(0) if torch is not None else np.empty(0)

    def _dense_mask(self, name, dense_u8):
        dtype = self._mask_dtypes.get(name)
        if torch is not None and (dtype is None or isinstance(dtype, torch.dtype)):
            return torch.from_numpy(dense_u8).to(dtype or torch.int8)
        return dense_u8.astype(dtype or np.int8)

    def get_mask(self, name):
        """The mask of ``name``: a dense tensor of the data's shape (the data's dtype before the
        first step of a DataNorm sparsifier, int8 after), made from the bit-packed mask. It stays
        live: modify it in place and the change is packed back; a step updates it."""
        view = self._views.get(name)
        if view is not None:
            return view
        if self._stepping:
            raise ValueError(f"no mask for {name!r} during this step")
        mask = self._dense_mask(name, self._native.mask_u8(name))
        self._views[name] = mask
        return mask

    def _set_mask(self, name, mask):
        self._nat.set_mask_u8(name, _to_u8(mask))
        self._mask_dtypes[name] = mask.dtype
        self._views[name] = mask

    def _flush(self):
        """Packs the masks handed out by get_mask (possibly edited in place) into the container."""
        for name, view in list(self._views.items()):
            if name in self._native:
                self._native.set_mask_u8(name, _to_u8(view))
                self._mask_dtypes[name] = view.dtype

    def _refresh(self):
        """Updates the handed-out masks, in place, from the container."""
        for name, view in list(self._views.items()):
            if name not in self._native:
                continue
            fresh = self._dense_mask(name, self._native.mask_u8(name))
            if _is_torch(view) and _is_torch(fresh):
                view.data = fresh
            elif isinstance(view, np.ndarray) and view.shape == fresh.shape:
                view[...] = fresh
            else:
                self._views[name] = fresh

    def _native_update_mask(self, name, data, config, dense_u8):
        """Called by the Rust rule of a Python subclass on each step, for one entry."""
        fresh = self._dense_mask(name, dense_u8)
        mask = self._views.get(name)
        if mask is not None and _is_torch(mask) and _is_torch(fresh):
            mask.data = fresh
        else:
            mask = fresh
            self._views[name] = mask
        self.update_mask(name, data, **config)
        mask = self._views.get(name, mask)
        self._mask_dtypes[name] = mask.dtype
        return _to_u8(mask)

    def step(self):
        """Recomputes every mask from the current original data."""
        native = self._nat
        if not native.enable_mask_update:
            native.step()
            return
        self._flush()
        self._stepping = True
        try:
            if torch is not None:
                with torch.no_grad():
                    native.step()
            else:
                native.step()
        finally:
            self._stepping = False
        self._after_step()
        self._refresh()

    def squash_mask(self, *args, leave_parametrized=True, names=None, **kwargs):
        """Applies the masks to the data in place (``leave_parametrized=True``) or detaches them
        (``False``); afterwards the original data is gone. ``names=None`` squashes every name."""
        native = self._nat
        self._flush()
        native.squash_mask(None if names is None else list(names), leave_parametrized)

    # -- state -----------------------------------------------------------------------------------

    def _mask_dtype(self, name):
        dtype = self._mask_dtypes.get(name)
        return dtype if torch is not None and isinstance(dtype, torch.dtype) else torch.int8

    def state_dict(self):
        """``{"state", "data_groups", "_container"}`` in PyTorch's layout: masks as sparse COO
        tensors, container keys ``parametrizations.NAME.original`` (``NAME`` once squashed) whose
        values share storage with the data. Unlike PyTorch's, ``data_groups`` is a copy."""
        native = self._nat
        self._flush()
        state, groups, container = {}, {}, {}
        for name in native.names():
            dense = torch.from_numpy(native.mask_u8(name)).to(self._mask_dtype(name))
            entry = {"mask": dense.to_sparse_coo()}
            entry.update(copy.deepcopy(self._extras.get(name, {})))
            state[name] = entry
            groups[name] = native.config(name)
            if native.is_parametrized(name):
                data = native.original(name)
                key = f"parametrizations.{name}.original"
            else:
                data = self.get_data(name, return_original=False)
                key = name
            if isinstance(data, np.ndarray):
                data = torch.from_numpy(data)
            container[key] = data.detach()
        return {"state": state, "data_groups": groups, "_container": container}

    def load_state_dict(self, state_dict, strict=True):
        """Loads a state dict made by ``state_dict`` here or by PyTorch's data sparsifier. With
        ``strict`` the sparsifier holds exactly the dict's names afterwards; otherwise they are
        added to (or replace) the held ones. Data held under a name with the same shape and dtype
        is overwritten in place; other names are held as new tensors (copies)."""
        native = self._nat
        states = state_dict["state"]
        groups = state_dict["data_groups"]
        container = state_dict["_container"]
        entries, dtypes, extras = [], {}, {}
        for name, st in states.items():
            if name not in groups:
                raise RuntimeError(f"Error loading {name}")
            if name in container:
                data, parametrized = container[name], False
            elif f"parametrizations.{name}.original" in container:
                data, parametrized = container[f"parametrizations.{name}.original"], True
            else:
                raise RuntimeError(f"Error loading {name}")
            if _is_torch(data):
                data = data.detach()
            mask = st.get("mask")
            if mask is None:
                mask = torch.ones_like(data) if _is_torch(data) else np.ones_like(data)
            elif _is_torch(mask) and mask.is_sparse:
                mask = mask.to_dense()
            dtypes[name] = mask.dtype
            extras[name] = {k: copy.deepcopy(v) for k, v in st.items() if k != "mask"}
            config = {
                k: v for k, v in dict(groups[name]).items() if k not in ("mask", "parametrization")
            }
            entries.append((name, data, _to_u8(mask), config, parametrized))

        def fresh(name, arr, dtype_name):
            like = torch.empty(0) if torch is not None else np.empty(0)
            return _wrap_array(arr, dtype_name, like)

        self._flush()
        native.load(entries, strict, fresh)
        if strict:
            self._extras, self._mask_dtypes = extras, dtypes
        else:
            self._extras.update(extras)
            self._mask_dtypes.update(dtypes)
        for name in list(self._views.keys()):
            if name not in native:
                self._views.pop(name, None)
        self._refresh()

    def __getstate__(self):
        keep = {
            k: v
            for k, v in self.__dict__.items()
            if k not in ("_native", "_views", "_extras", "_mask_dtypes", "_stepping")
        }
        keep["_saved_state"] = self.state_dict()
        keep["_saved_enable_mask_update"] = self.enable_mask_update
        return keep

    def __setstate__(self, d):
        d = dict(d)
        saved = d.pop("_saved_state")
        enabled = d.pop("_saved_enable_mask_update")
        self.__dict__.update(d)
        self._extras, self._mask_dtypes = {}, {}
        self._views = weakref.WeakValueDictionary()
        self._stepping = False
        self._native = self._make_native(self.defaults)
        self.load_state_dict(saved)
        self.enable_mask_update = enabled

    def __repr__(self):
        out = self.__class__.__name__ + " ("
        for name in self._native.names():
            out += f"\n\tData Group\n\t    name: {name}\n"
            config = self._native.config(name)
            for key in sorted(config):
                if key == "data":
                    continue
                out += f"\t    {key}: {config[key]}\n"
        return out + ")"
