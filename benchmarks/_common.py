"""Shared helpers for the benchmark scripts: data location and peak-memory sampling."""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import psutil

DATA = Path(os.environ.get("SCDL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def need(path: Path) -> Path:
    if not path.is_file():
        raise SystemExit(f"{path} not found: set SCDL_DATA to the folder holding shared/data.")
    return path


@contextmanager
def measure():
    """Wall seconds and peak RSS increase (MiB) over the block, sampled every 20 ms."""
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.02)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out = {}
    t0 = time.perf_counter()
    try:
        yield out
    finally:
        out["seconds"] = time.perf_counter() - t0
        stop.set()
        th.join()
        out["peak_mib"] = (max(peak[0], proc.memory_info().rss) - base) / 2**20
