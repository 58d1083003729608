"""Decoding untrusted image bytes into RGB PIL images, with limits and clear errors."""
from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

MIN_SIDE = 1


class ImageError(ValueError):
    """Image bytes that cannot be used; the message says why."""


def decode_image(data: bytes, max_bytes: int = 10 * 1024 * 1024, max_pixels: int = 40_000_000,
                 min_side: int | None = None) -> Image.Image:
    """Returns the image as RGB. Grayscale, CMYK, palette and alpha images are converted (alpha onto white).

    With min_side, a JPEG is decoded at the smallest DCT scale whose sides stay >= min_side (the encoder's input
    size): two to eight times less decoding work for the same pixels after resizing.

    Raises ImageError for empty, oversized, truncated, non-image or decompression-bomb input.
    """
    if not data:
        raise ImageError("image: no bytes were given.")
    if len(data) > max_bytes:
        raise ImageError(f"image: {len(data)} bytes exceeds the limit of {max_bytes}.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(f"image: {w}x{h} pixels exceeds the limit of {max_pixels} pixels.")
            if min_side:
                img.draft("RGB", (min_side, min_side))
            img.load()
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"image: the bytes are not a decodable image ({type(exc).__name__}).") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"image: the image is corrupt or truncated ({exc}).") from None
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB")
