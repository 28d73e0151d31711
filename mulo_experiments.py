"""mulo_experiments.py: the μLO paper's experiments, scaled to a CPU, one command each.

    python mulo_experiments.py width   [--quick]   # §5.2.3, Fig. 3a: final loss vs width
    python mulo_experiments.py depth   [--quick]   # §5.2.4, Fig. 5: MLPs up to 16 layers deep
    python mulo_experiments.py horizon [--quick]   # §5.2.4, Fig. 6: 25× the meta-training horizon
    python mulo_experiments.py coord   [--quick]   # §5.2.2, Fig. 2 / App. G: μP coordinate check
    python mulo_experiments.py step    [--quick]   # λ1 × f at each width: does the step transfer?
    (any of them: [--widths 16,64,256,1024] [--steps N] [--seeds S] to resize a run)

μLO (arXiv 2406.00153) §5. Optimizers: μLO_M (checkpoints/mu_small_fc_lopt.npz) and its SP twin LO_M
(checkpoints/sp_small_fc_lopt.npz), both meta-trained by `python train.py --opt NAME` on widths
mup.META_WIDTHS; Celo with its published θ (an SP learned optimizer); Adam tuned per task over
baselines.ADAM_LRS on the SP model; μAdam tuned once at the largest meta-training width and
transferred. Final loss = the training loss (EMA 0.9) averaged over the last 10 steps
(metrics.final_loss), per seed; tables give the IQM over seeds with a 95% bootstrap CI
(metrics.iqm, metrics.confidence_interval). Writes results/mulo/{experiment}.json and .png
(--quick: results/mulo/quick/, fewer widths, steps and seeds).
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import baselines
import engine
import evaluate
import metrics
import mup
import registry

# ----------------------------------------------------------------------------- settings
OUT_DIR = Path(__file__).resolve().parent / "results" / "mulo"
SEEDS = 5                  # runs per (optimizer, task): the paper's 5
LEARNED = ("mu_small_fc_lopt", "sp_small_fc_lopt", "celo")   # registry names; θ from checkpoints/
CHECKPOINTS = {"celo": Path(__file__).resolve().parent / "checkpoints" / "celo_paper.npz"}
                           # Celo: the published θ (not our CPU-trained checkpoints/celo.npz)
BASE_WIDTH = max(mup.META_WIDTHS)   # μAdam is tuned here (the paper: the largest meta-train width)
WIDTHS = (16, 32, 64, 128, 256, 512, 1024)   # up to 16× the largest meta-training width (64)
STEPS = 1000               # inner steps = the meta-training maximum horizon (the paper: 1000)
DEPTHS = (3, 4, 6, 8, 12, 16)  # hidden layers at width BASE_WIDTH (the paper: 3 … 16 at 1024)
HORIZON = 25 * 1000        # 25× the longest meta-training run (the paper: 25,000 steps)
MU_ADAM_LRS = tuple(float(10.0 ** e) for e in np.arange(-3.5, 0.01, 0.5))  # 3e-4 … 1: μAdam's
                           #   input/output lr is not divided by width, its best lr is larger
STEP_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)   # step experiment: λ1 × f at evaluation time
STEP_WIDTHS = (64, 256, 1024)              # ... at these widths (the step experiment's default)
COORD_WIDTHS = (32, 64, 128, 256, 512, 1024, 2048)
COORD_STEPS = 20           # "a few optimizer steps": Δz is measured after each of them
COORD_SEEDS = 3
COORD_ADAM_LR = 1e-3       # Adam / μAdam in the coordinate check (a reference, not tuned)
COORD_TOLERANCE = 0.25     # |slope of log Δz vs log width| below this counts as flat
QUICK = dict(widths=(16, 64, 256), steps=200, seeds=2, depths=(3, 8), horizon=2000,
             coord_widths=(32, 128, 512), coord_steps=5, coord_seeds=2,
             step_widths=(16, 64), step_factors=(0.5, 1.0, 2.0))


# ----------------------------------------------------------------------------- runs

class Runner:
    """Training curves [seeds, steps] of every optimizer on an SP task from tasks.py (each
    learned optimizer gets the task as its registry prepares it: μ-variants in μP)."""

    def __init__(self, seeds, log):
        self.seeds, self.log = list(range(seeds)), log
        self.thetas, self.mu_adam_lr = {}, None
        for name in LEARNED:
            try:
                self.thetas[name] = evaluate.load_theta(name, CHECKPOINTS.get(name))
            except evaluate.EvaluateError as e:
                log(f"skipping {name}: {e}")

    @property
    def methods(self):
        return list(self.thetas) + ["adam", "mu_adam"]

    def curves(self, method, task, steps):
        start = time.time()
        extra = {}
        if method == "adam":
            tuned = baselines.tune_baseline(task, "adam", steps, self.seeds)
            losses, extra["lr"] = tuned.best_losses, float(tuned.lrs[tuned.best])
            extra["lr_at_grid_edge"] = tuned.at_edge
        elif method == "mu_adam":
            if self.mu_adam_lr is None:
                raise RuntimeError("tune_mu_adam first")
            losses = self.mu_adam(task, steps, [self.mu_adam_lr])[0]
            extra["lr"] = self.mu_adam_lr
        else:
            prepared = registry.prepare_task(method, task)
            losses = evaluate.opt_curves(method, prepared, steps, self.seeds,
                                         self.thetas[method])[0]
        self.log(f"  {method:<17} {task.name}: {time.time() - start:6.1f}s")
        return np.asarray(losses), extra

    def mu_adam(self, task, steps, lrs):
        """μAdam losses [K, seeds, steps] for each lr on the μ version of `task`."""
        mu = mup.mu_task(task)
        make = lambda lr: optax.with_extra_args_support(mup.adam_m(lr, mu.multipliers))
        return engine.run_curves(mu, make, jnp.asarray(lrs, jnp.float32), steps, self.seeds,
                                 grid=True)[0]

    def tune_mu_adam(self, task, steps):
        """μAdam's lr: the best of MU_ADAM_LRS on `task` (μP: it transfers over width)."""
        losses = self.mu_adam(task, steps, MU_ADAM_LRS)
        finals = metrics.final_training_loss(losses).mean(-1)   # +inf where diverged
        self.mu_adam_lr = float(MU_ADAM_LRS[int(np.argmin(finals))])
        self.log(f"  mu_adam lr {self.mu_adam_lr:g} (tuned on {task.name})")


def summarize(finals, cap):
    """IQM over seeds with its 95% bootstrap CI; runs above the loss cap count as diverged."""
    f = np.where(np.isfinite(finals), finals, np.inf)
    out = {"finals": [float(x) if math.isfinite(x) else None for x in f],
           "diverged": int(np.sum(~(f < cap)))}
    if np.isfinite(f).all():
        out["iqm"] = float(metrics.iqm(f[None, :]))
        out["ci95"] = list(metrics.confidence_interval(f[None, :], metrics.iqm))
    else:
        out["iqm"], out["ci95"] = None, None
    return out


def fmt(entry):
    if entry["iqm"] is None or entry["diverged"] * 2 > len(entry["finals"]):
        return "diverged"
    lo, hi = entry["ci95"]
    return f"{entry['iqm']:.3f} [{lo:.3f}, {hi:.3f}]"


def sweep(runner, task_of, values, steps, label):
    """results[method][str(value)] = summary (+ mean curve) for every method and value."""
    results = {m: {} for m in runner.methods}
    for v in values:
        task = task_of(v)
        runner.log(f"{label} {v}: {task.name}")
        for m in runner.methods:
            losses, extra = runner.curves(m, task, steps)
            entry = summarize(metrics.final_training_loss(losses), task.loss_cap)
            entry.update(extra)
            smooth = metrics.ema(losses)
            entry["mean_curve"] = _thin(np.where(np.isfinite(smooth), smooth, np.nan).mean(0))
            results[m][str(v)] = entry
    return results


def _thin(curve, points=200):
    idx = np.unique(np.geomspace(1, len(curve), points).astype(int) - 1)
    return {"step": (idx + 1).tolist(),
            "loss": [None if not np.isfinite(x) else float(x) for x in curve[idx]]}


def table(results, values, label):
    width = max(len(m) for m in results) + 2
    head = f"{'optimizer':<{width}}" + "".join(f"{label} {v}".rjust(24) for v in values)
    rows = [head] + [f"{m:<{width}}" + "".join(fmt(r[str(v)]).rjust(24) for v in values)
                     for m, r in results.items()]
    return "\n".join(rows)


LABELS = {"mu_small_fc_lopt": "μLO_M (ours)", "sp_small_fc_lopt": "LO_M (SP twin)",
          "celo": "Celo (published θ, SP)", "adam": "Adam (tuned per task)",
          "mu_adam": f"μAdam (tuned at width {BASE_WIDTH})"}


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_sweep(results, values, xlabel, path, title, shade=None, cap=None, logx=True):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    diverged = []
    for i, (m, r) in enumerate(results.items()):
        xs, ys, lo, hi = [], [], [], []
        for v in values:
            e = r[str(v)]
            if e["iqm"] is None or e["diverged"] * 2 > len(e["finals"]):
                diverged.append((v, i))
                continue
            xs.append(v), ys.append(e["iqm"]), lo.append(e["ci95"][0]), hi.append(e["ci95"][1])
        ax.errorbar(xs, ys, yerr=[np.subtract(ys, lo), np.subtract(hi, ys)], marker="o",
                    capsize=3, color=f"C{i}", label=LABELS.get(m, m))
    if shade:
        ax.axvspan(*shade, color="grey", alpha=0.15, lw=0, label="meta-training")
    if diverged:   # drawn on the top edge, so a diverged run does not squash the axis
        top = ax.get_ylim()[1]
        for v, i in diverged:
            ax.scatter([v], [top], marker="x", s=70, color=f"C{i}", clip_on=False, zorder=5)
        ax.set_ylim(top=top)
        ax.set_title(f"{title}\n× on the top edge: diverged (final loss ≥ {cap:.2f} or NaN)",
                     fontsize=9)
    else:
        ax.set_title(title, fontsize=9)
    if logx:
        ax.set_xscale("log", base=2)
    ax.set_yscale("log")            # a diverging optimizer does not flatten the others' curves
    ax.set_xticks(values)
    ax.set_xticklabels([str(v) for v in values])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("final training loss (IQM over seeds, 95% CI)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write(out_dir, name, result, log):
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=1))
    log(f"wrote {out_dir / (name + '.json')}")


# ----------------------------------------------------------------------------- experiments

def width_experiment(q, out_dir, log):
    """§5.2.3 / Fig. 3a: the d3 MLP at every width, trained STEPS steps by each optimizer."""
    runner = Runner(q["seeds"], log)
    runner.tune_mu_adam(mup.width_task(BASE_WIDTH), q["steps"])
    results = sweep(runner, mup.width_task, q["widths"], q["steps"], "width")
    cap = mup.width_task(BASE_WIDTH).loss_cap
    plot_sweep(results, q["widths"], "width of the 3 hidden layers", out_dir / "width.png",
               f"Fashion-MNIST 8×8 MLP (depth 3), {q['steps']} steps, {q['seeds']} seeds",
               shade=(min(mup.META_WIDTHS), max(mup.META_WIDTHS)), cap=cap)
    write(out_dir, "width", {"steps": q["steps"], "seeds": q["seeds"], "results": results}, log)
    return table(results, q["widths"], "w")


def depth_experiment(q, out_dir, log):
    """§5.2.4 / Fig. 5: deeper MLPs at the largest meta-training width."""
    runner = Runner(q["seeds"], log)
    task_of = lambda d: mup.width_task(BASE_WIDTH, depth=d)._replace(
        name=mup.task_name(BASE_WIDTH, d))
    runner.tune_mu_adam(task_of(mup.DEPTH), q["steps"])
    results = sweep(runner, task_of, q["depths"], q["steps"], "depth")
    plot_sweep(results, q["depths"], "hidden layers (width 64)", out_dir / "depth.png",
               f"Fashion-MNIST 8×8 MLP, width {BASE_WIDTH}, {q['steps']} steps, "
               f"{q['seeds']} seeds; meta-trained at depth {mup.DEPTH}",
               cap=task_of(mup.DEPTH).loss_cap, logx=False)
    write(out_dir, "depth", {"steps": q["steps"], "seeds": q["seeds"], "results": results}, log)
    return table(results, q["depths"], "d")


def horizon_experiment(q, out_dir, log):
    """§5.2.4 / Fig. 6: the width-64 d3 MLP trained 25× longer than any meta-training run."""
    runner = Runner(q["seeds"], log)
    task = mup.width_task(BASE_WIDTH)
    runner.tune_mu_adam(task, q["horizon"])
    results = sweep(runner, lambda _: task, [q["horizon"]], q["horizon"], "steps")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (m, r) in enumerate(results.items()):
        c = r[str(q["horizon"])]["mean_curve"]
        ax.plot(c["step"], [np.nan if y is None else y for y in c["loss"]], color=f"C{i}",
                label=LABELS.get(m, m))
    ax.axvline(dict(mup.TRAIN_SETTINGS)["max_horizon"], color="red", ls=":", lw=1,
               label="longest meta-training run")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (EMA 0.9, mean over seeds)")
    ax.set_title(f"MLP 64→{BASE_WIDTH}³→10, {q['horizon']} steps, {q['seeds']} seeds",
                 fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "horizon.png", dpi=90)
    plt.close(fig)
    checkpoints = [s for s in (1000, 5000, q["horizon"]) if s <= q["horizon"]]
    for m, r in results.items():
        c = r[str(q["horizon"])]["mean_curve"]
        r["loss_at"] = {str(s): _at(c, s) for s in checkpoints}
    write(out_dir, "horizon", {"steps": q["horizon"], "seeds": q["seeds"], "results": results},
          log)
    lines = [table(results, [q["horizon"]], "T"), "",
             "mean smoothed loss at step " + ", ".join(map(str, checkpoints))]
    for m, r in results.items():
        lines.append(f"  {m:<18}" + "".join(
            f"{'—' if v is None else format(v, '.3f'):>10}" for v in r["loss_at"].values()))
    return "\n".join(lines)


def step_experiment(q, out_dir, log):
    """Does the learned optimizer's step size transfer over width? μLO_M and its SP twin run with
    λ1 × f (f ∈ STEP_FACTORS, set at evaluation time, θ unchanged) at each width; μP predicts
    the same best f at every width, SP a best f that shrinks as the width grows (μLO §4: the
    SP update of a hidden layer is fan_in times too large; cf. Yang et al. 2021, Fig. 1)."""
    runner = Runner(q["seeds"], log)
    out = {}
    for name, scalings in (("mu_small_fc_lopt", mup.MU), ("sp_small_fc_lopt", mup.SP)):
        if name not in runner.thetas:
            continue
        out[name] = {}
        for w in q["step_widths"]:
            task = registry.prepare_task(name, mup.width_task(w))
            row = {}
            for f in q["step_factors"]:
                lo = mup.small_fc_lopt_m(task.multipliers,
                                         scalings._replace(step_mult=scalings.step_mult * f))
                losses = evaluate.opt_curves(lo.optimizer(runner.thetas[name], q["steps"]), task,
                                             q["steps"], runner.seeds)[0]
                row[str(f)] = summarize(metrics.final_training_loss(losses), task.loss_cap)
            finite = {f: e["iqm"] for f, e in row.items() if e["iqm"] is not None}
            row["best_factor"] = float(min(finite, key=finite.get)) if finite else None
            out[name][str(w)] = row
            log(f"  {name} w {w}: best f = {row['best_factor']}")
    plt = _plt()
    fig, axes = plt.subplots(1, len(out), figsize=(4.6 * len(out), 3.6), squeeze=False)
    for ax, (name, by_w) in zip(axes[0], out.items()):
        for i, (w, row) in enumerate(by_w.items()):
            fs = [f for f in q["step_factors"] if row[str(f)]["iqm"] is not None]
            ax.plot(fs, [row[str(f)]["iqm"] for f in fs], marker="o", color=f"C{i}",
                    label=f"width {w}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("step multiplier f (λ1 × f)")
        ax.set_title(LABELS.get(name, name), fontsize=10)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("final training loss (IQM over seeds)")
    fig.suptitle(f"MLP 64→w³→10, {q['steps']} steps, {q['seeds']} seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_dir / "step.png", dpi=90)
    plt.close(fig)
    write(out_dir, "step", {"steps": q["steps"], "seeds": q["seeds"], "results": out}, log)
    return "\n".join(f"{LABELS.get(n, n):<18}" + "".join(
        f"   w {w}: best f {row['best_factor']}" for w, row in by_w.items())
        for n, by_w in out.items())


def _at(curve, step):
    i = int(np.searchsorted(curve["step"], step))
    return curve["loss"][min(i, len(curve["loss"]) - 1)]


# ----------------------------------------------------------------------------- coordinate check

def preactivations(params, x, depth, forward):
    """Pre-activations z_1 … z_D and the logits z_{D+1} of an MLP laid out as tasks.image_mlp
    (ReLU), with μP forward multipliers (mup.multiplier_table of scalings.forward)."""
    h = x.reshape(x.shape[0], -1)
    zs = []
    for i in range(depth + 1):
        w, b = f"l{i}/w", f"l{i}/b"
        z = h @ (params[w] * forward[w]) + params[b] * forward[b]
        zs.append(z)
        h = jax.nn.relu(z)
    return zs


def _rms(x):
    return jnp.sqrt(jnp.mean(jnp.square(x)))


def coord_sizes(task_sp, scalings, make_tx, steps, seeds):
    """The μP coordinate check (Yang et al. 2021 App. D.1; μLO Fig. 2): train `task_sp` in
    `scalings` with make_tx(multipliers) for `steps` steps and return, per step t = 1 … steps and
    per layer, the RMS over the coordinates (one fixed probe batch × units) of Δz = z(p_t) − z(p_0)
    ("update size") and of z(p_t) ("activation size"), averaged over seeds: two arrays
    [steps, depth + 1]."""
    task = mup.parametrize(task_sp, scalings)
    table = mup.task_layer_table(task_sp)
    forward = mup.multiplier_table(table, scalings.forward)
    depth = sum(1 for info in table.values() if info.kind in ("input", "hidden"))
    tx = make_tx(task.multipliers)

    def run(data, key, probe_key):
        k_init, k_data = jax.random.split(key)
        x = task.sample_batch(data, probe_key)["x"]
        params = task.init(k_init)
        z0 = preactivations(params, x, depth, forward)

        def body(carry, t):
            params, state = carry
            batch = task.sample_batch(data, jax.random.fold_in(k_data, t))
            loss, grads = jax.value_and_grad(task.loss)(params, batch)
            updates, state = tx.update(grads, state, params, value=loss)
            params = optax.apply_updates(params, updates)
            z = preactivations(params, x, depth, forward)
            return (params, state), (jnp.stack([_rms(a - b) for a, b in zip(z, z0)]),
                                     jnp.stack([_rms(a) for a in z]))

        _, out = jax.lax.scan(body, (params, tx.init(params)), jnp.arange(steps))
        return out

    keys = jnp.stack([jax.random.key(s) for s in range(seeds)])
    probe = jax.random.key(10 ** 6)   # the same probe images for every seed and width
    dz, act = jax.jit(jax.vmap(run, (None, 0, None)))(task.data, keys, probe)
    return np.asarray(dz).mean(0), np.asarray(act).mean(0)


def slopes(widths, sizes):
    """Least-squares slope of log size against log width, per trailing index: sizes [W, ...]."""
    x = np.log(np.asarray(widths, np.float64))
    y = np.log(np.maximum(np.asarray(sizes, np.float64), 1e-30)).reshape(len(widths), -1)
    slope = np.polyfit(x, y, 1)[0]
    return slope.reshape(np.shape(sizes)[1:])


def coord_optimizers(thetas):
    """name -> (scalings, make_tx(multipliers)) for the coordinate check."""
    out = {}
    for name, scalings in (("mu_small_fc_lopt", mup.MU), ("sp_small_fc_lopt", mup.SP)):
        if name in thetas:
            theta = thetas[name]
            out[name] = (scalings, lambda mult, s=scalings, th=theta:
                         mup.small_fc_lopt_m(mult, s).optimizer(th, 1000))
    out["mu_adam"] = (mup.MU, lambda mult: optax.with_extra_args_support(
        mup.adam_m(COORD_ADAM_LR, mult)))
    out["adam"] = (mup.SP, lambda mult: optax.with_extra_args_support(optax.adam(COORD_ADAM_LR)))
    return out


def coord_experiment(q, out_dir, log):
    """§5.2.2 / Fig. 2 and App. G: Δz and z per layer over widths after a few steps."""
    thetas = {}
    for name in ("mu_small_fc_lopt", "sp_small_fc_lopt"):
        try:
            thetas[name] = evaluate.load_theta(name)
        except evaluate.EvaluateError as e:
            log(f"skipping {name}: {e}")
    widths, steps = q["coord_widths"], q["coord_steps"]
    results = {}
    for name, (scalings, make_tx) in coord_optimizers(thetas).items():
        dzs, acts = [], []
        for w in widths:
            start = time.time()
            dz, act = coord_sizes(mup.width_task(w), scalings, make_tx, steps, q["coord_seeds"])
            dzs.append(dz), acts.append(act)
            log(f"  {name:<17} width {w}: {time.time() - start:.1f}s")
        dzs, acts = np.stack(dzs), np.stack(acts)          # [W, T, L]
        results[name] = {"delta_z": dzs.tolist(), "z": acts.tolist(),
                         "slope_delta_z": slopes(widths, dzs[:, -1]).tolist(),
                         "slope_z": slopes(widths, acts[:, -1]).tolist()}
    layers = [f"z{i + 1}" for i in range(mup.DEPTH)] + ["logits"]
    plot_coord(results, widths, steps, layers, out_dir / "coord.png")
    write(out_dir, "coord", {"widths": list(widths), "steps": steps, "layers": layers,
                             "tolerance": COORD_TOLERANCE, "results": results}, log)
    lines = [f"slope of log RMS(Δz) vs log width after {steps} steps (flat: |slope| < "
             f"{COORD_TOLERANCE}); in brackets the slope of log RMS(z)",
             f"{'optimizer':<18}" + "".join(f"{l:>16}" for l in layers)]
    for name, r in results.items():
        lines.append(f"{name:<18}" + "".join(
            f"{a:>+8.2f} [{b:+.2f}]" for a, b in zip(r["slope_delta_z"], r["slope_z"])))
    return "\n".join(lines)


COORD_LABELS = {"mu_adam": f"μAdam (lr {COORD_ADAM_LR:g})", "adam": f"Adam (lr {COORD_ADAM_LR:g})"}


def plot_coord(results, widths, steps, layers, path):
    plt = _plt()
    fig, axes = plt.subplots(2, len(results), figsize=(3.2 * len(results), 5.6), squeeze=False)
    for c, (name, r) in enumerate(results.items()):
        for row, key, ylabel in ((0, "delta_z", "RMS(Δz) after t steps"),
                                 (1, "z", "RMS(z) after t steps")):
            ax = axes[row, c]
            sizes = np.asarray(r[key])                     # [W, T, L]
            for l, layer in enumerate(layers):
                ax.plot(widths, sizes[:, -1, l], marker="o", color=f"C{l}",
                        label=f"{layer} (t={steps})")
                ax.plot(widths, sizes[:, 0, l], ls=":", color=f"C{l}", alpha=0.6)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(COORD_LABELS.get(name, LABELS.get(name, name)), fontsize=8)
            ax.set_xlabel("width", fontsize=7)
            ax.set_ylabel(ylabel, fontsize=7)
            ax.tick_params(labelsize=6)
    axes[0, 0].legend(fontsize=6, title="dotted: t = 1", title_fontsize=6)
    fig.suptitle("μP coordinate check: flat lines = width-independent coordinates", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ----------------------------------------------------------------------------- command line

EXPERIMENTS = {"width": width_experiment, "depth": depth_experiment,
               "horizon": horizon_experiment, "coord": coord_experiment, "step": step_experiment}


def settings(quick):
    full = dict(widths=WIDTHS, steps=STEPS, seeds=SEEDS, depths=DEPTHS, horizon=HORIZON,
                coord_widths=COORD_WIDTHS, coord_steps=COORD_STEPS, coord_seeds=COORD_SEEDS,
                step_widths=STEP_WIDTHS, step_factors=STEP_FACTORS)
    return {**full, **QUICK} if quick else full


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("experiment", choices=sorted(EXPERIMENTS))
    p.add_argument("--quick", action="store_true", help="a few minutes: fewer widths/steps/seeds")
    p.add_argument("--widths", help="comma-separated widths (width and step experiments), "
                                    "e.g. 16,64,256,1024")
    p.add_argument("--steps", type=int, help="inner steps per run")
    p.add_argument("--seeds", type=int, help="runs per (optimizer, task)")
    args = p.parse_args(argv)
    q = settings(args.quick)
    if args.widths:
        q["widths"] = q["step_widths"] = tuple(int(w) for w in args.widths.split(","))
    q.update({k: v for k, v in (("steps", args.steps), ("seeds", args.seeds)) if v})
    if evaluate.COMPILE_CACHE_DIR:
        jax.config.update("jax_compilation_cache_dir", str(evaluate.COMPILE_CACHE_DIR))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    out_dir = OUT_DIR / "quick" if args.quick else OUT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    start = time.time()
    print(EXPERIMENTS[args.experiment](q, out_dir, log))
    log(f"done in {(time.time() - start) / 60:.1f} min; plot: {out_dir / args.experiment}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
