"""Rendered text pages as PaddleOCR's detector takes them (ImageNet mean and std, NCHW): words
in Pillow's own font, of several sizes and inks, on paper of several shades. Noise does not
light up the detector's text-height branch, where its large BatchNormalization variance sits;
text does. Shared by the tests and benchmarks/search.py."""

from __future__ import annotations

import numpy as np

WORDS = ("invoice", "total", "amount", "12.50", "date", "2024", "price", "tax", "street", "city")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def text_page(size: int, seed: int) -> dict[str, np.ndarray]:
    """One ``size`` x ``size`` page, the same for the same seed, as the feed ``{"x": ...}``."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    paper = tuple(int(v) for v in rng.integers(200, 250, 3))
    image = Image.new("RGB", (size, size), paper)
    draw = ImageDraw.Draw(image)
    for row in range(max(1, size // 48)):
        font = ImageFont.load_default(size=int(rng.integers(14, 34)))
        words = " ".join(rng.choice(WORDS, int(rng.integers(1, 5))))
        ink = tuple(int(v) for v in rng.integers(0, 80, 3))
        draw.text((int(rng.integers(0, size // 4)), 8 + row * 46), words, fill=ink, font=font)
    pixels = (np.asarray(image, np.float32) / 255 - MEAN) / STD
    return {"x": pixels.transpose(2, 0, 1)[None].astype(np.float32)}


def flipped(reference: list[np.ndarray], candidate: list[np.ndarray], at: float = 0.3) -> float:
    """The fraction of probability-map pixels on the other side of ``at`` (DB's threshold)."""
    return float(np.mean([np.mean((r > at) != (c > at)) for r, c in zip(reference, candidate)]))
