"""Tasks: the problems learned optimizers are meta-trained and evaluated on.

Celo (celo.txt) §5.2 and App. A.4: meta-training uses small image MLPs (64 → 32 → 10, ReLU,
8×8 grey-scale images, batch 64, cross-entropy) on MNIST, Fashion-MNIST, CIFAR-10 and SVHN;
App. A.5 lists the held-out evaluation tasks, of which this file builds CPU-sized analogues;
§3 Eqs. (7)–(10) (after Metz et al. 2022b, VeLO) define task augmentation, which re-parametrizes
the optimizee weights by a random τ. This file holds the data loaders, the Task builders, the
named-task registry, the meta-training and random task families, and task augmentation.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import math
import os
import tarfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Params = dict   # flat dict: "layer/tensor" -> float32 array
Batch = dict
Data = dict     # pytree of device arrays, passed to jitted code as an argument
PRNGKey = jax.Array

# ----------------------------------------------------------------------------------------------
# Settings and constants (each with its source)
# ----------------------------------------------------------------------------------------------
DATA_DIR = Path(__file__).resolve().parent / "data"  # committed embedded data (make_data.py)
MANIFEST_NAME = "MANIFEST.json"                       # SHA-256 of every embedded file
CACHE_ENV = "LOPT_DATA_DIR"                           # where real (downloaded) datasets live
DEFAULT_CACHE_DIR = "~/.cache/lopt_jax"
OFFLINE_ENV = "LOPT_OFFLINE"                          # set to 1 to never try a download
DOWNLOAD_TIMEOUT_S = 20.0                             # per socket operation, not the whole file

IMAGE_SCALE = 255.0         # uint8 → [0, 1]; no centring, as learned_optimization's _image_map_fn
LOSS_CAP_FACTOR = 1.5       # PES meta-loss clip [0, 1.5·ln C] (learned_optimization normalizer)
AE_LOSS_CAP = 1.0           # learned_optimization image_mlp_ae normalizer: clip(loss, 0, 1)
REGRESSION_LOSS_CAP = 1.5   # 1.5 × the loss of predicting 0 for unit-variance targets (our choice,
                            # by analogy with 1.5·ln C = 1.5 × the loss of a uniform prediction)
INIT_TRUNCATION = 2.0       # haiku Linear default: truncated normal ±2σ, σ = 1/sqrt(fan_in)
EMBED_INIT_STD = 1.0        # haiku Embed default: truncated normal, σ = 1
LAYER_NORM_EPS = 1e-5       # haiku LayerNorm default
GREY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # ITU-R BT.601 luma, as tf.image.rgb_to_grayscale
TEXT_TEST_FRACTION = 0.1    # last 10% of the text corpus is its test split
TEACHER_WIDTH = 32          # teacher_student: one tanh hidden layer of this width
TEACHER_NORM_SAMPLES = 4096  # inputs used once to scale the teacher to unit output variance
TAU_LOW, TAU_HIGH = 1e-3, 1e3  # Celo §5.2 / App. A.3: τ log-uniform in [0.001, 1000]
AUGMENT_MODES = ("global", "tensor", "parameter")  # Celo App. A.3 (global is the default)

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "sigmoid": jax.nn.sigmoid,
    "elu": jax.nn.elu,
    "silu": jax.nn.silu,
}


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


def _check_int(name: str, value, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidOptionError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        upper = "" if high is None else f" and <= {high}"
        raise InvalidOptionError(f"{name} must be >= {low}{upper}, got {value}")
    return int(value)


def _check_widths(name: str, value, allow_empty: bool = False) -> tuple[int, ...]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, (tuple, list)) or (not value and not allow_empty):
        raise InvalidOptionError(f"{name} must be a non-empty tuple of positive integers, "
                                 f"got {value!r}")
    return tuple(_check_int(f"{name} entry", v, 1) for v in value)


def _check_float(name: str, value, low: float, inclusive: bool = True) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InvalidOptionError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value) or value < low or (not inclusive and value == low):
        raise InvalidOptionError(f"{name} must be {'>=' if inclusive else '>'} {low}, got {value}")
    return value


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


# ----------------------------------------------------------------------------------------------
# Task and data on device
# ----------------------------------------------------------------------------------------------
class Task(NamedTuple):
    """One optimization problem (the interface every optimizer, PES and script relies on).

    `data` is passed to jitted code as an argument, never closed over. Tasks built by the same
    builder with the same structure on different data compute the same functions, so after
    stack_data any member's loss / sample_batch serves the whole group under vmap.
    `multipliers` is filled by mup.py (μP per-tensor update multipliers) or left None.
    """
    name: str
    init: Callable[[PRNGKey], Params]
    loss: Callable[[Params, Batch], jax.Array]
    sample_batch: Callable[[Data, PRNGKey], Batch]
    data: Data
    loss_cap: float
    multipliers: Any = None


def _task(name: str, init, loss, sample_batch, data: Data, loss_cap: float) -> Task:
    """A Task whose functions are jitted, so that calling them outside jit compiles one program
    each (inside an outer jit they are simply inlined)."""
    return Task(name, jax.jit(init), jax.jit(loss), jax.jit(sample_batch), data,
                float(loss_cap))


@functools.lru_cache(maxsize=32)
def _device_images(name: str, split: str, root: str) -> Data:
    ds = _load_dataset(name, split, root)
    return {"x": jnp.asarray(ds.x), "y": jnp.asarray(ds.y), "n": jnp.asarray(len(ds.y),
                                                                             jnp.int32)}


def image_data(dataset: str, split: str = "train") -> Data:
    """Device data {"x": uint8 [N,H,W,C], "y": int32 [N], "n": int32 []} of an image dataset."""
    load_dataset(dataset, split)  # validates the names and surfaces data errors here
    return _device_images(dataset, split, str(cache_dir()))


def stack_data(datas: Sequence[Data]) -> Data:
    """Stack same-structure Data on a new leading axis, for vmapping tasks over datasets.

    Arrays whose shapes differ only in their first (row) axis are zero-padded to the longest;
    each member keeps its own row count in data["n"], and sample_batch draws rows below it, so
    the padding is never sampled.
    """
    if not datas:
        raise InvalidOptionError("stack_data needs at least one Data")
    flat = [jax.tree_util.tree_flatten_with_path(d) for d in datas]
    treedef = flat[0][1]
    for leaves, tdef in flat[1:]:
        if tdef != treedef:
            raise InvalidOptionError(f"stack_data: members have different structures: "
                                     f"{treedef} vs {tdef}")
    out = []
    for column in zip(*(leaves for leaves, _ in flat)):
        path = jax.tree_util.keystr(column[0][0])
        arrays = [jnp.asarray(a) for _, a in column]
        if len({a.dtype for a in arrays}) > 1:
            raise InvalidOptionError(f"stack_data: {path} has dtypes "
                                     f"{sorted({str(a.dtype) for a in arrays})}")
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            if len({s[1:] for s in shapes}) > 1 or min(len(s) for s in shapes) == 0:
                raise InvalidOptionError(f"stack_data: {path} has shapes {sorted(shapes)}, which "
                                         "differ beyond the row axis")
            rows = max(a.shape[0] for a in arrays)
            arrays = [jnp.pad(a, [(0, rows - a.shape[0])] + [(0, 0)] * (a.ndim - 1))
                      for a in arrays]
        out.append(jnp.stack(arrays))
    return jax.tree_util.tree_unflatten(treedef, out)


def _sample_rows(data: Data, key: PRNGKey, batch_size: int) -> jax.Array:
    return jax.random.randint(key, (batch_size,), 0, data["n"])


def _images_to_float(x: jax.Array) -> jax.Array:
    return x.astype(jnp.float32) / IMAGE_SCALE


# ----------------------------------------------------------------------------------------------
# Layers (pure functions of a flat params dict)
# ----------------------------------------------------------------------------------------------
class InitSpec(NamedTuple):
    """How one tensor starts: std · truncated normal (±INIT_TRUNCATION σ), or a constant."""
    shape: tuple[int, ...]
    std: float = 0.0     # > 0: truncated normal with this σ
    const: float = 0.0   # used when std == 0


def _init_from_plan(key: PRNGKey, plan: dict[str, InitSpec]) -> Params:
    """Params from a static plan, with ONE truncated-normal draw sliced into the tensors (one
    small program to compile instead of one per tensor)."""
    random = [(n, s) for n, s in sorted(plan.items()) if s.std > 0]
    total = sum(math.prod(s.shape) for _, s in random)
    flat = jax.random.truncated_normal(key, -INIT_TRUNCATION, INIT_TRUNCATION, (max(total, 1),),
                                       jnp.float32)
    params, offset = {}, 0
    for name, spec in sorted(plan.items()):
        if spec.std > 0:
            size = math.prod(spec.shape)
            params[name] = spec.std * flat[offset:offset + size].reshape(spec.shape)
            offset += size
        else:
            params[name] = jnp.full(spec.shape, spec.const, jnp.float32)
    return params


def _dense_plan(name: str, fan_in: int, fan_out: int) -> dict[str, InitSpec]:
    # haiku Linear default (learned_optimization's hk.nets.MLP): σ = 1/sqrt(fan_in), bias 0
    return {f"{name}/w": InitSpec((fan_in, fan_out), 1.0 / math.sqrt(fan_in)),
            f"{name}/b": InitSpec((fan_out,))}


def _layer_norm_plan(name: str, dim: int) -> dict[str, InitSpec]:
    return {f"{name}_scale": InitSpec((dim,), const=1.0), f"{name}_offset": InitSpec((dim,))}


def _mlp_plan(sizes: Sequence[int], layernorm: bool = False,
              prefix: str = "l") -> dict[str, InitSpec]:
    """Layers l0 … l{D}: l0 reads the input, l{D} is the output layer."""
    plan = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        plan.update(_dense_plan(f"{prefix}{i}", fan_in, fan_out))
        if layernorm and i < len(sizes) - 2:
            plan.update(_layer_norm_plan(f"{prefix}{i}/ln", fan_out))
    return plan


def _layer_norm(x: jax.Array, scale: jax.Array, offset: jax.Array) -> jax.Array:
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.var(x, axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + LAYER_NORM_EPS) * scale + offset


def _mlp_apply(params: Params, x: jax.Array, depth: int, activation: str,
               layernorm: bool = False, prefix: str = "l") -> jax.Array:
    act = ACTIVATIONS[activation]
    for i in range(depth):
        x = x @ params[f"{prefix}{i}/w"] + params[f"{prefix}{i}/b"]
        if layernorm:  # Celo App. A.5 task 2: layer-norm followed by the activation
            x = _layer_norm(x, params[f"{prefix}{i}/ln_scale"],
                            params[f"{prefix}{i}/ln_offset"])
        x = act(x)
    return x @ params[f"{prefix}{depth}/w"] + params[f"{prefix}{depth}/b"]


def conv2d_same(x: jax.Array, w: jax.Array, stride: int) -> jax.Array:
    """'SAME' 2-D convolution, NHWC input, HWIO kernel, as an im2col matmul.

    Equal to jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME", ("NHWC", "HWIO",
    "NHWC")) (tested), with TF/haiku padding (the odd row/column of padding goes at the end).
    Written with slices and one matmul because XLA:CPU runs the *gradient* of
    conv_general_dilated about 100× slower inside lax.scan/while loops (measured with
    jax 0.10.2), which is exactly where PES unrolls inner training; slices and matmuls are fast
    everywhere.
    """
    k, size = w.shape[0], x.shape[1]
    out = -(-size // stride)                               # ceil(size / stride)
    pad = max((out - 1) * stride + k - size, 0)
    xp = jnp.pad(x, ((0, 0), (pad // 2, pad - pad // 2), (pad // 2, pad - pad // 2), (0, 0)))
    span = stride * (out - 1) + 1
    patches = jnp.concatenate([xp[:, i:i + span:stride, j:j + span:stride, :]
                               for i in range(k) for j in range(k)], axis=-1)  # (i, j, c) order
    return patches @ w.reshape(-1, w.shape[-1])             # HWIO flattens in the same order


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[..., None], axis=-1))


def _classification_cap(num_classes: int) -> float:
    return LOSS_CAP_FACTOR * math.log(num_classes)


# ----------------------------------------------------------------------------------------------
# Builders
# ----------------------------------------------------------------------------------------------
def _image_dataset_args(dataset: str, split: str, batch_size: int):
    _choose("dataset", dataset, DATASETS)
    _choose("split", split, SPLITS)
    batch_size = _check_int("batch_size", batch_size, 1)
    ds = load_dataset(dataset, split)
    return ds, image_data(dataset, split), batch_size


def _split_suffix(split: str) -> str:
    return "" if split == "train" else f"_{split}"


def _image_sampler(batch_size: int) -> Callable[[Data, PRNGKey], Batch]:
    def sample_batch(data: Data, key: PRNGKey) -> Batch:
        rows = _sample_rows(data, key, batch_size)
        return {"x": _images_to_float(data["x"][rows]), "y": data["y"][rows]}
    return sample_batch


def image_mlp(dataset: str = "fashion_mnist_8x8", hidden: Sequence[int] = (32,),
              activation: str = "relu", batch_size: int = 64, layernorm: bool = False,
              split: str = "train") -> Task:
    """Flattened image → MLP → softmax cross-entropy (Celo App. A.4; App. A.5 tasks 1–3)."""
    hidden = _check_widths("hidden", hidden)
    activation = _choose("activation", activation, ACTIVATIONS)
    ds, data, batch_size = _image_dataset_args(dataset, split, batch_size)
    sizes = (int(np.prod(ds.x.shape[1:])), *hidden, ds.num_classes)
    depth, layernorm = len(hidden), bool(layernorm)

    plan = _mlp_plan(sizes, layernorm)

    def init(key: PRNGKey) -> Params:
        return _init_from_plan(key, plan)

    def loss(params: Params, batch: Batch) -> jax.Array:
        x = batch["x"].reshape(batch["x"].shape[0], -1)
        return _cross_entropy(_mlp_apply(params, x, depth, activation, layernorm), batch["y"])

    name = (f"mlp_{dataset}_{'x'.join(map(str, hidden))}_{activation}"
            f"{'_ln' if layernorm else ''}_bs{batch_size}{_split_suffix(split)}")
    return _task(name, init, loss, _image_sampler(batch_size), data,
                _classification_cap(ds.num_classes))


def image_conv(dataset: str = "fashion_mnist_16x16", channels: Sequence[int] = (16, 32),
               kernel: int = 3, activation: str = "relu", batch_size: int = 64,
               split: str = "train") -> Task:
    """Small conv net → global mean pool → linear → cross-entropy (Celo App. A.5 task 4).

    3×3 'SAME' convolutions (conv2d_same), stride 2 in the first layer and 1 after, as
    Conv_Cifar10_32x64x64; weights truncated normal with σ = 1/sqrt(k·k·C_in), biases 0.
    Params: conv{i}/w [k, k, C_in, C_out] (HWIO), conv{i}/b, head/w, head/b.
    """
    channels = _check_widths("channels", channels)
    kernel = _check_int("kernel", kernel, 1, 7)
    activation = _choose("activation", activation, ACTIVATIONS)
    ds, data, batch_size = _image_dataset_args(dataset, split, batch_size)
    in_channels, num_classes = ds.x.shape[-1], ds.num_classes
    act = ACTIVATIONS[activation]

    plan = _dense_plan("head", channels[-1], num_classes)
    for i, (c_in, c_out) in enumerate(zip((in_channels, *channels[:-1]), channels)):
        plan[f"conv{i}/w"] = InitSpec((kernel, kernel, c_in, c_out),
                                      1.0 / math.sqrt(kernel * kernel * c_in))  # fan-in scaling
        plan[f"conv{i}/b"] = InitSpec((c_out,))

    def init(key: PRNGKey) -> Params:
        return _init_from_plan(key, plan)

    def loss(params: Params, batch: Batch) -> jax.Array:
        h = batch["x"]
        for i in range(len(channels)):
            stride = 2 if i == 0 else 1
            h = act(conv2d_same(h, params[f"conv{i}/w"], stride) + params[f"conv{i}/b"])
        logits = jnp.mean(h, axis=(1, 2)) @ params["head/w"] + params["head/b"]
        return _cross_entropy(logits, batch["y"])

    name = (f"conv_{dataset}_c{'x'.join(map(str, channels))}_k{kernel}_{activation}"
            f"_bs{batch_size}{_split_suffix(split)}")
    return _task(name, init, loss, _image_sampler(batch_size), data,
                _classification_cap(num_classes))


def image_autoencoder(dataset: str = "fashion_mnist_16x16",
                      hidden: Sequence[int] = (128, 32, 128), activation: str = "relu",
                      batch_size: int = 128, split: str = "train") -> Task:
    """MLP autoencoder, loss = mean (x − sigmoid(MLP(x)))² (Celo App. A.5 tasks 13–14; the
    loss and its cap of 1 follow learned_optimization's image_mlp_ae)."""
    hidden = _check_widths("hidden", hidden)
    activation = _choose("activation", activation, ACTIVATIONS)
    ds, data, batch_size = _image_dataset_args(dataset, split, batch_size)
    dim = int(np.prod(ds.x.shape[1:]))
    sizes, depth = (dim, *hidden, dim), len(hidden)

    plan = _mlp_plan(sizes)

    def init(key: PRNGKey) -> Params:
        return _init_from_plan(key, plan)

    def loss(params: Params, batch: Batch) -> jax.Array:
        x = batch["x"].reshape(batch["x"].shape[0], -1)
        recon = jax.nn.sigmoid(_mlp_apply(params, x, depth, activation))
        return jnp.mean(jnp.square(x - recon))

    def sample_batch(data: Data, key: PRNGKey) -> Batch:
        return {"x": _images_to_float(data["x"][_sample_rows(data, key, batch_size)])}

    name = (f"ae_{dataset}_{'x'.join(map(str, hidden))}_{activation}_bs{batch_size}"
            f"{_split_suffix(split)}")
    return _task(name, init, loss, sample_batch, data, AE_LOSS_CAP)


def _transformer_plan(context: int, embed: int, hidden: int, layers: int) -> dict[str, InitSpec]:
    plan = {"embed/w": InitSpec((256, embed), EMBED_INIT_STD),
            "pos/w": InitSpec((context, embed), EMBED_INIT_STD)}
    for i in range(layers):
        b = f"b{i}/"
        plan.update(_layer_norm_plan(b + "ln1", embed))
        plan.update(_layer_norm_plan(b + "ln2", embed))
        plan.update(_dense_plan(b + "qkv", embed, 3 * embed))
        plan.update(_dense_plan(b + "proj", embed, embed))
        plan.update(_dense_plan(b + "fc1", embed, hidden))
        plan.update(_dense_plan(b + "fc2", hidden, embed))
    plan.update(_layer_norm_plan("ln_f", embed))
    plan.update(_dense_plan("head", embed, 256))
    return plan


def _transformer_logits(params: Params, tokens: jax.Array, layers: int, heads: int,
                        activation: str = "gelu") -> jax.Array:
    """Pre-LN causal transformer over bytes: tokens int32 [B, L] → logits [B, L, 256]."""
    batch, length = tokens.shape
    h = params["embed/w"][tokens] + params["pos/w"][:length]
    embed = h.shape[-1]
    head_dim = embed // heads
    causal = jnp.tril(jnp.ones((length, length), bool))
    act = ACTIVATIONS[activation]
    for i in range(layers):
        b = f"b{i}/"
        x = _layer_norm(h, params[b + "ln1_scale"], params[b + "ln1_offset"])
        qkv = x @ params[b + "qkv/w"] + params[b + "qkv/b"]
        q, k, v = (t.reshape(batch, length, heads, head_dim) for t in jnp.split(qkv, 3, -1))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)
        scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
        attn = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)
        h = h + attn.reshape(batch, length, embed) @ params[b + "proj/w"] + params[b + "proj/b"]
        x = _layer_norm(h, params[b + "ln2_scale"], params[b + "ln2_offset"])
        h = h + act(x @ params[b + "fc1/w"] + params[b + "fc1/b"]) @ params[b + "fc2/w"] \
            + params[b + "fc2/b"]
    h = _layer_norm(h, params["ln_f_scale"], params["ln_f_offset"])
    return h @ params["head/w"] + params["head/b"]


@functools.lru_cache(maxsize=4)
def _device_text(split: str) -> Data:
    text = load_text()
    cut = int(round(len(text) * (1.0 - TEXT_TEST_FRACTION)))
    part = text[:cut] if split == "train" else text[cut:]
    return {"tokens": jnp.asarray(part), "length": jnp.asarray(len(part), jnp.int32)}


def byte_lm(context: int = 16, embed: int = 32, hidden: int = 64, layers: int = 1,
            heads: int = 2, batch_size: int = 32, activation: str = "gelu",
            split: str = "train") -> Task:
    """Next-byte prediction on The Devil's Dictionary with a tiny causal transformer.

    A CPU-sized stand-in for Celo App. A.5 tasks 10–12 (TransformerLM on LM1B): vocabulary 256
    bytes, learned positions, `layers` pre-LN blocks, mean cross-entropy over all positions.
    data = {"tokens": uint8 [T], "n": number of valid window starts, "length": T}.
    """
    context = _check_int("context", context, 2, 512)
    embed = _check_int("embed", embed, 1)
    hidden = _check_int("hidden", hidden, 1)
    layers = _check_int("layers", layers, 1)
    heads = _check_int("heads", heads, 1)
    batch_size = _check_int("batch_size", batch_size, 1)
    activation = _choose("activation", activation, ACTIVATIONS)
    _choose("split", split, SPLITS)
    if embed % heads:
        raise InvalidOptionError(f"embed ({embed}) must be divisible by heads ({heads})")
    text = dict(_device_text(split))
    if int(text["length"]) <= context + 1:
        raise InvalidOptionError(f"context {context} is longer than the {split} text")
    data = {**text, "n": text["length"] - context}  # starts 0 … T − context − 1

    plan = _transformer_plan(context, embed, hidden, layers)

    def init(key: PRNGKey) -> Params:
        return _init_from_plan(key, plan)

    def loss(params: Params, batch: Batch) -> jax.Array:
        logits = _transformer_logits(params, batch["x"], layers, heads, activation)
        return _cross_entropy(logits, batch["y"])

    def sample_batch(data: Data, key: PRNGKey) -> Batch:
        starts = _sample_rows(data, key, batch_size)
        window = data["tokens"][starts[:, None] + jnp.arange(context + 1)].astype(jnp.int32)
        return {"x": window[:, :-1], "y": window[:, 1:]}

    name = (f"bytelm_devil_ctx{context}_e{embed}_h{hidden}_l{layers}_nh{heads}_{activation}"
            f"_bs{batch_size}{_split_suffix(split)}")
    return _task(name, init, loss, sample_batch, data, _classification_cap(256))


def teacher_student(in_dim: int = 16, hidden: Sequence[int] = (32,), out_dim: int = 4,
                    batch_size: int = 64, activation: str = "relu", noise: float = 0.0,
                    teacher_seed: int = 0) -> Task:
    """Regression onto a fixed random teacher: y = T(x) + noise·ε, x ~ N(0, I), fresh each batch.

    Teacher: in_dim → TEACHER_WIDTH (tanh) → out_dim, weights N(0, 1/fan_in), its output layer
    rescaled once (on TEACHER_NORM_SAMPLES inputs) to unit variance per output, so predicting 0
    costs 1 + noise²; the cap is REGRESSION_LOSS_CAP times that. The student is an MLP with
    `hidden` widths and `activation`; loss = mean squared error over batch and outputs.
    """
    in_dim = _check_int("in_dim", in_dim, 1)
    out_dim = _check_int("out_dim", out_dim, 1)
    hidden = _check_widths("hidden", hidden)
    batch_size = _check_int("batch_size", batch_size, 1)
    activation = _choose("activation", activation, ACTIVATIONS)
    noise = _check_float("noise", noise, 0.0)
    teacher_seed = _check_int("teacher_seed", teacher_seed, 0)
    rng = np.random.default_rng(teacher_seed)  # numpy: unrelated to the student's init keys
    w0 = rng.standard_normal((in_dim, TEACHER_WIDTH)) / math.sqrt(in_dim)
    w1 = rng.standard_normal((TEACHER_WIDTH, out_dim)) / math.sqrt(TEACHER_WIDTH)
    probe = np.tanh(rng.standard_normal((TEACHER_NORM_SAMPLES, in_dim)) @ w0) @ w1
    w1 = w1 / probe.std(axis=0)
    data = {"teacher/w0": jnp.asarray(w0, jnp.float32), "teacher/w1": jnp.asarray(w1, jnp.float32),
            "noise": jnp.asarray(noise, jnp.float32)}
    sizes, depth = (in_dim, *hidden, out_dim), len(hidden)

    plan = _mlp_plan(sizes)

    def init(key: PRNGKey) -> Params:
        return _init_from_plan(key, plan)

    def loss(params: Params, batch: Batch) -> jax.Array:
        return jnp.mean(jnp.square(_mlp_apply(params, batch["x"], depth, activation)
                                   - batch["y"]))

    def sample_batch(data: Data, key: PRNGKey) -> Batch:
        kx, ke = jax.random.split(key)
        x = jax.random.normal(kx, (batch_size, data["teacher/w0"].shape[0]), jnp.float32)
        y = jnp.tanh(x @ data["teacher/w0"]) @ data["teacher/w1"]
        y = y + data["noise"] * jax.random.normal(ke, y.shape, jnp.float32)
        return {"x": x, "y": y}

    name = (f"teacher_student_in{in_dim}_{'x'.join(map(str, hidden))}_out{out_dim}_{activation}"
            f"_noise{noise:g}_seed{teacher_seed}_bs{batch_size}")
    return _task(name, init, loss, sample_batch, data, REGRESSION_LOSS_CAP * (1.0 + noise ** 2))


def quadratic(dim: int = 10, condition: float = 100.0, noise: float = 0.0,
              seed: int = 0) -> Task:
    """L(w) = mean_i ½ h_i (w_i − c_i − noise·ε_i)², a tiny synthetic problem for fast tests.

    Curvatures h_i are log-spaced from 1 down to 1/condition; the centre c ~ N(0, I) is fixed by
    `seed`; ε ~ N(0, I) is fresh in every batch; w0 ~ N(0, I). The cap is 1.5 × the expected
    loss at initialization, ½·mean_i h_i (1 + c_i² + noise²).
    """
    dim = _check_int("dim", dim, 1)
    condition = _check_float("condition", condition, 1.0)
    noise = _check_float("noise", noise, 0.0)
    seed = _check_int("seed", seed, 0)
    h = condition ** (-np.arange(dim) / max(dim - 1, 1))
    c = np.random.default_rng(seed).standard_normal(dim)  # numpy: unrelated to init keys
    cap = LOSS_CAP_FACTOR * float(np.mean(0.5 * h * (1.0 + c ** 2 + noise ** 2)))
    data = {"h": jnp.asarray(h, jnp.float32), "c": jnp.asarray(c, jnp.float32),
            "noise": jnp.asarray(noise, jnp.float32)}

    def init(key: PRNGKey) -> Params:
        return {"w": jax.random.normal(key, (dim,), jnp.float32)}

    def loss(params: Params, batch: Batch) -> jax.Array:
        return jnp.mean(0.5 * batch["h"] * jnp.square(params["w"] - batch["target"]))

    def sample_batch(data: Data, key: PRNGKey) -> Batch:
        eps = jax.random.normal(key, data["c"].shape, jnp.float32)
        return {"h": data["h"], "target": data["c"] + data["noise"] * eps}

    name = f"quadratic_d{dim}_k{condition:g}_noise{noise:g}_seed{seed}"
    return _task(name, init, loss, sample_batch, data, cap)


# ----------------------------------------------------------------------------------------------
# Registry of named tasks (all available offline)
# ----------------------------------------------------------------------------------------------
def _named(name: str, builder: Callable[..., Task], **kwargs) -> Callable[[], Task]:
    def build() -> Task:
        return builder(**kwargs)._replace(name=name)
    build.__doc__ = f"{builder.__name__}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
    return build


TASKS: dict[str, Callable[[], Task]] = {
    # Celo App. A.4: the meta-training task (Fashion-MNIST member of the four)
    "celo_fmnist_8x8": _named("celo_fmnist_8x8", image_mlp, dataset="fashion_mnist_8x8",
                              hidden=(32,), activation="relu", batch_size=64),
    # CPU-sized analogues of Celo App. A.5 evaluation tasks 1, 2, 3, 4, 14 and 10–12
    "fmnist16_mlp_128x128": _named("fmnist16_mlp_128x128", image_mlp,
                                   dataset="fashion_mnist_16x16", hidden=(128, 128),
                                   batch_size=128),
    "fmnist16_mlp_128x128x128_ln": _named("fmnist16_mlp_128x128x128_ln", image_mlp,
                                          dataset="fashion_mnist_16x16",
                                          hidden=(128, 128, 128), layernorm=True,
                                          batch_size=128),
    "fmnist16_mlp_128x128x128_tanh": _named("fmnist16_mlp_128x128x128_tanh", image_mlp,
                                            dataset="fashion_mnist_16x16",
                                            hidden=(128, 128, 128), activation="tanh",
                                            batch_size=128),
    "fmnist16_conv_16x32": _named("fmnist16_conv_16x32", image_conv,
                                  dataset="fashion_mnist_16x16", channels=(16, 32),
                                  batch_size=64),
    "fmnist16_ae_128x32x128": _named("fmnist16_ae_128x32x128", image_autoencoder,
                                     dataset="fashion_mnist_16x16", hidden=(128, 32, 128),
                                     batch_size=128),
    "devil_byte_lm": _named("devil_byte_lm", byte_lm, context=16, embed=32, hidden=64,
                            layers=1, heads=2, batch_size=32),
    # synthetic
    "teacher_student": _named("teacher_student", teacher_student, in_dim=16, hidden=(32,),
                              out_dim=4, batch_size=64),
    "quadratic": _named("quadratic", quadratic, dim=10, condition=100.0, noise=0.0),
    "quadratic_noisy": _named("quadratic_noisy", quadratic, dim=10, condition=100.0,
                              noise=0.1),
}


def get_task(name: str) -> Task:
    """Build the registered task `name`."""
    return TASKS[_choose("task", name, TASKS)]()


# ----------------------------------------------------------------------------------------------
# Task families
# ----------------------------------------------------------------------------------------------
CELO_DATASETS = ("fashion_mnist_8x8", "mnist_8x8", "cifar10_grey_8x8")  # Celo App. A.4 (no SVHN)


def celo_meta_training_tasks(datasets: Sequence[str] | None = None) -> list[Task]:
    """The Celo meta-training tasks (App. A.4): MLP 64 → 32 → 10, ReLU, batch 64, 8×8 grey.

    One task per dataset, all with the same structure, so their data stack (stack_data) and
    one loss / sample_batch serves all of them under vmap. datasets=None takes the embedded
    Fashion-MNIST plus MNIST and CIFAR-10 when their files are already in the cache directory
    (never downloads); an explicit list loads exactly those (downloading when missing). SVHN,
    the paper's fourth dataset, is not supported (its files are MATLAB .mat).
    """
    if datasets is None:
        datasets = [d for d in CELO_DATASETS if dataset_available(d)]
    if isinstance(datasets, str) or not datasets:
        raise InvalidOptionError(f"datasets must be a non-empty list of names, got {datasets!r}")
    valid = [d for d, s in DATASETS.items() if s.size == 8 and s.variant != "5class"]
    out = []
    for d in datasets:
        _choose("8x8 ten-class dataset", d, valid)
        out.append(image_mlp(d, hidden=(32,), activation="relu", batch_size=64)
                   ._replace(name=f"celo_{d}"))
    return out


# The documented distribution of sample_task_family: kinds with probabilities, then per kind a
# uniform choice of each structural option below. All are small and CPU-cheap.
FAMILY_KIND_PROBS = {"image_mlp": 0.5, "image_conv": 0.15, "image_autoencoder": 0.1,
                     "teacher_student": 0.15, "byte_lm": 0.1}
FAMILY_DATASETS = ("fashion_mnist_8x8", "fashion_mnist_16x16", "fashion_mnist_8x8_inverted",
                   "fashion_mnist_8x8_5class")
FAMILY_WIDTHS = (16, 32, 64, 128)       # image MLP width (all hidden layers alike)
FAMILY_DEPTHS = (1, 2, 3)               # image MLP hidden layers
FAMILY_ACTIVATIONS = ("relu", "tanh", "gelu", "sigmoid", "elu")
FAMILY_BATCH_SIZES = (32, 64, 128)
FAMILY_LAYERNORM_PROB = 0.25
FAMILY_CONV_CHANNELS = ((8, 16), (16, 32), (16, 16, 32))
FAMILY_AE_HIDDEN = ((32, 8, 32), (64, 16, 64), (128, 32, 128))
FAMILY_TS = {"in_dim": (8, 16, 32), "width": (16, 32, 64), "depth": (1, 2), "out_dim": (1, 4, 8)}
FAMILY_LM = {"context": (8, 16), "embed": (16, 32), "layers": (1, 2), "batch_size": (16, 32)}


def sample_task_family(seed: int, num_tasks: int, kinds: Sequence[str] | None = None,
                       datasets: Sequence[str] | None = None) -> list[Task]:
    """Draw `num_tasks` task structures from the documented distribution (FAMILY_* above).

    Same seed → same list. `kinds` restricts the task kinds (renormalizing FAMILY_KIND_PROBS);
    `datasets` replaces FAMILY_DATASETS for the image tasks. Each Task has static shapes.
    """
    seed = _check_int("seed", seed, 0)
    num_tasks = _check_int("num_tasks", num_tasks, 1)
    kinds = list(FAMILY_KIND_PROBS) if kinds is None else list(kinds)
    for k in kinds:
        _choose("task kind", k, FAMILY_KIND_PROBS)
    datasets = list(FAMILY_DATASETS if datasets is None else datasets)
    for d in datasets:
        _choose("dataset", d, DATASETS)
    if not kinds or not datasets:
        raise InvalidOptionError("kinds and datasets must not be empty")
    probs = np.asarray([FAMILY_KIND_PROBS[k] for k in kinds])
    rng = np.random.default_rng(seed)

    def pick(options):
        return options[int(rng.integers(len(options)))]

    family = []
    for _ in range(num_tasks):  # options are drawn left to right, so a seed fixes the list
        kind = kinds[int(rng.choice(len(kinds), p=probs / probs.sum()))]
        if kind == "image_mlp":
            width, depth = pick(FAMILY_WIDTHS), pick(FAMILY_DEPTHS)
            task = image_mlp(pick(datasets), hidden=(width,) * depth,
                             activation=pick(FAMILY_ACTIVATIONS),
                             batch_size=pick(FAMILY_BATCH_SIZES),
                             layernorm=bool(rng.random() < FAMILY_LAYERNORM_PROB))
        elif kind == "image_conv":
            task = image_conv(pick(datasets), channels=pick(FAMILY_CONV_CHANNELS),
                              activation=pick(FAMILY_ACTIVATIONS),
                              batch_size=pick(FAMILY_BATCH_SIZES))
        elif kind == "image_autoencoder":
            task = image_autoencoder(pick(datasets), hidden=pick(FAMILY_AE_HIDDEN),
                                     batch_size=pick(FAMILY_BATCH_SIZES))
        elif kind == "teacher_student":
            width, depth = pick(FAMILY_TS["width"]), pick(FAMILY_TS["depth"])
            task = teacher_student(in_dim=pick(FAMILY_TS["in_dim"]), hidden=(width,) * depth,
                                   out_dim=pick(FAMILY_TS["out_dim"]),
                                   batch_size=pick(FAMILY_BATCH_SIZES),
                                   activation=pick(FAMILY_ACTIVATIONS),
                                   teacher_seed=int(rng.integers(2 ** 31)))
        else:
            embed = pick(FAMILY_LM["embed"])
            task = byte_lm(context=pick(FAMILY_LM["context"]), embed=embed, hidden=2 * embed,
                           layers=pick(FAMILY_LM["layers"]), heads=2,
                           batch_size=pick(FAMILY_LM["batch_size"]))
        family.append(task)
    return family


# ----------------------------------------------------------------------------------------------
# Task augmentation (Celo §3 Eqs. (7)–(10); VeLO's reparametrized weights)
# ----------------------------------------------------------------------------------------------
def sample_tau(key: PRNGKey, params: Params, mode: str = "global", low: float = TAU_LOW,
               high: float = TAU_HIGH) -> Params:
    """τ, a pytree like params, log-uniform in [low, high] (Celo §5.2: [1e-3, 1e3]).

    global: one τ for all tensors (the Celo default); tensor: one τ per tensor; parameter:
    one τ per entry. Leaves are float32 scalars (global, tensor) or the parameter's shape.
    """
    _choose("augmentation mode", mode, AUGMENT_MODES)
    low = _check_float("low", low, 0.0, inclusive=False)
    high = _check_float("high", high, low)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    lo, hi = math.log(low), math.log(high)

    def draw(k, shape):
        u = jax.random.uniform(k, shape, jnp.float32, lo, hi)
        return jnp.clip(jnp.exp(u), low, high)  # the clip only removes float32 rounding

    if mode == "global":
        tau = draw(key, ())
        taus = [tau for _ in leaves]
    else:
        keys = jax.random.split(key, max(len(leaves), 1))
        taus = [draw(k, () if mode == "tensor" else jnp.shape(p)) for k, p in zip(keys, leaves)]
    return jax.tree_util.tree_unflatten(treedef, taus)


def reparametrize(w: Params, tau: Params) -> Params:
    """The optimizee's weights τ·w seen by the forward pass (Celo Eq. (7))."""
    return jax.tree_util.tree_map(lambda wi, t: t * wi, w, tau)


def augment_init(params: Params, tau: Params) -> Params:
    """The optimizer's starting point θ0 / τ (Celo Eq. (8)), so τ·w0 = θ0."""
    return jax.tree_util.tree_map(lambda p, t: p / t, params, tau)


def augment_loss(loss: Callable[[Params, Batch], jax.Array],
                 tau: Params) -> Callable[[Params, Batch], jax.Array]:
    """w ↦ loss(τ·w, batch) (Celo Eq. (7)); its gradient is τ ⊙ (∇L)(τ·w) (Celo Eq. (10))."""
    def augmented(w: Params, batch: Batch) -> jax.Array:
        return loss(reparametrize(w, tau), batch)
    return augmented
