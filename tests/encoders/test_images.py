from __future__ import annotations

import io
import zipfile

import pytest
from PIL import Image

from vitrine.encoders.images import ImageError, decode_image


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("mode,fmt", [("L", "PNG"), ("CMYK", "JPEG"), ("RGBA", "PNG"), ("P", "GIF"), ("RGB", "WEBP"), ("LA", "PNG")])
def test_modes_become_rgb(mode, fmt):
    img = decode_image(encode(Image.new(mode, (8, 6)), fmt))
    assert img.mode == "RGB" and img.size == (8, 6)


def test_alpha_is_composited_on_white():
    img = decode_image(encode(Image.new("RGBA", (2, 2), (255, 0, 0, 0))))
    assert img.getpixel((0, 0)) == (255, 255, 255)


def test_one_pixel_image_is_fine():
    assert decode_image(encode(Image.new("RGB", (1, 1)))).size == (1, 1)


def zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.txt", "hello")
    return buf.getvalue()


@pytest.mark.parametrize("data,match", [
    (b"", "no bytes"),
    (b"just some text", "not a decodable image"),
    (zip_bytes(), "not a decodable image"),
    (encode(Image.new("RGB", (64, 64)), "JPEG")[:200], "corrupt or truncated"),
])
def test_bad_bytes_raise_with_reason(data, match):
    with pytest.raises(ImageError, match=match):
        decode_image(data)


def test_limits_on_bytes_and_pixels():
    data = encode(Image.new("L", (3000, 3000)))
    with pytest.raises(ImageError, match="bytes exceeds the limit of 100"):
        decode_image(data, max_bytes=100)
    with pytest.raises(ImageError, match="pixels exceeds"):
        decode_image(data, max_pixels=1_000_000)


def test_jpegs_decode_at_a_reduced_scale_no_smaller_than_min_side():
    buf = io.BytesIO()
    Image.new("RGB", (400, 300), (200, 10, 10)).save(buf, format="JPEG")
    small = decode_image(buf.getvalue(), min_side=96)
    assert small.mode == "RGB" and 96 <= min(small.size) and small.size[0] < 400
    assert decode_image(buf.getvalue()).size == (400, 300)
    png = io.BytesIO()
    Image.new("RGB", (400, 300)).save(png, format="PNG")
    assert decode_image(png.getvalue(), min_side=96).size == (400, 300)  # only JPEG has DCT scales
