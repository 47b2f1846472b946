"""MXFP4 (gpt-oss's expert weights on the Hub): 4-bit floats in blocks of 32 sharing one power-of-two scale,
dequantised on load, tensor by tensor, to the [E, in, out] layout transformers' GptOssExperts holds.

A checkpoint stores `<name>_blocks` [E, out, in / 32, 16] uint8 (two e2m1 values a byte, low nibble first) and
`<name>_scales` [E, out, in / 32] uint8 (exponent + 127) in place of `<name>`.
"""

from __future__ import annotations

import numpy as np

# e2m1 codes 0-15: sign bit 3, then the magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6
E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], np.float32)


def dequantize(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """float32 [E, in, out] from MXFP4 blocks [E, out, G, 16] and scales [E, out, G] (in = G * 32)."""
    if blocks.dtype != np.uint8 or scales.dtype != np.uint8 or blocks.shape[:-1] != scales.shape:
        raise ValueError(f"MXFP4 blocks {blocks.shape} {blocks.dtype} and scales {scales.shape} {scales.dtype} do "
                         "not pair: expected uint8 [..., G, 16] and uint8 [..., G].")
    values = np.empty((*blocks.shape[:-1], 32), np.float32)
    values[..., 0::2] = E2M1[blocks & 0x0F]
    values[..., 1::2] = E2M1[blocks >> 4]
    values = np.ldexp(values, scales.astype(np.int32)[..., None] - 127)
    E, out = blocks.shape[:2]
    return values.reshape(E, out, -1).transpose(0, 2, 1)
