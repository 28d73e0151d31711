"""baselines.py: the tuned optax baselines that evaluate.py scores against (Adam, AdamW, SGD with
momentum, Muon), each swept over a log grid of learning rates on a task in one compiled call
(engine.py); the best lr has the lowest mean final loss over the seeds it is scored on (Celo,
arXiv 2501.12670, §4: "the best Adam run"). Sweeps are cached on disk by task fingerprint,
baseline, grid, steps, seed and code version.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import sys
from pathlib import Path
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import celo2
import metrics
import tasks as tasks_lib
from checkpoint import atomic_write
from engine import _unroll, run_curves  # _unroll: its source is part of code_version
from suite import EvaluateError

CACHE_DIR = Path(__file__).resolve().parent / "runs" / "baselines"  # evaluate.py --cache default

# Tuned per task over the learning rate only (log grid, half-decade spacing)
ADAM_LRS = tuple(float(10.0 ** e) for e in np.arange(-4.0, -0.99, 0.5))   # 1e-4 … 1e-1 (7)
SGDM_LRS = tuple(float(10.0 ** e) for e in np.arange(-3.0, 0.01, 0.5))    # 1e-3 … 1 (7)
SGD_MOMENTUM = 0.9         # heavy-ball momentum (the usual default)
ADAMW_WEIGHT_DECAY = 1e-2  # decoupled weight decay (PyTorch's AdamW default; not tuned)
                           # muon: optax.contrib.muon(lr) at optax's defaults (Muon on 2-D
                           # params, Adam on the rest), tuned over ADAM_LRS


def baseline_tx(name: str, lr) -> optax.GradientTransformationExtraArgs:
    """An optax baseline at learning rate lr (may be traced); accepts value= and ignores it."""
    if name == "adam":
        tx = optax.adam(lr)
    elif name == "adamw":
        tx = optax.adamw(lr, weight_decay=ADAMW_WEIGHT_DECAY)
    elif name == "sgdm":
        tx = optax.sgd(lr, momentum=SGD_MOMENTUM)
    elif name == "muon":
        tx = optax.contrib.muon(lr)
    else:
        raise EvaluateError(f"unknown baseline {name!r}; valid: {', '.join(BASELINE_LRS)}")
    return optax.with_extra_args_support(tx)


COSINE = "_cosine"         # "adamw_cosine", "muon_cosine": the lr decays to 0 over the run by
                           # celo2.cosine_schedule, Celo2's default schedule, so a comparison with
                           # Celo2 differs only in the update rule (Celo's protocol tunes Adam at a
                           # constant lr)
BASELINE_LRS = {"adam": ADAM_LRS, "adamw": ADAM_LRS, "sgdm": SGDM_LRS, "muon": ADAM_LRS,
                "adamw" + COSINE: ADAM_LRS, "muon" + COSINE: ADAM_LRS}


def scheduled_tx(name: str, lr, steps: int) -> optax.GradientTransformationExtraArgs:
    """baseline_tx(name, lr); a name ending in COSINE runs its base at lr decayed to 0 over
    `steps` by celo2.cosine_schedule."""
    if name.endswith(COSINE):
        return baseline_tx(name[:-len(COSINE)], celo2.cosine_schedule(lr, steps))
    return baseline_tx(name, lr)


class Tuned(NamedTuple):
    """A baseline's learning-rate sweep on one task."""
    name: str
    lrs: np.ndarray        # [K]
    losses: np.ndarray     # [K, N, T] raw training losses
    best: int              # index of the lr with the lowest mean (over seeds) final loss

    @property
    def best_losses(self) -> np.ndarray:
        return self.losses[self.best]

    @property
    def at_edge(self) -> bool:
        return self.best in (0, len(self.lrs) - 1)


def code_version() -> str:
    """Hash of what produces a baseline curve here: the unroll, the baselines, jax and optax."""
    text = "".join(inspect.getsource(f) for f in (_unroll, baseline_tx, scheduled_tx,
                                                   celo2.cosine_schedule)) + repr(
        (SGD_MOMENTUM, ADAMW_WEIGHT_DECAY, jax.__version__, optax.__version__))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def task_fingerprint(task: tasks_lib.Task) -> str:
    """Hash of a task as trained: its name, the jaxprs of init, sample_batch and loss (the
    architecture, initialization and data pipeline, traced but not run), its data and its
    multipliers. A re-parametrized (μ) task or a changed builder gets a different fingerprint."""
    key = jax.random.key(0)
    params = jax.eval_shape(task.init, key)
    batch = jax.eval_shape(task.sample_batch, task.data, key)
    h = hashlib.sha256(task.name.encode())
    for jaxpr in (jax.make_jaxpr(task.init)(key),
                  jax.make_jaxpr(task.sample_batch)(task.data, key),
                  jax.make_jaxpr(task.loss)(params, batch)):
        h.update(str(jaxpr).encode())
    for tree in (task.data, task.multipliers):
        leaves, treedef = jax.tree.flatten(tree)
        h.update(str(treedef).encode())
        for leaf in leaves:
            a = np.asarray(leaf)
            h.update(f"{a.shape}{a.dtype}".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def _cache_path(cache_dir: Path, task: tasks_lib.Task, name: str, lrs, steps: int) -> Path:
    key = json.dumps([task_fingerprint(task), name, np.asarray(lrs, np.float32).tolist(),
                      int(steps), code_version()])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in task.name)
    return Path(cache_dir) / name / f"{safe}-T{steps}-{digest}.npz"


def _read_cache(path: Path) -> dict[int, np.ndarray]:
    if not path.exists():
        return {}
    try:
        with np.load(path, allow_pickle=False) as f:
            return {int(k[5:]): f[k] for k in f.files if k.startswith("seed_")}
    except Exception as e:  # a truncated or foreign file: recompute and overwrite it
        print(f"warning: ignoring unreadable baseline cache {path} ({type(e).__name__})",
              file=sys.stderr)
        return {}


def _write_cache(path: Path, runs: dict[int, np.ndarray]) -> None:
    with atomic_write(path, "wb") as f:
        np.savez(f, **{f"seed_{s}": a for s, a in sorted(runs.items())})


def tune_baseline(task: tasks_lib.Task, name: str, steps: int, seeds: Sequence[int],
                  cache_dir: Path | str | None = CACHE_DIR, lrs=None) -> Tuned:
    """Sweep baseline `name` over its learning-rate grid on `task` (all K × N runs in one
    compiled call), reusing cached seeds; the best lr minimizes the mean final loss over seeds.
    Tuning and scoring use the same seeds, as Celo's "best Adam run out of K trials" (§4)."""
    if name not in BASELINE_LRS:
        baseline_tx(name, 0.0)  # raises the one-line error
    lrs = np.asarray(BASELINE_LRS[name] if lrs is None else lrs, np.float32)
    seeds = [int(s) for s in seeds]
    path = _cache_path(Path(cache_dir), task, name, lrs, steps) if cache_dir else None
    runs = _read_cache(path) if path else {}
    missing = [s for s in seeds if s not in runs]
    if missing:
        losses, _ = run_curves(task, lambda lr: scheduled_tx(name, lr, steps), jnp.asarray(lrs),
                               steps, missing, grid=True,
                               cache_key=("baseline", name, task.init, task.loss,
                                          task.sample_batch, int(steps)))
        runs.update({s: losses[:, i] for i, s in enumerate(missing)})
        if path:
            _write_cache(path, runs)
    return pick_best(name, task, lrs, np.stack([runs[s] for s in seeds], axis=1))


def pick_best(name: str, task: tasks_lib.Task, lrs, losses) -> Tuned:
    """The sweep's best lr: the lowest mean over seeds of the final loss (losses [K, N, T])."""
    finals = metrics.final_training_loss(losses).mean(-1)         # [K], +inf where diverged
    if not np.isfinite(finals).any():
        raise EvaluateError(f"{name} diverged at every learning rate on {task.name}")
    return Tuned(name, np.asarray(lrs), losses, int(np.argmin(finals)))
