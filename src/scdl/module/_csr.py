"""scVI's encoder on a sparse CSR minibatch of counts.

A minibatch arrives from :class:`scdl.data._csr_loader.CSRBatchLoader` as a
``torch.sparse_csr_tensor``. The encoder's input transform ``log1p`` is applied to the stored
counts only (``log1p(0) = 0``), and the first layer multiplies the sparse input with the
weight columns of the genes (:func:`csr_linear`); covariate columns (continuous covariates,
one-hot batch and categories) go through a small dense product, as scvi-tools' ``FCLayers``
concatenates them. Every later layer is scvi-tools' own module, called as ``FCLayers`` and
``Encoder`` call them, so the weights, their names and scArches' gradient hooks are unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Normal
from torch.nn import functional as F


def csr_entries(x: torch.Tensor):
    """(crow, row, column, value) of a sparse CSR tensor's stored entries, in CSR order."""
    crow = x.crow_indices()
    val = x.values()
    rows = torch.arange(x.shape[0], device=val.device)
    row = torch.repeat_interleave(rows, crow.diff(), output_size=val.numel())
    return crow, row, x.col_indices(), val


def csr_linear(crow, row, col, val, weight: torch.Tensor) -> torch.Tensor:
    """``X @ weight.T`` for the sparse ``X`` (cells x genes) given by its CSR entries.

    ``X`` is scattered into a dense minibatch first: on CPU, PyTorch's sparse products (and
    an ``embedding_bag`` formulation, which needs the weight transposed both ways) were
    slower than one dense product at 2,000 genes and ~5% non-zeros.
    """
    dense = torch.zeros(len(crow) - 1, weight.shape[1], dtype=weight.dtype, device=weight.device)
    dense.index_put_((row, col), val.to(weight.dtype))
    return F.linear(dense, weight)


def one_hots(fc: nn.Module, cat_list, dtype: torch.dtype) -> list[torch.Tensor]:
    """The one-hot covariates ``FCLayers`` concatenates, built by ``scatter_``.

    ``F.one_hot`` checks its classes on the host (a device synchronisation on a GPU at every
    call); the values are the same.
    """
    out = []
    for n_cat, cat in zip(fc.n_cat_list, cat_list, strict=False):
        if n_cat and cat is None:
            raise ValueError("cat not provided while n_cat != 0 in init. params.")
        if n_cat > 1:
            if cat.size(1) == n_cat:  # already one-hot
                out.append(cat.to(dtype))
            else:
                hot = torch.zeros(cat.shape[0], n_cat, dtype=dtype, device=cat.device)
                out.append(hot.scatter_(1, cat.long(), 1.0))
    return out


def fc_forward(fc: nn.Module, x, covs: list[torch.Tensor], first_linear=None) -> torch.Tensor:
    """scvi-tools ``FCLayers.forward`` on 2-d input with prepared covariates ``covs``.

    ``first_linear(layer, covs)``, if given, replaces the first layer's ``Linear`` call.
    """
    h = x
    for i, layers in enumerate(fc.fc_layers):
        inject = covs if fc.inject_into_layer(i) else []
        for layer in layers:
            if layer is None:
                continue
            if isinstance(layer, nn.Linear):
                if i == 0 and first_linear is not None:
                    h = first_linear(layer, inject)
                elif inject:
                    h = layer(torch.cat((h, *inject), dim=-1))
                else:
                    h = layer(h)
            else:
                h = layer(h)
    return h


def encode_csr(
    encoder: nn.Module,
    entries: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    shape: tuple[int, int],
    dense_inputs: list[torch.Tensor],
    *cat_list: torch.Tensor,
):
    """scvi-tools ``Encoder.forward`` with a sparse first-layer input.

    ``entries``: (crow, row, column, transformed value) of the minibatch; ``shape``: cells x
    genes; ``dense_inputs``: tensors concatenated after the genes (continuous covariates).
    Returns ``(q_z, z)`` as the encoder does with ``return_dist=True``.
    """
    fc = encoder.encoder
    n_genes = shape[1]
    dtype = fc.fc_layers[0][0].weight.dtype

    def first_linear(layer, covs):
        weight = layer.weight
        h = csr_linear(*entries, weight[:, :n_genes])
        extra = [t.to(h.dtype) for t in (*dense_inputs, *covs)]
        if extra:
            h = torch.addmm(h, torch.cat(extra, dim=-1), weight[:, n_genes:].t())
        return h if layer.bias is None else h + layer.bias

    h = fc_forward(fc, None, one_hots(fc, cat_list, dtype), first_linear)
    q_m = encoder.mean_encoder(h)
    q_v = encoder.var_activation(encoder.var_encoder(h)) + encoder.var_eps
    dist = Normal(q_m, q_v.sqrt(), validate_args=False)
    latent = encoder.z_transformation(dist.rsample())
    return dist, latent
