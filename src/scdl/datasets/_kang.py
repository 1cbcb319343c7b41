"""Kang et al. 2018 PBMCs (control and IFN-beta stimulated), bundled subset."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._fetch import fetch_file

if TYPE_CHECKING:
    from anndata import AnnData

_KANG = ("kang_pbmc_1.5k.h5ad", "6bed945e24922a329fd204913c1eb4eef6ace3ffe239a8bbbbb438b9c91d0537")


def kang_pbmc() -> AnnData:
    """1,556 PBMCs from two donors, control and IFN-beta stimulated, with cell types.

    A subset of Kang et al. 2018 (Nat Biotechnol 36:89; GEO GSE96583) as shipped in the
    muscat R package's ``example_sce`` (GPL-3), bundled with scdl (1.3 MB) for the demo and
    tutorials.

    Returns
    -------
    AnnData of 1,556 cells x 1,267 genes with raw UMI counts in ``X`` (float32 CSR) and

    ``obs["cell_type"]``
        B cells, CD14+ Monocytes, CD4 T cells, CD8 T cells, FCGR3A+ Monocytes.
    ``obs["sample"]``
        ctrl101, stim101, ctrl107, stim107 (donor x condition): the batch to integrate.
    ``obs["condition"]``
        ctrl or stim.
    ``uns["provenance"]``
        Study, carrier and content.
    """
    import anndata

    name, sha = _KANG
    return anndata.read_h5ad(fetch_file(name, sha256=sha))


_KANG_HELDOUT = (
    "kang_pbmc_heldout.h5ad",
    "5c171c6cd31243fca69e91415202e5a8e8fb1e06b9af1b9a5750a2f35af5f23c",
)


def kang_pbmc_heldout() -> AnnData:
    """395 PBMCs with cell types that the shipped annotator ``pbmc_kang2018`` never saw.

    The 20% of Kang et al. 2018's cells (scGen repository's validation set, GPL-3; control
    and IFN-beta stimulated) held out when training the bundled annotator, restricted to its
    2,000 genes; bundled (0.2 MB) to demonstrate and test annotation on labelled cells. The
    monocytes' labels are the study's own (scGen's call most stimulated CD14 monocytes
    FCGR3A+Mono), as in the annotator's training cells.

    Returns
    -------
    AnnData of 395 cells x 2,000 genes with raw UMI counts in ``X`` (float32 CSR) and

    ``obs["cell_type"]``
        CD4T, CD8T, B, NK, CD14+Mono, FCGR3A+Mono, Dendritic.
    ``obs["condition"]``
        control or stimulated.
    ``uns["provenance"]``
        Study, carrier and selection.
    """
    import anndata

    name, sha = _KANG_HELDOUT
    return anndata.read_h5ad(fetch_file(name, sha256=sha))
