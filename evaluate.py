"""evaluate.py: score an optimizer on held-out tasks against tuned Adam, as Celo does.

Celo (celo.txt) §4 "Reliably scoring optimizers at scale", §5.3–5.4 and App. A.3: every task is
trained T steps with 3 seeds; the training loss is smoothed by an EMA (0.9) and the final loss is
the mean over the last 10 batches; the normalized final-loss score is s = L_adam / L_opt (Eq. (11))
and the speedup s = T / T_opt (Eq. (12)), T_opt the first step reaching tuned Adam's final loss
(0 if never); M×N scores are aggregated by IQM, median, mean and optimality gap with stratified
bootstrap 95% CIs (Agarwal et al. 2021, rliable), all computed by metrics.py. This file holds
the held-out VALIDATION and TEST suites, the tuned optax baselines (cached on disk), plots, a Python
API and the CLI:

    python evaluate.py --opt NAME [--checkpoint PATH] [--tasks validation|test|quick|name,name]
                       [--seeds N] [--steps T] [--json PATH] [--plots DIR] [--tune-lr]

Choose recipes and checkpoints on VALIDATION only; TEST (alias: all) is only reported. The two
share no (dataset, architecture) pair (task_signature below, test-checked).

NAME is a baseline (adam, adamw, sgdm, muon: tuned per task over a log grid of learning rates) or
a learned optimizer of train.OPTIMIZERS (default θ: its checkpoint in checkpoints/). --tune-lr
tunes a learned optimizer that takes a learning rate (LR_OPTIMIZERS: celo2, celo2_base) per task
over Adam's grid, by the rule that tunes Adam; without it, such an optimizer runs at its default.

Choices the papers leave open, made here on purpose:
- the training loss at step t is the minibatch loss before update t; EMA y_0 = x_0 (no
  zero-start bias); a NaN/inf loss makes the run +inf from there (score 0, never reaches);
- tuned Adam = the grid lr with the lowest mean (over seeds) final loss, tuned on the same seeds
  it is scored on (Celo §4: "the best Adam run"); L_adam = its final loss averaged over seeds,
  one reference per task; seed n of the optimizer scores s_n = L_adam / L_opt,n;
- all our losses are >= 0 (cross-entropy, MSE, quadratics) and the regression tasks have label
  noise, so L_opt > 0 in practice; L_opt is floored at 1e-12 anyway;
- speedup uses the same smoothed curve: T_opt = 1 + the first index where it is <= L_adam.
  A task whose loss plateaus early gives every optimizer that reaches the plateau a large
  speedup (Adam itself scores > 1 on such tasks);
- median and mean are over tasks of per-task mean scores, IQM and optimality gap over all
  M×N scores (rliable's definitions); CIs: stratified bootstrap over seeds, percentile method;
- --steps T is the base horizon: the long-horizon task runs LONG_HORIZON × T.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import inspect
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import celo2
import metrics
import registry
import tasks as tasks_lib
from checkpoint import CheckpointError, atomic_write, load_checkpoint

# ----------------------------------------------------------------------------------------------
# Settings: plain module-level values; the command line overrides the first block.
# ----------------------------------------------------------------------------------------------
OPT = "celo"               # --opt: optimizer to evaluate (a baseline or a train.OPTIMIZERS name)
CHECKPOINT = None          # --checkpoint: θ of a learned optimizer (None: checkpoints/{OPT}.npz)
TASKS = "quick"            # --tasks: validation | test (= all) | quick | name,name,...
SEEDS = 3                  # --seeds: runs per task (Celo App. A.3: 3 seeds per task)
STEPS = 1000               # --steps: base horizon T; the long-horizon task runs LONG_HORIZON × T
JSON_PATH = None           # --json: write the results here
PLOTS_DIR = None           # --plots: write PNG plots here
ROOT = Path(__file__).resolve().parent
CACHE_DIR = ROOT / "runs" / "baselines"     # --cache: tuned-baseline curves ("none": no cache)
COMPILE_CACHE_DIR = ROOT / "runs" / "jax_cache"  # the CLI's persistent XLA compilation cache

# Baselines: optax, tuned per task over the learning rate only (log grid, half-decade spacing)
ADAM_LRS = tuple(float(10.0 ** e) for e in np.arange(-4.0, -0.99, 0.5))   # 1e-4 … 1e-1 (7)
SGDM_LRS = tuple(float(10.0 ** e) for e in np.arange(-3.0, 0.01, 0.5))    # 1e-3 … 1 (7)
SGD_MOMENTUM = 0.9         # heavy-ball momentum (the usual default)
ADAMW_WEIGHT_DECAY = 1e-2  # decoupled weight decay (PyTorch's AdamW default; not tuned)
                           # muon: optax.contrib.muon(lr) at optax's defaults (Muon on 2-D
                           # params, Adam on the rest), tuned over ADAM_LRS
PLOT_BASELINES = ("adam", "adamw", "sgdm")  # tuned baselines drawn in the aggregate plot

LONG_HORIZON = 5           # the long-horizon task trains 5× the base horizon (5000 steps)


class EvaluateError(Exception):
    """A bad name, option or checkpoint; the CLI prints `error: <message>` and exits 2."""


# ----------------------------------------------------------------------------------------------
# The held-out suites: CPU-sized analogues of Celo §5.3, none in the meta-training family
# (tasks.celo_meta_training_tasks is MLP 64→32→10, batch 64, and tasks.sample_task_family draws
# uniform widths {16,32,64,128}, depths 1–3, activations relu/tanh/gelu/sigmoid/elu, batch sizes
# {32,64,128}, convs with 3×3 kernels, AEs (32,8,32)/(64,16,64)/(128,32,128), 2-head LMs with
# hidden = 2·embed, teacher–student with in_dim ≤ 32, width ≤ 64, depth ≤ 2 and no noise).
# Every task below differs from that support in at least one structural option (test-checked).
# VALIDATION chooses recipes and checkpoints; TEST is only reported. No (dataset, architecture)
# signature is in both (test-checked), so a choice made on VALIDATION meets new data or a new
# architecture on TEST.
# ----------------------------------------------------------------------------------------------
class SuiteTask(NamedTuple):
    builder: str          # a tasks.py builder
    kwargs: dict          # its options
    horizon: int          # steps = horizon × the base steps
    about: str            # what it tests, one line

    def build(self) -> tasks_lib.Task:
        return getattr(tasks_lib, self.builder)(**self.kwargs)


F8, F16 = "fashion_mnist_8x8", "fashion_mnist_16x16"
F8I, F8C5 = "fashion_mnist_8x8_inverted", "fashion_mnist_8x8_5class"
TEST: dict[str, SuiteTask] = {
    "fmnist8_mlp_w1024": SuiteTask("image_mlp", dict(dataset=F8, hidden=(1024,), batch_size=64),
                                   1, "32× wider than meta-training (64→1024→10, ReLU)"),
    "fmnist8_mlp_5x64_ln": SuiteTask("image_mlp", dict(dataset=F8, hidden=(64,) * 5,
                                                       layernorm=True, batch_size=64),
                                     1, "deeper: 5 hidden layers of 64 with layer norm"),
    "fmnist16_mlp_3x128_silu": SuiteTask("image_mlp", dict(dataset=F16, hidden=(128,) * 3,
                                                           activation="silu", batch_size=64),
                                         1, "3×128 MLP, SiLU (unseen activation), 16×16 input"),
    "fmnist8_mlp_w512_bs16": SuiteTask("image_mlp", dict(dataset=F8, hidden=(512,),
                                                         batch_size=16),
                                       1, "512-wide, batch 16 (noisy gradients)"),
    "fmnist8_mlp_2x128_tanh_bs256": SuiteTask("image_mlp", dict(dataset=F8, hidden=(128, 128),
                                                                activation="tanh",
                                                                batch_size=256),
                                              1, "2×128 tanh MLP, batch 256"),
    "fmnist8_mlp_96x48_long": SuiteTask("image_mlp", dict(dataset=F8, hidden=(96, 48),
                                                          batch_size=64),
                                        LONG_HORIZON, f"{LONG_HORIZON}× the base horizon, "
                                        "tapered MLP 96→48"),
    "fmnist8_conv_k5_8x16": SuiteTask("image_conv", dict(dataset=F8, channels=(8, 16),
                                                         kernel=5, batch_size=32),
                                      1, "conv net, 5×5 kernels (the family's are 3×3)"),
    "fmnist8_ae_256x64x256": SuiteTask("image_autoencoder", dict(dataset=F8,
                                                                 hidden=(256, 64, 256),
                                                                 batch_size=64),
                                       1, "MLP autoencoder, MSE on pixels"),
    "devil_lm_2l_4h": SuiteTask("byte_lm", dict(context=8, embed=16, hidden=64, layers=2,
                                                heads=4, batch_size=16),
                                1, "byte-level transformer LM, 2 layers, 4 heads, MLP 4×"),
    "teacher_student_wide": SuiteTask("teacher_student", dict(in_dim=64, hidden=(128, 128),
                                                              out_dim=8, batch_size=128,
                                                              activation="silu", noise=0.1),
                                      1, "regression, 64→128→128→8 SiLU, label noise 0.1"),
    "teacher_student_deep": SuiteTask("teacher_student", dict(in_dim=16, hidden=(32,) * 6,
                                                              out_dim=4, batch_size=64,
                                                              activation="tanh", noise=0.1),
                                      1, "regression, 6 tanh layers of 32, label noise 0.1"),
    "quadratic_d256_k1e4": SuiteTask("quadratic", dict(dim=256, condition=1e4, noise=0.1),
                                     1, "noisy quadratic (no network), condition number 1e4"),
    # problems a general-purpose optimizer must handle: a zero start, a deep plain ReLU net
    "linreg_d32_zero": SuiteTask("linear_regression", dict(in_dim=32, out_dim=1, batch_size=64,
                                                           noise=0.1),
                                 1, "least squares 32→1 from all-zero weights and bias"),
    "fmnist8_logreg_zero": SuiteTask("logistic_regression", dict(dataset=F8, batch_size=128),
                                     1, "multinomial logistic regression from all-zero w, b"),
    "fmnist16_mlp_6x64_relu": SuiteTask("image_mlp", dict(dataset=F16, hidden=(64,) * 6,
                                                          activation="relu", batch_size=64),
                                        1, "deep plain ReLU MLP, 6×64, no normalization; "
                                        "biases start at zero (the dense init's)"),
}
VALIDATION: dict[str, SuiteTask] = {
    "fmnist8inv_mlp_2x48_silu": SuiteTask("image_mlp", dict(dataset=F8I, hidden=(48, 48),
                                                            activation="silu", batch_size=64),
                                          1, "2×48 SiLU MLP on inverted 8×8 images"),
    "fmnist8c5_mlp_w256_ln_bs32": SuiteTask("image_mlp", dict(dataset=F8C5, hidden=(256,),
                                                              layernorm=True, batch_size=32),
                                            1, "256-wide MLP with layer norm, 5 classes"),
    "fmnist8c5_logreg_zero": SuiteTask("logistic_regression", dict(dataset=F8C5, batch_size=32),
                                       1, "logistic regression from all-zero w, b, 5 classes"),
    "fmnist16_conv_12x24_bs48": SuiteTask("image_conv", dict(dataset=F16, channels=(12, 24),
                                                             kernel=3, batch_size=48),
                                          1, "conv net on 16×16 images (TEST's is on 8×8)"),
    "fmnist8inv_ae_96x24x96": SuiteTask("image_autoencoder", dict(dataset=F8I,
                                                                  hidden=(96, 24, 96),
                                                                  batch_size=64),
                                        1, "MLP autoencoder on inverted 8×8 images"),
    "teacher_student_tw128": SuiteTask("teacher_student", dict(in_dim=24, hidden=(96, 96),
                                                               out_dim=2, batch_size=96,
                                                               activation="gelu", noise=0.05,
                                                               teacher_width=128),
                                       1, "regression onto a 24→128→2 teacher, GELU student"),
    "quadratic_d64_k1e3": SuiteTask("quadratic", dict(dim=64, condition=1e3, noise=0.3, seed=1),
                                    1, "noisy quadratic, 64 dims, condition number 1e3"),
    "fmnist8inv_mlp_64x32_long": SuiteTask("image_mlp", dict(dataset=F8I, hidden=(64, 32),
                                                             batch_size=64),
                                           LONG_HORIZON, f"{LONG_HORIZON}× the base horizon, "
                                           "MLP 64→32 on inverted 8×8 images"),
    "devil_reversed_lm_ctx24": SuiteTask("byte_lm", dict(context=24, embed=24, hidden=96,
                                                         layers=1, heads=2, batch_size=24,
                                                         reverse=True),
                                         1, "byte LM on the text read backwards, 1 layer"),
}
HELD_OUT = {**VALIDATION, **TEST}  # names are unique across the two (test-checked)
# Problem families of the README's generalization table: by builder; a run longer than the base
# horizon is "long horizon" whatever it trains.
FAMILIES = {"image_mlp": "MLP classifier", "image_conv": "conv net", "byte_lm": "language model",
            "image_autoencoder": "autoencoder", "teacher_student": "regression",
            "linear_regression": "linear model, zero start",
            "logistic_regression": "linear model, zero start", "quadratic": "quadratic"}


def family(name: str) -> str:
    entry = HELD_OUT[name]
    return "long horizon" if entry.horizon > 1 else FAMILIES[entry.builder]


def family_scores(result: dict) -> dict[str, dict]:
    """{family: {"tasks": n, "median": median task score, "min", "max"}} of an evaluation's
    held-out tasks (others are left out)."""
    by: dict[str, list] = {}
    for name, e in result["tasks"].items():
        if name in HELD_OUT and e["score"] is not None:
            by.setdefault(family(name), []).append(e["score"])
    return {f: {"tasks": len(v), "median": float(np.median(v)), "min": float(min(v)),
                "max": float(max(v))} for f, v in by.items()}


# a representative handful that compiles fast (a learned optimizer's compile time grows with the
# number of tensors: the LM's ~30 tensors take minutes on 2 cores, so it is only in "all")
QUICK = ("fmnist8_mlp_2x128_tanh_bs256", "fmnist8_ae_256x64x256", "teacher_student_wide",
         "quadratic_d256_k1e4")  # classification, autoencoder, regression, ill-conditioning


ARCHITECTURES = {"image_mlp": "mlp", "teacher_student": "mlp", "image_conv": "conv",
                 "image_autoencoder": "autoencoder", "byte_lm": "transformer",
                 "quadratic": "quadratic", "linear_regression": "linear",
                 "logistic_regression": "linear"}   # builder → architecture kind


def task_signature(entry: SuiteTask) -> tuple[str, str]:
    """(dataset, architecture kind) of a suite task, from its builder and options. The dataset is
    an image dataset's name, "devil" or "devil_reversed" for text, and for a synthetic generator
    the structure that fixes its distribution (teacher in×width×out, linear map in×out, quadratic
    dimension and condition number), not its seed or noise level."""
    k = {name: p.default for name, p in
         inspect.signature(getattr(tasks_lib, entry.builder)).parameters.items()}
    k.update(entry.kwargs)
    if "dataset" in k:
        data = k["dataset"]
    elif entry.builder == "byte_lm":
        data = "devil_reversed" if k["reverse"] else "devil"
    elif entry.builder == "teacher_student":
        data = f"synthetic_teacher_{k['in_dim']}x{k['teacher_width']}x{k['out_dim']}"
    elif entry.builder == "linear_regression":
        data = f"synthetic_linear_{k['in_dim']}x{k['out_dim']}"
    elif entry.builder == "quadratic":
        data = f"synthetic_quadratic_d{k['dim']}_k{k['condition']:g}"
    else:
        raise EvaluateError(f"no signature for builder {entry.builder!r}")
    return data, ARCHITECTURES[entry.builder]


@functools.lru_cache(maxsize=None)
def suite_task(name: str) -> tuple[tasks_lib.Task, int]:
    """(Task, horizon factor) of a held-out task, or of a tasks.TASKS entry (factor 1). Built
    once per process, so repeated evaluations reuse the compiled training runs."""
    if name in HELD_OUT:
        return HELD_OUT[name].build()._replace(name=name), HELD_OUT[name].horizon
    if name in tasks_lib.TASKS:
        return tasks_lib.get_task(name), 1
    raise EvaluateError(f"unknown task {name!r}; valid: all, quick, validation, test, "
                        f"{', '.join(HELD_OUT)} (or a tasks.TASKS name: "
                        f"{', '.join(tasks_lib.TASKS)})")


def resolve_tasks(spec: str | Sequence[str]) -> list[str]:
    """'validation' | 'test' (= 'all') | 'quick' | 'a,b' (or a list; the suite names expand) →
    validated task names."""
    if isinstance(spec, str):
        spec = [s.strip() for s in spec.split(",") if s.strip()]
    suites = {"all": list(TEST), "test": list(TEST), "validation": list(VALIDATION),
              "quick": list(QUICK)}
    names: list[str] = []
    for n in spec:
        names += [e for e in suites.get(n, [n]) if e not in names]
    if not names:
        raise EvaluateError("no task given; valid: all, quick, validation, test, "
                            + ", ".join(HELD_OUT))
    for n in names:
        if n not in HELD_OUT and n not in tasks_lib.TASKS:
            suite_task(n)  # raises the one-line error listing valid names
    return names


# ----------------------------------------------------------------------------------------------
# Training runs: one jit-compiled lax.scan over steps, vmapped over seeds (and a grid of
# hyper-parameters); the task's data is an argument of the compiled function.
# ----------------------------------------------------------------------------------------------
def _schedule_of(state) -> jax.Array:
    """η of the latest update when the optimizer state exposes one (Celo's State.eta), else NaN."""
    eta = getattr(state, "eta", None)
    if eta is None or jnp.ndim(eta) != 0:
        return jnp.float32(jnp.nan)
    return jnp.asarray(eta, jnp.float32)


def _unroll(task: tasks_lib.Task, make_tx: Callable[[Any], Any], steps: int):
    """run(hp, data, key) -> (losses [steps], η [steps]): train task from init(key) with
    make_tx(hp); losses[i] is the minibatch loss before update i + 1 (the papers' training loss).
    Seed key → (init key, data key); batch i uses fold_in(data key, i), so every optimizer sees
    the same initial point and the same batches on the same seed."""
    def run(hp, data, key):
        k_init, k_data = jax.random.split(key)
        params = task.init(k_init)
        tx = make_tx(hp)
        state = tx.init(params)

        def body(carry, t):
            params, state = carry
            batch = task.sample_batch(data, jax.random.fold_in(k_data, t))
            loss, grads = jax.value_and_grad(task.loss)(params, batch)
            updates, state = tx.update(grads, state, params, value=loss)  # the contract
            return (optax.apply_updates(params, updates), state), (loss, _schedule_of(state))

        _, (losses, etas) = jax.lax.scan(body, (params, state), jnp.arange(steps))
        return losses, etas
    return run


_RUNNERS: dict = {}   # compiled runners, keyed by (what, task functions, steps)


def _runner(cache_key, task, make_tx, steps, grid: bool):
    fn = _RUNNERS.get(cache_key) if cache_key is not None else None
    if fn is None:
        run = jax.vmap(_unroll(task, make_tx, steps), (None, None, 0))    # seeds
        fn = jax.jit(jax.vmap(run, (0, None, None)) if grid else run)      # grid of hp
        if cache_key is not None:
            _RUNNERS[cache_key] = fn
    return fn


def seed_keys(seeds: Sequence[int]) -> jax.Array:
    return jnp.stack([jax.random.key(int(s)) for s in seeds])


def run_curves(task: tasks_lib.Task, make_tx: Callable[[Any], Any], hparams, steps: int,
               seeds: Sequence[int], grid: bool = False, cache_key=None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Training losses and η of make_tx(hparams) on `task`: [N, T] each, or [K, N, T] with
    grid=True (hparams then has a leading axis K: one compiled call for all K × N runs)."""
    fn = _runner(cache_key, task, make_tx, int(steps), grid)
    losses, etas = fn(hparams, task.data, seed_keys(seeds))
    return np.asarray(losses, np.float32), np.asarray(etas, np.float32)


# ----------------------------------------------------------------------------------------------
# Tuned baselines (optax), cached on disk by task fingerprint, steps, seed and code version
# ----------------------------------------------------------------------------------------------
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


BASELINE_LRS = {"adam": ADAM_LRS, "adamw": ADAM_LRS, "sgdm": SGDM_LRS, "muon": ADAM_LRS}


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
    text = "".join(inspect.getsource(f) for f in (_unroll, baseline_tx)) + repr(
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
        losses, _ = run_curves(task, lambda lr: baseline_tx(name, lr), jnp.asarray(lrs), steps,
                               missing, grid=True,
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


# ----------------------------------------------------------------------------------------------
# Learned optimizers (registry.py owns the registry, the checkpoints and the task preparation)
# ----------------------------------------------------------------------------------------------
def learned_names() -> list[str]:
    return sorted(getattr(registry, "OPTIMIZERS", {}))


def optimizer_names() -> list[str]:
    return list(BASELINE_LRS) + learned_names()


def check_optimizer(name: str) -> str:
    if name not in BASELINE_LRS and name not in learned_names():
        raise EvaluateError(f"unknown optimizer {name!r}; valid: {', '.join(optimizer_names())}")
    if name in learned_names() and not getattr(registry.OPTIMIZERS[name], "per_step", True):
        raise EvaluateError(f"{name} is a server update over workers' deltas, not a per-step "
                            "optimizer: evaluate it with python local_sgd_experiments.py")
    return name


def default_checkpoint(name: str) -> Path:
    """The shipped θ of a learned optimizer: train.shipped_checkpoint (checkpoints/{name}.npz;
    velo: velo_small.npz), else checkpoints/{name}_paper.npz (the published weights, e.g.
    celo_paper.npz)."""
    own = ROOT / registry.shipped_checkpoint(name)
    for candidate in (own, ROOT / "checkpoints" / f"{name}.npz",
                      ROOT / "checkpoints" / f"{name}_paper.npz"):
        if candidate.exists():
            return candidate
    return own


def load_theta(name: str, checkpoint: str | Path | None = None):
    """θ of learned optimizer `name` from `checkpoint` (default: the shipped one); a checkpoint
    written for another optimizer is an error naming both."""
    path = Path(checkpoint) if checkpoint is not None else default_checkpoint(name)
    try:
        saved, theta = load_checkpoint(str(path))
    except CheckpointError as e:
        raise EvaluateError(str(e)) from None
    if saved != name:
        raise EvaluateError(f"checkpoint {path} holds optimizer {saved!r}, not {name!r}: use "
                            f"--opt {saved} or a {name} checkpoint")
    return theta


# Learned optimizers that take a learning rate, as the default use builds them (cosine decay over
# the run): (θ, lr, num_steps) -> optax transformation. `--tune-lr` sweeps lr over ADAM_LRS.
LR_OPTIMIZERS = {
    "celo2": lambda theta, lr, steps: celo2.optimizer(theta, lr, steps, harness=True),
    "celo2_base": lambda theta, lr, steps: celo2.optimizer(theta, lr, steps, harness=False),
}


def check_tunable(opt: OptLike) -> str:
    if not isinstance(opt, str) or opt not in LR_OPTIMIZERS:
        raise EvaluateError(f"--tune-lr applies to learned optimizers that take a learning rate "
                            f"({', '.join(LR_OPTIMIZERS)}), not {_opt_name(opt)!r}"
                            + (" (baselines are always tuned)"
                               if isinstance(opt, str) and opt in BASELINE_LRS else ""))
    return opt


def learned_lr_curves(opt: str, task: tasks_lib.Task, steps: int, seeds: Sequence[int], theta,
                      lrs=ADAM_LRS) -> np.ndarray:
    """Losses [K, N, T] of LR_OPTIMIZERS[opt] with meta-parameters θ at each lr of `lrs`: all
    K × N runs in one compiled call (θ and lr are arguments: a new θ or grid does not recompile)."""
    build = LR_OPTIMIZERS[check_tunable(opt)]
    lrs = jnp.asarray(lrs, jnp.float32).reshape(-1)
    hp = {"theta": jax.tree.map(lambda x: jnp.broadcast_to(x, lrs.shape + jnp.shape(x)), theta),
          "lr": lrs}
    make = lambda h: optax.with_extra_args_support(build(h["theta"], h["lr"], steps))
    return run_curves(task, make, hp, steps, seeds, grid=True,
                      cache_key=("learned_lr", opt, task.init, task.loss, task.sample_batch,
                                 int(steps)))[0]


def tune_learned_lr(opt: str, task: tasks_lib.Task, steps: int, seeds: Sequence[int], theta,
                    lrs=ADAM_LRS) -> Tuned:
    """Learned optimizer `opt` (LR_OPTIMIZERS) tuned over `lrs` on `task` as tune_baseline tunes
    Adam: the lr with the lowest mean final loss over the seeds it is then scored on."""
    return pick_best(opt, task, np.asarray(lrs, np.float32),
                     learned_lr_curves(opt, task, steps, seeds, theta, lrs))


def prepare(opt: str, task: tasks_lib.Task) -> tasks_lib.Task:
    """The task as learned optimizer `opt` expects it (μ-variants re-parametrize it); baselines
    are then run on the same prepared task, so the comparison is fair."""
    return registry.prepare_task(opt, task) if opt in learned_names() else task


# ----------------------------------------------------------------------------------------------
# Scoring one task, evaluating many, and the Python API
# ----------------------------------------------------------------------------------------------
def score_task(opt_losses, adam: Tuned) -> dict:
    """Per-seed final loss, score and speedup of [N, T] training losses against tuned Adam.

    L_adam = mean over Adam's seeds of its final loss at the tuned lr (one reference per task);
    seed n scores s_n = L_adam / L_opt,n and speedup T / T_opt,n (T_opt: first step whose
    smoothed loss <= L_adam). Task-level values are means over seeds.
    """
    smoothed = metrics.ema(opt_losses)
    finals = metrics.final_loss(smoothed)
    l_adam = float(metrics.final_training_loss(adam.best_losses).mean())
    scores = metrics.normalized_score(l_adam, finals)
    speedups = metrics.speedup(smoothed, np.full(finals.shape, l_adam))
    return {"final_loss": {"opt": _num(finals.mean()), "adam": _num(l_adam)},
            "score": _num(scores.mean()), "speedup": _num(speedups.mean()),
            "steps": int(smoothed.shape[-1]), "adam_lr": float(adam.lrs[adam.best]),
            "seeds": {"final_loss": [_num(x) for x in finals], "score": [_num(x) for x in scores],
                      "speedup": [_num(x) for x in speedups]}}


def _num(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None   # JSON has no inf/NaN: a diverged run reads null


class Evaluation(NamedTuple):
    result: dict           # the JSON: {"opt", "tasks": {...}, "aggregate": {...}, ...}
    curves: dict           # task → {"opt": [N, T], "adam": [N, T], "eta": [N, T] | None}


OptLike = Any  # a name (baseline or learned), an optax transformation, or (task, steps) -> tx


def _opt_name(opt: OptLike) -> str:
    return opt if isinstance(opt, str) else getattr(opt, "__name__", "custom")


def opt_curves(opt: OptLike, task: tasks_lib.Task, steps: int, seeds: Sequence[int],
               theta=None, cache_dir=CACHE_DIR, adam: Tuned | None = None, tune_lr: bool = False
               ) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Training losses [N, T], η [N, T] (None without a schedule) and extra fields of `opt`
    (`adam`: this task's tuned Adam, reused when opt is "adam"; tune_lr: `opt`'s lr tuned over
    ADAM_LRS, recorded as "opt_lr")."""
    if tune_lr:
        tuned = tune_learned_lr(opt, task, steps, seeds, theta)
        return tuned.best_losses, None, {"opt_lr": float(tuned.lrs[tuned.best]),
                                         "opt_lr_at_edge": tuned.at_edge}
    if isinstance(opt, str) and opt in BASELINE_LRS:
        tuned = adam if opt == "adam" and adam is not None else tune_baseline(
            task, opt, steps, seeds, cache_dir)
        return tuned.best_losses, None, {"opt_lr": float(tuned.lrs[tuned.best])}
    if isinstance(opt, str):
        losses, etas = run_curves(task, lambda th: registry.make_optax(opt, th, task, steps), theta,
                                  steps, seeds, cache_key=("learned", opt, task.init, task.loss,
                                                           task.sample_batch, int(steps)))
    else:
        tx = opt if hasattr(opt, "update") else opt(task, steps)
        if not isinstance(tx, optax.GradientTransformationExtraArgs):
            tx = optax.with_extra_args_support(tx)
        losses, etas = run_curves(task, lambda _: tx, None, steps, seeds)
    return losses, (None if np.isnan(etas).all() else etas), {}


def evaluate(opt: OptLike, tasks: str | Sequence[str | tasks_lib.Task] = TASKS,
             steps: int = STEPS, seeds: int | Sequence[int] = SEEDS, theta=None,
             checkpoint=None, cache_dir: Path | str | None = CACHE_DIR,
             baselines: Sequence[str] = (), reps: int = metrics.BOOTSTRAP_REPS,
             log: Callable[[str], None] | None = None, adam_lrs=None,
             tune_lr: bool = False) -> Evaluation:
    """Evaluate `opt` on tasks against tuned Adam: per-task scores and aggregates with CIs.

    opt: "adam" | "adamw" | "sgdm" (tuned), a train.OPTIMIZERS name (θ from `theta`, else
    `checkpoint`, else the shipped checkpoint), an optax transformation, or a function
    (task, num_steps) -> optax transformation. tasks: "validation" | "test" | "quick" | names |
    tasks.Task objects (trained `steps` steps). seeds: a count (0 … N−1) or explicit seeds.
    baselines: also score these tuned baselines (result["baselines"], for the aggregate plot).
    adam_lrs: Adam's learning-rate grid (default ADAM_LRS); a single value, e.g. (1e-3,), scores
    against *untuned* Adam at that learning rate.
    tune_lr: tune the learning rate of `opt` (a LR_OPTIMIZERS name) per task over ADAM_LRS, by
    Adam's rule (lowest mean final loss over the seeds); each task's choice is its "opt_lr".
    """
    name = _opt_name(opt)
    if tune_lr:
        check_tunable(opt)
    if isinstance(opt, str):
        check_optimizer(opt)
        learned = opt not in BASELINE_LRS
        if learned and theta is None:
            theta = load_theta(opt, checkpoint)
        elif not learned and checkpoint is not None:
            raise EvaluateError(f"{opt} is a tuned baseline and takes no checkpoint")
    for b in baselines:
        if b not in BASELINE_LRS:
            raise EvaluateError(f"unknown baseline {b!r}; valid: {', '.join(BASELINE_LRS)}")
    seeds = list(range(seeds)) if isinstance(seeds, (int, np.integer)) else list(seeds)
    if not seeds or int(steps) < 1:
        raise EvaluateError(f"need at least one seed and one step, got seeds={seeds} "
                            f"steps={steps}")
    items: list = []
    for t in ([tasks] if isinstance(tasks, str) else tasks):
        items += resolve_tasks(t) if isinstance(t, str) else [t]
    per_task, curves, skipped = {}, {}, {}
    others: dict[str, dict] = {b: {} for b in baselines if b != name}
    for i, item in enumerate(items):
        start = time.time()
        task, horizon = suite_task(item) if isinstance(item, str) else (item, 1)
        if isinstance(opt, str):
            try:
                task = prepare(opt, task)
            except tasks_lib.TaskError as e:  # e.g. μP applies to MLPs only: skip, say why
                skipped[task.name] = str(e)
                if log:
                    log(f"[{i + 1}/{len(items)}] {task.name}: skipped ({e})")
                continue
        t = int(steps) * horizon
        adam = tune_baseline(task, "adam", t, seeds, cache_dir, lrs=adam_lrs)
        losses, etas, extra = opt_curves(opt, task, t, seeds, theta, cache_dir, adam, tune_lr)
        entry = score_task(losses, adam)
        entry.update(extra)
        per_task[task.name] = entry
        curves[task.name] = {"opt": losses, "adam": adam.best_losses, "eta": etas}
        for b in others:
            others[b][task.name] = score_task(
                opt_curves(b, task, t, seeds, None, cache_dir, adam)[0], adam)
        if log:
            edge = " (Adam's best lr is at the grid edge)" if adam.at_edge else ""
            if extra.get("opt_lr_at_edge"):
                edge += f" ({name}'s best lr is at the grid edge)"
            lr = f", lr {extra['opt_lr']:.3g}" if tune_lr else ""
            log(f"[{i + 1}/{len(items)}] {task.name}: T={t}{lr}, score {entry['score']:.3f}, "
                f"speedup {entry['speedup']:.3f}, {time.time() - start:.1f}s{edge}")
    if not per_task:
        raise EvaluateError(f"{name} applies to none of the tasks: " + "; ".join(
            f"{t}: {why}" for t, why in skipped.items()))
    result = {"opt": name, "steps": int(steps), "num_seeds": len(seeds), "tasks": per_task,
              "aggregate": aggregate_tasks(per_task, reps)}
    if adam_lrs is not None:
        result["adam_lrs"] = [float(x) for x in np.atleast_1d(adam_lrs)]
    if tune_lr:
        result["tune_lr"] = [float(np.float32(x)) for x in ADAM_LRS]   # the grid searched
    if skipped:
        result["skipped"] = skipped
    if others:
        result["baselines"] = {b: aggregate_tasks(r, reps) for b, r in others.items()}
    return Evaluation(result, curves)


def aggregate_tasks(per_task: dict, reps: int = metrics.BOOTSTRAP_REPS) -> dict:
    """{"score": aggregate(S), "speedup": aggregate(S)} from per-task per-seed values."""
    out = {}
    for key in ("score", "speedup"):
        s = np.asarray([[np.nan if v is None else v for v in e["seeds"][key]]
                        for e in per_task.values()], np.float64)
        out[key] = metrics.aggregate(s, reps)
    return out


def evaluate_task(task: tasks_lib.Task, opt: OptLike, steps: int = STEPS,
                  seeds: int | Sequence[int] = SEEDS, theta=None, checkpoint=None,
                  cache_dir: Path | str | None = CACHE_DIR) -> dict:
    """One task's entry (final losses, score, speedup, per-seed values) for any Task object."""
    ev = evaluate(opt, [task], steps, seeds, theta, checkpoint, cache_dir)
    return next(iter(ev.result["tasks"].values()))


def compare(opt_name: str, theta, task_names: str | Sequence[str] = "quick",
            steps: int = STEPS, seeds: int = SEEDS) -> dict:
    """Held-out comparison of learned optimizer `opt_name` with meta-parameters θ against tuned
    Adam (train.py prints it after meta-training): {"opt", "tasks", "aggregate", ...}."""
    return evaluate(opt_name, task_names, steps, seeds, theta=theta,
                    cache_dir=CACHE_DIR).result


# ----------------------------------------------------------------------------------------------
# Reporting: table and plots
# ----------------------------------------------------------------------------------------------
def format_table(result: dict) -> str:
    """The per-task table and the aggregates (with 95% CIs) as text."""
    fmt = lambda x, spec=".4g": "nan" if x is None else format(x, spec)
    width = max([len("task")] + [len(n) for n in (*result["tasks"], *result.get("skipped", {}))])
    fixed = result.get("adam_lrs")
    adam = (f"Adam at lr {', '.join(f'{x:g}' for x in fixed)} (untuned)" if fixed and len(fixed) == 1
            else "tuned Adam")
    tuned = " with its lr tuned per task" if result.get("tune_lr") else ""
    opt_lr = any("opt_lr" in e for e in result["tasks"].values())   # tuned: show its lr
    lines = [f"{result['opt']}{tuned} against {adam} ({result.get('num_seeds', '?')} seeds; "
             "score = L_adam / L_opt, speedup = T / T_opt)",
             f"{'task':<{width}}  {'T':>5}  {'adam lr':>8}  " + ("  opt lr  " if opt_lr else "")
             + f"{'L_adam':>9}  {'L_opt':>9}  {'score':>6}  {'speedup':>7}"]
    for name, e in result["tasks"].items():
        lr = f"{e['opt_lr']:>8.2g}  " if "opt_lr" in e else " " * 10 if opt_lr else ""
        lines.append(f"{name:<{width}}  {e['steps']:>5}  {e['adam_lr']:>8.2g}  {lr}"
                     f"{fmt(e['final_loss']['adam']):>9}  {fmt(e['final_loss']['opt']):>9}  "
                     f"{fmt(e['score'], '.3f'):>6}  {fmt(e['speedup'], '.3f'):>7}")
    for name, why in result.get("skipped", {}).items():
        lines.append(f"{name:<{width}}  skipped: {why}")
    fams = family_scores(result)
    if len(fams) > 1:
        lines += ["", f"{'family':<26}  tasks  median score  (min – max)"]
        lines += [f"{f:<26}  {v['tasks']:>5}  {v['median']:>12.3f}  ({v['min']:.2f} – {v['max']:.2f})"
                  for f, v in sorted(fams.items())]
    rows = [(result["opt"], result["aggregate"])] + list(result.get("baselines", {}).items())
    first = max(10, *(len(opt) + 1 for opt, _ in rows))
    for key in ("score", "speedup"):
        lines.append("")
        lines.append(f"{key:<{first}}" + "".join(f"{m:>24}" for m in metrics.METRICS))
        for opt, agg in rows:
            a = agg[key]
            cells = "".join(f"{a[m]:>8.3f} [{a['ci95'][m][0]:.2f}, {a['ci95'][m][1]:.2f}]"
                            .rjust(24) for m in metrics.METRICS)
            lines.append(f"{opt:<{first}}" + cells)
    return "\n".join(lines)


def write_plots(ev: Evaluation, out_dir: str | Path) -> list[Path]:
    """Loss curves against tuned Adam, aggregate scores with CIs, and the learned η_t."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    name = ev.result["opt"]

    # 1. per-task smoothed loss curves (mean over seeds, band = min–max over seeds), log scale
    n = len(ev.curves)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, (task, c) in zip(axes.flat, ev.curves.items()):
        for label, key, color in ((name, "opt", "C0"), ("tuned adam", "adam", "C1")):
            sm = metrics.ema(c[key])
            x = np.arange(1, sm.shape[-1] + 1)
            ax.plot(x, sm.mean(0), color=color, label=label)
            ax.fill_between(x, sm.min(0), sm.max(0), color=color, alpha=0.2, lw=0)
        target = ev.result["tasks"][task]["final_loss"]["adam"]
        if target is not None:
            ax.axhline(target, color="C1", ls=":", lw=0.8)
        ax.set_yscale("log")
        ax.set_title(task, fontsize=8)
        ax.set_xlabel("step", fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"training loss (EMA {metrics.EMA_DECAY}) of {name} vs tuned Adam")
    fig.tight_layout()
    written.append(out_dir / "curves.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)

    # 2. aggregates with 95% stratified-bootstrap CIs, one row per optimizer
    rows_ = [(name, ev.result["aggregate"])] + list(ev.result.get("baselines", {}).items())
    cols = len(metrics.METRICS)
    fig, axes = plt.subplots(2, cols, figsize=(3.2 * cols, 1.2 + 0.5 * len(rows_) * 2),
                             squeeze=False)
    for r, key in enumerate(("score", "speedup")):
        for c, metric in enumerate(metrics.METRICS):
            ax = axes[r, c]
            for y, (opt, agg) in enumerate(rows_):
                v, (lo, hi) = agg[key][metric], agg[key]["ci95"][metric]
                ax.errorbar([v], [y], xerr=[[v - lo], [hi - v]], fmt="o", color=f"C{y}",
                            capsize=3)
            ax.axvline(0.0 if metric == "optimality_gap" else 1.0, color="grey", ls=":", lw=0.8)
            ax.set_yticks(range(len(rows_)))
            ax.set_yticklabels([o for o, _ in rows_] if c == 0 else [], fontsize=8)
            ax.set_ylim(-0.5, len(rows_) - 0.5)
            ax.set_title(f"{key}: {metric}", fontsize=9)
            ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    written.append(out_dir / "aggregate.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)

    # 3. the learned schedule η_t (optimizers whose state exposes η, e.g. Celo)
    etas = {t: c["eta"] for t, c in ev.curves.items() if c["eta"] is not None}
    if etas:
        fig, ax = plt.subplots(figsize=(6, 4))
        for task, e in etas.items():
            ax.plot(np.arange(1, e.shape[-1] + 1) / e.shape[-1], np.nanmean(e, 0), label=task,
                    lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("fraction of training (t / T)")
        ax.set_ylabel("η_t (mean over seeds)")
        ax.set_title(f"learned schedule of {name}")
        ax.legend(fontsize=6)
        fig.tight_layout()
        written.append(out_dir / "schedule.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    return written


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--opt", default=OPT,
                   help="adam | adamw | sgdm | muon | a train.OPTIMIZERS name")
    p.add_argument("--checkpoint", default=CHECKPOINT, help="θ of a learned optimizer")
    p.add_argument("--tasks", default=TASKS,
                   help="validation | test (= all) | quick | name,name,...")
    p.add_argument("--seeds", type=int, default=SEEDS)
    p.add_argument("--steps", type=int, default=STEPS, help="base horizon T")
    p.add_argument("--json", default=JSON_PATH)
    p.add_argument("--plots", default=PLOTS_DIR)
    p.add_argument("--cache", default=str(CACHE_DIR), help="baseline cache dir, or 'none'")
    p.add_argument("--adam-lrs", default="", help="Adam's lr grid, e.g. 1e-3 for untuned Adam "
                   "at its default (default: the 7-point log grid 1e-4 … 1e-1)")
    p.add_argument("--tune-lr", action="store_true", help="tune the learned optimizer's lr per "
                   f"task over Adam's grid ({', '.join(LR_OPTIMIZERS)} only)")
    args = p.parse_args(argv)
    if COMPILE_CACHE_DIR:  # warm runs skip XLA compilation (this process only)
        jax.config.update("jax_compilation_cache_dir", str(COMPILE_CACHE_DIR))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    start = time.time()
    try:
        check_optimizer(args.opt)
        if args.tune_lr:
            check_tunable(args.opt)
        names = resolve_tasks(args.tasks)
        if args.seeds < 1 or args.steps < 1:
            raise EvaluateError(f"--seeds and --steps must be >= 1, got {args.seeds} and "
                                f"{args.steps}")
        try:
            adam_lrs = [float(x) for x in args.adam_lrs.split(",") if x.strip()] or None
        except ValueError:
            raise EvaluateError(f"--adam-lrs takes comma-separated numbers, got "
                                f"{args.adam_lrs!r}") from None
        ev = evaluate(args.opt, names, args.steps, args.seeds, checkpoint=args.checkpoint,
                      cache_dir=None if args.cache.lower() == "none" else args.cache,
                      baselines=PLOT_BASELINES if args.plots else (), log=log,
                      adam_lrs=adam_lrs, tune_lr=args.tune_lr)
    except (EvaluateError, tasks_lib.TaskError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(ev.result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(ev.result, indent=1))
    if args.plots:
        for path in write_plots(ev, args.plots):
            log(f"wrote {path}")
    log(f"done in {time.time() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
