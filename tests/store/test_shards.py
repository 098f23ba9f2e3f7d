"""Shards saezarr encodes itself are byte for byte the shards zarr's own write path makes, and read back right."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from zarr.codecs import BloscCodec

from saezarr import __version__
from saezarr.errors import SaezarrError
from saezarr.inputs.configs import SAEConfig
from saezarr.store.format import ACTIVATIONS, Store, create_store
from saezarr.store.reading import open_existing
from saezarr.store.shards import ChunkLayout, ShardEncoder

CONFIGS = (SAEConfig(3, 20, "layer_3/width_16k/average_l0_20"), SAEConfig(7, 41, "layer_7/width_16k/average_l0_41"))


def _latents(rng: np.random.Generator, rows: int, width: int) -> np.ndarray:
    """JumpReLU-like rows: mostly +0.0, some positive values, a NaN row and a -0.0 to keep every bit pattern."""
    values = rng.gamma(2.0, 3.0, size=(rows, width)).astype(np.float32)
    latents = np.where(rng.random((rows, width)) < 0.03, values, np.float32(0.0))
    latents[rows // 2] = np.nan
    latents[0, 0] = -0.0
    return latents


def _write_unit(store: Store, config_index: int, chunk: int, latents: np.ndarray) -> None:
    """Write one unit's latents, then mark it complete, as the build's runner does."""
    store.write_shard(config_index, chunk, latents)
    store.mark_done(config_index, chunk)


def _new_store(path, n_fragments: int, width: int, chunk_fragments: int) -> Store:
    texts = [f"f{i}" for i in range(n_fragments)]
    fragments = pd.DataFrame({"fragment_text": texts, "sentence_id": np.arange(n_fragments)})
    attrs = {"saezarr_version": __version__, "configs": [c.name for c in CONFIGS]}
    return create_store(path, fragments, CONFIGS, width, attrs, chunk_fragments)


@pytest.mark.parametrize(
    ("n_fragments", "width", "chunk_fragments"),
    [(250, 6144, 100), (37, 512, 512), (300, 2050, 128)],
    ids=["3 inner chunks, short last shard", "one shard smaller than the chunk", "odd width: 2 inner chunks of 1025"],
)
def test_shard_bytes_equal_zarrs_and_read_back(tmp_path, n_fragments, width, chunk_fragments):
    ours = _new_store(tmp_path / "ours.zarr", n_fragments, width, chunk_fragments)
    theirs = _new_store(tmp_path / "zarr.zarr", n_fragments, width, chunk_fragments)
    assert ours._shard_encoder is not None
    theirs._shard_encoder = None  # zarr's array API writes this one
    rng = np.random.default_rng(n_fragments)
    written = np.empty((len(CONFIGS), n_fragments, width), dtype=np.float32)
    for ci in range(len(CONFIGS)):
        for chunk in range(ours.n_chunks):
            start, stop = ours.chunk_bounds(chunk)
            written[ci, start:stop] = _latents(rng, stop - start, width)
            _write_unit(ours, ci, chunk, written[ci, start:stop])
            _write_unit(theirs, ci, chunk, written[ci, start:stop])
            assert ours.shard_files(ci, chunk)[0].read_bytes() == theirs.shard_files(ci, chunk)[0].read_bytes()
    assert ours.done_matrix().all()
    read = xr.open_zarr(tmp_path / "ours.zarr")[ACTIVATIONS].values
    np.testing.assert_array_equal(read.view(np.uint32), written.view(np.uint32))


def test_inner_chunks_are_split_along_features(tmp_path):
    store = _new_store(tmp_path / "s.zarr", 10, 6144, 512)
    encoder = ShardEncoder.for_layout(store.layout)
    assert (encoder.shard_rows, encoder.inner_width) == (10, 2048)
    parts = encoder.encode(np.zeros((10, 6144), dtype=np.float32))
    assert len(parts) == 4  # three compressed inner chunks and the index
    assert len(parts[-1]) == 3 * 16 + 4  # (offset, length) as uint64 per inner chunk, then a crc32c


def test_an_unknown_layout_falls_back_to_zarr(tmp_path):
    zarr.create_array(
        tmp_path / "blosc.zarr",
        shape=(1, 20, 64),
        chunks=(1, 20, 32),
        shards=(1, 20, 64),
        dtype="float32",
        compressors=BloscCodec(),
        fill_value=np.nan,
    )
    assert ShardEncoder.for_layout(ChunkLayout.read(tmp_path / "blosc.zarr")) is None
    zarr.create_array(tmp_path / "plain.zarr", shape=(1, 20, 64), chunks=(1, 20, 64), dtype="float32")
    assert ShardEncoder.for_layout(ChunkLayout.read(tmp_path / "plain.zarr")) is None


def test_latents_of_the_wrong_shape_are_refused_before_anything_is_written(tmp_path):
    store = _new_store(tmp_path / "s.zarr", 250, 512, 100)
    with pytest.raises(ValueError, match=r"unit \(1, 2\) takes latents of shape \(50, 512\), got \(100, 512\)"):
        _write_unit(store, 1, 2, np.zeros((100, 512), dtype=np.float32))
    assert not store.shard_files(1, 2)[0].exists()
    assert not store.done_matrix().any()


def _bits(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values).view(np.uint32)


@pytest.mark.parametrize("layout", ["saezarr's shards", "zarr's fallback"])
def test_read_chunk_equals_zarrs_read_including_unwritten_units(tmp_path, layout):
    store = _new_store(tmp_path / "s.zarr", 250, 6144, 100)
    if layout == "zarr's fallback":
        store._shard_encoder = None
    rng = np.random.default_rng(5)
    for ci, chunk in [(0, 0), (0, 2), (1, 1)]:  # (0, 1), (1, 0) and (1, 2) are never written: NaN
        start, stop = store.chunk_bounds(chunk)
        _write_unit(store, ci, chunk, _latents(rng, stop - start, 6144))
    expected = zarr.open_array(tmp_path / "s.zarr" / ACTIVATIONS, mode="r")[:]
    rows = np.array([0, 3, 3, 17])
    for ci in range(len(CONFIGS)):
        for chunk in range(store.n_chunks):
            start, stop = store.chunk_bounds(chunk)
            whole = store.read_chunk(ci, chunk, np.copy)
            np.testing.assert_array_equal(_bits(whole), _bits(expected[ci, start:stop]))
            picked = store.read_chunk(ci, chunk, lambda block: block[rows])
            np.testing.assert_array_equal(_bits(picked), _bits(expected[ci, start:stop][rows]))
            peak = store.read_chunk(ci, chunk, lambda block: np.maximum.reduceat(block, [0, 40], axis=0))
            np.testing.assert_array_equal(peak, np.maximum.reduceat(expected[ci, start:stop], [0, 40], axis=0))
    assert np.isnan(store.read_chunk(1, 0, np.copy)).all()


def test_inner_chunks_zarr_left_out_read_as_the_fill_value(tmp_path):
    store = _new_store(tmp_path / "s.zarr", 100, 6144, 100)
    latents = _latents(np.random.default_rng(6), 100, 6144)
    latents[:, 2048:4096] = np.nan  # zarr skips an inner chunk that holds only the fill value
    zarr.open_array(tmp_path / "s.zarr" / ACTIVATIONS, mode="r+")[0, :, :] = latents
    data = store.shard_files(0, 0)[0].read_bytes()
    index = np.frombuffer(data[-(3 * 16 + 4) : -4], dtype="<u8").reshape(3, 2)
    assert (index[1] == 2**64 - 1).all()  # the middle inner chunk is missing from the shard
    np.testing.assert_array_equal(_bits(store.read_chunk(0, 0, np.copy)), _bits(latents))


def test_a_damaged_shard_index_is_refused(tmp_path):
    store = _new_store(tmp_path / "s.zarr", 100, 4096, 100)
    _write_unit(store, 0, 0, _latents(np.random.default_rng(7), 100, 4096))
    path = store.shard_files(0, 0)[0]
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    # one line for the user, naming the unit, with the checksum failure that found it
    with pytest.raises(SaezarrError, match=r"s\.zarr: cannot read chunk 0 of \S+ \(ShardDamaged: .*(?i:checksum)"):
        store.read_chunk(0, 0, np.copy)


@pytest.mark.parametrize("layout", ["saezarr's shards", "zarr's fallback"])
def test_read_columns_equals_zarrs_read(tmp_path, layout):
    store = _new_store(tmp_path / "s.zarr", 250, 6144, 100)
    if layout == "zarr's fallback":
        store._shard_encoder = None
    rng = np.random.default_rng(9)
    for chunk in range(store.n_chunks):
        start, stop = store.chunk_bounds(chunk)
        _write_unit(store, 0, chunk, _latents(rng, stop - start, 6144))
    expected = zarr.open_array(tmp_path / "s.zarr" / ACTIVATIONS, mode="r")[:]
    features = np.array([5, 2047, 2048, 6000, 6143])  # in the first and last inner chunks, and across an edge
    for ci in range(len(CONFIGS)):  # config 1 was never written: NaN
        for chunk in range(store.n_chunks):
            start, stop = store.chunk_bounds(chunk)
            np.testing.assert_array_equal(
                _bits(store.read_columns(ci, chunk, features)), _bits(expected[ci, start:stop][:, features])
            )


def test_a_pickled_store_reads_the_same(tmp_path):
    """dask workers get the store pickled: its shard encoder comes back with a fresh per-thread buffer."""
    import pickle

    store = _new_store(tmp_path / "s.zarr", 100, 4096, 100)
    _write_unit(store, 0, 0, _latents(np.random.default_rng(10), 100, 4096))
    store.read_chunk(0, 0, np.copy)  # the buffer exists before pickling
    copy = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(_bits(copy.read_chunk(0, 0, np.copy)), _bits(store.read_chunk(0, 0, np.copy)))


@pytest.mark.parametrize(
    ("options", "coords"),
    [
        ({"chunks": (1, 4, 8), "shards": (1, 8, 16)}, [(0, 0, 0), (2, 1, 1)]),
        ({"chunks": (2, 3, 5)}, [(0, 0, 0), (1, 3, 2)]),
        ({"chunks": (2, 3, 5), "chunk_key_encoding": {"name": "v2", "separator": "."}}, [(0, 0, 0), (1, 3, 2)]),
        ({"chunks": (2, 3, 5), "chunk_key_encoding": {"name": "default", "separator": "."}}, [(1, 3, 2)]),
    ],
    ids=["sharded", "plain", "v2 keys", "default keys with dots"],
)
def test_chunk_layout_from_zarr_json_is_what_zarr_reads(tmp_path, options, coords):
    array = zarr.create_array(tmp_path / "a", shape=(3, 16, 20), dtype="float32", **options)
    array[:] = np.arange(3 * 16 * 20, dtype=np.float32).reshape(3, 16, 20)
    layout = ChunkLayout.read(tmp_path / "a")
    assert layout.shape == array.shape and layout.dtype == array.dtype
    assert layout.chunks == (array.shards or array.chunks) and layout.inner_chunks == array.chunks
    for where in coords:
        key = layout.chunk_key(where)
        assert key == array.metadata.encode_chunk_key(where)
        assert (tmp_path / "a" / key).is_file()


def test_a_store_finds_its_layout_without_zarr_and_opens_zarr_on_first_use(tmp_path):
    store = _new_store(tmp_path / "s.zarr", 20, 64, 8)
    opened = Store(tmp_path / "s.zarr")
    assert "array" not in vars(opened)  # not opened yet
    assert (opened.shape, opened.chunk_fragments, opened.feature_chunk) == ((2, 20, 64), 8, 64)
    assert opened.shard_files(1, 2)[0] == tmp_path / "s.zarr" / ACTIVATIONS / store.array.metadata.encode_chunk_key(
        (1, 2, 0)
    )
    (tmp_path / "s.zarr" / ACTIVATIONS / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    with pytest.raises(SaezarrError, match="cannot read the store's activations array"):
        open_existing(tmp_path / "s.zarr")


def test_an_array_that_zarr_cannot_open_is_one_line_on_first_use_and_left_as_it_is(tmp_path):
    # the layout parses, so the store opens without zarr; zarr refuses the codec when a chunk is read
    _new_store(tmp_path / "s.zarr", 20, 64, 8)
    meta_path = tmp_path / "s.zarr" / ACTIVATIONS / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["codecs"] = [{"name": "no_such_codec"}]
    meta_path.write_text(json.dumps(meta))
    before = {p: p.read_bytes() for p in (tmp_path / "s.zarr").rglob("*") if p.is_file()}
    store = open_existing(tmp_path / "s.zarr")
    with pytest.raises(SaezarrError) as caught:
        store.read_chunk(0, 0, lambda rows: rows)
    message = str(caught.value)
    assert (
        message.startswith(f"{tmp_path / 's.zarr'}: cannot read the store's activations array (")
        and "\n" not in message
    )
    assert {p: p.read_bytes() for p in (tmp_path / "s.zarr").rglob("*") if p.is_file()} == before
