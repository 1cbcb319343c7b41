"""Keep Lightning's start-up chatter out of a notebook user's ``.train()`` output.

Every ``Trainer`` logs which accelerators exist ("GPU available: ..., used: ...", "TPU
available", "HPU available") and tips for Lightning's cloud services. scvi-tools' own
``.train()`` prints them too, but a user who asked for a model did not ask for them.
Nor did they ask for Lightning 2.6's ``FutureWarning`` about ``LeafSpec`` under torch >= 2.13
(Lightning's own use of a torch API it has not caught up with, printed at the first training).
Every other warning and error still comes through, and so does the progress bar.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

# where Lightning's rank-zero info lines are logged (lightning and pytorch_lightning packages)
_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "pytorch_lightning.utilities.rank_zero",
    "lightning.pytorch.accelerators.cuda",
)


@contextmanager
def quiet_loggers(*names: str) -> Iterator[None]:
    """The named loggers at WARNING at least for the duration, then as they were (info lines
    a library logs about what scdl did, not about the user's data)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        if lg.getEffectiveLevel() < logging.WARNING:
            lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Raise Lightning's info loggers to WARNING for the duration, then restore them; hide
    Lightning's ``LeafSpec`` deprecation warning meanwhile."""
    with quiet_loggers(*_LOGGERS), warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*LeafSpec.* is deprecated", category=FutureWarning
        )
        yield
