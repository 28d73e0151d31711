"""evaluate.py: score an optimizer on held-out tasks against tuned Adam, as Celo does.

Celo (arXiv 2501.12670) §4 "Reliably scoring optimizers at scale", §5.3–5.4 and App. A.3: every task is
trained T steps with 3 seeds; the training loss is smoothed by an EMA (0.9) and the final loss is
the mean over the last 10 batches; the normalized final-loss score is s = L_adam / L_opt (Eq. (11))
and the speedup s = T / T_opt (Eq. (12)), T_opt the first step reaching tuned Adam's final loss
(0 if never); M×N scores are aggregated by IQM, median, mean and optimality gap with stratified
bootstrap 95% CIs (Agarwal et al. 2021, rliable), all computed by metrics.py. suite.py holds the
held-out VALIDATION and TEST suites, engine.py the training runs, baselines.py the tuned optax
baselines (cached on disk); this file scores, plots, and holds the Python API and the CLI:

    python evaluate.py --opt NAME [--checkpoint PATH] [--tasks validation|test|quick|name,name]
                       [--seeds N] [--steps T] [--json PATH] [--plots DIR] [--tune-lr]

Choose recipes and checkpoints on VALIDATION only; TEST (alias: all) is only reported. The two
share no (dataset, architecture) pair (suite.task_signature, test-checked).

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
- --steps T is the base horizon: the long-horizon task runs suite.LONG_HORIZON × T.
"""
from __future__ import annotations

import argparse
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
from baselines import ADAM_LRS, BASELINE_LRS, CACHE_DIR, Tuned, pick_best, tune_baseline
from checkpoint import CheckpointError, load_checkpoint
from engine import run_curves
from suite import EvaluateError, family_scores, resolve_tasks, suite_task

# ----------------------------------------------------------------------------------------------
# Settings: plain module-level values; the command line overrides the first block.
# ----------------------------------------------------------------------------------------------
OPT = "celo"               # --opt: optimizer to evaluate (a baseline or a train.OPTIMIZERS name)
CHECKPOINT = None          # --checkpoint: θ of a learned optimizer (None: checkpoints/{OPT}.npz)
TASKS = "quick"            # --tasks: validation | test (= all) | quick | name,name,...
SEEDS = 3                  # --seeds: runs per task (Celo App. A.3: 3 seeds per task)
STEPS = 1000               # --steps: base horizon T; the long task runs suite.LONG_HORIZON × T
JSON_PATH = None           # --json: write the results here
PLOTS_DIR = None           # --plots: write PNG plots here
ROOT = Path(__file__).resolve().parent
# CACHE_DIR (--cache): baselines.CACHE_DIR, where tuned-baseline curves are cached ("none":
# no cache)
COMPILE_CACHE_DIR = ROOT / "runs" / "jax_cache"  # the CLI's persistent XLA compilation cache

PLOT_BASELINES = ("adam", "adamw", "sgdm")  # tuned baselines drawn in the aggregate plot


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
    num = finite_or_none
    return {"final_loss": {"opt": num(finals.mean()), "adam": num(l_adam)},
            "score": num(scores.mean()), "speedup": num(speedups.mean()),
            "steps": int(smoothed.shape[-1]), "adam_lr": float(adam.lrs[adam.best]),
            "seeds": {"final_loss": [num(x) for x in finals], "score": [num(x) for x in scores],
                      "speedup": [num(x) for x in speedups]}}


def finite_or_none(x) -> float | None:
    """float(x), or None where x is inf/NaN (JSON has neither; stability.py uses it too)."""
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
