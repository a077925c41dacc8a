"""Decoding and normalising source images to the common square uint8 C×S×S layout."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from kml.data.errors import DataError


def decode(data: bytes, name: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"cannot decode image {name} ({err}); the source is damaged, download it again") from err
    return image


def to_array(image: Image.Image, size: int, channels: int, crop_bottom: int = 0, invert: bool = False) -> np.ndarray:
    """Resize (antialiased) to size×size and return uint8 [channels, size, size]."""
    if crop_bottom:
        image = image.crop((0, 0, image.width, image.height - crop_bottom))
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    array = np.asarray(image, dtype=np.uint8)
    if invert:
        array = 255 - array
    return array[None] if channels == 1 else array.transpose(2, 0, 1)
