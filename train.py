"""train.py: meta-train a learned optimizer with PES, from one laptop CPU to many accelerators.

    python train.py --opt NAME [--meta-steps N] [--out PATH] [--resume] [--seed S] [--SETTING V]

Celo (celo.txt) §2 Eq. (3) and App. A.3, μLO (mulo.txt) §5: sample tasks, augment them (Celo §3),
estimate ∇θ of the mean inner training loss with PES (pes.py), and update θ with AdamW.
Every setting below can be overridden from the command line (`--meta-lr 1e-3`); each learned
optimizer in OPTIMIZERS may change some defaults (its paper's recipe) — the command line wins.
The pair axis of PES is sharded over all devices (1 CPU, N simulated CPUs, N GPUs; several hosts
after jax.distributed.initialize(), which runs when JAX_COORDINATOR_ADDRESS is set).
Library use: `name, theta = train.load_checkpoint(path)` then e.g. `celo.optimizer(theta, n)`.
"""
import argparse
import csv
import json
import math
import os
import signal
import sys
import tempfile
import time
from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import local_sgd
import celo
import mup
import pes
import small_fc_lopt
import tasks
import velo

# ----------------------------------------------------------------------------- settings
opt = "small_fc_lopt"      # learned optimizer to meta-train (a key of OPTIMIZERS below)
meta_steps = 1000          # total outer steps (with --resume: the total to reach)
out = ""                   # checkpoint path (default checkpoints/{opt}.npz); CSV + PNG beside it
resume = False             # continue the run saved at --out
seed = 0                   # seeds θ's init, the tasks, the perturbations
estimator = "pes"          # "pes": truncated persistent ES; "es": antithetic ES over whole runs
task_set = "celo"          # "celo": Celo's 8×8 MLP (App. A.4) on every available dataset;
                           # "family": num_family_tasks structures from tasks.sample_task_family;
                           # or comma-separated names of tasks.TASKS (e.g. "teacher_student")
num_family_tasks = 4       # task structures drawn for task_set="family" (each compiled once)
pairs_per_task = 8         # antithetic pairs per task (dataset) per meta-step (μLO §5: 8)
truncation = 50            # inner steps per PES truncation (Celo App. A.3)
sigma = 0.01               # PES perturbation std (Celo App. A.3)
min_horizon = 100          # inner runs last log-uniform[min, max] steps; the paper uses
max_horizon = 500          #   100–2000 (`--max-horizon 2000`), scaled down here for a CPU
es_horizon = 200           # run length of estimator="es"
augment = "global"         # task augmentation (Celo §3): none | global | tensor | parameter
meta_lr = 3e-3             # AdamW peak learning rate (μLO recipe)
final_lr = 1e-3            # cosine decay down to this (μLO: 3e-3 → 1e-3)
warmup_steps = 100         # linear warm-up steps (μLO recipe)
decay_steps = 5000         # cosine meta_lr → final_lr over this many steps of a stage, then flat
                           #   (μLO: 5000); independent of meta_steps, so a run can be extended
stage1_steps = 500         # two-stage optimizers (Celo §3): meta-steps of stage 1, the rest stage 2
weight_decay = 1e-4        # AdamW weight decay (μLO, Celo App. A.3)
grad_clip = 1.0            # global-norm clip of the PES gradient before AdamW
save_every_s = 120.0       # checkpoint every so many seconds, and on Ctrl-C / SIGTERM
eval_tasks = "quick"       # held-out comparison printed at the end (evaluate.py task names)
eval_steps = 500           # inner steps per held-out task in that comparison (0: skip it)
eval_seeds = 2             # seeds per held-out task in that comparison
SETTINGS = {k: v for k, v in dict(globals()).items()
            if not k.startswith("_") and isinstance(v, (int, float, str, bool))}
NON_RECIPE = ("opt", "meta_steps", "out", "resume", "save_every_s", "eval_tasks", "eval_steps",
              "eval_seeds")  # may change on --resume; everything else is the run's recipe


# ----------------------------------------------------------------------------- registry

class Stage(NamedTuple):
    """One meta-training stage: which top-level θ entries it trains (None: all), the setting that
    holds its number of meta-steps (the last stage runs to meta_steps), and keyword options for
    the optimizer's builder (e.g. Celo's η ≡ 1 in stage 1)."""
    name: str = "all"
    trainable: Any = None
    steps_setting: str = ""
    build_kwargs: Any = ()


class Recipe(NamedTuple):
    """A registered learned optimizer: how to build it for a task, and how to meta-train it."""
    build: Callable            # (task, **stage.build_kwargs) -> small_fc_lopt.LearnedOptimizer
    settings: Any = ()         # overrides of the settings block: ((name, value), ...)
    stages: Any = (Stage(),)
    task_transform: Callable = lambda task: task   # e.g. μP re-parametrization (mup.py)
    problem: Callable = None   # (task, lopt, cfg) -> pes.Problem; None: make_problem below
    per_step: bool = True      # False: not an optax per-step optimizer (e.g. local-SGD server
                               # updates), so evaluate.py's per-step suite does not apply


# Celo App. A.3: outer AdamW at a constant 3e-4 (weight decay 1e-4), unrolls of 100–2000 steps.
CELO_OUTER = (("meta_lr", 3e-4), ("final_lr", 3e-4), ("warmup_steps", 0), ("max_horizon", 2000))
# The CPU budget of `python train.py --opt celo` (the paper: 100K meta-steps per stage): 5000
# meta-steps of stage 1 and 2000 of stage 2, ≈ 26 min on 2 cores (README), the shipped checkpoint.
CELO_SETTINGS = CELO_OUTER + (("meta_steps", 7000), ("stage1_steps", 5000))

# Celo §3 "decoupled training": stage 1 learns the rule with η ≡ 1, stage 2 the scheduler.
CELO_STAGES = (Stage("rule", ("rule",), "stage1_steps", (("use_scheduler", False),)),
               Stage("scheduler", ("scheduler",), "", (("use_scheduler", True),)))

OPTIMIZERS = {
    # μLO's outer recipe (AdamW, warm-up to 3e-3, cosine to 1e-3) is the settings default.
    "small_fc_lopt": Recipe(lambda task: small_fc_lopt.learned_optimizer()),
    # Celo (celo.txt §3, App. A.3): stage 1 learns the update rule with η ≡ 1, stage 2 the
    # scheduler with the rule frozen; outer AdamW at a constant 3e-4 with weight decay 1e-4.
    "celo": Recipe(lambda task, **kw: celo.learned_optimizer(**kw),
                   settings=CELO_SETTINGS, stages=CELO_STAGES),
    # Ablations of Celo Table 3: (c) single-stage (joint) training, (b) no scheduler (η ≡ 1).
    "celo_joint": Recipe(lambda task, **kw: celo.learned_optimizer(**kw), settings=CELO_SETTINGS),
    "celo_no_scheduler": Recipe(lambda task, **kw: celo.learned_optimizer(use_scheduler=False),
                                settings=CELO_SETTINGS),
    # VeLO (velo_summary.txt) at the small size (LSTM 64, bank 32: Celo's VeLO-S); the paper
    # meta-trained with full-run ES: `--estimator es`. Same outer recipe as Celo (App. A.3).
    "velo": Recipe(lambda task, **kw: velo.learned_optimizer("small"),
                   settings=CELO_OUTER + (("meta_steps", 1500),
                                          ("out", os.path.join("checkpoints", "velo_small.npz")))),
    # The papers' random meta-initialization (ours starts from a relative-step Adam: celo.py
    # RULE_INIT, velo.py META_INIT), for the ablation in the README.
    "celo_random_init": Recipe(lambda task, **kw: celo.learned_optimizer(rule_init="random", **kw),
                               settings=CELO_SETTINGS, stages=CELO_STAGES),
    "velo_random_init": Recipe(lambda task, **kw: velo.learned_optimizer("small",
                                                                         meta_init="random"),
                               settings=CELO_OUTER + (("meta_steps", 1500),)),
    # --- more registry entries below (one per learned optimizer) ---
    # μLO (mulo.txt §4, App. C): small_fc_lopt in μP on μP optimizees (mup.py), meta-trained on
    # several widths at once; its SP twin (LO_M) with the same recipe; μVeLO_M.
    "mu_small_fc_lopt": Recipe(lambda task: mup.build_small_fc_lopt(task, mup.MU),
                               settings=mup.TRAIN_SETTINGS, task_transform=mup.mu_task),
    "sp_small_fc_lopt": Recipe(lambda task: mup.build_small_fc_lopt(task, mup.SP),
                               settings=mup.TRAIN_SETTINGS, task_transform=mup.sp_task),
    "mu_velo": Recipe(mup.build_velo, settings=mup.VELO_TRAIN_SETTINGS,
                      task_transform=mup.mu_task),
    # Local SGD with a learned global update (Joseph et al. 2023): one PES step = one round.
    "local_sgd_lopt": Recipe(lambda task: local_sgd.lopt(), settings=local_sgd.TRAIN_SETTINGS,
                             problem=local_sgd.train_problem, per_step=False),
    "local_sgd_lagg": Recipe(lambda task: local_sgd.lagg(), settings=local_sgd.TRAIN_SETTINGS,
                             problem=local_sgd.train_problem, per_step=False),
}


class ConfigError(ValueError):
    """A bad setting or name on the command line (printed as one line, exit code 2)."""


def recipe(name):
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; valid: {', '.join(sorted(OPTIMIZERS))}")
    return OPTIMIZERS[name]


def prepare_task(name, task):
    """The task as optimizer `name` expects it (μ-variants re-parametrize it)."""
    return recipe(name).task_transform(task)


def make_optax(name, theta, task, num_steps):
    """The learned optimizer `name` with meta-parameters θ, for one task, as an optax transform
    (built as in the last meta-training stage, e.g. Celo with its scheduler)."""
    r = recipe(name)
    return r.build(task, **dict(r.stages[-1].build_kwargs)).optimizer(theta, num_steps)


def default_out(name):
    """Where `--opt name` writes its checkpoint by default: its recipe's "out" setting (velo:
    checkpoints/velo_small.npz), else checkpoints/{name}.npz."""
    settings = dict(getattr(OPTIMIZERS.get(name), "settings", ()))
    return settings.get("out") or os.path.join("checkpoints", f"{name}.npz")


def resolve(overrides=None):
    """The settings of a run: the defaults above, the optimizer's recipe, then `overrides`."""
    overrides = dict(overrides or {})
    cfg = dict(SETTINGS)
    cfg.update(dict(recipe(overrides.get("opt", cfg["opt"])).settings))
    cfg.update(overrides)
    if not cfg["out"]:
        cfg["out"] = default_out(cfg["opt"])
    check(cfg)
    return cfg


def check(cfg):
    """Reject settings that cannot work, with a line that says what to do."""
    choices = {"estimator": ("pes", "es"), "augment": ("none",) + tasks.AUGMENT_MODES}
    for k, valid in choices.items():
        if cfg[k] not in valid:
            raise ConfigError(f"--{k.replace('_', '-')} {cfg[k]!r} is not one of {', '.join(valid)}")
    for k in ("meta_steps", "decay_steps", "pairs_per_task", "truncation", "min_horizon", "max_horizon",
              "es_horizon", "num_family_tasks"):
        if cfg[k] < 1:
            raise ConfigError(f"--{k.replace('_', '-')} must be ≥ 1 (got {cfg[k]})")
    if not cfg["min_horizon"] >= cfg["truncation"]:
        raise ConfigError(f"--min-horizon {cfg['min_horizon']} must be ≥ --truncation "
                          f"{cfg['truncation']} (a run may restart at most once per truncation)")
    if cfg["task_set"] not in ("celo", "family"):
        for n in cfg["task_set"].split(","):
            if n not in tasks.TASKS:
                raise ConfigError(f"--task-set: unknown task {n!r}; valid: celo, family, "
                                  f"{', '.join(sorted(tasks.TASKS))}")
    if cfg["max_horizon"] < cfg["min_horizon"]:
        raise ConfigError("--max-horizon must be ≥ --min-horizon")
    if not (cfg["sigma"] > 0 and cfg["meta_lr"] > 0):
        raise ConfigError("--sigma and --meta-lr must be > 0")


# ----------------------------------------------------------------------------- the inner problem

class Inner(NamedTuple):
    """One inner training run: the optimizee's (augmented) params, the optimizer's state, τ."""
    params: Any
    opt_state: Any
    tau: Any


def make_problem(task, lopt, augment_mode):
    """PES's view of a task trained by a learned optimizer (Celo Eqs. (7)–(10) if augmenting).
    `shared` = the frozen part of θ; `group` = one dataset of the task's stacked data."""

    def init_inner(theta, shared, group, key, num_steps):
        k_init, k_tau = jax.random.split(key)
        params = task.init(k_init)
        tau = None
        if augment_mode != "none":
            tau = tasks.sample_tau(k_tau, params, augment_mode)     # Celo §3, τ ~ logU[1e-3, 1e3]
            params = tasks.augment_init(params, tau)                # Celo Eq. (8): start at θ0/τ
        return Inner(params, lopt.init({**shared, **theta}, params, num_steps), tau)

    def step_inner(theta, shared, group, inner, key):
        loss_fn = task.loss if inner.tau is None else tasks.augment_loss(task.loss, inner.tau)
        batch = task.sample_batch(group, key)
        loss, grads = jax.value_and_grad(loss_fn)(inner.params, batch)  # Celo Eq. (10)
        updates, opt_state = lopt.step({**shared, **theta}, inner.opt_state, inner.params, grads,
                                       loss)
        return Inner(optax.apply_updates(inner.params, updates), opt_state, inner.tau), loss

    return pes.Problem(init_inner, step_inner, task.loss_cap)


def meta_tasks(cfg, name):
    """Task groups for meta-training: lists of same-structure tasks whose data stack."""
    prepare = partial(prepare_task, name)
    if cfg["task_set"] == "celo":
        # Celo App. A.4 uses MNIST, Fashion-MNIST, CIFAR-10 and SVHN at 8×8; offline we have
        # Fashion-MNIST (and MNIST / CIFAR-10 once in the cache), plus its inverted-intensity
        # twin for a second, differently conditioned dataset of the same structure.
        names = [d for d in tasks.CELO_DATASETS if tasks.dataset_available(d)]
        names.append("fashion_mnist_8x8_inverted")
        return [[prepare(t) for t in tasks.celo_meta_training_tasks(names)]]
    if cfg["task_set"] == "family":
        return [[prepare(t)] for t in tasks.sample_task_family(cfg["seed"], cfg["num_family_tasks"])]
    return [[prepare(tasks.get_task(n))] for n in cfg["task_set"].split(",")]


# ----------------------------------------------------------------------------- meta-training

class Run(NamedTuple):
    """Everything that changes during meta-training; one jitted call maps Run → Run."""
    theta: Any       # the trainable part of θ
    opt_state: Any   # AdamW state
    pes: Any         # tuple of pes.State, one per task group


def meta_optimizer(cfg):
    """AdamW with linear warm-up then cosine decay (μLO App. C), after a global-norm clip of ĝ."""
    if cfg["final_lr"] == cfg["meta_lr"] and cfg["warmup_steps"] == 0:
        schedule = optax.constant_schedule(cfg["meta_lr"])
    else:
        schedule = optax.warmup_cosine_decay_schedule(
            0.0, cfg["meta_lr"], cfg["warmup_steps"],
            max(cfg["decay_steps"], cfg["warmup_steps"] + 1), cfg["final_lr"])
    return optax.chain(optax.clip_by_global_norm(cfg["grad_clip"]),
                       optax.adamw(schedule, b1=0.9, b2=0.999, weight_decay=cfg["weight_decay"]))


def split_theta(theta, trainable):
    if trainable is None:
        return theta, {}
    missing = [k for k in trainable if k not in theta]
    if missing:
        raise KeyError(f"stage trains {missing}, which θ does not have (θ has {sorted(theta)})")
    return ({k: v for k, v in theta.items() if k in trainable},
            {k: v for k, v in theta.items() if k not in trainable})


class Trainer:
    """Builds the compiled meta-step of one stage: all task groups' PES estimates, their mean,
    clipping and AdamW, in one jitted function (compiled once; tests check it)."""

    def __init__(self, cfg, stage, theta, key, mesh):
        self.cfg, self.stage, self.mesh = cfg, stage, mesh
        r = recipe(cfg["opt"])
        self.groups = meta_tasks(cfg, cfg["opt"])
        self.trainable, self.frozen = split_theta(theta, stage.trainable)
        self.pes_cfgs, self.problems, self.datas = [], [], []
        for group in self.groups:
            lopt = r.build(group[0], **dict(stage.build_kwargs))
            self.problems.append(make_problem(group[0], lopt, cfg["augment"]) if r.problem is None
                                 else r.problem(group[0], lopt, cfg))
            self.pes_cfgs.append(pes.Config(cfg["pairs_per_task"] * len(group), cfg["truncation"],
                                            cfg["sigma"], cfg["min_horizon"], cfg["max_horizon"]))
            self.datas.append(tasks.stack_data([t.data for t in group]))
        self.optimizer = meta_optimizer(cfg)
        self.inner_steps = sum(c.num_pairs * 2 * (c.truncation if cfg["estimator"] == "pes"
                                                  else cfg["es_horizon"]) for c in self.pes_cfgs)
        self.step = jax.jit(self._step)
        self.key = key

    def init(self):
        pes_states = ()
        if self.cfg["estimator"] == "pes":
            pes_states = tuple(
                jax.jit(partial(pes.init, p, c, mesh=self.mesh))(
                    self.trainable, self.frozen, d, jax.random.fold_in(self.key, i))
                for i, (p, c, d) in enumerate(zip(self.problems, self.pes_cfgs, self.datas)))
        return Run(self.trainable, self.optimizer.init(self.trainable), pes_states)

    def _step(self, run, frozen, datas, key):
        grads, states, losses, nonfinite = [], [], [], []
        for i, (p, c) in enumerate(zip(self.problems, self.pes_cfgs)):
            k = jax.random.fold_in(key, i)
            if self.cfg["estimator"] == "pes":
                g, s, st = pes.gradient(p, c, run.theta, frozen, datas[i], run.pes[i], k, self.mesh)
                states.append(s)
            else:
                g, st = pes.es_gradient(p, c, run.theta, frozen, datas[i], k,
                                        self.cfg["es_horizon"], self.mesh)
            grads.append(g)
            losses.append(st.meta_loss)
            nonfinite.append(st.nonfinite)
        grad = jax.tree.map(lambda *g: sum(g) / len(g), *grads)       # mean over task groups
        grad = jax.tree.map(lambda g: jnp.where(jnp.isfinite(g), g, 0.0), grad)
        updates, opt_state = self.optimizer.update(grad, run.opt_state, run.theta)
        theta = optax.apply_updates(run.theta, updates)
        return (Run(theta, opt_state, tuple(states)),
                {"meta_loss": sum(losses) / len(losses), "nonfinite": sum(nonfinite),
                 "grad_norm": optax.tree.norm(grad)})


def stage_bounds(cfg, stages):
    """[(first_step, end)] of each stage; only the last depends on meta_steps."""
    bounds, start = [], 0
    for i, s in enumerate(stages):
        end = cfg["meta_steps"] if i == len(stages) - 1 else min(start + cfg[s.steps_setting],
                                                                  cfg["meta_steps"])
        bounds.append((start, end))
        start = end
    return bounds


def _leaves_dict(tree):
    return {str(i): np.asarray(x) for i, x in enumerate(jax.tree.leaves(tree))}


def _restore_leaves(template, saved, what, path):
    leaves, treedef = jax.tree.flatten(template)
    if len(saved) != len(leaves):
        raise CheckpointError(f"{path}: {what} does not match this configuration "
                              f"({len(saved)} arrays saved, {len(leaves)} expected)")
    out = []
    for i, leaf in enumerate(leaves):
        arr = saved[str(i)]
        if arr.shape != np.shape(leaf):
            raise CheckpointError(f"{path}: {what} array {i} has shape {arr.shape}, this "
                                  f"configuration expects {np.shape(leaf)}")
        out.append(jax.device_put(jnp.asarray(arr, dtype=jnp.asarray(leaf).dtype),
                                  getattr(leaf, "sharding", None)))
    return treedef.unflatten(out)


class Progress:
    """One-line progress bar: meta-step, meta-loss, inner steps per second, ETA."""

    def __init__(self, total, start):
        self.total, self.start_step, self.t0, self.last = total, start, time.time(), 0.0
        self.tty = sys.stderr.isatty()

    def update(self, step, loss, inner_per_s, force=False):
        now = time.time()
        if not force and now - self.last < (0.5 if self.tty else 30.0):
            return
        self.last = now
        done = step - self.start_step
        eta = (now - self.t0) / max(done, 1) * (self.total - step)
        width = 24
        filled = int(width * step / max(self.total, 1))
        line = (f"[{'#' * filled}{'.' * (width - filled)}] {step}/{self.total} "
                f"meta-loss {loss:.4f}  {inner_per_s:,.0f} inner steps/s  ETA {eta / 60:.1f} min")
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n",
              file=sys.stderr, flush=True)


def _csv_path(path):
    return os.path.splitext(path)[0] + ".csv"


def _write_csv(path, rows):
    """Rewrite the whole log atomically (it is small), so a resume never duplicates rows."""
    fd, tmp = _temp_file(os.path.dirname(os.path.abspath(path)))
    with os.fdopen(fd, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "stage", "meta_loss", "nonfinite", "grad_norm", "seconds"])
        writer.writerows(rows)
    os.replace(tmp, path)


def _read_csv(path, upto):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        rows = list(csv.reader(f))[1:]
    return [r for r in rows if int(r[0]) < upto]


def plot_meta_loss(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if not rows:
        return
    steps = np.array([int(r[0]) for r in rows])
    loss = np.array([float(r[2]) for r in rows])
    smooth = np.copy(loss)
    for i in range(1, len(loss)):
        smooth[i] = 0.95 * smooth[i - 1] + 0.05 * loss[i]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, loss, alpha=0.3, lw=0.8, label="per meta-step")
    ax.plot(steps, smooth, lw=1.5, label="EMA 0.95")
    ax.set_xlabel("meta-step")
    ax.set_ylabel("meta-loss (normalized inner loss)")
    ax.set_title(os.path.basename(os.path.splitext(path)[0]))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def set_aside(path, log=print):
    """A new run never overwrites an earlier one: an existing checkpoint at `path` (and its CSV and
    plot) is renamed to <name>.<time>.npz etc. first, and the move is logged."""
    if not os.path.exists(path):
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(os.path.getmtime(path)))
    stem = os.path.splitext(path)[0]
    moved = f"{stem}.{stamp}.npz"
    for old, new in ((path, moved), (_csv_path(path), f"{stem}.{stamp}.csv"),
                     (stem + "_meta_loss.png", f"{stem}.{stamp}_meta_loss.png")):
        if os.path.exists(old):
            os.replace(old, new)
    log(f"note: {path} existed and was not resumed: moved to {moved} (use --resume to continue a run)")
    return moved


def meta_train(cfg, log=print):
    """Meta-train per cfg (see resolve); resumable. Returns (θ, finished): finished is False when
    Ctrl-C / SIGTERM stopped the run (its checkpoint is saved)."""
    r = recipe(cfg["opt"])
    path = cfg["out"]
    mesh = pes.make_mesh() if len(jax.devices()) > 1 else None
    base_key = jax.random.PRNGKey(cfg["seed"])
    step, stage_idx, run_state = 0, 0, None
    if cfg["resume"]:
        name, theta, saved_cfg, state, _ = read_checkpoint(path)
        if name != cfg["opt"]:
            raise CheckpointError(f"{path} holds a {name} run, not {cfg['opt']}")
        for k in SETTINGS:
            if k not in NON_RECIPE and k in saved_cfg and saved_cfg[k] != cfg[k]:
                log(f"note: --resume keeps the run's {k}={saved_cfg[k]!r} (not {cfg[k]!r})")
                cfg[k] = saved_cfg[k]
        if "step" not in state:
            raise CheckpointError(f"{path} holds θ only (a shipped, stripped checkpoint), not a "
                                  "run to resume: drop --resume, or pass a new --out")
        step, stage_idx = int(state["step"]), int(state["stage"])
        run_state = state
    else:
        first_task = meta_tasks(cfg, cfg["opt"])[0][0]
        theta = r.build(first_task).init_meta_params(jax.random.fold_in(base_key, 10**6))
        set_aside(path, log)
    bounds = stage_bounds(cfg, r.stages)
    rows = _read_csv(_csv_path(path), step)
    stop = {"flag": False}

    def on_term(signum, frame):
        stop["flag"] = True

    old_term = signal.signal(signal.SIGTERM, on_term)
    try:
        while stage_idx < len(r.stages):
            stage = r.stages[stage_idx]
            first, last = bounds[stage_idx]
            if step >= last:        # this stage finished before the checkpoint was written
                stage_idx += 1
                run_state = None
                continue
            trainer = Trainer(cfg, stage, theta, jax.random.fold_in(base_key, stage_idx), mesh)
            run = trainer.init()
            if run_state is not None:
                run = Run(run.theta, _restore_leaves(run.opt_state, run_state["opt"], "meta-optimizer state", path),
                          tuple(_restore_leaves(s, run_state["pes"][str(i)], "PES state", path)
                                for i, s in enumerate(run.pes)))
                run_state = None
            frozen, datas = trainer.frozen, trainer.datas
            log(f"stage {stage_idx + 1}/{len(r.stages)} '{stage.name}': meta-steps {first}–{last}, "
                f"{len(trainer.groups)} task group(s), {trainer.inner_steps} inner steps per meta-step, "
                f"{len(jax.devices())} device(s)")
            progress = Progress(cfg["meta_steps"], step)
            last_save, t_prev = time.time(), time.time()
            ema = None

            def save():
                full = {**frozen, **jax.device_get(run.theta)}
                state = {"step": np.int64(step), "stage": np.int64(stage_idx),
                         "opt": _leaves_dict(run.opt_state),
                         "pes": {str(i): _leaves_dict(s) for i, s in enumerate(run.pes)}}
                save_checkpoint(path, cfg["opt"], full, config=cfg, state=state,
                                meta={"meta_steps_done": step})
                _write_csv(_csv_path(path), rows)

            try:
                while step < last and not stop["flag"]:
                    run, stats = trainer.step(run, frozen, datas, jax.random.fold_in(base_key, step))
                    loss = float(stats["meta_loss"])   # waits for the step (honest timing)
                    now = time.time()
                    rows.append([step, stage.name, f"{loss:.6f}", int(stats["nonfinite"]),
                                 f"{float(stats['grad_norm']):.4g}", f"{now - progress.t0:.2f}"])
                    ema = loss if ema is None else 0.9 * ema + 0.1 * loss
                    step += 1
                    rate = trainer.inner_steps / max(now - t_prev, 1e-9)
                    if step - 1 > first or step == last:  # the first step of a stage compiles
                        progress.update(step, ema, rate, force=step == last)
                    t_prev = now
                    if now - last_save > cfg["save_every_s"]:
                        save()
                        last_save = now
            except KeyboardInterrupt:
                stop["flag"] = True
            theta = {**frozen, **run.theta}
            save()
            if sys.stderr.isatty():
                print(file=sys.stderr)
            if stop["flag"]:
                log(f"interrupted at meta-step {step}: saved {path}; continue with "
                    f"`python train.py --opt {cfg['opt']} --out {path} --meta-steps {cfg['meta_steps']} --resume`")
                return theta, False
            stage_idx += 1
    finally:
        signal.signal(signal.SIGTERM, old_term)
    plot_meta_loss(rows, os.path.splitext(path)[0] + "_meta_loss.png")
    return theta, True


# ----------------------------------------------------------------------------- command line

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for k, v in SETTINGS.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            parser.add_argument(flag, action="store_true", default=None)
        else:
            parser.add_argument(flag, type=type(v), default=None)
    args = parser.parse_args(argv)
    return {k: v for k, v in vars(args).items() if v is not None}


def main(argv=None):
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize()   # multi-host: every host runs this same command
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--strip"]:           # python train.py --strip PATH [PATH ...]
        try:
            for p in argv[1:]:
                strip_checkpoint(p)
                print(f"stripped {p}: θ kept, resume state removed")
        except CheckpointError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    overrides = parse_args(argv)
    try:
        cfg = resolve(overrides)
        theta, finished = meta_train(cfg)
    except (ConfigError, CheckpointError, tasks.TaskError) as e:
        msg = e.args[0] if e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2
    if not finished:
        return 130
    if cfg["eval_steps"] > 0:
        import evaluate
        names = evaluate.resolve_tasks(cfg["eval_tasks"])
        result = evaluate.compare(cfg["opt"], theta, names, cfg["eval_steps"], cfg["eval_seeds"])
        print(evaluate.format_table(result))
    return 0


# ----------------------------------------------------------------------------- checkpoints
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


def _temp_file(directory):
    """(fd, path) of a new temporary file in `directory` with the mode of a normal file (mkstemp
    makes 0600 files), to be renamed over its target: an atomic write."""
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return fd, tmp


def save_checkpoint(path, optimizer_name, theta, config=None, state=None, meta=None):
    """Write atomically: a crash mid-write leaves the previous file intact."""
    arrays = {"format": np.asarray(CHECKPOINT_FORMAT), "optimizer": np.asarray(optimizer_name),
              "config": np.asarray(json.dumps(config or {}, sort_keys=True))}
    arrays.update(flatten_tree(jax.device_get(theta), "theta"))
    arrays.update(flatten_tree(jax.device_get(state or {}), "state"))
    arrays.update({f"meta/{k}": np.asarray(str(v)) for k, v in (meta or {}).items()})
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = _temp_file(directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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


if __name__ == "__main__":
    sys.exit(main())
