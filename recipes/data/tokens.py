"""Calibration token batches for the BERT recipes (``load_data()`` yields feed dicts)."""

import numpy as np

SAMPLES = 32
BATCH = 4
SEQUENCE = 16
VOCAB = 100


def load_data(seed: int = 1):
    rng = np.random.default_rng(seed)
    for _ in range(SAMPLES // BATCH):
        ids = rng.integers(1, VOCAB, (BATCH, SEQUENCE), dtype=np.int64)
        mask = np.ones((BATCH, SEQUENCE), dtype=np.int64)
        lengths = rng.integers(SEQUENCE // 2, SEQUENCE + 1, BATCH)
        for row, length in enumerate(lengths):
            mask[row, length:] = 0
        yield {"input_ids": ids, "attention_mask": mask}
