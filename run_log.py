"""run_log.py: what a meta-training run (train.py) shows and leaves beside its checkpoint: the
one-line progress bar with its ETA, the meta-loss log (<run>.csv, rewritten atomically so a resume
never duplicates rows) and its plot (<run>_meta_loss.png, a line at each stage boundary), and
setting an earlier run's files aside so a new run never overwrites them.
"""
import csv
import math
import os
import sys
import time

import numpy as np

from checkpoint import CheckpointError, atomic_write, read_checkpoint


class Progress:
    """One-line progress bar of a stage: meta-step, meta-loss, inner steps per second, ETA. The
    clock starts when the stage's first step is done (that step compiles), so the ETA is the time
    per step after it times the steps left: compilation is not in it."""

    def __init__(self, total, clock=time.time):
        self.total, self.clock, self.t0, self.step0, self.last = total, clock, None, None, 0.0
        self.tty = sys.stderr.isatty()

    def eta(self, step, now):
        """Seconds left at meta-step `step` (NaN until a step after the first is done)."""
        if self.t0 is None or step <= self.step0:
            return float("nan")
        return (now - self.t0) / (step - self.step0) * (self.total - step)

    def update(self, step, loss, inner_per_s, force=False):
        """Call after every meta-step; `step` = meta-steps done. Prints at most every 0.5 s (a
        terminal) or 30 s (a log), and always when `force`."""
        now = self.clock()
        if self.t0 is None:            # the stage's first (compiling) step: start the clock
            self.t0, self.step0 = now, step
            if not force:
                return
        if not force and now - self.last < (0.5 if self.tty else 30.0):
            return
        self.last = now
        eta = self.eta(step, now)
        width = 24
        filled = int(width * step / max(self.total, 1))
        line = (f"[{'#' * filled}{'.' * (width - filled)}] {step}/{self.total} "
                f"meta-loss {loss:.4f}  {inner_per_s:,.0f} inner steps/s  "
                + ("ETA --" if math.isnan(eta) else f"ETA {eta / 60:.1f} min"))
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n",
              file=sys.stderr, flush=True)


def csv_path(path):
    return os.path.splitext(path)[0] + ".csv"


def plot_path(path):
    return os.path.splitext(path)[0] + "_meta_loss.png"


def write_csv(path, rows):
    """Rewrite the whole log atomically (it is small), so a resume never duplicates rows."""
    with atomic_write(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "stage", "meta_loss", "nonfinite", "grad_norm", "seconds"])
        writer.writerows(rows)


def read_csv(path, upto):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        rows = list(csv.reader(f))[1:]
    return [r for r in rows if int(r[0]) < upto]


def stage_starts(rows):
    """[(first meta-step, stage name)] of each stage in a meta-loss log, in order: the plot draws
    a boundary at every start but the first."""
    starts = []
    for r in rows:
        if not starts or r[1] != starts[-1][1]:
            starts.append((int(r[0]), r[1]))
    return starts


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
    starts = stage_starts(rows)
    for i, (first, name) in enumerate(starts if len(starts) > 1 else ()):
        if i:
            ax.axvline(first, color="k", lw=0.8, ls="--")
        ax.text(first, 0.98, f" {name}", transform=ax.get_xaxis_transform(), va="top", fontsize=8)
    ax.set_xlabel("meta-step")
    ax.set_ylabel("meta-loss (normalized inner loss)")
    ax.set_title(os.path.basename(os.path.splitext(path)[0]))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


STAMP = "%Y%m%d-%H%M%S"   # the time a run last saved, in its checkpoint's meta "saved_at"


def run_time(path):
    """When the run at `path` last saved: its checkpoint's meta "saved_at", else (an older or
    unreadable file) the file's mtime, which a fresh clone of the repository resets."""
    try:
        saved_at = read_checkpoint(path)[4].get("saved_at")
    except CheckpointError:
        saved_at = None
    return saved_at or time.strftime(STAMP, time.localtime(os.path.getmtime(path)))


def set_aside(path, log=print):
    """A new run never overwrites an earlier one: an existing checkpoint at `path` (and its CSV and
    plot) is renamed to <name>.<time>.npz etc. first, <time> being that run's (run_time), and the
    move is logged."""
    if not os.path.exists(path):
        return None
    stem, stamp = os.path.splitext(path)[0], run_time(path)
    tag, n = stamp, 0
    while os.path.exists(f"{stem}.{tag}.npz"):     # never overwrite an earlier set-aside run
        n += 1
        tag = f"{stamp}-{n}"
    moved = f"{stem}.{tag}.npz"
    for old, new in ((path, moved), (csv_path(path), f"{stem}.{tag}.csv"),
                     (plot_path(path), f"{stem}.{tag}_meta_loss.png")):
        if os.path.exists(old):
            os.replace(old, new)
    log(f"note: {path} existed and was not resumed: moved to {moved} (use --resume to continue a run)")
    return moved
