"""schedule_plot.py: what Celo's stage 2 learned — η_t over a run, at several horizons.

    python schedule_plot.py [--checkpoints checkpoints/celo.npz,checkpoints/celo_paper.npz]
                            [--task fmnist8_mlp_2x128_tanh_bs256] [--horizons 300,1000,3000]
                            [--out results/eval/celo_schedule.png] [--json PATH]

Celo (arXiv 2501.12670) §3, Alg. 1 line 7: η_t = α·exp(o_t) scales every step. This runs each θ
on one held-out task (suite.py's, one seed) for each horizon N and draws η_t against the
fraction of training t/N, beside the cosine prior stage 2 starts from (celo.PRIOR_ETA).
"""
import argparse
import json
import sys

import numpy as np

import celo
import checkpoint
import engine
import registry
import suite


def schedules(paths, task_name, horizons, seed=0):
    """{path: {N: η [N]}} of each Celo θ on task_name."""
    task, _ = suite.suite_task(task_name)
    out = {}
    for path in paths:
        name, theta = checkpoint.load_checkpoint(path)
        if name != "celo":
            raise SystemExit(f"error: {path} holds a {name} checkpoint; this plot is for Celo")
        out[path] = {}
        for n in horizons:
            _, etas = engine.run_curves(
                task, lambda th, n=n: registry.make_optax("celo", th, task, n), theta, n, [seed])
            out[path][n] = etas[0]
    return out


def plot(curves, horizons, task_name, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.6), sharey=True,
                             squeeze=False)
    for ax, (ckpt, by_n) in zip(axes[0], curves.items()):
        for n in horizons:
            ax.plot(np.arange(n) / n, by_n[n], lw=1, label=f"N = {n}")
        frac = np.linspace(0, 1, 200)
        ax.plot(frac, np.asarray(celo.prior_eta(frac * 1000, 1000)), "k--", lw=1,
                label="cosine prior (stage 2 start)")
        ax.set_yscale("log")
        ax.set_xlabel("fraction of training t/N")
        ax.set_title(ckpt.split("/")[-1], fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("η_t")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"Celo's learned schedule on {task_name}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", default="checkpoints/celo.npz,checkpoints/celo_paper.npz")
    ap.add_argument("--task", default="fmnist8_mlp_2x128_tanh_bs256")
    ap.add_argument("--horizons", default="300,1000,3000")
    ap.add_argument("--out", default="results/eval/celo_schedule.png")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    try:
        horizons = [int(h) for h in a.horizons.split(",")]
        suite.resolve_tasks(a.task)
        paths = a.checkpoints.split(",")
        curves = schedules(paths, a.task, horizons)
    except (ValueError, suite.EvaluateError, checkpoint.CheckpointError) as e:
        raise SystemExit(f"error: {e}")
    plot(curves, horizons, a.task, a.out)
    for p, by_n in curves.items():
        for n, eta in by_n.items():
            q = [float(eta[int(f * (n - 1))]) for f in (0.0, 0.1, 0.5, 0.9, 1.0)]
            print(f"{p} N={n}: η at t/N = 0, .1, .5, .9, 1: " + ", ".join(f"{x:.3f}" for x in q))
    if a.json:
        with checkpoint.atomic_write(a.json, "w") as f:
            json.dump({p: {str(n): [float(x) for x in e] for n, e in d.items()}
                       for p, d in curves.items()}, f)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    sys.exit(main())
