"""scVI's encoder on a sparse CSR minibatch of counts.

A minibatch arrives from :class:`scdl.dataloaders.CSRBatchLoader` as a
``torch.sparse_csr_tensor``. The encoder's input transform ``log1p`` is applied to the stored
counts only (``log1p(0) = 0``); the first layer's input (those values scattered into a dense
minibatch, then continuous covariates and one-hot categories, as scvi-tools' ``FCLayers``
concatenates them) is written into one matrix and multiplied once, as scvi-tools does. Every
later layer is scvi-tools' own module, called as ``FCLayers`` and ``Encoder`` call them, so
the weights, their names and scArches' gradient hooks are unchanged. One-hot covariates are
built with ``scatter_`` (no host synchronisation on a GPU).
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


def csr_dense(row, col, val, shape: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """The dense ``shape`` matrix holding ``val`` at ``(row, col)`` (zeros elsewhere).

    Columns beyond the CSR matrix's are left for the caller to fill (covariates).
    """
    dense = torch.zeros(shape, dtype=dtype, device=val.device)
    dense.index_put_((row, col), val.to(dtype))
    return dense


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
    n_rows, n_genes = shape
    _, row, col, val = entries
    dtype = fc.fc_layers[0][0].weight.dtype

    def first_linear(layer, covs):
        # the layer's input [log1p(x), covariates] written straight into one dense matrix:
        # on CPU, PyTorch's sparse products (and an ``embedding_bag`` formulation, which
        # needs the weight transposed both ways) were slower than this one product at
        # 2,000 genes and ~5% non-zeros; log1p ran on the stored counts only
        extra = [t.to(dtype) for t in (*dense_inputs, *covs)]
        width = n_genes + sum(t.shape[1] for t in extra)
        inp = csr_dense(row, col, val, (n_rows, width), dtype)
        if extra:
            inp[:, n_genes:] = torch.cat(extra, dim=-1)
        return F.linear(inp, layer.weight, layer.bias)

    h = fc_forward(fc, None, one_hots(fc, cat_list, dtype), first_linear)
    q_m = encoder.mean_encoder(h)
    q_v = encoder.var_activation(encoder.var_encoder(h)) + encoder.var_eps
    dist = Normal(q_m, q_v.sqrt(), validate_args=False)
    latent = encoder.z_transformation(dist.rsample())
    return dist, latent
