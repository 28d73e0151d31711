"""Data for the tasks: file formats, the embedded data, downloads with checksums, and datasets.

Celo (arXiv 2501.12670), App. A.4: meta-training reads MNIST, Fashion-MNIST, CIFAR-10 and SVHN
at 8×8 grey-scale. This file parses idx and CIFAR-10 binary files, area-downsamples them, reads
the embedded data in data/ (checked against data/MANIFEST.json), downloads real datasets into a
cache directory (checked by SHA-256), and names every dataset; tasks.py builds tasks on them.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import os
import tarfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

# ----------------------------------------------------------------------------------------------
# Settings and constants (each with its source)
# ----------------------------------------------------------------------------------------------
DATA_DIR = Path(__file__).resolve().parent / "data"  # committed embedded data (make_data.py)
MANIFEST_NAME = "MANIFEST.json"                       # SHA-256 of every embedded file
CACHE_ENV = "LOPT_DATA_DIR"                           # where real (downloaded) datasets live
DEFAULT_CACHE_DIR = "~/.cache/lopt_jax"
OFFLINE_ENV = "LOPT_OFFLINE"                          # set to 1 to never try a download
DOWNLOAD_TIMEOUT_S = 20.0                             # per socket operation, not the whole file
GREY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # ITU-R BT.601 luma, as tf.image.rgb_to_grayscale


# ----------------------------------------------------------------------------------------------
# Errors: one line each; the scripts print `error: <message>` and exit 2 on TaskError.
# ----------------------------------------------------------------------------------------------
class TaskError(Exception):
    """Base class of every error this module raises on purpose."""

    def __str__(self) -> str:  # KeyError would quote the message; keep it plain and on one line
        return " ".join(str(self.args[0]).split()) if self.args else ""


class UnknownNameError(TaskError, KeyError):
    """An unknown task, dataset, activation or mode name; the message lists the valid ones."""


class InvalidOptionError(TaskError, ValueError):
    """A builder option with an invalid value."""


class DataFileError(TaskError, ValueError):
    """A data file that is missing from data/, corrupt, or of the wrong shape."""


class DatasetNotAvailableError(TaskError, FileNotFoundError):
    """A dataset file that is not in the cache directory and could not be downloaded."""


def _choose(kind: str, name: str, valid) -> str:
    if name not in valid:
        raise UnknownNameError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(valid))}")
    return name


# ----------------------------------------------------------------------------------------------
# File formats: idx (MNIST, Fashion-MNIST), CIFAR-10 binary, and area downsampling
# ----------------------------------------------------------------------------------------------
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
GZIP_MAGIC = b"\x1f\x8b"


def _maybe_gunzip(raw: bytes, name: str) -> bytes:
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataFileError(f"{name}: not a valid gzip file ({e}); delete it and fetch it "
                            "again") from None


def parse_idx(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse an idx file (LeCun's MNIST format), gzipped or not, into a numpy array.

    Header: two zero bytes, a dtype code (0x08 = uint8, ...), the number of dims d, then d
    big-endian uint32 sizes; the data follow in C order (http://yann.lecun.com/exdb/mnist/).
    """
    raw = _maybe_gunzip(raw, name)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataFileError(f"{name}: not an idx file (bad magic {raw[:4].hex()}); delete it "
                            "and fetch it again")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFileError(f"{name}: idx header truncated; delete it and fetch it again")
    shape = tuple(int(s) for s in np.frombuffer(raw, ">u4", ndim, 4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DataFileError(f"{name}: idx file has {len(raw)} bytes, its header {shape} implies "
                            f"{expected}; delete it and fetch it again")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


CIFAR_RECORD = 1 + 3 * 32 * 32   # CIFAR-10 binary: 1 label byte, then R, G, B planes of 32×32


def parse_cifar_binary(raw: bytes, name: str = "<bytes>") -> tuple[np.ndarray, np.ndarray]:
    """Parse one CIFAR-10 binary batch (https://www.cs.toronto.edu/~kriz/cifar.html).

    Each record is <1 byte label><1024 R><1024 G><1024 B>, rows in order; returns images
    uint8 [N, 32, 32, 3] (HWC) and labels int32 [N]. Never unpickles anything.
    """
    if len(raw) == 0 or len(raw) % CIFAR_RECORD:
        raise DataFileError(f"{name}: {len(raw)} bytes is not a multiple of the CIFAR-10 record "
                            f"size {CIFAR_RECORD}; delete it and fetch it again")
    rec = np.frombuffer(raw, np.uint8).reshape(-1, CIFAR_RECORD)
    labels = rec[:, 0].astype(np.int32)
    if labels.max() > 9:
        raise DataFileError(f"{name}: label {labels.max()} out of range 0..9; delete it and "
                            "fetch it again")
    images = rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _area_matrix(n: int, m: int) -> np.ndarray:
    """B (m × n) with B[i, j] = |[i·n, (i+1)·n) ∩ [j·m, (j+1)·m)|, an integer; rows sum to n.

    Output pixel i covers source interval [i·n/m, (i+1)·n/m); scaling both intervals by m makes
    every overlap an integer, so the area weights are exactly B / n.
    """
    i = np.arange(m)[:, None]
    j = np.arange(n)[None, :]
    overlap = np.minimum((i + 1) * n, (j + 1) * m) - np.maximum(i * n, j * m)
    return np.maximum(overlap, 0).astype(np.float64)


def area_downsample(images: np.ndarray, size: int) -> np.ndarray:
    """Box-filter ("area", antialiased) downsampling of uint8 images [N, H, W(, C)] to size².

    out[i, k] = Σ_jl B_h[i, j] · x[j, l] · B_w[k, l] / (H·W): the mean of the source over the
    output pixel's footprint, fractional pixels weighted by their covered area (the same as
    OpenCV INTER_AREA / PIL BOX for downscaling). B holds small integers, so the float64 sums
    are exact whatever the summation order, and the single division by H·W is correctly
    rounded; np.rint (round half to even) then gives a bit-reproducible uint8.
    """
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise InvalidOptionError(f"area_downsample expects uint8 [N, H, W(, C)], got "
                                 f"{images.dtype} {images.shape}")
    h, w = images.shape[1:3]
    if size > h or size > w:
        raise InvalidOptionError(f"area_downsample only shrinks: {h}x{w} -> {size}x{size}")
    bh, bw = _area_matrix(h, size), _area_matrix(w, size)
    x = images.astype(np.float64)
    x = x[..., None] if images.ndim == 3 else x
    x = np.moveaxis(x, -1, 1)                          # [N, C, H, W]
    out = bh @ x @ bw.T                                # [N, C, size, size]
    out = np.rint(np.moveaxis(out, 1, -1) / (h * w)).astype(np.uint8)
    return out[..., 0] if images.ndim == 3 else out


def rgb_to_grey(images: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] RGB → uint8 [..., 1] grey with ITU-R BT.601 luma weights."""
    grey = images.astype(np.float64) @ np.asarray(GREY_WEIGHTS)
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)[..., None]


# ----------------------------------------------------------------------------------------------
# Embedded data (data/, built by make_data.py, verified against data/MANIFEST.json)
# ----------------------------------------------------------------------------------------------
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")

# file -> array -> (shape, dtype): what make_data.py writes and what this module expects.
EMBEDDED_FILES: dict[str, dict[str, tuple[tuple[int, ...], str]]] = {
    "fashion_mnist_8x8.npz": {           # all 70k images, area-downsampled 28 → 8
        "x_train": ((60000, 8, 8), "uint8"), "y_train": ((60000,), "uint8"),
        "x_test": ((10000, 8, 8), "uint8"), "y_test": ((10000,), "uint8"),
    },
    "fashion_mnist_16x16.npz": {         # first 2000 / 500 per class, area-downsampled 28 → 16
        "x_train": ((20000, 16, 16), "uint8"), "y_train": ((20000,), "uint8"),
        "x_test": ((5000, 16, 16), "uint8"), "y_test": ((5000,), "uint8"),
    },
    "devil.txt.gz": {},                  # Bierce, The Devil's Dictionary (public domain), ASCII
}


def _sha256_bytes(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(DATA_DIR.parent))
    except ValueError:
        return str(path)


def read_manifest(data_dir: Path | None = None) -> dict:
    """data/MANIFEST.json: {"files": {name: {"bytes", "sha256", "arrays"?: {...}}}}."""
    path = Path(data_dir or DATA_DIR) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
        manifest["files"].items()
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as e:
        raise DataFileError(f"{_rel(path)}: missing or unreadable ({type(e).__name__}); "
                            "restore it with `git checkout data/` or rerun `python make_data.py`"
                            ) from None
    return manifest


@functools.lru_cache(maxsize=None)
def _embedded_bytes(path_str: str) -> bytes:
    path = Path(path_str)
    fix = "restore it with `git checkout data/` or rerun `python make_data.py`"
    entry = read_manifest(path.parent)["files"].get(path.name)
    if entry is None:
        raise DataFileError(f"{_rel(path)}: not listed in {MANIFEST_NAME}; {fix}")
    try:
        raw = path.read_bytes()
    except OSError:
        raise DataFileError(f"{_rel(path)}: missing; {fix}") from None
    digest = _sha256_bytes(raw)
    if digest != entry.get("sha256"):
        raise DataFileError(f"{_rel(path)}: SHA-256 {digest[:16]}… does not match "
                            f"{MANIFEST_NAME} ({str(entry.get('sha256'))[:16]}…), the file is "
                            f"corrupt or changed; {fix}")
    return raw


def load_embedded(name: str) -> dict[str, np.ndarray]:
    """Arrays of one embedded .npz, checked against the manifest's SHA-256 and EMBEDDED_FILES."""
    spec = EMBEDDED_FILES[_choose("embedded file", name, EMBEDDED_FILES)]
    path = DATA_DIR / name
    raw = _embedded_bytes(str(path))
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zlib.error) as e:
        raise DataFileError(f"{_rel(path)}: unreadable npz ({e}); rerun `python make_data.py`"
                            ) from None
    for key, (shape, dtype) in spec.items():
        a = arrays.get(key)
        if a is None or a.shape != shape or a.dtype != np.dtype(dtype):
            got = "missing" if a is None else f"{a.dtype} {a.shape}"
            raise DataFileError(f"{_rel(path)}: array {key!r} is {got}, expected {dtype} "
                                f"{shape}; rerun `python make_data.py`")
    return arrays


def load_text(name: str = "devil.txt.gz") -> np.ndarray:
    """The embedded text corpus as uint8 bytes [T] (checked against the manifest)."""
    path = DATA_DIR / _choose("embedded text", name, [n for n in EMBEDDED_FILES if
                                                      n.endswith(".txt.gz")])
    text = _maybe_gunzip(_embedded_bytes(str(path)), _rel(path))
    return np.frombuffer(text, np.uint8)


# ----------------------------------------------------------------------------------------------
# Real datasets in the cache directory (downloaded on demand, checked by SHA-256)
# ----------------------------------------------------------------------------------------------
class RemoteFile(NamedTuple):
    url: str
    sha256: str | None          # SHA-256 of the file as published at `url` (None: not pinned)
    content_sha256: str | None  # SHA-256 of the decompressed content (idx files), any mirror


MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"  # TensorFlow's MNIST mirror
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"  # Zalando's
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/"

# MNIST: the widely published SHA-256 of the official .gz files and of their idx content.
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": RemoteFile(
        MNIST_URL + "train-images-idx3-ubyte.gz",
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    "train-labels-idx1-ubyte.gz": RemoteFile(
        MNIST_URL + "train-labels-idx1-ubyte.gz",
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    "t10k-images-idx3-ubyte.gz": RemoteFile(
        MNIST_URL + "t10k-images-idx3-ubyte.gz",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    "t10k-labels-idx1-ubyte.gz": RemoteFile(
        MNIST_URL + "t10k-labels-idx1-ubyte.gz",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
}
# Fashion-MNIST: `sha256` is that of Debian's dataset-fashion-mnist .gz files, which re-compress
# the originals (Zalando's own .gz are 24 bytes longer and their SHA-256 is not pinned here);
# `content_sha256` is that of the idx content, identical in both, so either file passes.
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": RemoteFile(
        FASHION_MNIST_URL + "train-images-idx3-ubyte.gz",
        "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train-labels-idx1-ubyte.gz": RemoteFile(
        FASHION_MNIST_URL + "train-labels-idx1-ubyte.gz",
        "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "t10k-images-idx3-ubyte.gz": RemoteFile(
        FASHION_MNIST_URL + "t10k-images-idx3-ubyte.gz",
        "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "t10k-labels-idx1-ubyte.gz": RemoteFile(
        FASHION_MNIST_URL + "t10k-labels-idx1-ubyte.gz",
        "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}
# CIFAR-10 binary version (widely published SHA-256 of the 170,052,171-byte archive). Already
# extracted data_batch_*.bin files are accepted too; no per-file hash of those is pinned, so
# they are checked by size (10,000 records each) and format only.
CIFAR10_FILES = {
    "cifar-10-binary.tar.gz": RemoteFile(
        CIFAR10_URL + "cifar-10-binary.tar.gz",
        "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd", None),
}
CIFAR10_MEMBERS = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)],
                   "test": ["test_batch.bin"]}
CIFAR10_DIR_IN_TAR = "cifar-10-batches-bin"
CIFAR10_BATCH_RECORDS = 10000
REMOTE_SOURCES = {"mnist": MNIST_FILES, "fashion_mnist": FASHION_MNIST_FILES,
                  "cifar10": CIFAR10_FILES}


def cache_dir() -> Path:
    """The directory real datasets are read from and downloaded to ($LOPT_DATA_DIR)."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR).expanduser()


def _download(url: str, dest: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Fetch `url` into `dest` (tests replace this function; they never touch the network)."""
    with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as f:
        while chunk := response.read(1 << 20):
            f.write(chunk)


def _file_ok(raw: bytes, spec: RemoteFile) -> bool:
    if spec.sha256 is not None and _sha256_bytes(raw) == spec.sha256:
        return True
    if spec.content_sha256 is not None:
        try:
            content = gzip.decompress(raw) if raw[:2] == GZIP_MAGIC else raw
        except (OSError, EOFError, zlib.error):
            return False
        return _sha256_bytes(content) == spec.content_sha256
    return False


def fetch(source: str, filename: str) -> bytes:
    """Bytes of one dataset file from the cache dir, downloading it first if it is missing.

    The file must match its pinned SHA-256 (of the file, or of its decompressed idx content).
    Offline ($LOPT_OFFLINE=1 or no network) or on a checksum failure this raises one
    DatasetNotAvailableError naming the file, the URL and the path to put it in.
    """
    spec = REMOTE_SOURCES[_choose("data source", source, REMOTE_SOURCES)][filename]
    folder = cache_dir() / source
    dest = folder / filename
    by_hand = f"download {spec.url} by hand and save it as {dest} (or set ${CACHE_ENV})"
    unzipped = folder / filename.removesuffix(".gz")
    if not dest.exists() and spec.content_sha256 and unzipped.exists():
        dest = unzipped  # an already decompressed idx file, checked by its content hash
    if not dest.exists():
        if os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
            raise DatasetNotAvailableError(f"{filename} is not in {folder} and ${OFFLINE_ENV} is "
                                           f"set; {by_hand}")
        part = dest.with_name(dest.name + ".part")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _download(spec.url, part)
            raw = part.read_bytes()
        except Exception as e:  # any failure to fetch (offline, HTTP error, timeout, ...)
            part.unlink(missing_ok=True)
            reason = " ".join(str(getattr(e, "reason", e)).split()) or type(e).__name__
            raise DatasetNotAvailableError(f"{filename} is not in {folder} and downloading "
                                           f"{spec.url} failed ({reason}); {by_hand}") from None
        if not _file_ok(raw, spec):
            part.unlink(missing_ok=True)
            raise DatasetNotAvailableError(f"{filename}: the file downloaded from {spec.url} "
                                           f"fails its SHA-256 check (got "
                                           f"{_sha256_bytes(raw)[:16]}…); {by_hand}")
        os.replace(part, dest)
        return raw
    raw = dest.read_bytes()
    if not _file_ok(raw, spec):
        raise DataFileError(f"{dest}: SHA-256 {_sha256_bytes(raw)[:16]}… does not match the "
                            f"pinned value, the file is corrupt or a different version; delete "
                            f"it to download it again, or {by_hand}")
    return raw


class ImageDataset(NamedTuple):
    x: np.ndarray      # uint8 [N, H, W, C]
    y: np.ndarray      # int32 [N]
    num_classes: int


@functools.lru_cache(maxsize=None)
def _idx_source(source: str, root: str) -> dict[str, ImageDataset]:
    del root  # part of the cache key only: a different $LOPT_DATA_DIR is a different dataset
    files = {}
    for fname in REMOTE_SOURCES[source]:
        files[fname] = parse_idx(fetch(source, fname), str(cache_dir() / source / fname))
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x = files[f"{prefix}-images-idx3-ubyte.gz"]
        y = files[f"{prefix}-labels-idx1-ubyte.gz"].astype(np.int32)
        if x.ndim != 3 or x.dtype != np.uint8 or y.shape != (x.shape[0],) or y.max() > 9:
            raise DataFileError(f"{cache_dir() / source}: {prefix} images {x.dtype} {x.shape} "
                                f"and labels {y.shape} do not match; delete them to download "
                                "them again")
        out[split] = ImageDataset(x[..., None], y, 10)
    return out


def _cifar_extracted_dir() -> Path:
    return cache_dir() / "cifar10" / CIFAR10_DIR_IN_TAR


@functools.lru_cache(maxsize=None)
def _cifar_source(root: str) -> dict[str, ImageDataset]:
    del root
    extracted = _cifar_extracted_dir()
    members = [m for split in CIFAR10_MEMBERS.values() for m in split]
    blobs: dict[str, bytes] = {}
    if all((extracted / m).exists() for m in members):
        blobs = {m: (extracted / m).read_bytes() for m in members}
        where = {m: str(extracted / m) for m in members}
    else:
        tar_path = cache_dir() / "cifar10" / "cifar-10-binary.tar.gz"
        raw = fetch("cifar10", "cifar-10-binary.tar.gz")
        try:
            with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
                for m in members:  # read named members only; nothing is extracted to disk
                    f = tar.extractfile(f"{CIFAR10_DIR_IN_TAR}/{m}")
                    blobs[m] = f.read() if f is not None else b""
        except (tarfile.TarError, KeyError, OSError, EOFError, zlib.error) as e:
            raise DataFileError(f"{tar_path}: unreadable archive ({type(e).__name__}: {e}); "
                                "delete it to download it again") from None
        where = {m: f"{tar_path}:{CIFAR10_DIR_IN_TAR}/{m}" for m in members}
    out = {}
    for split, names in CIFAR10_MEMBERS.items():
        xs, ys = [], []
        for m in names:
            if len(blobs[m]) != CIFAR10_BATCH_RECORDS * CIFAR_RECORD:
                raise DataFileError(f"{where[m]}: {len(blobs[m])} bytes, expected "
                                    f"{CIFAR10_BATCH_RECORDS * CIFAR_RECORD}; delete it to "
                                    "download it again")
            x, y = parse_cifar_binary(blobs[m], where[m])
            xs.append(x)
            ys.append(y)
        out[split] = ImageDataset(np.concatenate(xs), np.concatenate(ys), 10)
    return out


# ----------------------------------------------------------------------------------------------
# Dataset registry
# ----------------------------------------------------------------------------------------------
class DatasetSpec(NamedTuple):
    source: str        # "embedded", "mnist", "fashion_mnist" or "cifar10"
    size: int          # output height = width
    grey: bool         # convert RGB to one grey channel
    variant: str = ""  # "", "inverted" (255 − x) or "5class" (classes 0–4 only)


DATASETS: dict[str, DatasetSpec] = {
    # committed in data/, always available
    "fashion_mnist_8x8": DatasetSpec("embedded", 8, True),
    "fashion_mnist_16x16": DatasetSpec("embedded", 16, True),
    # derived from the embedded 8×8 data, for task diversity offline. (A fixed pixel permutation
    # is not offered: for an MLP it only permutes the rows of the first weight matrix, so a
    # per-parameter optimizer sees exactly the same problem.)
    "fashion_mnist_8x8_inverted": DatasetSpec("embedded", 8, True, "inverted"),
    "fashion_mnist_8x8_5class": DatasetSpec("embedded", 8, True, "5class"),
    # real datasets from the cache directory (downloaded on first use)
    "fashion_mnist_28x28": DatasetSpec("fashion_mnist", 28, True),
    "mnist_8x8": DatasetSpec("mnist", 8, True),
    "mnist_16x16": DatasetSpec("mnist", 16, True),
    "mnist_28x28": DatasetSpec("mnist", 28, True),
    "cifar10_grey_8x8": DatasetSpec("cifar10", 8, True),
    "cifar10_grey_16x16": DatasetSpec("cifar10", 16, True),
    "cifar10_32x32": DatasetSpec("cifar10", 32, False),
}
SPLITS = ("train", "test")


def _embedded_images(size: int, split: str) -> ImageDataset:
    arrays = load_embedded(f"fashion_mnist_{size}x{size}.npz")
    return ImageDataset(arrays[f"x_{split}"][..., None], arrays[f"y_{split}"].astype(np.int32),
                        10)


@functools.lru_cache(maxsize=32)
def _load_dataset(name: str, split: str, root: str) -> ImageDataset:
    spec = DATASETS[name]
    if spec.source == "embedded":
        base = _embedded_images(spec.size, split)
    elif spec.source == "cifar10":
        base = _cifar_source(root)[split]
    else:
        base = _idx_source(spec.source, root)[split]
    x, y, num_classes = base
    if spec.grey and x.shape[-1] == 3:
        x = rgb_to_grey(x)
    if x.shape[1] != spec.size:
        x = area_downsample(x, spec.size)
    if spec.variant == "inverted":
        x = 255 - x
    elif spec.variant == "5class":
        keep = y < 5
        x, y, num_classes = x[keep], y[keep], 5
    x.setflags(write=False)
    y.setflags(write=False)
    return ImageDataset(x, y, num_classes)


def load_dataset(name: str, split: str = "train") -> ImageDataset:
    """Images uint8 [N, H, W, C], labels int32 [N] and the number of classes of a dataset."""
    _choose("dataset", name, DATASETS)
    _choose("split", split, SPLITS)
    return _load_dataset(name, split, str(cache_dir()))


def dataset_available(name: str) -> bool:
    """True when `name` can be loaded without a download (embedded, or its files are cached)."""
    source = DATASETS[_choose("dataset", name, DATASETS)].source
    if source == "embedded":
        return True
    if source == "cifar10" and all((_cifar_extracted_dir() / m).exists()
                                   for ms in CIFAR10_MEMBERS.values() for m in ms):
        return True
    folder = cache_dir() / source
    return all((folder / f).exists() or (folder / f.removesuffix(".gz")).exists()
               for f in REMOTE_SOURCES[source])


def available_datasets() -> list[str]:
    return [n for n in DATASETS if dataset_available(n)]
