"""celo2_experiments.py: Celo2's "meta-train small, run big" test, scaled to a CPU.

Celo2 (Moudgil, Knyazev, Belilovsky, ICLR 2026, arXiv 2602.19142): a learned optimizer
meta-trained on tiny tasks is claimed to train far larger ones. Here celo2 and celo2_base, with the
shipped θ (checkpoints/celo2.npz: the meta-initialization, which beat every meta-trained θ on the
VALIDATION family; celo2_base.npz: meta-trained on Celo's 64 → 32 → 10 MLPs), train byte-level
transformer LMs (tasks.byte_lm on The Devil's Dictionary) of growing size, each at ONE learning
rate chosen on the smallest LM, against AdamW and Muon tuned the same way (the same "tune small,
run big" protocol for every contender):

    python celo2_experiments.py [--quick] [--sizes 16x1,48x1,96x2,160x2] [--steps T] [--seeds S]
                                [--contenders celo2,celo2_base,adamw,muon] [--theta-init]
                                [--constant-baselines] [--out DIR]

Tuning: ADAM_LRS (baselines.py) on the smallest LM, the lr with the lowest mean over seeds of the
final loss (baselines.pick_best, as evaluate.py tunes Adam); that lr at every size. Final loss =
metrics.final_training_loss (EMA 0.9, last 10 steps), mean over seeds; advantage of X over AdamW
= L_adamw / L_X (Celo Eq. (11) with the reused AdamW as reference). Writes OUT/results.json,
OUT/table.md, OUT/loss_vs_steps.png and OUT/final_loss_vs_params.png (--quick: OUT/quick/).
The full run takes ≈ 20 min on 2 CPU cores, ≈ 12 of them compiling (1–2 min per size and learned
contender); a rerun with new checkpoints reuses the compilations (runs/jax_cache: θ is an argument).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import baselines
import celo2
import engine
import evaluate
import metrics
import tasks
from checkpoint import CheckpointError, load_checkpoint

# ----------------------------------------------------------------------------- settings
ROOT = Path(__file__).resolve().parent
OUT = ROOT / "results" / "celo2"   # --out: results.json, table.md, the two plots
SIZES = ((16, 1), (48, 1), (96, 2), (160, 2))  # --sizes: (embed, layers) of each LM: 12,016 →
                                   # 703,616 parameters (59×); every lr is tuned on the smallest
MLP_RATIO = 4                      # hidden = 4 · embed (GPT-2's; the meta-training family's is 2)
HEADS = 2                          # attention heads at every size (the meta-training family's)
CONTEXT = 16                       # bytes per sequence
BATCH_SIZE = 16                    # sequences per step
STEPS = 500                        # --steps: inner steps of every run
SEEDS = 2                          # --seeds: runs per (contender, size); tuned on the same seeds
LRS = baselines.ADAM_LRS           # the lr grid every contender is tuned over (1e-4 … 1e-1)
CONTENDERS = ("celo2", "celo2_base", "adamw", "muon")   # --contenders (adamw is the reference)
LEARNED = tuple(evaluate.LR_OPTIMIZERS)                 # celo2, celo2_base: θ from CHECKPOINTS
CHECKPOINTS = {n: ROOT / "checkpoints" / f"{n}.npz" for n in LEARNED}
COMPILE_CACHE_DIR = evaluate.COMPILE_CACHE_DIR     # persistent XLA cache of full runs (not --quick)
BASELINE_COSINE = True             # --constant-baselines: False. AdamW and Muon decay their lr by
                                   # celo2.cosine_schedule over the run, as celo2 does by default,
                                   # so the comparison is of update rules, not of schedules
# AdamW and Muon are baselines.baseline_tx: optax.adamw(lr, weight_decay=ADAMW_WEIGHT_DECAY = 1e-2),
# optax.contrib.muon(lr) at optax's defaults; celo2 runs with weight decay 0 (celo2.WEIGHT_DECAY).
QUICK = dict(sizes=((8, 1), (16, 1)), steps=12, seeds=1, lrs=(1e-3, 1e-2), out=OUT / "quick",
             contenders=("celo2", "adamw"))  # one learned, one baseline: each (size, learned
                                             # contender) costs ≈ 1 min of compilation on 2 cores


class ExperimentError(Exception):
    """A bad option or checkpoint: main prints `error: <message>` and returns 2."""


# ----------------------------------------------------------------------------- runs

def lm(embed, layers):
    return tasks.byte_lm(context=CONTEXT, embed=embed, hidden=MLP_RATIO * embed, layers=layers,
                         heads=HEADS, batch_size=BATCH_SIZE)


def num_params(task):
    return int(sum(x.size for x in jax.tree.leaves(jax.eval_shape(task.init, jax.random.key(0)))))


def curves(name, task, lrs, cfg, thetas):
    """Training losses [K, N, T] of contender `name` at each lr of `lrs`: one compiled call."""
    seeds, steps = range(cfg["seeds"]), cfg["steps"]
    if name in LEARNED:
        return evaluate.learned_lr_curves(name, task, steps, seeds, thetas[name], lrs)
    scheduled = name + baselines.COSINE if cfg["cosine"] else name
    make = lambda lr: baselines.scheduled_tx(scheduled, lr, steps)
    return engine.run_curves(task, make, jnp.asarray(lrs, jnp.float32), steps, seeds,
                             grid=True, cache_key=("celo2_experiments", name, cfg["cosine"],
                                                   task.init, task.loss, steps))[0]


def run(cfg, thetas, log):
    """{"sizes": [{embed, layers, params, contenders: {name: {lr, finals, losses}}}], "lrs"}:
    every contender tuned on the smallest LM, then run at its lr on each larger one."""
    sizes = [dict(embed=e, layers=l, task=lm(e, l)) for e, l in cfg["sizes"]]
    for s in sizes:
        s["params"] = num_params(s["task"])
    sizes.sort(key=lambda s: s["params"])
    chosen, edge = {}, {}
    for i, s in enumerate(sizes):
        t0 = time.time()
        s["contenders"] = {}
        for name in cfg["contenders"]:
            if i == 0:   # tune: the grid's best (baselines.pick_best: lowest mean final loss)
                tuned = baselines.pick_best(name, s["task"], cfg["lrs"],
                                            curves(name, s["task"], cfg["lrs"], cfg, thetas))
                chosen[name], edge[name] = float(tuned.lrs[tuned.best]), tuned.at_edge
                losses = tuned.best_losses
            else:
                losses = curves(name, s["task"], [chosen[name]], cfg, thetas)[0]
            s["contenders"][name] = dict(lr=chosen[name], losses=np.asarray(losses, np.float64),
                                         finals=metrics.final_training_loss(losses))
        s["seconds"] = time.time() - t0
        log(f"{s['embed']:>4} × {s['layers']}  {s['params']:>9,} params  "
            + "  ".join(f"{n} {c['finals'].mean():.4f}" for n, c in s["contenders"].items())
            + f"  [{s['seconds']:.0f} s]")
    return {"sizes": sizes, "lrs": chosen, "lr_at_grid_edge": edge}


def advantage(size, name, ref="adamw"):
    """L_ref / L_name of the mean (over seeds) final losses; 0 if `name` diverged."""
    c = size["contenders"]
    return float(metrics.normalized_score(c[ref]["finals"].mean(), c[name]["finals"].mean()))


# ----------------------------------------------------------------------------- report

def format_table(res, cfg):
    names = list(cfg["contenders"])
    others = [n for n in names if n != "adamw"]
    small = res["sizes"][0]
    theta = ", ".join(f"{n}: {cfg['theta_source'][n]}" for n in names if n in LEARNED)
    lines = [f"Celo2 scale-up: byte-level LM on The Devil's Dictionary (context {CONTEXT}, batch "
             f"{BATCH_SIZE}, MLP {MLP_RATIO}×, {HEADS} heads), {cfg['steps']} steps, "
             f"{cfg['seeds']} seed{'s' * (cfg['seeds'] > 1)}. One lr per contender, tuned on the "
             f"smallest LM ({small['embed']} × {small['layers']}, {small['params']:,} params) and "
             "reused: "
             + ", ".join(f"{n} {res['lrs'][n]:.3g}" + (" (grid edge)" if
                                                        res["lr_at_grid_edge"][n] else "")
                         for n in names)
             + f". Baselines' lr schedule: {'cosine' if cfg['cosine'] else 'constant'}. "
             + (f"θ: {theta}. " if theta else "")
             + "Final training loss (EMA 0.9, last 10 steps), mean over seeds; "
             "L_adamw / L_X > 1: X beats the reused AdamW.", "",
             "| LM (embed × layers) | params | " + " | ".join(names) + " | "
             + " | ".join(f"L_adamw / L_{n}" for n in others) + " |",
             "|---|---:|" + "---:|" * (len(names) + len(others))]
    for s in res["sizes"]:
        c = s["contenders"]
        means = {n: c[n]["finals"].mean() for n in names}
        best = min(means, key=means.get)
        cells = [(f"**{means[n]:.4f}**" if n == best else f"{means[n]:.4f}") for n in names]
        lines.append(f"| {s['embed']} × {s['layers']} | {s['params']:,} | " + " | ".join(cells)
                     + " | " + " | ".join(f"{advantage(s, n):.3f}" for n in others) + " |")
    return "\n".join(lines)


def to_json(res, cfg, seconds):
    return {"config": {"sizes": [list(x) for x in cfg["sizes"]], "steps": cfg["steps"],
                       "seeds": cfg["seeds"], "lrs": [float(x) for x in cfg["lrs"]],
                       "contenders": list(cfg["contenders"]), "context": CONTEXT,
                       "batch_size": BATCH_SIZE, "mlp_ratio": MLP_RATIO, "heads": HEADS,
                       "baseline_schedule": "cosine" if cfg["cosine"] else "constant",
                       "adamw_weight_decay": baselines.ADAMW_WEIGHT_DECAY,
                       "theta": cfg["theta_source"]},
            "lr": res["lrs"], "lr_at_grid_edge": res["lr_at_grid_edge"], "seconds": round(seconds),
            "sizes": [{"embed": s["embed"], "layers": s["layers"], "params": s["params"],
                       "task": s["task"].name, "seconds": round(s["seconds"], 1),
                       "final_loss": {n: evaluate.finite_or_none(c["finals"].mean())
                                      for n, c in s["contenders"].items()},
                       "final_loss_seeds": {n: [evaluate.finite_or_none(x) for x in c["finals"]]
                                            for n, c in s["contenders"].items()},
                       "advantage_over_adamw": {n: advantage(s, n) for n in s["contenders"]
                                                if n != "adamw"}}
                      for s in res["sizes"]]}


def plot(res, cfg, out_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sizes, names = res["sizes"], list(cfg["contenders"])
    fig, axes = plt.subplots(1, len(sizes), figsize=(3.4 * len(sizes), 3.0), squeeze=False)
    for ax, s in zip(axes[0], sizes):
        for k, n in enumerate(names):
            sm = metrics.ema(s["contenders"][n]["losses"])
            x = np.arange(1, sm.shape[-1] + 1)
            ax.plot(x, sm.mean(0), color=f"C{k}", lw=1.2, label=f"{n} (lr {res['lrs'][n]:.2g})")
            ax.fill_between(x, sm.min(0), sm.max(0), color=f"C{k}", alpha=0.2, lw=0)
        ax.set_title(f"{s['embed']} × {s['layers']}: {s['params']:,} params", fontsize=8)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel(f"training loss (EMA {metrics.EMA_DECAY})", fontsize=8)
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    paths = [Path(out_dir) / "loss_vs_steps.png"]
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    params = [s["params"] for s in sizes]
    for k, n in enumerate(names):
        f = np.array([s["contenders"][n]["finals"] for s in sizes])      # [sizes, seeds]
        f = np.where(np.isfinite(f), f, np.nan)
        ax.errorbar(params, f.mean(1), yerr=[f.mean(1) - f.min(1), f.max(1) - f.mean(1)],
                    color=f"C{k}", marker="o", ms=4, capsize=2, label=n)
    ax.set_xscale("log")
    ax.set_xticks(params, [f"{n:,}" for n in params], fontsize=7)
    ax.minorticks_off()
    ax.set_xlabel("parameters")
    ax.set_ylabel("final training loss")
    ax.set_title(f"lr tuned at {params[0]:,} params, reused", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(Path(out_dir) / "final_loss_vs_params.png")
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)
    return paths


# ----------------------------------------------------------------------------- main

def load_thetas(names, init, log):
    """θ of each learned contender from CHECKPOINTS; celo2.init_meta_params (the meta-init: Muon
    on m_0.9 / Adam's m/√v, untrained) with --theta-init or when a checkpoint file is missing."""
    thetas, source = {}, {}
    for name in names:
        path = CHECKPOINTS[name]
        if init or not path.exists():
            thetas[name] = celo2.init_meta_params(jax.random.PRNGKey(0), name == "celo2")
            source[name] = "init_meta_params"
            log(f"note: {name} runs its meta-initialization (celo2.init_meta_params), not a "
                f"meta-trained θ" + ("" if init else f": {_shown(path)} is missing"))
            continue
        try:
            saved, thetas[name] = load_checkpoint(str(path))
        except CheckpointError as e:
            raise ExperimentError(str(e)) from None
        if saved != name:
            raise ExperimentError(f"{path} holds optimizer {saved!r}, not {name!r}")
        source[name] = _shown(path)
    return thetas, source


def _shown(path):
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def parse_sizes(text):
    """'24x1,64x2' → ((24, 1), (64, 2)); embed a positive multiple of HEADS, layers ≥ 1."""
    try:
        sizes = tuple(tuple(int(v) for v in item.lower().split("x")) for item in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or any(len(s) != 2 or s[0] < 1 or s[1] < 1 or s[0] % HEADS for s in sizes):
        raise ExperimentError(f"--sizes takes EMBEDxLAYERS pairs like 24x1,64x2 (embed a "
                              f"multiple of {HEADS}, layers >= 1), got {text!r}")
    return tuple(dict.fromkeys(sizes))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 tiny LMs, a few steps (smoke test)")
    p.add_argument("--sizes", help="EMBEDxLAYERS,... (default: "
                   + ",".join(f"{e}x{l}" for e, l in SIZES) + ")")
    p.add_argument("--steps", type=int)
    p.add_argument("--seeds", type=int)
    p.add_argument("--contenders", help=f"comma-separated, from {','.join(CONTENDERS)}")
    p.add_argument("--theta-init", action="store_true",
                   help="celo2 and celo2_base run their meta-initialization, not checkpoints")
    p.add_argument("--constant-baselines", action="store_true",
                   help="AdamW and Muon at a constant lr (default: cosine decay, as celo2)")
    p.add_argument("--out")
    a = p.parse_args(argv)
    cfg = dict(sizes=SIZES, steps=STEPS, seeds=SEEDS, lrs=LRS, out=OUT, contenders=CONTENDERS,
               cosine=BASELINE_COSINE and not a.constant_baselines)
    if a.quick:
        cfg.update(QUICK)
    for k in ("steps", "seeds", "out"):
        if getattr(a, k) is not None:
            cfg[k] = getattr(a, k)
    log = lambda msg: print(msg, flush=True)
    try:
        if cfg["steps"] < 1 or cfg["seeds"] < 1:
            raise ExperimentError(f"--steps and --seeds must be >= 1, got {cfg['steps']} and "
                                  f"{cfg['seeds']}")
        if a.sizes is not None:
            cfg["sizes"] = parse_sizes(a.sizes)
        if a.contenders is not None:
            cfg["contenders"] = tuple(dict.fromkeys(c.strip() for c in a.contenders.split(",")))
            bad = [c for c in cfg["contenders"] if c not in CONTENDERS]
            if bad or "adamw" not in cfg["contenders"]:
                raise ExperimentError(f"--contenders takes names from {', '.join(CONTENDERS)}, "
                                      f"adamw (the reference) included, got {a.contenders!r}")
        thetas, cfg["theta_source"] = load_thetas(
            [n for n in cfg["contenders"] if n in LEARNED], a.theta_init,
            lambda msg: print(msg, file=sys.stderr, flush=True))
    except ExperimentError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if COMPILE_CACHE_DIR and not a.quick:  # a rerun (e.g. with new θ) skips XLA compilation
        jax.config.update("jax_compilation_cache_dir", str(COMPILE_CACHE_DIR))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    out_dir = Path(cfg["out"])
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    try:
        res = run(cfg, thetas, log)
    except evaluate.EvaluateError as e:   # e.g. a contender diverged at every lr of the grid
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = format_table(res, cfg)
    print()
    print(table)
    (out_dir / "table.md").write_text(table + "\n")
    (out_dir / "results.json").write_text(json.dumps(to_json(res, cfg, time.time() - start),
                                                     indent=1))
    for path in plot(res, cfg, out_dir):
        log(f"wrote {path}")
    log(f"total {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
