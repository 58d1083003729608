"""The small interfaces every encoder implements, and the one place the torch device is chosen."""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from PIL import Image


def pick_device(requested: str | None = None) -> str:
    """Returns `requested` if given, else "cuda" when torch sees a GPU, else "cpu"."""
    if requested:
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-normalises a (N, D) array to unit length as float32; zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


@runtime_checkable
class TextEncoder(Protocol):
    """Maps texts to L2-normalised float32 vectors of shape (N, dim)."""

    name: str
    dim: int

    def encode_texts(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray: ...


@runtime_checkable
class ImageEncoder(Protocol):
    """Maps decoded images to L2-normalised float32 vectors of shape (N, dim) in the same space as its texts."""

    name: str
    dim: int

    def encode_images(self, images: list[Image.Image], batch_size: int = 64, progress: bool = False) -> np.ndarray: ...
