"""Checks of the annotator's variable-size buffers as a saved file gives them.

The reference sample, the prototypes and the sketch take their sizes from the file
(``AnnotatorModule._load_from_state_dict``), so ``load_state_dict`` cannot compare them with the
module's. Their layout is checked here before they are stored: a damaged or crafted file
with, e.g., gene indices beyond the vocabulary would otherwise make scipy read and write out of
bounds when a query lacking genes refits on the sample.
"""

from __future__ import annotations

import torch
from scipy import sparse


def _refuse(name: str, why: str) -> None:
    raise ValueError(
        f"The saved annotator's {name} {why}: the file is damaged or was not written by scdl's "
        "`.save()`. Save the model again with `.save()`, or retrain it."
    )


def _check_codes(name: str, codes: torch.Tensor, n_labels: int) -> None:
    if codes.numel() and (float(codes.min()) < 0 or float(codes.max()) >= n_labels):
        _refuse(name, f"holds label codes outside 0-{n_labels - 1}")


def _check_sample(get, n_genes: int, n_labels: int) -> None:
    labels = get("sample_labels")
    indptr, indices, counts = get("sample_indptr"), get("sample_indices"), get("sample_counts")
    if labels.numel() == 0:
        if indices.numel() or counts.numel():
            _refuse("reference sample", "holds counts without labels")
        return
    if any(part.ndim != 1 for part in (indptr, indices, counts, labels)):
        _refuse("reference sample", "is incomplete")
    if any(part.is_floating_point() for part in (indptr, indices, labels)):
        _refuse("reference sample", "holds positions or labels that are not whole numbers")
    try:  # scipy's own check of the layout and the index ranges
        sparse.csr_matrix(
            (counts.numpy(), indices.numpy(), indptr.numpy()), shape=(len(labels), n_genes)
        ).check_format(full_check=True)
    except ValueError as e:
        _refuse("reference sample", f"has an inconsistent sparse layout ({e})")
    if counts.numel() and not (bool(torch.isfinite(counts).all()) and float(counts.min()) >= 0):
        _refuse("reference sample", "holds counts that are negative or not finite")
    _check_codes("reference sample's labels", labels, n_labels)


def _check_prototypes(get, n_genes: int, n_labels: int) -> None:
    profiles, types = get("prototype_profiles"), get("prototype_types")
    if profiles.numel() == 0 and types.numel() == 0:
        return
    if (
        types.is_floating_point()
        or profiles.ndim != 2
        or profiles.shape[1] != n_genes
        or types.shape != (len(profiles),)
    ):
        _refuse(
            "prototypes",
            f"have shapes {tuple(profiles.shape)} and {tuple(types.shape)}, not (prototypes x "
            f"{n_genes} genes) with one type each",
        )
    _check_codes("prototype types", types, n_labels)


def _check_sketch(get, n_genes: int, n_labels: int) -> None:
    loadings = get("sketch_loadings")
    center, cells, labels = get("sketch_center"), get("sketch_cells"), get("sketch_labels")
    moments, levels = get("sketch_moments"), get("sketch_level_moments")
    composition = get("sketch_composition")
    if loadings.numel() == 0:  # no sketch (too few cells or genes): nothing else of it either
        if any(part.numel() for part in (center, cells, labels, moments, levels)):
            _refuse("reference sketch", "holds parts without its loadings")
        return
    if cells.numel() == 0:
        _refuse("reference sketch", "holds loadings without its cells")
    n_pcs = loadings.shape[1] if loadings.ndim == 2 else -1
    shapes_fit = (
        loadings.shape[0] == n_genes
        and center.shape == (n_genes,)
        and cells.ndim in (2, 3)  # one depth level in saves from before the levels
        and cells.shape[-1] == n_pcs
        and (labels.numel() == 0 or labels.shape == (cells.shape[-2],))
        and composition.ndim == 1
        and len(composition) <= n_labels
    )
    if shapes_fit and moments.numel():
        used = int(torch.any(loadings != 0, dim=1).sum())  # the genes the PCs load
        n_types = moments.shape[1] if moments.ndim == 3 else -1
        shapes_fit = (
            moments.shape == (2, n_types, n_genes)
            and n_types <= n_labels
            and levels.shape == (cells.shape[0], 2, n_types, used)
        )
    if not shapes_fit:
        _refuse("reference sketch", "has buffers whose shapes do not fit together")
    _check_codes("reference sketch's labels", labels, n_labels)


def check_saved_buffers(state_dict: dict, prefix: str, *, n_genes: int, n_labels: int) -> None:
    """Refuse a state dict whose reference sample, prototypes or sketch (those present) do not
    fit a module of ``n_genes`` genes and ``n_labels`` types, with a ``ValueError`` naming the
    part."""

    def get(name: str) -> torch.Tensor:
        # a part the file lacks is stored empty (a save from before it existed); read on the
        # CPU: a state dict taken from a module on a GPU (a run restored after divergence)
        # holds CUDA tensors, which numpy cannot read
        return state_dict.get(prefix + name, torch.zeros(0)).detach().cpu()

    _check_sample(get, n_genes, n_labels)
    _check_prototypes(get, n_genes, n_labels)
    _check_sketch(get, n_genes, n_labels)
