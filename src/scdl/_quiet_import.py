"""Imported first by each scdl package that uses scvi-tools: imports it without its
import-time seeding reaching the user's session (see :mod:`scdl._rng`)."""

from __future__ import annotations

from ._rng import import_scvi_keeping_rng

import_scvi_keeping_rng()
