"""Build and check the embedded data in data/ (the Celo meta-training images, Celo §5.2 / A.4).

Celo meta-trains on 8×8 grey-scale images; this script makes them from the original
Fashion-MNIST idx files (all 70k images, area-downsampled 28 → 8), a class-balanced 16×16
subset for the held-out evaluation tasks, and a plain-text byte corpus (Bierce's The Devil's
Dictionary) for the byte-level language model, then records each file's SHA-256 in
data/MANIFEST.json, which data.py verifies at every load.

    python make_data.py          # rebuild data/*.npz, data/devil.txt.gz and data/MANIFEST.json
    python make_data.py --check  # verify what is committed (and compare with a rebuild when
                                 # the sources below are installed)
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import re
import sys
import zipfile
from pathlib import Path

import numpy as np

import data

# ---- settings --------------------------------------------------------------------------------
FASHION_MNIST_SRC = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist
DEVIL_SRC = "/usr/share/dictd/devil.dict.dz"             # Debian dict-devil (dictzip = gzip)
DATA_BUDGET_BYTES = 15_000_000    # everything committed under data/ must stay below this
NUM_CLASSES = 10                  # Fashion-MNIST
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed zip/gzip timestamps make the files reproducible
COMPRESS_LEVEL = 9
DEVIL_FIRST_LINE = "The Internet Wiretap 1st Online Edition of"  # the public-domain notice
DEVIL_ALPHABET_LINE = re.compile(r"^\s*abcdefghijklmnopqrstuvwxyz\s*$")  # dictfmt metadata
TEXT_MIN_BYTES, TEXT_MAX_BYTES = 300_000, 2_000_000
SOURCES = {
    "fashion_mnist_8x8.npz": "Fashion-MNIST (Zalando SE 2017, MIT), all 60k train + 10k test "
                             "images, area-downsampled 28x28 -> 8x8",
    "fashion_mnist_16x16.npz": "Fashion-MNIST (Zalando SE 2017, MIT), the first 2000 train / "
                               "500 test images of each class in file order, area-downsampled "
                               "28x28 -> 16x16",
    "devil.txt.gz": "Ambrose Bierce, The Devil's Dictionary (1911, public domain), Internet "
                    "Wiretap edition as packaged by Debian dict-devil, dictfmt header removed",
}


# ---- building ----------------------------------------------------------------------------------
def read_fashion_mnist(src: Path) -> dict[str, np.ndarray]:
    """The four original idx files, each checked against data.FASHION_MNIST_FILES."""
    out = {}
    for fname, spec in data.FASHION_MNIST_FILES.items():
        path = src / fname
        raw = path.read_bytes()
        if not data._file_ok(raw, spec):
            raise data.DataFileError(f"{path}: SHA-256 does not match data.FASHION_MNIST_FILES")
        out[fname] = data.parse_idx(raw, str(path))
    return {"x_train": out["train-images-idx3-ubyte.gz"],
            "y_train": out["train-labels-idx1-ubyte.gz"],
            "x_test": out["t10k-images-idx3-ubyte.gz"],
            "y_test": out["t10k-labels-idx1-ubyte.gz"]}


def balanced_subset(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the first `per_class` examples of every class, in file order."""
    keep = [np.flatnonzero(labels == c)[:per_class] for c in range(NUM_CLASSES)]
    if any(len(k) < per_class for k in keep):
        raise ValueError(f"fewer than {per_class} examples in some class")
    return np.sort(np.concatenate(keep))


def build_images(src: Path) -> dict[str, dict[str, np.ndarray]]:
    """Arrays of every embedded .npz, shaped as data.EMBEDDED_FILES says."""
    fm = read_fashion_mnist(src)
    files = {}
    for fname, spec in data.EMBEDDED_FILES.items():
        if not fname.endswith(".npz"):
            continue
        size = spec["x_train"][0][1]
        arrays = {}
        for split in ("train", "test"):
            rows = spec[f"y_{split}"][0][0]
            idx = balanced_subset(fm[f"y_{split}"], rows // NUM_CLASSES)
            arrays[f"x_{split}"] = data.area_downsample(fm[f"x_{split}"][idx], size)
            arrays[f"y_{split}"] = fm[f"y_{split}"][idx].astype(np.uint8)
        files[fname] = arrays
    return files


def clean_devil(raw: bytes) -> bytes:
    """Plain ASCII text of the dictionary: from the Wiretap notice on, dictfmt lines removed."""
    text = data._maybe_gunzip(raw, DEVIL_SRC).decode("ascii")
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if DEVIL_FIRST_LINE in line)
    lines = [line.rstrip() for line in lines[start:] if not DEVIL_ALPHABET_LINE.match(line)]
    while lines and not lines[-1]:
        lines.pop()
    return ("\n".join(lines) + "\n").encode("ascii")


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A compressed .npz with fixed timestamps, so equal arrays give equal bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[name]),
                                      allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue(), compresslevel=COMPRESS_LEVEL)
    return buf.getvalue()


def gz_bytes(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=COMPRESS_LEVEL,
                       mtime=0) as f:
        f.write(data)
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def array_entry(a: np.ndarray) -> dict:
    return {"shape": list(a.shape), "dtype": str(a.dtype),
            "sha256": sha256(np.ascontiguousarray(a).tobytes())}


def build(data_dir: Path, src: Path, devil: Path) -> dict:
    """Write every embedded file and MANIFEST.json into data_dir; return the manifest."""
    data_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"format": 1, "note": "written by make_data.py; checked by tasks.py at load",
                "files": {}}
    for fname, arrays in build_images(src).items():
        raw = npz_bytes(arrays)
        (data_dir / fname).write_bytes(raw)
        manifest["files"][fname] = {
            "bytes": len(raw), "sha256": sha256(raw), "source": SOURCES[fname],
            "arrays": {k: array_entry(v) for k, v in sorted(arrays.items())}}
    text = clean_devil(devil.read_bytes())
    raw = gz_bytes(text)
    (data_dir / "devil.txt.gz").write_bytes(raw)
    manifest["files"]["devil.txt.gz"] = {
        "bytes": len(raw), "sha256": sha256(raw), "source": SOURCES["devil.txt.gz"],
        "text_bytes": len(text), "text_sha256": sha256(text)}
    manifest["files"] = dict(sorted(manifest["files"].items()))
    (data_dir / data.MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


# ---- checking ------------------------------------------------------------------------------------
def check(data_dir: Path, src: Path | None = None, devil: Path | None = None) -> list[str]:
    """Problems with the committed data (empty list = all good).

    Checks the manifest lists exactly the expected files, every file's size and SHA-256,
    array shapes/dtypes (data.EMBEDDED_FILES), labels and exact class balance, the text, and
    the size budget; with `src` and `devil` given, also that a rebuild yields the same arrays
    and text (compared by content hash, since zlib versions may compress differently).
    """
    problems = []
    try:
        manifest = data.read_manifest(data_dir)
    except data.DataFileError as e:
        return [str(e)]
    listed = set(manifest["files"])
    if listed != set(data.EMBEDDED_FILES):
        problems.append(f"{data.MANIFEST_NAME} lists {sorted(listed)}, expected "
                        f"{sorted(data.EMBEDDED_FILES)}")
    extra = {p.name for p in data_dir.iterdir()} - listed - {data.MANIFEST_NAME, "README.md"}
    if extra:
        problems.append(f"files in {data_dir} not in the manifest: {sorted(extra)}")
    total = 0
    for fname in sorted(listed & set(data.EMBEDDED_FILES)):
        entry, path = manifest["files"][fname], data_dir / fname
        if not path.exists():
            problems.append(f"{fname}: missing")
            continue
        raw = path.read_bytes()
        total += len(raw)
        if len(raw) != entry["bytes"] or sha256(raw) != entry["sha256"]:
            problems.append(f"{fname}: size/SHA-256 differ from the manifest")
            continue
        if fname.endswith(".npz"):
            with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            for key, (shape, dtype) in data.EMBEDDED_FILES[fname].items():
                a = arrays.get(key)
                if a is None or a.shape != shape or str(a.dtype) != dtype:
                    problems.append(f"{fname}:{key} is "
                                    f"{'missing' if a is None else (a.dtype, a.shape)}, "
                                    f"expected {dtype} {shape}")
                    continue
                if array_entry(a) != entry["arrays"].get(key):
                    problems.append(f"{fname}:{key} differs from its manifest entry")
                if key.startswith("y_"):
                    counts = np.bincount(a, minlength=NUM_CLASSES)
                    if len(counts) != NUM_CLASSES or len(set(counts.tolist())) != 1:
                        problems.append(f"{fname}:{key} is not class-balanced: {counts.tolist()}")
        else:
            text = gzip.decompress(raw)
            if sha256(text) != entry.get("text_sha256") or len(text) != entry.get("text_bytes"):
                problems.append(f"{fname}: text differs from its manifest entry")
            if not TEXT_MIN_BYTES <= len(text) <= TEXT_MAX_BYTES:
                problems.append(f"{fname}: {len(text)} bytes of text, outside "
                                f"[{TEXT_MIN_BYTES}, {TEXT_MAX_BYTES}]")
            if max(text) > 127:
                problems.append(f"{fname}: not ASCII")
    readme = data_dir / "README.md"
    total += readme.stat().st_size if readme.exists() else 0
    total += (data_dir / data.MANIFEST_NAME).stat().st_size
    if total >= DATA_BUDGET_BYTES:
        problems.append(f"data/ holds {total} bytes, over the {DATA_BUDGET_BYTES} budget")
    if src is not None and devil is not None:
        for fname, arrays in build_images(src).items():
            for key, a in arrays.items():
                if array_entry(a) != manifest["files"].get(fname, {}).get("arrays", {}).get(key):
                    problems.append(f"{fname}:{key} differs from a rebuild from {src}")
        text = clean_devil(devil.read_bytes())
        if sha256(text) != manifest["files"].get("devil.txt.gz", {}).get("text_sha256"):
            problems.append(f"devil.txt.gz differs from a rebuild from {devil}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="verify instead of rebuilding")
    parser.add_argument("--src", default=FASHION_MNIST_SRC, help="Fashion-MNIST idx files")
    parser.add_argument("--devil", default=DEVIL_SRC, help="devil.dict.dz from dict-devil")
    parser.add_argument("--out", default=str(data.DATA_DIR), help="data directory")
    args = parser.parse_args(argv)
    out, src, devil = Path(args.out), Path(args.src), Path(args.devil)
    have_sources = all((src / f).exists() for f in data.FASHION_MNIST_FILES) and devil.exists()
    try:
        if args.check:
            if not have_sources:
                print(f"note: sources not found ({src}, {devil}); checking committed files only")
            problems = check(out, src if have_sources else None,
                             devil if have_sources else None)
            for p in problems:
                print(f"error: {p}")
            if not problems:
                total = sum(p.stat().st_size for p in out.iterdir())
                print(f"ok: {len(data.EMBEDDED_FILES)} files match {data.MANIFEST_NAME}"
                      f"{' and a rebuild' if have_sources else ''}; data/ is {total:,} bytes")
            return 1 if problems else 0
        if not have_sources:
            print(f"error: sources not found: need {src}/*-ubyte.gz (apt install "
                  f"dataset-fashion-mnist) and {devil} (apt install dict-devil)")
            return 2
        manifest = build(out, src, devil)
        for fname, entry in manifest["files"].items():
            print(f"wrote {out / fname}: {entry['bytes']:,} bytes, sha256 {entry['sha256']}")
        problems = check(out)
        for p in problems:
            print(f"error: {p}")
        return 1 if problems else 0
    except data.TaskError as e:
        print(f"error: {e}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
