"""checkpoint.py: the one checkpoint format of this repository ("lopt-jax-checkpoint-v1") and the
one atomic file write. Library use: `name, theta = checkpoint.load_checkpoint(path)`, then e.g.
`celo.optimizer(theta, num_steps)`; train.py writes these files, evaluate.py and the rest read them.
"""
import contextlib
import json
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

# One .npz per run, loaded with allow_pickle=False and written atomically (temp file + rename).
# Keys: "format", "optimizer", "config" (JSON), "theta/<path>", "state/<path>" (meta-optimizer,
# PES particles, RNG, step: anything train.py needs to resume), "meta/<name>" (provenance strings).
CHECKPOINT_FORMAT = "lopt-jax-checkpoint-v1"


class CheckpointError(Exception):
    """A checkpoint that is missing, truncated, or not one of ours (one-line message)."""


def flatten_tree(tree, prefix):
    """{prefix/a/b: array} for a nested dict of arrays (keys must not contain '/')."""
    flat = {}
    for key, value in tree.items():
        key = str(key)
        if "/" in key:
            raise ValueError(f"tree key {key!r} contains '/', which checkpoints reserve")
        if isinstance(value, dict):
            flat.update(flatten_tree(value, f"{prefix}/{key}"))
        else:
            flat[f"{prefix}/{key}"] = np.asarray(value)
    return flat


def unflatten_tree(flat, prefix):
    tree = {}
    for key, value in flat.items():
        if not key.startswith(prefix + "/"):
            continue
        *path, leaf = key[len(prefix) + 1:].split("/")
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


@contextlib.contextmanager
def atomic_write(path, mode="wb", **open_kwargs):
    """`with atomic_write(path, "w") as f:` writes a temporary file beside `path` (with the mode of
    a normal file: mkstemp makes 0600 files) and renames it over `path` when the block ends; an
    error inside the block leaves `path` as it was and no temporary file behind."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_checkpoint(path, optimizer_name, theta, config=None, state=None, meta=None):
    """Write atomically: a crash mid-write leaves the previous file intact."""
    arrays = {"format": np.asarray(CHECKPOINT_FORMAT), "optimizer": np.asarray(optimizer_name),
              "config": np.asarray(json.dumps(config or {}, sort_keys=True))}
    arrays.update(flatten_tree(jax.device_get(theta), "theta"))
    arrays.update(flatten_tree(jax.device_get(state or {}), "state"))
    arrays.update({f"meta/{k}": np.asarray(str(v)) for k, v in (meta or {}).items()})
    with atomic_write(path, "wb") as f:
        np.savez(f, **arrays)


def read_checkpoint(path):
    """Everything in a checkpoint: (optimizer_name, theta, config, state, meta)."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path} does not exist: train one with "
                              f"`python train.py --opt NAME --out {path}`")
    try:
        with np.load(path, allow_pickle=False) as f:
            flat = {k: f[k] for k in f.files}
    except Exception as e:  # zipfile.BadZipFile, ValueError, EOFError, OSError...
        raise CheckpointError(f"checkpoint {path} is unreadable or truncated "
                              f"({type(e).__name__}); restore it or retrain") from None
    if "format" not in flat or str(flat["format"]) != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a {CHECKPOINT_FORMAT} file "
                              "(no 'format' key): was it written by train.py?")
    theta = jax.tree.map(jnp.asarray, unflatten_tree(flat, "theta"))
    if not theta:
        raise CheckpointError(f"checkpoint {path} holds no theta/ arrays")
    config = json.loads(str(flat["config"]))
    state = unflatten_tree(flat, "state")
    meta = {k[5:]: str(v) for k, v in flat.items() if k.startswith("meta/")}
    return str(flat["optimizer"]), theta, config, state, meta


def strip_checkpoint(path, out=None):
    """Keep θ, the configuration and provenance; drop the resume state (AdamW moments, every PES
    particle), which is most of the file: what checkpoints/ ships for the larger runs.
    `python train.py --strip PATH` (in place)."""
    name, theta, config, state, meta = read_checkpoint(path)
    meta = {**meta, "stripped": "resume state removed; θ as trained"}
    if "step" in state:
        meta.setdefault("meta_steps_done", str(int(state["step"])))
    save_checkpoint(out or path, name, theta, config=config, meta=meta)


def load_checkpoint(path):
    """(optimizer_name, theta) for library users: `tx = celo.optimizer(theta, num_steps)`."""
    name, theta, _, _, _ = read_checkpoint(path)
    return name, theta
