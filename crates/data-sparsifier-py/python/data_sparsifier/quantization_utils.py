"""``post_training_sparse_quantize``: sparsify, then quantize, a model's embeddings (or the
reverse), producing PyTorch's quantized embedding modules.

The masks come from our sparsifier (the Rust kernel); the quantization step is PyTorch's own
``torch.ao.quantization`` (``float_qparams_weight_only_qconfig``: 8-bit per-row weights with float
scales and zero points), so the result is ``torch.ao.nn.quantized.Embedding`` /
``EmbeddingBag``, exactly as with PyTorch's function.
"""

import warnings

import torch
from torch import nn

__all__ = ["post_training_sparse_quantize", "SUPPORTED_MODULES"]

SUPPORTED_MODULES = {nn.Embedding, nn.EmbeddingBag}


def _fetch_all_embeddings(model):
    """``(fqn, module)`` of every exact Embedding / EmbeddingBag, depth first as PyTorch's."""
    fqn_of = {m: n for n, m in model.named_modules()}
    stack, found = [model], []
    while stack:
        module = stack.pop()
        for child in module.children():
            if type(child) in SUPPORTED_MODULES:
                found.append((fqn_of[child], child))
            else:
                stack.append(child)
    return found


def _quantize_embeddings(model, embedding_modules):
    """PyTorch's own weight-only quantization of the selected embeddings, in place."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.ao.quantization is deprecated
        import torch.ao.quantization as q

        for _, emb in embedding_modules:
            emb.qconfig = q.float_qparams_weight_only_qconfig
        q.prepare(model, inplace=True)
        q.convert(model, inplace=True)


def post_training_sparse_quantize(
    model, data_sparsifier_class, sparsify_first=True, select_embeddings=None, **sparse_config
):
    """Sparsifies and quantizes the embeddings of ``model`` in place.

    Args:
        model: the model; only exact ``nn.Embedding`` / ``nn.EmbeddingBag`` modules are touched.
        data_sparsifier_class: e.g. ``DataNormSparsifier``; built with ``**sparse_config``.
        sparsify_first: sparsify, squash, then quantize (True); or quantize, sparsify the
            dequantized weights and re-quantize with the same scales (False).
        select_embeddings: a list of embedding modules of ``model``; default all.
    """
    data_sparsifier = data_sparsifier_class(**sparse_config)

    if select_embeddings is None:
        embedding_modules = _fetch_all_embeddings(model)
    else:
        if not isinstance(select_embeddings, list):
            raise AssertionError("the embedding_modules must be a list of embedding modules")
        fqn_of = {m: n for n, m in model.named_modules()}
        embedding_modules = []
        for emb in select_embeddings:
            if type(emb) not in SUPPORTED_MODULES:
                raise AssertionError("the embedding_modules list must be an embedding or embedding bags")
            if emb not in fqn_of:
                raise AssertionError("the embedding modules must be part of input model")
            embedding_modules.append((fqn_of[emb], emb))

    if sparsify_first:
        for name, emb in embedding_modules:
            data_sparsifier.add_data(name=name.replace(".", "_"), data=emb)
        data_sparsifier.step()
        data_sparsifier.squash_mask()  # written into each embedding's own weight storage
        _quantize_embeddings(model, embedding_modules)
        return

    _quantize_embeddings(model, embedding_modules)

    modules = dict(model.named_modules())
    quantized = {}
    for name, _ in embedding_modules:
        module = modules.get(name)
        if module is None:
            raise AssertionError(f"quantized embedding {name} not found in model")
        qw = module.weight()
        dequant = torch.dequantize(qw).contiguous()
        quantized[name] = (module, dequant, qw.q_per_channel_scales(),
                           qw.q_per_channel_zero_points(), qw.q_per_channel_axis(), qw.dtype)
        data_sparsifier.add_data(name=name.replace(".", "_"), data=dequant)
    data_sparsifier.step()
    data_sparsifier.squash_mask()  # masks the dequantized tensors in place
    for module, dequant, scales, zero_points, axis, dtype in quantized.values():
        requant = torch.quantize_per_channel(dequant, scales, zero_points, axis=axis, dtype=dtype)
        module.set_weight(requant)
