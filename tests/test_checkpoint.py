"""checkpoint.py: atomic writes, the file format's keys, one-line errors, one write helper."""
import os

import jax.numpy as jnp
import numpy as np
import pytest

import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_interrupted_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "c.npz")
    checkpoint.save_checkpoint(path, "small_fc_lopt", {"a": jnp.ones(3)})
    real = np.savez

    def crash(f, **arrays):
        f.write(b"PK partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError):
        checkpoint.save_checkpoint(path, "small_fc_lopt", {"a": jnp.zeros(3)})
    monkeypatch.setattr(np, "savez", real)
    name, theta = checkpoint.load_checkpoint(path)
    np.testing.assert_array_equal(theta["a"], np.ones(3))
    assert os.listdir(tmp_path) == ["c.npz"]  # no temporary file left behind


def test_bad_checkpoints_give_one_line_errors(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
        checkpoint.load_checkpoint(str(tmp_path / "missing.npz"))
    good = str(tmp_path / "good.npz")
    checkpoint.save_checkpoint(good, "x", {"a": jnp.ones(1000)})
    raw = open(good, "rb").read()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="unreadable or truncated"):
        checkpoint.load_checkpoint(str(truncated))
    foreign = str(tmp_path / "foreign.npz")
    np.savez(foreign, weights=np.ones(3))
    with pytest.raises(checkpoint.CheckpointError, match="not a"):
        checkpoint.load_checkpoint(foreign)


def test_atomic_write_replaces_whole_files_with_normal_permissions(tmp_path):
    path = tmp_path / "sub" / "log.csv"                       # the folder is made
    with checkpoint.atomic_write(path, "w") as f:
        f.write("a,b\n")
    assert path.read_text() == "a,b\n"
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask    # not mkstemp's 0600
    with pytest.raises(RuntimeError):
        with checkpoint.atomic_write(path, "w") as f:
            f.write("half")
            raise RuntimeError("crash mid-write")
    assert path.read_text() == "a,b\n" and os.listdir(path.parent) == ["log.csv"]


def test_one_atomic_write_helper_in_the_repository():
    """Every temp-file-then-rename write goes through checkpoint.atomic_write (STYLE: no copies)."""
    owners = [name for name in sorted(os.listdir(ROOT)) if name.endswith(".py")
              and "mkstemp(" in open(os.path.join(ROOT, name), encoding="utf-8").read()]
    assert owners == ["checkpoint.py"], owners
