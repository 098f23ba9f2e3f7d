"""Compare codecs and chunk shapes on synthetic SAE latents: bytes per nonzero, ratio, single-thread speed.

Run: python scripts/probe_codecs.py   (the figures behind USAGE.md's "Codec and chunk shape")
"""

from __future__ import annotations

import io
import time

import numpy as np
from numcodecs import LZ4, Blosc, Zstd

WIDTH, ROWS, L0 = 16384, 1024, 80


def synthetic_latents(seed: int = 0) -> np.ndarray:
    """JumpReLU-like latents: power-law feature frequencies, values above a per-feature threshold."""
    rng = np.random.default_rng(seed)
    frequency = rng.pareto(1.2, WIDTH) + 0.1
    frequency = np.minimum(frequency / frequency.sum() * L0, 0.9)
    fires = rng.random((ROWS, WIDTH)) < frequency
    values = rng.uniform(2, 8, WIDTH) + rng.exponential(3, (ROWS, WIDTH))
    return np.where(fires, values, 0).astype(np.float32)


def probe(name: str, codec, shape: tuple[int, int], latents: np.ndarray) -> None:
    """Print one codec/shape's figures."""
    rows, cols = shape
    start, total = time.perf_counter(), 0
    for i in range(0, ROWS, rows):
        for j in range(0, WIDTH, cols):
            total += len(codec.encode(np.ascontiguousarray(latents[i : i + rows, j : j + cols])))
    seconds = time.perf_counter() - start
    nonzeros = np.count_nonzero(latents)
    print(
        f"{name:26s} {shape!s:14s} bytes/nonzero {total / nonzeros:5.2f}  "
        f"ratio {latents.nbytes / total:6.1f}  {latents.nbytes / seconds / 1e6:6.0f} MB/s"
    )


def main() -> None:
    latents = synthetic_latents()
    print(f"nonzeros per row: {np.count_nonzero(latents) / ROWS:.1f}")
    for shape in [(64, 1024), (256, 1024), (512, 2048), (1024, 1024), (256, 16384)]:
        probe("zstd level 1", Zstd(level=1), shape, latents)
        probe("zstd level 3", Zstd(level=3), shape, latents)
    probe("zstd level 9", Zstd(level=9), (512, 2048), latents)
    probe("lz4", LZ4(), (512, 2048), latents)
    for label, shuffle in [
        ("noshuffle", Blosc.NOSHUFFLE),
        ("shuffle", Blosc.SHUFFLE),
        ("bitshuffle", Blosc.BITSHUFFLE),
    ]:
        probe(f"blosc zstd3 {label}", Blosc("zstd", 3, shuffle), (512, 2048), latents)
    start, buffer = time.perf_counter(), io.BytesIO()
    np.savez_compressed(buffer, activations=latents)
    seconds = time.perf_counter() - start
    print(
        f"np.savez_compressed        bytes/nonzero {len(buffer.getvalue()) / np.count_nonzero(latents):5.2f}  "
        f"{latents.nbytes / seconds / 1e6:6.0f} MB/s"
    )


if __name__ == "__main__":
    main()
