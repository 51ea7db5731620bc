"""Synthetic head CT phantoms (draft)."""

from __future__ import annotations

from inference.phantoms.cta import generate_cta
from inference.phantoms.ncct import generate_ncct
from inference.phantoms.types import Phantom

__all__ = ["Phantom", "generate_cta", "generate_ncct"]
