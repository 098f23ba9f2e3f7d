import numpy as np, time
from numcodecs import Zstd, Blosc, LZ4
rng = np.random.default_rng(0)
W = 16384; n = 1024; l0 = 80
# heterogeneous feature frequencies (power law), values threshold + exponential
freq = rng.pareto(1.2, W) + 0.1; freq = freq / freq.sum() * l0
mask = rng.random((n, W)) < np.minimum(freq, 0.9)
vals = (rng.uniform(2, 8, W) + rng.exponential(3, (n, W))).astype(np.float32)
x = np.where(mask, vals, 0).astype(np.float32)
nnz = mask.sum(); print("nnz/row", nnz/n)
def test(name, codec, shape):
    fr, fe = shape
    t = time.perf_counter(); total = 0
    for i in range(0, n, fr):
        for j in range(0, W, fe):
            total += len(codec.encode(np.ascontiguousarray(x[i:i+fr, j:j+fe])))
    dt = time.perf_counter() - t
    print(f"{name:28s} {str(shape):14s} bytes/nnz {total/nnz:5.2f}  ratio {x.nbytes/total:6.1f}  {x.nbytes/dt/1e6:7.0f} MB/s")
for shape in [(256, 1024), (256, 4096), (256, 16384), (64, 1024), (1024, 1024)]:
    test("zstd1", Zstd(level=1), shape)
    test("zstd3", Zstd(level=3), shape)
test("zstd5", Zstd(level=5), (256, 1024))
test("zstd9", Zstd(level=9), (256, 1024))
test("lz4", LZ4(), (256, 1024))
test("blosc-zstd3-bitshuffle", Blosc("zstd", 3, Blosc.BITSHUFFLE), (256, 1024))
test("blosc-zstd3-shuffle", Blosc("zstd", 3, Blosc.SHUFFLE), (256, 1024))
test("blosc-zstd3-noshuffle", Blosc("zstd", 3, Blosc.NOSHUFFLE), (256, 1024))
test("blosc-lz4-bitshuffle", Blosc("lz4", 5, Blosc.BITSHUFFLE), (256, 1024))
# npz compressed baseline
import io, zlib
t=time.perf_counter(); b=io.BytesIO(); np.savez_compressed(b, a=x); dt=time.perf_counter()-t
print(f"savez_compressed bytes/nnz {len(b.getvalue())/nnz:.2f} {x.nbytes/dt/1e6:.0f} MB/s")
