"""Datasets: a small real dataset bundled for the demo, and checked loaders for others."""

from ._fetch import cache_dir, fetch_file
from ._kang import kang_pbmc

__all__ = ["cache_dir", "fetch_file", "kang_pbmc"]
