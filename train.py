"""train.py: meta-train a learned optimizer with PES, from one laptop CPU to many accelerators.

    python train.py --opt NAME [--meta-steps N] [--out PATH] [--resume | --init PATH] [--SETTING V]

Celo (arXiv 2501.12670) §2 Eq. (3) and App. A.3, μLO (arXiv 2406.00153) §5: sample tasks, augment
them (Celo §3), estimate ∇θ of the mean inner training loss with PES (pes.py), and update θ with
AdamW. Every setting below can be overridden from the command line (`--meta-lr 1e-3`); each learned
optimizer in registry.OPTIMIZERS may change some defaults (its paper's recipe) — the command line
wins.
The pair axis of PES is sharded over all devices (1 CPU, N simulated CPUs, N GPUs; several hosts
after jax.distributed.initialize(), which runs on import when JAX_COORDINATOR_ADDRESS is set;
process 0 alone writes the run's files).
A run writes runs/<opt>/<opt>.npz (+ .csv, _meta_loss.png); checkpoints/ holds the shipped θ,
read only (checkpoint.py owns the file format: `name, theta = checkpoint.load_checkpoint(path)`).
"""
import argparse
import io
import os
import re
import signal
import sys
import textwrap
import time
import tokenize
from functools import partial
from typing import Any, NamedTuple

import jax


def init_distributed(environ=os.environ):
    """Multi-host: join the job when JAX_COORDINATOR_ADDRESS (host:port of process 0) is set, with
    JAX_NUM_PROCESSES and JAX_PROCESS_ID (JAX itself reads only the address; without the two it
    auto-detects SLURM / Open MPI). Runs on import, before any project module touches a device
    (celo.py computes with jnp at import): initialize() must precede every backend call."""
    if environ.get("JAX_COORDINATOR_ADDRESS") and not jax.distributed.is_initialized():
        count, index = environ.get("JAX_NUM_PROCESSES"), environ.get("JAX_PROCESS_ID")
        jax.distributed.initialize(num_processes=int(count) if count else None,
                                   process_id=int(index) if index else None)


init_distributed()

import jax.numpy as jnp
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec
import numpy as np
import optax

from checkpoint import CheckpointError, read_checkpoint, save_checkpoint, strip_checkpoint
import data
import pes
import registry
from registry import OPTIMIZERS, ConfigError, make_problem, prepare_task, recipe, run_dir
import run_log   # run_log.STAMP by its module: a str imported here would read as a setting
from run_log import Progress, csv_path, plot_meta_loss, plot_path, read_csv, set_aside, write_csv
import suite
import task_families
import tasks

# ----------------------------------------------------------------------------- settings
opt = "small_fc_lopt"      # learned optimizer to meta-train (a key of registry.OPTIMIZERS)
meta_steps = 1000          # total outer steps (with --resume or --init: the total to reach)
out = ""                   # checkpoint of this run ("": runs/{opt}/{opt}.npz); CSV + PNG beside it
resume = False             # continue the run saved at --out
init = ""                  # start a new run from this checkpoint's θ, step and AdamW/PES state
                           # (e.g. checkpoints/celo.npz); from a θ-only one: fresh AdamW/PES
seed = 0                   # seeds θ's init, the tasks, the perturbations
estimator = "pes"          # "pes": truncated persistent ES; "es": antithetic ES over whole runs
task_set = "celo"          # "celo": Celo's 8×8 MLP (App. A.4) on every available dataset;
                           # "family": num_family_tasks structures from
                           # task_families.sample_task_family; "celo+family": both; or
                           # comma-separated names of tasks.TASKS (e.g. "teacher_student")
num_family_tasks = 4       # task structures drawn for task_set="family" (each compiled once)
family_kinds = ""          # "": every kind of task_families.FAMILY_KIND_PROBS; or some, comma-
                           # separated (e.g. "image_mlp,teacher_student": no convs or LMs)
pairs_per_task = 8         # antithetic pairs per task (dataset) per meta-step (μLO §5: 8)
truncation = 50            # inner steps per PES truncation (Celo App. A.3)
sigma = 0.01               # PES perturbation std (Celo App. A.3)
min_horizon = 100          # shortest inner run: runs last log-uniform[min, max] steps
max_horizon = 500          # longest inner run (the paper: 2000; scaled down here for a CPU)
es_horizon = 200           # run length of estimator="es"
meta_objective = "mean"    # each inner step's loss as the meta-loss averages it: "mean" = L/cap
                           # (Celo Eq. (3)); "log" = log L (ours: every task and every stage of a
                           # run weighs alike; pes.normalize_loss)
augment = "global"         # task augmentation (Celo §3): none | global | tensor | parameter
tau_range = 1000.0         # augmentation τ ~ log-uniform[1/tau_range, tau_range] (Celo §5.2: 1e3)
meta_lr = 3e-3             # AdamW peak learning rate (μLO recipe)
final_lr = 1e-3            # cosine decay down to this (μLO: 3e-3 → 1e-3)
warmup_steps = 100         # linear warm-up steps (μLO recipe)
decay_steps = 5000         # cosine meta_lr → final_lr over this many steps of a stage, then flat
                           #   (μLO: 5000); independent of meta_steps, so a run can be extended
stage1_steps = 500         # two-stage optimizers (Celo §3): meta-steps of stage 1, the rest stage 2
weight_decay = 1e-4        # AdamW weight decay (μLO, Celo App. A.3)
grad_clip = 1.0            # global-norm clip of the PES gradient before AdamW. Ours: neither
                           # paper clips. A PES estimate from 8–16 pairs has norm ≫ 1, so the
                           # clip binds on nearly every step (12,905 of our earlier Celo
                           # run's 13,000) and AdamW sees ĝ/‖ĝ‖: each estimate weighs the same, and
                           # one noise spike cannot inflate Adam's second moment for the next
                           # ~1/(1−β₂) steps. Ablated for Celo: same meta-loss and held-out
                           # score without it (docs/celo.md), kept as a guard; 0 or inf: no clip
save_every_s = 120.0       # checkpoint every so many seconds, and on Ctrl-C / SIGTERM
eval_tasks = "quick"       # held-out comparison printed at the end (evaluate.py task names;
                           # "": none)
eval_steps = 500           # inner steps per held-out task in that comparison (0: skip it)
eval_seeds = 2             # seeds per held-out task in that comparison
SETTINGS = {k: v for k, v in dict(globals()).items()
            if not k.startswith("_") and isinstance(v, (int, float, str, bool))}
NON_RECIPE = ("opt", "meta_steps", "out", "resume", "init", "save_every_s", "eval_tasks",
              "eval_steps", "eval_seeds")  # may change on --resume; the rest is the run's recipe


# ----------------------------------------------------------------------------- settings of a run

def check_recipes(optimizers=None):
    """Every recipe's settings must name a setting of the block above (mup.TRAIN_SETTINGS and
    local_sgd.TRAIN_SETTINGS name them by string): an unknown one is a ConfigError, one line."""
    for name, r in (registry.OPTIMIZERS if optimizers is None else optimizers).items():
        unknown = [k for k, _ in getattr(r, "settings", ()) if k not in SETTINGS]
        if unknown:
            raise ConfigError(f"recipe {name!r} sets unknown setting(s) {', '.join(unknown)}; "
                              f"valid: {', '.join(SETTINGS)}")


def resolve(overrides=None):
    """The settings of a run: the defaults above, the optimizer's recipe, then `overrides`."""
    check_recipes()
    overrides = dict(overrides or {})
    cfg = dict(SETTINGS)
    cfg.update(dict(recipe(overrides.get("opt", cfg["opt"])).settings))
    cfg.update(overrides)
    if not cfg["out"]:
        cfg["out"] = os.path.join(run_dir(cfg["opt"]), f"{cfg['opt']}.npz")
    check(cfg)
    return cfg


def check(cfg):
    """Reject settings that cannot work, with a line that says what to do."""
    choices = {"estimator": ("pes", "es"), "augment": ("none",) + tasks.AUGMENT_MODES,
               "meta_objective": pes.OBJECTIVES}
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
    if cfg["task_set"] not in ("celo", "family", "celo+family"):
        for n in cfg["task_set"].split(","):
            if n not in tasks.TASKS:
                raise ConfigError(f"--task-set: unknown task {n!r}; valid: celo, family, "
                                  f"celo+family, {', '.join(sorted(tasks.TASKS))}")
    for k in filter(None, cfg["family_kinds"].split(",")):
        if k not in task_families.FAMILY_KIND_PROBS:
            raise ConfigError(f"--family-kinds: unknown kind {k!r}; valid: "
                              f"{', '.join(task_families.FAMILY_KIND_PROBS)}")
    if cfg["max_horizon"] < cfg["min_horizon"]:
        raise ConfigError("--max-horizon must be ≥ --min-horizon")
    if compares(cfg):   # a bad name fails now, not after the run
        try:
            suite.resolve_tasks(cfg["eval_tasks"])
        except suite.EvaluateError as e:
            raise ConfigError(f"--eval-tasks: {e}") from None
    if not (cfg["sigma"] > 0 and cfg["meta_lr"] > 0):
        raise ConfigError("--sigma and --meta-lr must be > 0")
    if cfg["resume"] and cfg["init"]:
        raise ConfigError("--resume continues the run at --out, --init starts a new one from "
                          "another checkpoint: pass one of them")


def compares(cfg):
    """Does the run end with the held-out comparison (eval_tasks named, eval_steps > 0)?"""
    return bool(cfg["eval_tasks"]) and cfg["eval_steps"] > 0


def meta_tasks(cfg, name):
    """Task groups for meta-training: lists of same-structure tasks whose data stack."""
    prepare = partial(prepare_task, name)
    if cfg["task_set"] in ("celo", "family", "celo+family"):
        groups = []
        if cfg["task_set"] != "family":
            # Celo App. A.4 uses MNIST, Fashion-MNIST, CIFAR-10 and SVHN at 8×8; offline we have
            # Fashion-MNIST (and MNIST / CIFAR-10 once in the cache), plus its inverted-intensity
            # twin for a second, differently conditioned dataset of the same structure.
            names = [d for d in task_families.CELO_DATASETS if data.dataset_available(d)]
            names.append("fashion_mnist_8x8_inverted")
            groups.append([prepare(t) for t in task_families.celo_meta_training_tasks(names)])
        if cfg["task_set"] != "celo":
            kinds = [k for k in cfg["family_kinds"].split(",") if k] or None
            groups += [[prepare(t)] for t in task_families.sample_task_family(
                cfg["seed"], cfg["num_family_tasks"], kinds=kinds)]
        return groups
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
    clip = cfg["grad_clip"]
    clip = optax.clip_by_global_norm(clip) if 0 < clip < float("inf") else optax.identity()
    return optax.chain(clip,
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
            lopt = r.build(group[0], **dict(stage.build_kwargs), **dict(stage.train_kwargs))
            self.problems.append(make_problem(group[0], lopt, cfg["augment"], cfg["tau_range"]) if r.problem is None
                                 else r.problem(group[0], lopt, cfg))
            self.pes_cfgs.append(pes.Config(cfg["pairs_per_task"] * len(group), cfg["truncation"],
                                            cfg["sigma"], cfg["min_horizon"], cfg["max_horizon"],
                                            cfg["meta_objective"]))
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
        run = Run(self.trainable, self.optimizer.init(self.trainable), pes_states)
        if self.mesh is not None:   # θ and AdamW replicated over the mesh, as the meta-step returns
            rep = NamedSharding(self.mesh, PartitionSpec())   # them: it compiles once, not twice
            run = run._replace(theta=jax.device_put(run.theta, rep),
                               opt_state=jax.device_put(run.opt_state, rep))
        return run

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


def _to_host(x):
    """A host (numpy) copy of x; an array spread over several processes' devices is gathered first
    (a collective: every process must call this, in the same order)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)


def _agree(*flags):
    """The same flags on every process (True if True on any), so that all processes save and stop
    together; on one process, the flags as they are."""
    if jax.process_count() == 1:
        return flags
    return tuple(bool(f) for f in np.any(multihost_utils.process_allgather(np.array(flags)), axis=0))


def _leaves_dict(tree):
    return {str(i): _to_host(x) for i, x in enumerate(jax.tree.leaves(tree))}


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
        arr = jnp.asarray(arr, dtype=jnp.asarray(leaf).dtype)
        sharding = getattr(leaf, "sharding", None)
        # on one device, stay uncommitted like a fresh run's arrays: a committed input is another
        # jit signature, and the meta-step would compile a second time after a resume
        out.append(arr if sharding is None or len(sharding.device_set) == 1
                   else jax.device_put(arr, sharding))
    return treedef.unflatten(out)


def meta_train(cfg, log=print):
    """Meta-train per cfg (see resolve). A new run starts from a fresh θ, or with --init from
    another checkpoint; --resume continues the run at --out. Returns (θ, finished): finished is
    False when Ctrl-C / SIGTERM stopped the run (its checkpoint is saved)."""
    r = recipe(cfg["opt"])
    path = cfg["out"]
    mesh = pes.make_mesh() if len(jax.devices()) > 1 else None
    step, stage_idx, run_state, rows, provenance = 0, 0, None, [], {}
    started = set()       # stages whose Stage.start has run (kept in the checkpoint's meta)
    source = path if cfg["resume"] else cfg["init"]
    flag = "--resume" if cfg["resume"] else "--init"
    if source:
        name, theta, saved_cfg, state, meta = read_checkpoint(source)
        if name != cfg["opt"]:
            raise CheckpointError(f"{source} holds a {name} run, not {cfg['opt']}")
        init_from = cfg["init"] or meta.get("init")        # kept by --resume, as provenance
        provenance = {"init": init_from} if init_from else {}
        started = set(filter(None, str(meta.get("stages_started", "")).split(",")))
        if "step" in state:   # a full run state: its recipe, step, AdamW and PES state go on
            for k in SETTINGS:
                if k not in NON_RECIPE and k in saved_cfg and saved_cfg[k] != cfg[k]:
                    log(f"note: {flag} keeps the run's {k}={saved_cfg[k]!r} (not {cfg[k]!r})")
                    cfg[k] = saved_cfg[k]
            step, stage_idx = int(state["step"]), int(state["stage"])
            run_state = state
        elif cfg["resume"]:
            raise CheckpointError(f"{path} holds θ only (a shipped, stripped checkpoint), not a "
                                  "run to resume: drop --resume, or pass a new --out")
        else:                 # θ only: fresh AdamW and PES from this θ, at the stage of its step
            step = int(meta.get("meta_steps_done", 0))
        if cfg["init"] and step >= cfg["meta_steps"]:
            raise ConfigError(f"--init {source} is at meta-step {step} already: pass a larger "
                              f"--meta-steps (the total to reach)")
        rows = read_csv(csv_path(source), step)
    else:
        first_task = meta_tasks(cfg, cfg["opt"])[0][0]
        theta = r.build(first_task).init_meta_params(
            jax.random.fold_in(jax.random.PRNGKey(cfg["seed"]), 10**6))
    writer = jax.process_index() == 0     # multi-host: process 0 alone writes files
    if not cfg["resume"] and writer:
        set_aside(path, log)
    base_key = jax.random.PRNGKey(cfg["seed"])
    bounds = stage_bounds(cfg, r.stages)
    stop = {"flag": False}

    def on_term(signum, frame):
        stop["flag"] = True

    old_term = signal.signal(signal.SIGTERM, on_term)
    # multi-host: Ctrl-C is a flag too, so that no process leaves the collectives of the others
    old_int = signal.signal(signal.SIGINT, on_term) if jax.process_count() > 1 else None
    try:
        while stage_idx < len(r.stages):
            stage = r.stages[stage_idx]
            first, last = bounds[stage_idx]
            starts = (run_state is None and step == first and stage.start is not None
                      and str(stage_idx) not in started)
            if step >= last and not starts:   # finished before the checkpoint was written
                stage_idx += 1
                run_state = None
                continue
            if starts:   # once per run, even for a stage of 0 meta-steps (e.g. Celo's fit)
                log(f"stage {stage_idx + 1}/{len(r.stages)} '{stage.name}': θ starts from "
                    f"{getattr(stage.start, '__name__', 'its start function')}")
                theta = stage.start(theta, jax.random.fold_in(base_key, 10**6 + stage_idx))
                started.add(str(stage_idx))
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
            progress = Progress(cfg["meta_steps"])
            t_stage = last_save = t_prev = time.time()
            ema = None

            def save():   # every process gathers (collectives); process 0 writes
                full = {**frozen, **jax.tree.map(_to_host, run.theta)}
                state = {"step": np.int64(step), "stage": np.int64(stage_idx),
                         "opt": _leaves_dict(run.opt_state),
                         "pes": {str(i): _leaves_dict(s) for i, s in enumerate(run.pes)}}
                if not writer:
                    return
                save_checkpoint(path, cfg["opt"], full, config=cfg, state=state,
                                meta={"meta_steps_done": step,
                                      "saved_at": time.strftime(run_log.STAMP),
                                      "stages_started": ",".join(sorted(started)), **provenance})
                write_csv(csv_path(path), rows)

            stopping = False
            try:
                while step < last and not stopping:
                    run, stats = trainer.step(run, frozen, datas, jax.random.fold_in(base_key, step))
                    loss = float(stats["meta_loss"])   # waits for the step (honest timing)
                    now = time.time()
                    rows.append([step, stage.name, f"{loss:.6f}", int(stats["nonfinite"]),
                                 f"{float(stats['grad_norm']):.4g}", f"{now - t_stage:.2f}"])
                    ema = loss if ema is None else 0.9 * ema + 0.1 * loss
                    step += 1
                    rate = trainer.inner_steps / max(now - t_prev, 1e-9)
                    progress.update(step, ema, rate, force=step == last)
                    t_prev = now
                    due, stopping = _agree(now - last_save > cfg["save_every_s"], stop["flag"])
                    if due:
                        save()
                        last_save = now
            except KeyboardInterrupt:
                stop["flag"] = True
            if jax.process_count() > 1:
                stop["flag"] = stopping   # all processes stop after the same meta-step, or none
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
        if old_int is not None:
            signal.signal(signal.SIGINT, old_int)
    if jax.process_count() > 1:   # θ as host arrays on every process (gathered: a collective)
        theta = jax.tree.map(_to_host, theta)
    if not writer:
        return theta, True
    plot_meta_loss(rows, plot_path(path))
    log("wrote " + ", ".join(p for p in (path, csv_path(path), plot_path(path))
                             if os.path.exists(p)))
    return theta, True


# ----------------------------------------------------------------------------- command line

def setting_comments():
    """{setting: its comment} from the settings block at the top of this file, which is the one
    place a setting is explained (a comment-only line continues the setting above it)."""
    with open(__file__, encoding="utf-8") as f:
        source = f.read()
    block = source[re.search(r"^# -+ settings$", source, re.M).start():
                   re.search(r"^SETTINGS = ", source, re.M).start()]
    comments, name = {}, None
    for tok in tokenize.generate_tokens(io.StringIO(block).readline):
        if tok.type == tokenize.NAME and tok.start[1] == 0:
            name = tok.string
        elif tok.type == tokenize.COMMENT and name is not None:
            text = tok.string.lstrip("#").strip()
            comments[name] = f"{comments[name]} {text}" if name in comments else text
    return comments


class _Parser(argparse.ArgumentParser):
    """argparse, except that a bad command line is one ConfigError line (no usage dump)."""

    def error(self, message):
        if message.startswith("unrecognized arguments: "):
            message = (f"unknown argument(s) {message.split(': ', 1)[1]}; "
                       "`python train.py --help` lists the flags")
        raise ConfigError(re.sub(r"^argument (\S+?): ", r"\1 ", message))


def _typed(kind):
    def convert(text):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expects {'an' if kind is int else 'a'} "
                                             f"{kind.__name__}, got {text!r}") from None
    return convert


def make_parser():
    """Every setting as a flag, its help the setting's comment and its default; --strip."""
    comments = setting_comments()
    recipes = []
    for name, r in OPTIMIZERS.items():
        changed = " ".join(f"{k}={v}" for k, v in r.settings if SETTINGS.get(k) != v)
        recipes.append(textwrap.fill(f"{name}" + (f": {changed}" if changed else ""), 96,
                                     initial_indent="  ", subsequent_indent="      "))
    parser = _Parser(description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1],
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog="--opt names, with the defaults each one changes (the command line "
                            "wins):\n" + "\n".join(recipes))
    for k, v in SETTINGS.items():
        shown = f'"{v}"' if isinstance(v, str) else v
        help_text = f"{comments.get(k, '')} (default: {shown})".replace("%", "%%")
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            parser.add_argument(flag, action="store_true", default=None, help=help_text)
        else:
            metavar = {"opt": "NAME", "out": "PATH", "init": "PATH"}.get(k, type(v).__name__)
            parser.add_argument(flag, type=_typed(type(v)), default=None, help=help_text,
                                metavar=metavar.upper())
    parser.add_argument("--strip", nargs="+", metavar="PATH", help="drop the resume state of "
                        "these checkpoints in place (θ, config and provenance stay), then exit")
    return parser


def parse_args(argv=None):
    """The settings given on the command line, {name: value}, and "strip" if --strip was given
    (a bad command line: ConfigError, one line)."""
    args = vars(make_parser().parse_args(argv))
    return {k: v for k, v in args.items() if v is not None}


def main(argv=None):
    try:
        overrides = parse_args(argv)
        if "strip" in overrides:          # python train.py --strip PATH [PATH ...]
            for p in overrides["strip"]:
                strip_checkpoint(p)
                print(f"stripped {p}: θ kept, resume state removed")
            return 0
        cfg = resolve(overrides)
        theta, finished = meta_train(cfg)
    except (ConfigError, CheckpointError, tasks.TaskError) as e:
        msg = e.args[0] if e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2
    if not finished:
        return 130
    if compares(cfg) and jax.process_index() == 0:   # multi-host: process 0 evaluates
        import evaluate
        names = suite.resolve_tasks(cfg["eval_tasks"])
        result = evaluate.compare(cfg["opt"], theta, names, cfg["eval_steps"], cfg["eval_seeds"])
        print(evaluate.format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
