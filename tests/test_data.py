"""Tests of minivae.data: IDX parsing, checksummed downloads, the offline fallback, batches.

Downloads run against an HTTP server on 127.0.0.1 that the tests start themselves, serving small
IDX files made here; the user's cache is never touched (MINIVAE_DATA points into tmp_path).
"""

import gzip
import hashlib
import http.server
import pathlib
import socket
import struct
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
from official_mnist import OFFICIAL_MNIST, have, official_file

from minivae import data
from minivae.data import DataError

SHARED_MNIST = OFFICIAL_MNIST  # both official splits, if present ($MINIVAE_TEST_MNIST moves it)
TEST_SPLIT = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
TRAIN_SPLIT = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")


# --------------------------------------------------------------------------------------------
# Helpers: IDX bytes, small fake MNIST sets
# --------------------------------------------------------------------------------------------


def idx_bytes(array, dtype_byte=0x08):
    """The IDX encoding of a uint8 array: 0 0 dtype ndim, sizes (big-endian), data."""
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, dtype_byte, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def fake_split(n, seed):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    return images, labels


def fake_mnist(seed=0, n_train=30, n_test=20):
    """The four MNIST files (gzipped bytes) of a tiny fake set, their MD5s, and the arrays."""
    (xtr, ytr), (xte, yte) = fake_split(n_train, seed), fake_split(n_test, seed + 1)
    arrays = dict(zip(data.MNIST_FILES, (xtr, ytr, xte, yte), strict=True))
    files = {name: gzip.compress(idx_bytes(a), mtime=0) for name, a in arrays.items()}
    md5s = {name: hashlib.md5(b).hexdigest() for name, b in files.items()}
    return files, md5s, arrays


def unzipped(path):
    """The IDX bytes of a file, gzipped or not."""
    buf = pathlib.Path(path).read_bytes()
    return gzip.decompress(buf) if buf[:2] == b"\x1f\x8b" else buf


def official(monkeypatch, seed=0):
    """Make a tiny fake set the "official" one: MNIST_FILES and MNIST_IDX_MD5S hold its MD5s (of
    the .gz and of the IDX content), the only mirror refuses connections. Returns fake_mnist's
    files and arrays."""
    files, md5s, arrays = fake_mnist(seed)
    monkeypatch.setattr(data, "MNIST_FILES", md5s)
    idx = {name: hashlib.md5(gzip.decompress(body)).hexdigest() for name, body in files.items()}
    monkeypatch.setattr(data, "MNIST_IDX_MD5S", idx)
    monkeypatch.setattr(data, "MIRRORS", [closed_port_url()])
    return files, arrays


def one_line_error(excinfo, *words):
    """The DataError message is a single line and mentions each of ``words``."""
    message = str(excinfo.value)
    assert "\n" not in message and message.strip() == message and message
    for w in words:
        assert w.lower() in message.lower(), message
    return message


def listing(folder):
    """Every path under ``folder`` (empty when it does not exist)."""
    folder = pathlib.Path(folder)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache folder, also set as $MINIVAE_DATA so nothing can reach the real cache."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("MINIVAE_DATA", str(folder))
    return folder


def closed_port_url():
    """A URL on a port nobody listens on: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture
def server(monkeypatch):
    """A local HTTP server. ``server.serve(prefix, files, mode)`` publishes files under /prefix/
    and returns that mirror's URL; mode "ok" sends them whole ("nolength": without a
    Content-Length header), "cut" announces the full
    Content-Length, sends half and closes the connection, "stall" sends half and then waits.
    ``server.hits`` logs every request path."""
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    routes, hits = {}, []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            if self.path not in routes:
                self.send_error(404)
                return
            mode, body = routes[self.path]
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            if mode != "nolength":  # without it the body simply runs until the connection closes
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body if mode in ("ok", "nolength") else body[: len(body) // 2])
            self.wfile.flush()
            if mode == "stall":
                time.sleep(2.0)  # far longer than the client's timeout in the test
            self.close_connection = True

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"

    def serve(prefix, files, mode="ok"):
        for name, body in files.items():
            routes[f"/{prefix}/{name}"] = (mode, body)
        return f"{base}/{prefix}/"

    yield SimpleNamespace(serve=serve, hits=hits)
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


# --------------------------------------------------------------------------------------------
# IDX
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("name", ["digits-idx3-ubyte", "digits-idx3-ubyte.gz"])
def test_read_idx_raw_and_gzip_regardless_of_name(tmp_path, compress, name):
    images, labels = fake_split(7, seed=3)
    for array, suffix in ((images, ""), (labels, ".labels")):
        raw = idx_bytes(array)
        path = tmp_path / (name + suffix)
        path.write_bytes(gzip.compress(raw) if compress else raw)
        out = data.read_idx(path)
        assert out.dtype == np.uint8 and out.shape == array.shape
        np.testing.assert_array_equal(out, array)
        out[0] = 0  # a writable array of its own
    assert data.read_idx(tmp_path / name).shape == (7, 28, 28)


def test_read_idx_wrong_magic(tmp_path):
    images, _ = fake_split(2, seed=0)
    raw = bytearray(idx_bytes(images))
    raw[0] = 0x12
    (tmp_path / "a").write_bytes(bytes(raw))
    with pytest.raises(DataError) as e:
        data.read_idx(tmp_path / "a")
    one_line_error(e, "magic", "0x12000803")

    raw = bytearray(idx_bytes(images))
    raw[3] = 2  # two dimensions: not an MNIST array
    (tmp_path / "b").write_bytes(bytes(raw))
    with pytest.raises(DataError) as e:
        data.read_idx(tmp_path / "b")
    one_line_error(e, "magic", "0x00000802")


def test_read_idx_wrong_dtype_byte(tmp_path):
    images, _ = fake_split(2, seed=0)
    (tmp_path / "f").write_bytes(idx_bytes(images, dtype_byte=0x0D))  # 0x0D: float
    with pytest.raises(DataError) as e:
        data.read_idx(tmp_path / "f")
    one_line_error(e, "data type 0x0d", "unsigned byte")


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_truncated_payload(tmp_path, compress):
    images, _ = fake_split(3, seed=0)
    raw = idx_bytes(images)[:-5]
    (tmp_path / "t").write_bytes(gzip.compress(raw) if compress else raw)
    with pytest.raises(DataError) as e:
        data.read_idx(tmp_path / "t")
    one_line_error(e, "truncated", "2,352", "2,347")  # 3·28·28 promised, 5 bytes fewer present


def test_read_idx_truncated_header(tmp_path):
    (tmp_path / "h").write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 5, 0, 0]))
    with pytest.raises(DataError) as e:
        data.read_idx(tmp_path / "h")
    one_line_error(e, "truncated header")
    (tmp_path / "tiny").write_bytes(b"\0\0")
    with pytest.raises(DataError) as e:
        data.read_idx(tmp_path / "tiny")
    one_line_error(e, "too short")


def test_read_idx_more_data_than_the_header_says(tmp_path):
    _, labels = fake_split(10, seed=0)
    (tmp_path / "l").write_bytes(idx_bytes(labels) + b"\x01\x02")
    with pytest.raises(DataError) as e:
        data.read_idx(tmp_path / "l")
    one_line_error(e, "2 bytes more")


def test_read_idx_broken_gzip(tmp_path):
    images, _ = fake_split(20, seed=0)
    packed = gzip.compress(idx_bytes(images))
    (tmp_path / "cut.gz").write_bytes(packed[: len(packed) // 2])  # stream ends early
    with pytest.raises(DataError) as e:
        data.read_idx(tmp_path / "cut.gz")
    one_line_error(e, "gzip")

    flipped = bytearray(packed)
    flipped[-6] ^= 0xFF  # inside the CRC32 / length trailer
    (tmp_path / "crc.gz").write_bytes(bytes(flipped))
    with pytest.raises(DataError) as e:
        data.read_idx(tmp_path / "crc.gz")
    one_line_error(e, "gzip")


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DataError) as e:
        data.read_idx(tmp_path / "nothing-here")
    one_line_error(e, "cannot read", "nothing-here")


def test_read_split_checks_that_images_and_labels_belong_together(tmp_path):
    images, labels = fake_split(10, seed=0)
    (tmp_path / "img").write_bytes(idx_bytes(images))
    (tmp_path / "lab").write_bytes(idx_bytes(labels))
    (tmp_path / "lab9").write_bytes(idx_bytes(labels[:9]))
    (tmp_path / "small").write_bytes(idx_bytes(images[:, :27, :]))
    (tmp_path / "lab11").write_bytes(idx_bytes(np.full(10, 11)))
    x, y = data.read_split(tmp_path / "img", tmp_path / "lab")
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)
    for img, lab, words in [
        ("img", "lab9", ["10 images", "9 labels"]),
        ("lab", "lab", ["expected images"]),
        ("img", "img", ["expected labels"]),
        ("small", "lab", ["27 × 28"]),
        ("img", "lab11", ["label 11"]),
    ]:
        with pytest.raises(DataError) as e:
            data.read_split(tmp_path / img, tmp_path / lab)
        one_line_error(e, *words)


# --------------------------------------------------------------------------------------------
# Download into the cache
# --------------------------------------------------------------------------------------------


def assert_cache_holds(folder, files):
    """Exactly the given files, byte for byte, and nothing else (no temporary leftovers)."""
    assert listing(folder) == sorted(files)
    for name, body in files.items():
        assert (folder / name).read_bytes() == body


def test_download_writes_the_four_files(server, cache):
    files, md5s, _ = fake_mnist()
    good = server.serve("good", files)
    assert data.download_mnist(cache, mirrors=[good], md5s=md5s) == cache
    assert_cache_holds(cache, files)
    assert len(server.hits) == 4
    data.download_mnist(cache, mirrors=[good], md5s=md5s)  # all there: nothing fetched again
    assert len(server.hits) == 4


def test_download_without_content_length_and_with_progress_asked(server, cache):
    files, md5s, _ = fake_mnist()
    data.download_mnist(
        cache, mirrors=[server.serve("plain", files, mode="nolength")], md5s=md5s, progress=True
    )  # not a terminal here: the bar stays off, quietly
    assert_cache_holds(cache, files)


def test_download_checksum_mismatch_falls_through_to_the_next_mirror(server, cache):
    files, md5s, _ = fake_mnist(seed=0)
    other, _, _ = fake_mnist(seed=5)  # valid IDX files, but not the ones the MD5s describe
    bad = server.serve("bad", other)
    good = server.serve("good", files)
    data.download_mnist(cache, mirrors=[bad, good], md5s=md5s)
    assert_cache_holds(cache, files)
    assert sum(h.startswith("/bad/") for h in server.hits) == 4  # each file tried there first

    cache2 = cache.parent / "cache2"
    with pytest.raises(DataError) as e:
        data.download_mnist(cache2, mirrors=[bad], md5s=md5s)
    one_line_error(e, "could not download", "MD5", bad)
    assert listing(cache2) == []


def test_download_skips_a_dead_mirror(server, cache):
    files, md5s, _ = fake_mnist()
    dead = closed_port_url()
    data.download_mnist(cache, mirrors=[dead, server.serve("good", files)], md5s=md5s)
    assert_cache_holds(cache, files)

    with pytest.raises(DataError) as e:
        data.download_mnist(cache.parent / "c2", mirrors=[dead], md5s=md5s, timeout=2)
    one_line_error(e, "could not download", dead)
    assert not (cache.parent / "c2").exists()


def test_download_skips_a_mirror_without_the_files(server, cache):
    files, md5s, _ = fake_mnist()
    empty = server.serve("empty", {})
    data.download_mnist(cache, mirrors=[empty, server.serve("good", files)], md5s=md5s)
    assert_cache_holds(cache, files)
    with pytest.raises(DataError) as e:
        data.download_mnist(cache.parent / "c2", mirrors=[empty], md5s=md5s)
    one_line_error(e, "HTTP 404")


def test_interrupted_download_leaves_no_partial_file(server, cache):
    files, md5s, _ = fake_mnist()
    cut = server.serve("cut", files, mode="cut")
    with pytest.raises(DataError) as e:
        data.download_mnist(cache, mirrors=[cut], md5s=md5s)
    one_line_error(e, "connection closed after")
    assert listing(cache) == []  # the folder may exist, but holds nothing

    data.download_mnist(cache, mirrors=[cut, server.serve("good", files)], md5s=md5s)
    assert_cache_holds(cache, files)


def test_download_times_out_on_a_stalled_mirror(server, cache):
    files, md5s, _ = fake_mnist()
    stalled = server.serve("stall", files, mode="stall")
    with pytest.raises(DataError) as e:
        data.download_mnist(cache, mirrors=[stalled], md5s=md5s, timeout=0.3)
    one_line_error(e, "could not download", "timed out")
    assert listing(cache) == []
    name = next(iter(files))  # one file is enough to see the next mirror take over
    data.download_mnist(cache, mirrors=[stalled, server.serve("good", files)], md5s={name: md5s[name]}, timeout=0.3)
    assert_cache_holds(cache, {name: files[name]})


def test_unwritable_cache_stops_at_once_and_falls_back(server, tmp_path, monkeypatch):
    files, md5s, _ = fake_mnist()
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"a file where the cache folder should be")
    good = server.serve("good", files)
    with pytest.raises(DataError) as e:
        data.download_mnist(blocker, mirrors=[good, good], md5s=md5s)
    one_line_error(e, "cannot write to the cache folder", "not-a-folder")
    assert len(server.hits) == 1  # not blamed on the mirror, not retried elsewhere

    monkeypatch.setattr(data, "MNIST_FILES", md5s)
    monkeypatch.setattr(data, "MIRRORS", [good])
    with pytest.warns(UserWarning, match="cannot write to the cache folder"):
        ds = data.load_mnist(cache_dir=blocker)
    assert "offline 5k sample" in ds.source
    assert blocker.read_bytes() == b"a file where the cache folder should be"


def test_download_replaces_a_bad_cached_file_and_keeps_good_ones(server, cache):
    files, md5s, _ = fake_mnist()
    names = list(files)
    cache.mkdir()
    (cache / names[0]).write_bytes(b"not MNIST")
    (cache / names[1]).write_bytes(files[names[1]])
    data.download_mnist(cache, mirrors=[server.serve("good", files)], md5s=md5s)
    assert_cache_holds(cache, files)
    assert sorted(server.hits) == sorted(f"/good/{n}" for n in names if n != names[1])


def test_load_mnist_downloads_then_uses_the_cache(server, cache, monkeypatch):
    files, md5s, arrays = fake_mnist()
    xtr, ytr, xte, yte = arrays.values()
    monkeypatch.setattr(data, "MNIST_FILES", md5s)
    monkeypatch.setattr(data, "MIRRORS", [server.serve("good", files)])
    ds = data.load_mnist(cache_dir=cache)
    assert_cache_holds(cache, files)
    assert ds.train_x.shape == (30, 784) and ds.test_x.shape == (20, 784)
    assert ds.train_x.dtype == np.float32
    np.testing.assert_array_equal(ds.train_x, xtr.reshape(30, 784) / np.float32(255))
    np.testing.assert_array_equal(ds.train_y, ytr)
    np.testing.assert_array_equal(ds.test_x, xte.reshape(20, 784) / np.float32(255))
    np.testing.assert_array_equal(ds.test_y, yte)
    assert "official" in ds.source and "30 training" in ds.source and "\n" not in ds.source

    # Now cached: no network needed, and limit keeps the first N training digits.
    monkeypatch.setattr(data, "MIRRORS", [closed_port_url()])
    hits = len(server.hits)
    small = data.load_mnist(limit=7)  # cache_dir from $MINIVAE_DATA
    assert len(server.hits) == hits
    np.testing.assert_array_equal(small.train_x, ds.train_x[:7])
    assert small.test_x.shape == (20, 784) and "first 7 of 30" in small.source


# --------------------------------------------------------------------------------------------
# The cache: the official content, gzipped again or not gzipped
# --------------------------------------------------------------------------------------------


def test_the_cache_takes_recompressed_and_unzipped_copies(cache, monkeypatch):
    files, arrays = official(monkeypatch)
    names = list(files)
    cache.mkdir()
    recompressed = gzip.compress(gzip.decompress(files[names[0]]), compresslevel=1, mtime=1)
    assert recompressed != files[names[0]]  # other .gz bytes, the same content
    (cache / names[0]).write_bytes(recompressed)
    (cache / names[1].removesuffix(".gz")).write_bytes(gzip.decompress(files[names[1]]))  # unzipped
    (cache / names[2]).write_bytes(files[names[2]])  # as downloaded
    (cache / names[3].removesuffix(".gz")).write_bytes(files[names[3]])  # gzipped, named without .gz
    before = {name: (cache / name).read_bytes() for name in listing(cache)}
    ds = data.load_mnist(limit=12)  # the mirror refuses: nothing may be fetched
    xtr, ytr, xte, yte = arrays.values()
    np.testing.assert_array_equal(ds.train_x, xtr[:12].reshape(12, 784) / np.float32(255))
    np.testing.assert_array_equal(ds.train_y, ytr[:12])
    np.testing.assert_array_equal(ds.test_x, xte.reshape(20, 784) / np.float32(255))
    np.testing.assert_array_equal(ds.test_y, yte)
    assert "official splits" in ds.source and "first 12 of 30" in ds.source and ds.note == ""
    assert {name: (cache / name).read_bytes() for name in listing(cache)} == before  # nothing rewritten


def test_download_keeps_a_recompressed_or_unzipped_copy(server, cache, monkeypatch):
    files, _ = official(monkeypatch)
    names = list(files)
    cache.mkdir()
    (cache / names[0]).write_bytes(gzip.compress(gzip.decompress(files[names[0]]), compresslevel=9))
    (cache / names[1].removesuffix(".gz")).write_bytes(gzip.decompress(files[names[1]]))
    data.download_mnist(cache, mirrors=[server.serve("good", files)], md5s=data.MNIST_FILES)
    assert sorted(server.hits) == sorted(f"/good/{n}" for n in names[2:])


@pytest.mark.parametrize(
    "damage, why",
    [
        (lambda body: body[:-40], "broken gzip"),  # a truncated .gz
        (lambda body: gzip.compress(gzip.decompress(body)[:-1] + b"x"), "wrong MD5"),  # one pixel differs
        (lambda body: gzip.decompress(body)[:-1] + b"x", "wrong MD5"),  # the same, unzipped
        (None, "missing"),
    ],
)
def test_a_bad_cached_file_falls_back_with_one_short_line(damage, why, cache, monkeypatch):
    files, _ = official(monkeypatch)
    names = list(files)
    cache.mkdir()
    for name in names[:2]:
        (cache / name).write_bytes(files[name])
    if damage is not None:
        (cache / names[2]).write_bytes(damage(files[names[2]]))
    with pytest.warns(UserWarning, match="could not download"):
        ds = data.load_mnist(limit=10)
    assert "offline 5k sample" in ds.source and "could not be downloaded" in ds.source
    assert "\n" not in ds.source and "Errno" not in ds.source and "127.0.0.1" not in ds.source
    note = ds.note  # which file, why, what the download did, where the cache is, the other way in
    assert note.startswith(f"{names[2]} {why}") and "(+1 more)" in note, note
    assert "download failed" in note and str(cache) in note and "--data-dir" in note and "IDX" in note
    assert "\n" not in note and "Errno" not in note
    assert len(note) - len(str(cache)) <= 100

    off = data.load_mnist(limit=10, download=False)
    assert off.note.startswith(f"{names[2]} {why}") and "downloads off" in off.note
    if damage is not None:  # a file there but wrong is named before a missing one
        (cache / names[0]).unlink()
        assert data.load_mnist(limit=10, download=False).note.startswith(f"{names[2]} {why} (+2 more)")
    assert "downloads are off" in off.source


def test_the_fallback_line_is_short_with_the_default_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("MINIVAE_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(data, "MIRRORS", [closed_port_url()])
    with pytest.warns(UserWarning):
        ds = data.load_mnist(limit=10)
    assert "cache ~/.cache/minivae;" in ds.note and ds.note.startswith("train-images-idx3-ubyte.gz missing")
    assert len(ds.note) <= 120 and len("  " + ds.note) <= 120, ds.note  # as the commands print it


@pytest.mark.skipif(
    not have(*TRAIN_SPLIT, *TEST_SPLIT),
    reason=f"the official splits are not in {SHARED_MNIST}",
)
def test_the_cache_takes_the_official_files_gzipped_again_or_unzipped(cache, monkeypatch):
    names = list(data.MNIST_FILES)
    cache.mkdir()
    (cache / official_file(names[0]).name).symlink_to(official_file(names[0]))  # as it is there
    for name in names[1:3]:  # gzipped again: other .gz bytes than the download's
        (cache / name).write_bytes(gzip.compress(unzipped(official_file(name)), compresslevel=1))
    (cache / names[3].removesuffix(".gz")).write_bytes(unzipped(official_file(names[3])))
    monkeypatch.setattr(data, "MIRRORS", [closed_port_url()])
    ds = data.load_mnist(limit=100, download=False)
    assert ds.train_x.shape == (100, 784) and ds.test_x.shape == (10000, 784) and ds.note == ""
    assert ds.train_y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # the first ten training labels
    assert "first 100 of 60,000 training digits" in ds.source and "official splits" in ds.source


# --------------------------------------------------------------------------------------------
# The offline fallback
# --------------------------------------------------------------------------------------------


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MINIVAE_DATA", str(tmp_path / "here"))
    assert data.default_cache_dir() == tmp_path / "here"
    monkeypatch.delenv("MINIVAE_DATA")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data.default_cache_dir() == tmp_path / ".cache" / "minivae"


def test_load_offline_sample():
    x, y = data.load_offline_sample()
    assert x.shape == (5000, 784) and x.dtype == np.uint8
    assert y.shape == (5000,)
    assert np.bincount(y).tolist() == [500] * 10
    assert x.max() == 255 and x.min() == 0


def test_offline_fallback_when_no_mirror_answers(cache, monkeypatch):
    monkeypatch.setattr(data, "MIRRORS", [closed_port_url()])
    with pytest.warns(UserWarning, match="could not download"):
        ds = data.load_mnist(cache_dir=cache)
    assert listing(cache) == []
    assert ds.train_x.shape == (4500, 784) and ds.test_x.shape == (500, 784)
    assert ds.train_x.dtype == ds.test_x.dtype == np.float32
    assert 0 <= ds.train_x.min() and ds.train_x.max() == 1
    assert np.bincount(ds.test_y).tolist() == [50] * 10  # stratified
    assert np.bincount(ds.train_y).tolist() == [450] * 10
    assert "4,500 training digits from the offline 5k sample" in ds.source
    assert "500 held-out" in ds.source and "\n" not in ds.source

    # Held-out digits are not training digits, and the split is a function of the seed.
    train_rows = {row.tobytes() for row in ds.train_x}
    assert not any(row.tobytes() in train_rows for row in ds.test_x)
    with pytest.warns(UserWarning):
        again = data.load_mnist(cache_dir=cache, seed=0)
        other = data.load_mnist(cache_dir=cache, seed=1)
    np.testing.assert_array_equal(again.test_x, ds.test_x)
    assert not np.array_equal(other.test_x, ds.test_x)


def test_offline_without_download_tries_no_network(cache, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("download attempted")

    monkeypatch.setattr(data, "download_mnist", no_download)
    ds = data.load_mnist(download=False, limit=100)  # cache from $MINIVAE_DATA
    assert ds.train_x.shape == (100, 784) and ds.test_x.shape == (500, 784)
    assert len(np.unique(ds.train_y)) == 10  # the sample is sorted by label; the first 100 mix
    assert "first 100 of 4,500" in ds.source and "downloads are off" in ds.source
    assert listing(cache) == []


# --------------------------------------------------------------------------------------------
# data_dir
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(
    not have(*TEST_SPLIT),
    reason=f"the official test split is not in {SHARED_MNIST}",
)
def test_data_dir_with_only_the_official_test_split(tmp_path, cache):
    folder = tmp_path / "test-split-only"  # links to the two test files, nothing copied
    folder.mkdir()
    for name in TEST_SPLIT:
        (folder / official_file(name).name).symlink_to(official_file(name))
    before = listing(SHARED_MNIST)
    ds = data.load_mnist(data_dir=folder, limit=1000)
    assert ds.test_x.shape == (10000, 784) and ds.test_x.dtype == np.float32
    assert ds.test_y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the first ten test labels
    per_digit = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]  # MNIST's test split
    assert np.bincount(ds.test_y).tolist() == per_digit
    assert ds.train_x.shape == (1000, 784) and len(np.unique(ds.train_y)) == 10
    assert "offline 5k sample" in ds.source and "10,000" in ds.source and "\n" not in ds.source
    assert listing(SHARED_MNIST) == before and listing(cache) == []


@pytest.mark.skipif(
    not have(*TRAIN_SPLIT, *TEST_SPLIT),
    reason=f"the official training split is not in {SHARED_MNIST}",
)
def test_data_dir_with_both_official_splits(cache):
    before = listing(SHARED_MNIST)
    ds = data.load_mnist(data_dir=SHARED_MNIST)
    assert ds.train_x.shape == (60000, 784) and ds.test_x.shape == (10000, 784)
    per_digit = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]  # MNIST's training split
    assert np.bincount(ds.train_y).tolist() == per_digit
    assert ds.train_y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # the first ten training labels
    assert "60,000 training digits" in ds.source and "offline" not in ds.source
    assert listing(SHARED_MNIST) == before and listing(cache) == []


def test_data_dir_with_both_splits_raw_or_gzipped(tmp_path, cache):
    files, _, arrays = fake_mnist()
    folder = tmp_path / "mnist"
    folder.mkdir()
    for i, (name, body) in enumerate(files.items()):
        if i % 2:  # every other file stored decompressed, under the name without .gz
            (folder / name.removesuffix(".gz")).write_bytes(gzip.decompress(body))
        else:  # re-compressed: a different .gz, so its MD5 differs from the table's
            (folder / name).write_bytes(gzip.compress(gzip.decompress(body), compresslevel=1))
    ds = data.load_mnist(data_dir=folder, limit=12)
    xtr, ytr, xte, yte = arrays.values()
    np.testing.assert_array_equal(ds.train_x, xtr[:12].reshape(12, 784) / np.float32(255))
    np.testing.assert_array_equal(ds.train_y, ytr[:12])
    np.testing.assert_array_equal(ds.test_y, yte)
    assert "first 12 of 30 training digits from" in ds.source
    assert listing(cache) == []


def test_bad_data_dir_raises_and_writes_nothing(tmp_path, cache):
    files, _, _ = fake_mnist()
    names = list(files)
    missing = tmp_path / "missing"
    with pytest.raises(DataError) as e:
        data.load_mnist(data_dir=missing)
    one_line_error(e, "does not exist")
    assert not missing.exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as e:
        data.load_mnist(data_dir=empty)
    one_line_error(e, "test split", "t10k-images-idx3-ubyte[.gz]")

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / names[2]).write_bytes(files[names[2]][:-40])  # truncated gzip stream
    (corrupt / names[3]).write_bytes(files[names[3]])
    with pytest.raises(DataError) as e:
        data.load_mnist(data_dir=corrupt)
    one_line_error(e, "gzip")

    half = tmp_path / "half"
    half.mkdir()
    for name in names[1:]:  # training labels without training images
        (half / name).write_bytes(files[name])
    with pytest.raises(DataError) as e:
        data.load_mnist(data_dir=half)
    one_line_error(e, "train-images-idx3-ubyte")

    assert listing(empty) == [] and listing(cache) == []
    assert listing(corrupt) == sorted(names[2:]) and listing(half) == sorted(names[1:])


def test_load_mnist_rejects_bad_limits(cache):
    for bad, error in [(0, ValueError), (-3, ValueError), (2.5, TypeError)]:
        with pytest.raises(error):
            data.load_mnist(limit=bad, download=False)
    assert listing(cache) == []


# --------------------------------------------------------------------------------------------
# Binarization and batches
# --------------------------------------------------------------------------------------------


def test_binarize_dynamic():
    x = np.full((200, 784), 0.3, dtype=np.float32)
    x[0], x[1] = 0.0, 1.0
    a = data.binarize(x, "dynamic", np.random.default_rng(1))
    b = data.binarize(x, "dynamic", np.random.default_rng(1))
    assert a.dtype == np.float32 and a.shape == x.shape
    assert set(np.unique(a).tolist()) == {0.0, 1.0}
    np.testing.assert_array_equal(a, b)  # same seed, same draw
    assert (a[0] == 0).all() and (a[1] == 1).all()
    assert abs(a[2:].mean() - 0.3) < 0.01  # P(1) = x; 155k draws, std ≈ 0.0012
    rng = np.random.default_rng(1)
    epoch1, epoch2 = data.binarize(x, "dynamic", rng), data.binarize(x, "dynamic", rng)
    assert (epoch1 != epoch2).mean() > 0.3  # a fresh draw each call: 2·0.3·0.7 = 0.42 differ


def test_binarize_static_is_fixed_and_none_is_identity():
    x = np.random.default_rng(0).random((100, 784), dtype=np.float32)
    a = data.binarize(x, "static", np.random.default_rng(1))
    b = data.binarize(x, "static", np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)  # independent of the rng passed in
    np.testing.assert_array_equal(a, data.binarize(x, "static", None))
    assert set(np.unique(a).tolist()) == {0.0, 1.0} and a.dtype == np.float32
    assert abs(a.mean() - x.mean()) < 0.01
    assert data.binarize(x, "none", None) is x
    with pytest.raises(ValueError, match="unknown binarization"):
        data.binarize(x, "otsu", np.random.default_rng(0))
    with pytest.raises(ValueError, match="needs a random generator"):
        data.binarize(x, "dynamic", None)


def test_binarize_fixed_is_the_static_draw_unless_the_run_trains_on_grey_levels():
    x = np.random.default_rng(0).random((50, 784), dtype=np.float32)
    static = data.binarize(x, "static")
    for mode in ("dynamic", "static"):
        np.testing.assert_array_equal(data.binarize_fixed(x, mode), static)
    assert data.binarize_fixed(x, "none") is x


@pytest.mark.parametrize("n, batch_size, sizes", [(10, 3, [3, 3, 3, 1]), (12, 4, [4, 4, 4]), (5, 64, [5]), (1, 1, [1])])
def test_batches_cover_every_index_once(n, batch_size, sizes):
    out = list(data.batches(n, batch_size, np.random.default_rng(0)))
    assert [len(b) for b in out] == sizes
    np.testing.assert_array_equal(np.sort(np.concatenate(out)), np.arange(n))


def test_batches_are_shuffled_and_seeded():
    first = np.concatenate(list(data.batches(100, 32, np.random.default_rng(7))))
    again = np.concatenate(list(data.batches(100, 32, np.random.default_rng(7))))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, np.arange(100))
    rng = np.random.default_rng(7)
    epoch1 = np.concatenate(list(data.batches(100, 32, rng)))
    epoch2 = np.concatenate(list(data.batches(100, 32, rng)))
    assert not np.array_equal(epoch1, epoch2)  # each epoch its own order


def test_batches_reject_bad_arguments_at_the_call():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="batch_size"):
        data.batches(10, 0, rng)  # raised now, not at the first next()
    with pytest.raises(ValueError, match="non-negative"):
        data.batches(-1, 4, rng)
    with pytest.raises(TypeError):
        data.batches(10, 2.5, rng)


# --------------------------------------------------------------------------------------------
# minivae.cli.load_digits: how every command reads its digits
# --------------------------------------------------------------------------------------------


def test_commands_get_the_fallback_quietly_and_bad_data_as_one_usage_line(offline, tmp_path):
    import warnings

    from minivae import cli

    with pytest.warns(UserWarning, match="could not download"):  # no mirror answers: load_mnist warns
        expected = data.load_mnist(limit=50, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the helper must not show it: the command says its source
        ds = cli.load_digits(limit=50, seed=3)
    assert ds.train_x.shape == (50, 784) and "offline 5k sample" in ds.source
    np.testing.assert_array_equal(ds.test_x, expected.test_x)
    assert not np.array_equal(ds.test_x, data.load_mnist(download=False, limit=50, seed=0).test_x)  # seed passed on
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "downloads are off" in cli.load_digits(limit=50, download=False).source  # download passed on

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(data.DataError) as reason:
        data.load_mnist(empty)
    with pytest.raises(cli.UsageError) as e:
        cli.load_digits(empty, hint=" (pass --data-dir)")
    assert str(e.value) == f"{reason.value} (pass --data-dir)" and "lacks the MNIST test split" in str(e.value)
    for limit, kind in [(0, "at least 1"), (2.5, "integer")]:  # a ValueError and a TypeError of load_mnist
        with pytest.raises(cli.UsageError, match=kind):
            cli.load_digits(limit=limit, download=False)


def test_a_cache_folder_whose_home_cannot_be_found_is_one_data_error(monkeypatch):
    from minivae import cli

    monkeypatch.setenv("MINIVAE_DATA", "~no-such-user-of-minivae/cache")
    with pytest.raises(data.DataError, match="MINIVAE_DATA=~no-such-user-of-minivae/cache: Could not determine"):
        data.default_cache_dir()
    with pytest.raises(cli.UsageError, match="set MINIVAE_DATA to a folder"):
        cli.load_digits(download=False)  # a command says it in one line
