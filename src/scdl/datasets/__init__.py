"""Datasets: a small real dataset bundled for the demo, and checked loaders for others."""

from ._fetch import as_sha256, cache_dir, download, fetch_file, sha256sum
from ._gdsc import cell_line_key, gdsc, match_cell_lines
from ._kang import kang_pbmc, kang_pbmc_heldout

__all__ = [
    "as_sha256",
    "cache_dir",
    "cell_line_key",
    "download",
    "fetch_file",
    "gdsc",
    "kang_pbmc",
    "kang_pbmc_heldout",
    "match_cell_lines",
    "sha256sum",
]
