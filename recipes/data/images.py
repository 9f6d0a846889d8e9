"""Calibration and validation images for the CNN recipes (Polygraphy's data-loader convention:
``load_data()`` yields feed dicts). Replace with your own images, or declare an image folder
(`images: {folder: ..., resize: 256, crop: 224, mean: [...], std: [...]}`) in the recipe."""

import numpy as np

SAMPLES = 32
BATCH = 4


def load_data(seed: int = 1):
    rng = np.random.default_rng(seed)
    for _ in range(SAMPLES // BATCH):
        # Smooth images (a blurred noise field per channel), closer to photographs than
        # independent pixel noise.
        noise = rng.random((BATCH, 3, 8, 8), dtype=np.float32)
        images = noise.repeat(4, axis=2).repeat(4, axis=3)
        yield {
            "pixel_values": np.clip(images + 0.05 * rng.standard_normal(images.shape), 0, 1).astype(
                np.float32
            )
        }
