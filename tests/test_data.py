"""Data tests: file parsers on fabricated files, downsampling against hand-computed numbers,
the committed data against its manifest, and the one-line errors. Never touches the network."""

import gzip
import hashlib
import io
import json
import shutil
import struct
import sys
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402
import make_data  # noqa: E402

FASHION_MNIST_TRAIN_MEAN = 0.2860 * 255  # published mean pixel of Fashion-MNIST train (0.2860)


def idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    dtype = {0x08: np.uint8, 0x0C: ">i4"}[code]
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + np.asarray(arr).astype(dtype).tobytes()


def sha(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def one_line(e: BaseException) -> str:
    msg = str(e)
    assert "\n" not in msg and msg == msg.strip() and msg
    return msg


# ---- parsers ------------------------------------------------------------------------------------
def test_parse_idx_raw_and_gzip():
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = idx_bytes(arr)
    np.testing.assert_array_equal(data.parse_idx(raw), arr)
    np.testing.assert_array_equal(data.parse_idx(gzip.compress(raw)), arr)
    ints = np.array([1, -2, 70000])
    out = data.parse_idx(idx_bytes(ints, 0x0C))
    np.testing.assert_array_equal(out, ints)
    assert out.dtype == np.int32


@pytest.mark.parametrize("raw", [b"\x00\x00\x07\x01abcd", b"PK\x03\x04", b"\x00\x00\x08\x02\x00"])
def test_parse_idx_rejects_bad_files(raw):
    with pytest.raises(data.DataFileError) as e:
        data.parse_idx(raw, "some/file-idx3-ubyte")
    assert "some/file-idx3-ubyte" in one_line(e.value)


def test_parse_idx_rejects_truncated_and_bad_gzip():
    raw = idx_bytes(np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(data.DataFileError, match="t.idx.*implies"):
        data.parse_idx(raw[:-1], "t.idx")
    with pytest.raises(data.DataFileError, match="x.gz: not a valid gzip"):
        data.parse_idx(gzip.compress(raw)[:20], "x.gz")


def cifar_records(labels, seed=0):
    """Fabricated CIFAR-10 binary records and the HWC images they encode."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
    rec = [bytes([lab]) + img.transpose(2, 0, 1).tobytes() for lab, img in zip(labels, images)]
    return b"".join(rec), images


def test_parse_cifar_binary_layout():
    raw, images = cifar_records([3, 9])
    # hand check of the layout: byte 1 + 1024·c + 32·r + k holds channel c of pixel (r, k)
    assert raw[1 + 1024 * 2 + 32 * 5 + 7] == images[0, 5, 7, 2]
    x, y = data.parse_cifar_binary(raw)
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, [3, 9])
    with pytest.raises(data.DataFileError, match="b.bin.*multiple"):
        data.parse_cifar_binary(raw[:-1], "b.bin")
    with pytest.raises(data.DataFileError, match="label 10"):
        data.parse_cifar_binary(bytes([10]) + raw[1:], "c.bin")


# ---- downsampling -------------------------------------------------------------------------------
def test_area_downsample_integer_factor():
    x = np.arange(16, dtype=np.uint8).reshape(1, 4, 4) * 10
    # 2×2 block means: (0+10+40+50)/4 = 25, (20+30+60+70)/4 = 45, 105, 125
    np.testing.assert_array_equal(data.area_downsample(x, 2)[0], [[25, 45], [105, 125]])


def test_area_downsample_fractional_weights():
    # 3 → 2: output pixel 0 covers source [0, 1.5) with weights (1, 0.5, 0) / 1.5
    x = np.array([[0, 30, 60], [90, 120, 150], [180, 210, 240]], np.uint8)[None]
    # out[0,0] = (0 + .5·30 + .5·90 + .25·120) / 2.25 = 40, and so on by hand:
    np.testing.assert_array_equal(data.area_downsample(x, 2)[0], [[40, 80], [160, 200]])


def test_area_downsample_rounds_half_to_even_and_keeps_channels():
    blocks = np.array([[[0, 1], [0, 0]], [[1, 1], [0, 0]], [[3, 0], [0, 0]],
                       [[2, 0], [0, 0]], [[6, 0], [0, 0]]], np.uint8)
    # means 0.25, 0.5, 0.75, 0.5, 1.5 → 0, 0, 1, 0, 2 (round half to even)
    np.testing.assert_array_equal(data.area_downsample(blocks, 1)[:, 0, 0], [0, 0, 1, 0, 2])
    rgb = np.stack([blocks, 2 * blocks, 40 * blocks], axis=-1)
    out = data.area_downsample(rgb, 1)
    assert out.shape == (5, 1, 1, 3)
    np.testing.assert_array_equal(out[:, 0, 0, 2], [10, 20, 30, 20, 60])


def test_area_downsample_preserves_mean_and_rejects_upsampling():
    x = np.random.default_rng(0).integers(0, 256, (50, 28, 28), dtype=np.uint8)
    out = data.area_downsample(x, 8)
    assert out.shape == (50, 8, 8) and out.dtype == np.uint8
    assert abs(out.mean() - x.mean()) < 0.5  # area weights sum to one; only rounding differs
    with pytest.raises(data.InvalidOptionError):
        data.area_downsample(x, 32)


def test_rgb_to_grey_bt601():
    px = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]], np.uint8)
    # 0.2989·255 = 76.2, 0.5870·255 = 149.7, 0.1140·255 = 29.1, 0.9999·255 = 254.97
    np.testing.assert_array_equal(data.rgb_to_grey(px)[:, 0], [76, 150, 29, 255])


# ---- embedded data ----------------------------------------------------------------------
@pytest.mark.parametrize("fname", [f for f in data.EMBEDDED_FILES if f.endswith(".npz")])
def test_embedded_images_shapes_dtypes_balance(fname):
    arrays = data.load_embedded(fname)
    for key, (shape, dtype) in data.EMBEDDED_FILES[fname].items():
        assert arrays[key].shape == shape and arrays[key].dtype == dtype
    for split in ("train", "test"):
        counts = np.bincount(arrays[f"y_{split}"], minlength=10)
        assert len(counts) == 10 and (counts == counts[0]).all()
    # area downsampling keeps the mean pixel; the 8×8 file holds the full training set
    if fname == "fashion_mnist_8x8.npz":
        assert abs(arrays["x_train"].mean() - FASHION_MNIST_TRAIN_MEAN) < 0.5
    assert arrays["x_train"].max() > 200 and arrays["x_train"].min() == 0


def test_manifest_matches_committed_files_and_budget():
    manifest = json.loads((data.DATA_DIR / data.MANIFEST_NAME).read_text())
    assert set(manifest["files"]) == set(data.EMBEDDED_FILES)
    for fname, entry in manifest["files"].items():
        raw = (data.DATA_DIR / fname).read_bytes()
        assert sha(raw) == entry["sha256"] and len(raw) == entry["bytes"]
    total = sum(p.stat().st_size for p in data.DATA_DIR.iterdir())
    assert total < make_data.DATA_BUDGET_BYTES
    assert (data.DATA_DIR / "README.md").exists()


def test_make_data_check_passes_on_committed_data():
    assert make_data.check(data.DATA_DIR) == []


def test_npz_writer_is_deterministic_and_loadable():
    arrays = {"b": np.arange(5, dtype=np.uint8), "a": np.ones((2, 3), np.int32)}
    raw = make_data.npz_bytes(arrays)
    assert raw == make_data.npz_bytes(dict(reversed(list(arrays.items()))))
    with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["a"], arrays["a"])
        np.testing.assert_array_equal(npz["b"], arrays["b"])
    assert make_data.gz_bytes(b"abc") == make_data.gz_bytes(b"abc")


def test_devil_text():
    text = data.load_text().tobytes()
    assert text.isascii() and len(text) > 300_000
    assert b"The Internet Wiretap 1st Online Edition" in text[:200]
    assert b"ABASEMENT, n." in text and b"ZOOLOGY, n." in text
    assert b"00-database" not in text and b"abcdefghijklmnopqrstuvwxyz" not in text


def test_clean_devil_strips_dictfmt_lines():
    raw = (b"00-database-short\n  junk\n   The Internet Wiretap 1st Online Edition of  \n\n"
           b"ABATIS, n.  Rubbish.\n abcdefghijklmnopqrstuvwxyz\n\n")
    assert make_data.clean_devil(gzip.compress(raw)) == (
        b"   The Internet Wiretap 1st Online Edition of\n\nABATIS, n.  Rubbish.\n")


@pytest.fixture
def data_copy(tmp_path, monkeypatch):
    """A copy of data/ that data.py reads instead of the committed one."""
    copy = tmp_path / "data"
    shutil.copytree(data.DATA_DIR, copy)
    monkeypatch.setattr(data, "DATA_DIR", copy)
    return copy


def test_corrupt_embedded_file_is_named(data_copy):
    path = data_copy / "fashion_mnist_8x8.npz"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(data.DataFileError) as e:
        data.load_embedded("fashion_mnist_8x8.npz")
    msg = one_line(e.value)
    assert "data/fashion_mnist_8x8.npz" in msg and "make_data.py" in msg
    assert any("fashion_mnist_8x8.npz" in p for p in make_data.check(data_copy))


def test_wrong_shape_embedded_file_is_named(data_copy):
    raw = make_data.npz_bytes({"x_train": np.zeros((5, 8, 8), np.uint8)})
    (data_copy / "fashion_mnist_8x8.npz").write_bytes(raw)
    manifest = json.loads((data_copy / data.MANIFEST_NAME).read_text())
    manifest["files"]["fashion_mnist_8x8.npz"]["sha256"] = sha(raw)
    (data_copy / data.MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(data.DataFileError) as e:
        data.load_embedded("fashion_mnist_8x8.npz")
    msg = one_line(e.value)
    assert "fashion_mnist_8x8.npz" in msg and "x_train" in msg and "make_data.py" in msg


def test_missing_embedded_file_and_manifest(data_copy):
    (data_copy / "devil.txt.gz").unlink()
    with pytest.raises(data.DataFileError, match=r"data/devil.txt.gz: missing.*make_data"):
        data.load_text()
    (data_copy / data.MANIFEST_NAME).unlink()
    with pytest.raises(data.DataFileError, match="MANIFEST.json"):
        data.load_embedded("fashion_mnist_16x16.npz")


# ---- real datasets in the cache directory -------------------------------------------------------
MNIST_LABELS = {"train": np.arange(20) % 10, "t10k": np.arange(10)[::-1] % 10}


def fake_mnist_files(seed=0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    files = {}
    for prefix, labels in MNIST_LABELS.items():
        images = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
        files[f"{prefix}-images-idx3-ubyte.gz"] = gzip.compress(idx_bytes(images))
        files[f"{prefix}-labels-idx1-ubyte.gz"] = gzip.compress(idx_bytes(labels))
    return files


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache dir, a fake MNIST whose SHA-256 is pinned, and a downloader that fails."""
    root = tmp_path / "cache"
    monkeypatch.setenv(data.CACHE_ENV, str(root))
    monkeypatch.delenv(data.OFFLINE_ENV, raising=False)
    files = fake_mnist_files()
    for fname, raw in files.items():
        url = data.MNIST_FILES[fname].url
        monkeypatch.setitem(data.MNIST_FILES, fname, data.RemoteFile(url, sha(raw), None))

    def offline(url, dest, timeout=None):
        raise urllib.error.URLError("network is unreachable")
    monkeypatch.setattr(data, "_download", offline)
    return root, files


def test_load_mnist_from_cache(cache):
    root, files = cache
    (root / "mnist").mkdir(parents=True)
    for fname, raw in files.items():
        (root / "mnist" / fname).write_bytes(raw)
    assert data.dataset_available("mnist_8x8")
    ds = data.load_dataset("mnist_8x8", "train")
    assert ds.x.shape == (20, 8, 8, 1) and ds.x.dtype == np.uint8 and ds.num_classes == 10
    np.testing.assert_array_equal(ds.y, MNIST_LABELS["train"])
    full = data.parse_idx(files["train-images-idx3-ubyte.gz"])
    np.testing.assert_array_equal(ds.x[..., 0], data.area_downsample(full, 8))
    test = data.load_dataset("mnist_28x28", "test")
    np.testing.assert_array_equal(test.x[..., 0],
                                  data.parse_idx(files["t10k-images-idx3-ubyte.gz"]))


def test_uncompressed_idx_checked_by_content_hash(cache, monkeypatch):
    root, files = cache
    (root / "mnist").mkdir(parents=True)
    for fname, raw in files.items():
        content = gzip.decompress(raw)
        (root / "mnist" / fname.removesuffix(".gz")).write_bytes(content)
        monkeypatch.setitem(data.MNIST_FILES, fname,
                            data.RemoteFile(data.MNIST_FILES[fname].url, None, sha(content)))
    assert data.load_dataset("mnist_16x16", "test").x.shape == (10, 16, 16, 1)


def test_missing_file_offline_names_file_url_and_path(cache):
    root, _ = cache
    assert not data.dataset_available("mnist_8x8")
    with pytest.raises(data.DatasetNotAvailableError) as e:
        data.load_dataset("mnist_8x8")
    msg = one_line(e.value)
    dest = root / "mnist" / "train-images-idx3-ubyte.gz"
    assert "train-images-idx3-ubyte.gz" in msg and str(dest) in msg
    assert data.MNIST_URL + "train-images-idx3-ubyte.gz" in msg and "unreachable" in msg
    assert isinstance(e.value, FileNotFoundError) and not list((root / "mnist").iterdir())


def test_offline_env_never_downloads(cache, monkeypatch):
    monkeypatch.setenv(data.OFFLINE_ENV, "1")
    monkeypatch.setattr(data, "_download", lambda *a, **k: pytest.fail("tried to download"))
    with pytest.raises(data.DatasetNotAvailableError, match="LOPT_OFFLINE"):
        data.load_dataset("mnist_8x8")


def test_download_checksum_failure(cache, monkeypatch):
    root, _ = cache
    monkeypatch.setattr(data, "_download", lambda url, dest, timeout=None:
                        Path(dest).write_bytes(b"<html>not found</html>"))
    with pytest.raises(data.DatasetNotAvailableError) as e:
        data.load_dataset("mnist_8x8")
    msg = one_line(e.value)
    assert "SHA-256" in msg and data.MNIST_URL in msg and str(root / "mnist") in msg
    assert not list((root / "mnist").iterdir())  # nothing half-written is left behind


def test_download_success_is_cached(cache, monkeypatch):
    root, files = cache
    by_url = {data.MNIST_FILES[f].url: raw for f, raw in files.items()}
    calls = []

    def fake_download(url, dest, timeout=None):
        calls.append(url)
        Path(dest).write_bytes(by_url[url])
    monkeypatch.setattr(data, "_download", fake_download)
    assert data.load_dataset("mnist_8x8").x.shape == (20, 8, 8, 1)
    assert sorted(calls) == sorted(by_url)
    assert sorted(p.name for p in (root / "mnist").iterdir()) == sorted(files)


def test_corrupt_cached_file_is_named(cache):
    root, files = cache
    (root / "mnist").mkdir(parents=True)
    for fname, raw in files.items():
        (root / "mnist" / fname).write_bytes(raw)
    bad = root / "mnist" / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(gzip.compress(b"garbage"))
    with pytest.raises(data.DataFileError) as e:
        data.load_dataset("mnist_8x8")
    assert str(bad) in one_line(e.value) and data.MNIST_URL in str(e.value)


CIFAR_LABELS = {"data_batch_1.bin": [0, 1], "data_batch_2.bin": [2, 3],
                "data_batch_3.bin": [4, 5], "data_batch_4.bin": [6, 7],
                "data_batch_5.bin": [8, 9], "test_batch.bin": [5, 4]}


def fake_cifar(seed=0) -> dict[str, tuple[bytes, np.ndarray]]:
    return {m: cifar_records(labels, seed + i) for i, (m, labels) in
            enumerate(CIFAR_LABELS.items())}


def cifar_tar(batches) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for member, (raw, _) in batches.items():
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{member}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return buf.getvalue()


@pytest.mark.parametrize("layout", ["tar", "extracted"])
def test_load_cifar10_binary(cache, monkeypatch, layout):
    root, _ = cache
    monkeypatch.setattr(data, "CIFAR10_BATCH_RECORDS", 2)
    batches = fake_cifar()
    folder = root / "cifar10"
    if layout == "tar":
        raw = cifar_tar(batches)
        folder.mkdir(parents=True)
        (folder / "cifar-10-binary.tar.gz").write_bytes(raw)
        monkeypatch.setitem(data.CIFAR10_FILES, "cifar-10-binary.tar.gz",
                            data.RemoteFile(data.CIFAR10_URL, sha(raw), None))
    else:
        (folder / "cifar-10-batches-bin").mkdir(parents=True)
        for member, (raw, _) in batches.items():
            (folder / "cifar-10-batches-bin" / member).write_bytes(raw)
    assert data.dataset_available("cifar10_grey_8x8")
    train = data.load_dataset("cifar10_32x32", "train")
    images = np.concatenate([batches[f"data_batch_{i}.bin"][1] for i in range(1, 6)])
    np.testing.assert_array_equal(train.x, images)
    np.testing.assert_array_equal(train.y, np.arange(10))
    grey = data.load_dataset("cifar10_grey_8x8", "test")
    expected = data.area_downsample(data.rgb_to_grey(batches["test_batch.bin"][1]), 8)
    assert grey.x.shape == (2, 8, 8, 1)
    np.testing.assert_array_equal(grey.x, expected)


def test_cifar_wrong_batch_size_is_named(cache, monkeypatch):
    root, _ = cache
    monkeypatch.setattr(data, "CIFAR10_BATCH_RECORDS", 3)  # the files hold 2 records each
    folder = root / "cifar10" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for member, (raw, _) in fake_cifar().items():
        (folder / member).write_bytes(raw)
    with pytest.raises(data.DataFileError) as e:
        data.load_dataset("cifar10_32x32")
    assert "data_batch_1.bin" in one_line(e.value)


def test_cifar_missing_names_archive_url_and_path(cache):
    root, _ = cache
    with pytest.raises(data.DatasetNotAvailableError) as e:
        data.load_dataset("cifar10_grey_8x8")
    msg = one_line(e.value)
    assert "cifar-10-binary.tar.gz" in msg and str(root / "cifar10") in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz" in msg


def test_unknown_dataset_and_split_list_valid_names():
    with pytest.raises(data.UnknownNameError) as e:
        data.load_dataset("svhn_8x8")
    msg = one_line(e.value)
    assert isinstance(e.value, KeyError) and msg.startswith("unknown dataset 'svhn_8x8'")
    assert "fashion_mnist_8x8" in msg and "cifar10_grey_8x8" in msg
    with pytest.raises(data.UnknownNameError, match="valid: test, train"):
        data.load_dataset("fashion_mnist_8x8", "valid")


def test_derived_datasets():
    base = data.load_dataset("fashion_mnist_8x8")
    inv = data.load_dataset("fashion_mnist_8x8_inverted")
    np.testing.assert_array_equal(inv.x, 255 - base.x)
    sub = data.load_dataset("fashion_mnist_8x8_5class", "test")
    assert sub.num_classes == 5 and sub.y.max() == 4 and len(sub.y) == 5000
