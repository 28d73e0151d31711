"""local_sgd_experiments.py: learned global updates against tuned local SGD and SlowMo, at equal
communication rounds (issue #9 item 3; Joseph et al. 2023, arXiv
2312.02204).

    python local_sgd_experiments.py [--quick] [--rounds R] [--seeds S] [--tasks a,b]
                                    [--local-steps 4,8,16] [--out DIR]

K = 8 workers, H ∈ {4, 8, 16} local steps, R rounds for every method. For each held-out task and H:
  local SGD   tuned over its local lr (LOCAL_LRS, widened by factors of 2 while the best lr is
              at an edge, up to LR_EXTEND times: the winner has a grid point above and below it);
  SlowMo      at that local lr, tuned over (α, β) ∈ SLOWMO_GRID (α ∈ {0.5, 1, 2} × β ∈ {0.5, 0.8,
              0.9, 0.95}, plus α = 1, β = 0 = local SGD);
  SlowMo-cos  the same grid with α annealed by a cosine over the R rounds (local_sgd.slowmo_cosine)
              (neither grid is built around the learned updates' nominal SlowMo(1, 0.8));
  LOpt, LAgg  at that local lr, θ from checkpoints/ (meta-trained at H = 16), nothing tuned
              (their nominal step, which the MLP corrects, is SlowMo(1, 0.8) on every task);
  LOpt-paper  the paper's form (the MLP's output is the whole server update), the same way.
Tuning picks the lowest mean final loss over the seeds (the seeds reported: as evaluate.py does
for Adam). Final loss = mean of the last 10 rounds of the EMA(0.9)-smoothed training loss (Celo
App. A.3, in rounds). Score = L_ref / L_method per seed (Celo Eq. (11)), ref = tuned local SGD or
tuned SlowMo (mean over seeds); IQM, median, mean and optimality gap with stratified bootstrap 95%
CIs over tasks × seeds (metrics.py). Plots: OUT/loss_vs_rounds_H{H}.png; table: stdout and
OUT/table.md; numbers: OUT/results.json.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import local_sgd
import metrics
import tasks
from checkpoint import CheckpointError, load_checkpoint

# ----------------------------------------------------------------------------- settings
ROOT = Path(__file__).resolve().parent
OUT = ROOT / "results" / "local_sgd"      # --out: plots, table.md, results.json
ROUNDS = 100                 # --rounds: communication rounds of every run (equal for all methods)
SEEDS = 3                    # --seeds: runs per task, H and configuration (Celo App. A.3: 3)
NUM_WORKERS = local_sgd.NUM_WORKERS       # K = 8
LOCAL_STEPS = local_sgd.LOCAL_STEPS       # H ∈ {4, 8, 16}
LOCAL_LRS = (0.125, 0.25, 0.5, 1.0, 2.0)  # local SGD's lr grid (around Joseph et al.'s 0.5)
LR_EXTEND = 2                # at most this many ×2 (or ×½) extensions while the best lr is an edge
SLOWMO_GRID = tuple((a, b) for a in (0.5, 1.0, 2.0) for b in (0.5, 0.8, 0.9, 0.95))
                                          # (α, β): Wang et al. 2020 tune β ∈ [0.5, 0.8] with
                                          # α ≈ 1; we add 0.9, 0.95 and α ∈ {0.5, 2} so that the
                                          # nominal (1, 0.8) is inside the grid, not its edge;
                                          # (1, 0) = local SGD is added; also used with cosine α
HEADLINE_H = 16              # the H of the target (K = 8, H = 16)
F8, F16 = "fashion_mnist_8x8", "fashion_mnist_16x16"
# Held-out tasks: none is the meta-training task (64 → 128 → 128 → 10 MLP on 8×8 images, batch 32).
HELD_OUT = {
    "fmnist8_mlp_2x256": ("image_mlp", dict(dataset=F8, hidden=(256, 256), batch_size=32),
                          "wider MLP: 64 → 256 → 256 → 10"),
    "fmnist8_mlp_4x128": ("image_mlp", dict(dataset=F8, hidden=(128,) * 4, batch_size=32),
                          "deeper MLP: 4 hidden layers of 128"),
    "fmnist16_mlp_2x128": ("image_mlp", dict(dataset=F16, hidden=(128, 128), batch_size=32),
                           "16×16 images (4× the inputs), 2×128 MLP"),
    "fmnist16_conv_16x32": ("image_conv", dict(dataset=F16, channels=(16, 32), batch_size=32),
                            "conv net, 3×3 kernels, 16 → 32 channels"),
    "devil_byte_lm": ("byte_lm", dict(context=16, embed=32, hidden=64, layers=1, heads=2,
                                      batch_size=32), "byte-level transformer LM"),
}
QUICK = dict(rounds=12, seeds=2, local_steps=(2, 4), local_lrs=(0.25, 0.5), lr_extend=1,
             slowmo_grid=((1.0, 0.5), (1.0, 0.9)), out=OUT / "quick",
             tasks={"fmnist8_mlp_32": ("image_mlp", dict(dataset=F8, hidden=(32,), batch_size=16),
                                       "tiny MLP (smoke test)"),
                    "teacher_student": ("teacher_student", dict(in_dim=8, hidden=(16,),
                                                                out_dim=2, batch_size=16),
                                        "tiny regression (smoke test)")})
BASELINES = ("local_sgd", "slowmo", "slowmo_cosine")
UPDATES = {"local_sgd_lopt": local_sgd.lopt,            # name → the learned update's constructor
           "local_sgd_lagg": lambda: local_sgd.lagg(NUM_WORKERS),
           "local_sgd_lopt_paper": local_sgd.lopt_paper}
LEARNED = tuple(UPDATES)
METHODS = BASELINES + LEARNED
LABELS = {"local_sgd": "local SGD (tuned)", "slowmo": "SlowMo (tuned)",
          "slowmo_cosine": "SlowMo, cosine α (tuned)",
          "local_sgd_lopt": "LOpt (learned)", "local_sgd_lagg": "LAgg (learned)",
          "local_sgd_lopt_paper": "LOpt, paper's form (learned)"}


# ----------------------------------------------------------------------------- runs

def mean_final(curves):
    """Mean final loss over seeds of each configuration of curves (C, S, R); a run that went
    non-finite counts as +inf, so that it is never picked (np.argmin would pick a NaN)."""
    f = metrics.final_training_loss(curves).mean(-1)
    return np.where(np.isfinite(f), f, np.inf)


def tune_local_lr(momentum, stack, lrs, steps, data, keys, extend):
    """Local SGD over the lr grid, widened by ×2 (or ×½) while the best lr is at the top (or
    bottom) edge, at most `extend` times. Returns (lrs, curves (C, S, R), index of the best)."""
    run = lambda lr_list: np.asarray(momentum(stack([(1.0, 0.0)] * len(lr_list)),
                                              jnp.asarray(lr_list, jnp.float32), steps, data,
                                              keys))
    lrs, grid = list(lrs), run(list(lrs))
    for _ in range(extend):
        best = int(np.argmin(mean_final(grid)))
        if 0 < best < len(lrs) - 1:
            break
        top = best == len(lrs) - 1
        lr = lrs[-1] * 2.0 if top else lrs[0] / 2.0
        curve = run([lr])
        lrs = lrs + [lr] if top else [lr] + lrs
        grid = np.concatenate([grid, curve] if top else [curve, grid])
    return lrs, grid, int(np.argmin(mean_final(grid)))


def run_task(task, thetas, cfg, log):
    """All H of one task: {H: {method: {"losses": (S, R), "final": (S,), ...hparams}}}."""
    keys = jnp.stack([jax.random.key(s) for s in range(cfg["seeds"])])
    mesh = local_sgd.make_mesh(NUM_WORKERS)
    rounds = cfg["rounds"]
    momentum = local_sgd.make_curves(task, local_sgd.slowmo(), rounds, NUM_WORKERS, mesh)
    cosine = local_sgd.make_curves(task, local_sgd.slowmo_cosine(), rounds, NUM_WORKERS, mesh)
    learned = {n: local_sgd.make_curves(task, UPDATES[n](), rounds, NUM_WORKERS, mesh)
               for n in LEARNED}
    stack = lambda rows: {"server_lr": jnp.asarray([r[0] for r in rows], jnp.float32),
                          "momentum": jnp.asarray([r[1] for r in rows], jnp.float32)}
    grid_ab = cfg["slowmo_grid"]
    out = {}
    for h in cfg["local_steps"]:
        t0 = time.time()
        steps = jnp.int32(h)
        lrs, grid, best = tune_local_lr(momentum, stack, cfg["local_lrs"], steps, task.data, keys,
                                        cfg["lr_extend"])
        lr = lrs[best]
        at_edge = best in (0, len(lrs) - 1)
        res = {"local_sgd": {"losses": grid[best], "local_lr": lr, "local_lr_grid": lrs,
                             "lr_at_grid_edge": at_edge}}
        lr_c = jnp.full(len(grid_ab), lr, jnp.float32)
        for name, fn, cand in (("slowmo", momentum, [((1.0, 0.0), grid[best])]),
                               ("slowmo_cosine", cosine, [])):
            curves = np.asarray(fn(stack(grid_ab), lr_c, steps, task.data, keys))
            cand = cand + list(zip(grid_ab, curves))
            i = int(np.argmin(mean_final(np.stack([c for _, c in cand]))))
            (alpha, beta), curve = cand[i]
            res[name] = {"losses": curve, "local_lr": lr, "server_lr": alpha, "momentum": beta,
                         "grid_edge": alpha in (min(a for a, _ in grid_ab),
                                                max(a for a, _ in grid_ab))
                         or beta == max(b for _, b in grid_ab)}
        for name, fn in learned.items():
            theta = jax.tree.map(lambda x: x[None], thetas[name])
            res[name] = {"losses": np.asarray(fn(theta, jnp.asarray([lr], jnp.float32), steps,
                                                 task.data, keys))[0], "local_lr": lr}
        for r in res.values():
            r["losses"] = np.asarray(r["losses"], np.float64)
            r["final"] = metrics.final_training_loss(r["losses"])
        out[h] = res
        ab = lambda m: f"({res[m]['server_lr']}, {res[m]['momentum']})"
        log(f"  H={h:<2} lr={lr:<5}{' (grid edge)' if at_edge else ''} SlowMo (α, β)="
            f"{ab('slowmo')} cosine {ab('slowmo_cosine')}  final: "
            + "  ".join(f"{m} {res[m]['final'].mean():.4f}" for m in METHODS)
            + f"  [{time.time() - t0:.0f} s]")
    return out


# ----------------------------------------------------------------------------- statistics

def scores(results, h, ref):
    """[M tasks, S seeds] scores L_ref / L_method of every method at this H (ref: a method)."""
    out = {}
    for m in METHODS:
        out[m] = np.stack([metrics.normalized_score(r[h][ref]["final"].mean(), r[h][m]["final"])
                           for r in results.values()])
    return out


def round_speedup(results, h, m):
    """Mean over tasks and seeds of R / (rounds to reach tuned local SGD's final loss), 0 if never
    (Celo Eq. (12) with rounds in place of steps): the communication saved."""
    vals = [metrics.speedup(metrics.ema(r[h][m]["losses"]), r[h]["local_sgd"]["final"].mean()
                             * np.ones(r[h][m]["losses"].shape[0]))
            for r in results.values()]
    return float(np.mean(vals))


def wins(results, h, m):
    """Tasks where method m's mean final loss is below every tuned baseline's."""
    return sum(r[h][m]["final"].mean() < min(r[h][b]["final"].mean() for b in BASELINES)
               for r in results.values())


def summarize(results, cfg):
    summary = {}
    for h in cfg["local_steps"]:
        s = {}
        for ref in BASELINES:
            sc = scores(results, h, ref)
            s[f"vs_{ref}"] = {m: metrics.aggregate(sc[m]) for m in METHODS}
        s["wins"] = {m: wins(results, h, m) for m in LEARNED}
        s["round_speedup"] = {m: round_speedup(results, h, m) for m in METHODS}
        summary[h] = s
    return summary


def format_tables(results, summary, comm, cfg):
    tasks_ = list(results)
    lines = [f"Local SGD, K = {NUM_WORKERS} workers, {cfg['rounds']} communication rounds, "
             f"{cfg['seeds']} seeds. Final training loss (EMA 0.9, last 10 rounds), mean ± std "
             "over seeds; **bold** = lowest.", ""]
    for h in cfg["local_steps"]:
        lines += [f"### H = {h} local steps", "",
                  "| task | MB sent | " + " | ".join(LABELS[m] for m in METHODS) + " |",
                  "|---|---:|" + "---:|" * len(METHODS)]
        for t in tasks_:
            r = results[t][h]
            means = {m: r[m]["final"].mean() for m in METHODS}
            best = min(means, key=means.get)
            cells = []
            for m in METHODS:
                with np.errstate(invalid="ignore"):          # a diverged seed: inf ± nan
                    c = f"{means[m]:.4f} ± {r[m]['final'].std():.4f}"
                cells.append(f"**{c}**" if m == best else c)
            mb = comm[t]["total_bytes"] / 1e6
            lines.append(f"| {t} | {mb:.1f} | " + " | ".join(cells) + " |")
        s = summary[h]
        lrs = [results[t][h]["local_sgd"]["local_lr"] for t in tasks_]
        edge = [t for t in tasks_ if results[t][h]["local_sgd"]["lr_at_grid_edge"]]
        ab = {m: [(results[t][h][m]["server_lr"], results[t][h][m]["momentum"]) for t in tasks_]
              for m in ("slowmo", "slowmo_cosine")}
        lines += ["", f"Tuned local lr per task: {lrs}"
                  + (f" (at the edge of its widened grid on {edge})" if edge else "")
                  + f"; SlowMo (α, β): {ab['slowmo']}; cosine SlowMo (α, β): "
                  f"{ab['slowmo_cosine']}.", "",
                  "| method | IQM score vs local SGD [95% CI] | IQM score vs SlowMo [95% CI] | "
                  "IQM score vs cosine SlowMo [95% CI] | optimality gap vs SlowMo [95% CI] | "
                  "tasks beating all baselines | round speedup vs local SGD |",
                  "|---|---|---|---|---|---:|---:|"]
        ci = lambda a, k: f"{a[k]:.3f} [{a['ci95'][k][0]:.3f}, {a['ci95'][k][1]:.3f}]"
        for m in METHODS:
            a, b, c = (s[f"vs_{ref}"][m] for ref in BASELINES)
            w = f"{s['wins'][m]}/{len(tasks_)}" if m in s["wins"] else "—"
            lines.append(f"| {LABELS[m]} | {ci(a, 'iqm')} | {ci(b, 'iqm')} | {ci(c, 'iqm')} | "
                         f"{ci(b, 'optimality_gap')} | {w} | {s['round_speedup'][m]:.2f}× |")
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots

def plot(results, cfg, out_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    paths = []
    names = list(results)
    for h in cfg["local_steps"]:
        fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 2.9), squeeze=False)
        for ax, t in zip(axes[0], names):
            for m in METHODS:
                sm = metrics.ema(results[t][h][m]["losses"])
                x = np.arange(1, sm.shape[-1] + 1)
                ax.plot(x, sm.mean(0), lw=1.3, label=LABELS[m])
                ax.fill_between(x, sm.min(0), sm.max(0), alpha=0.2)
            ax.set_yscale("log")
            ax.set_title(t, fontsize=8)
            ax.set_xlabel("communication round", fontsize=8)
            ax.tick_params(labelsize=7)
        axes[0][0].set_ylabel("training loss (EMA 0.9)", fontsize=8)
        axes[0][-1].legend(fontsize=6)
        fig.suptitle(f"K = {NUM_WORKERS} workers, H = {h} local steps", fontsize=9)
        fig.tight_layout()
        path = Path(out_dir) / f"loss_vs_rounds_H{h}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------- main

def load_thetas(quick):
    """θ of every learned update from its shipped checkpoint (--quick: a fresh θ if one is
    missing)."""
    thetas = {}
    for name, make in UPDATES.items():
        path = ROOT / "checkpoints" / f"{name}.npz"
        if quick and not path.exists():
            thetas[name] = make().init_meta_params(jax.random.PRNGKey(0))
            continue
        saved, thetas[name] = load_checkpoint(str(path))
        if saved != name:
            raise CheckpointError(f"{path} holds {saved}, not {name}")
    return thetas


def _plain(x):
    """numpy scalars and arrays in the results → JSON numbers and lists."""
    return x.tolist() if hasattr(x, "tolist") else str(x)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny tasks, a few rounds (smoke test)")
    p.add_argument("--rounds", type=int)
    p.add_argument("--seeds", type=int)
    p.add_argument("--tasks", help="comma-separated names of HELD_OUT (default: all)")
    p.add_argument("--local-steps", help="comma-separated H (default: 4,8,16)")
    p.add_argument("--out")
    a = p.parse_args(argv)
    cfg = dict(rounds=ROUNDS, seeds=SEEDS, local_steps=LOCAL_STEPS, local_lrs=LOCAL_LRS,
               lr_extend=LR_EXTEND, slowmo_grid=SLOWMO_GRID, out=OUT, tasks=HELD_OUT)
    if a.quick:
        cfg.update(QUICK)
    for k in ("rounds", "seeds", "out"):
        if getattr(a, k) is not None:
            cfg[k] = getattr(a, k)
    if a.tasks:
        unknown = [t for t in a.tasks.split(",") if t not in cfg["tasks"]]
        if unknown:
            print(f"error: unknown task(s) {unknown}; valid: {', '.join(cfg['tasks'])}",
                  file=sys.stderr)
            return 2
        cfg["tasks"] = {t: cfg["tasks"][t] for t in a.tasks.split(",")}
    if a.local_steps:
        try:
            cfg["local_steps"] = tuple(int(h) for h in a.local_steps.split(","))
        except ValueError:
            cfg["local_steps"] = ()
        if not cfg["local_steps"] or min(cfg["local_steps"]) < 1:
            print(f"error: --local-steps takes comma-separated integers ≥ 1, got "
                  f"{a.local_steps!r}", file=sys.stderr)
            return 2
    try:
        thetas = load_thetas(a.quick)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out_dir = Path(cfg["out"])
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    results, comm, about = {}, {}, {}
    for name, (builder, kwargs, desc) in cfg["tasks"].items():
        task = getattr(tasks, builder)(**kwargs)._replace(name=name)
        params = task.init(jax.random.PRNGKey(0))
        comm[name] = local_sgd.communication(params, NUM_WORKERS, cfg["rounds"])._asdict()
        about[name] = desc
        print(f"{name}: {desc}; {sum(x.size for x in jax.tree.leaves(params)):,} parameters, "
              f"{comm[name]['bytes_per_round'] / 1e6:.2f} MB uploaded per round", flush=True)
        t0 = time.time()
        results[name] = run_task(task, thetas, cfg, lambda s: print(s, flush=True))
        print(f"  {name} done in {time.time() - t0:.0f} s", flush=True)
    summary = summarize(results, cfg)
    table = format_tables(results, summary, comm, cfg)
    print()
    print(table)
    (out_dir / "table.md").write_text(table + "\n")
    dump = {"config": {k: (str(v) if k == "out" else v) for k, v in cfg.items() if k != "tasks"},
            "tasks": about, "communication": comm, "seconds": round(time.time() - t_start),
            "summary": {str(h): s for h, s in summary.items()},
            "results": {t: {str(h): {m: {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                                         for k, v in r.items() if k != "losses"}
                                     for m, r in hr.items()}
                            for h, hr in tr.items()} for t, tr in results.items()}}
    (out_dir / "results.json").write_text(json.dumps(dump, indent=1, default=_plain))
    for path in plot(results, cfg, out_dir):
        print(f"wrote {path}")
    print(f"total {time.time() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
