"""stability.py: does a shipped learned optimizer ever end above where it started?

    python stability.py [--opts celo,celo2,celo2_base] [--tasks validation,test]
                        [--steps 1000,5000] [--seeds 1] [--json results/eval/stability.json]

Every named optimizer, with its shipped θ, trains every held-out task (suite.py's VALIDATION
and TEST suites) for each number of steps, untuned. A run FAILS when its final training loss
(metrics.final_training_loss: EMA, mean of the last 10) is not finite, is not below its loss at
step 0, or has given back more than half of what the run had gained at its best (final − best >
GIVE_BACK·(initial − best), best = the lowest point of the smoothed curve): a run that trained
and then collapsed back towards its start — to chance, say — diverged even if it ends a hair
below where it began. A learned optimizer must never diverge where Adam does not: this is the
check.
Prints one line per run and a summary; exits 1 if any run failed.
"""
import argparse
import json
import sys
import time

import numpy as np

import checkpoint
import evaluate
import metrics
import suite

OPTS = "celo,celo2,celo2_base"
STEPS = "1000,5000"
GIVE_BACK = 0.5


def verdict(losses):
    """(initial, best, final, ok) of training curves [seeds, T], the worst seed's: best is the
    lowest point of the smoothed curve (metrics.ema), final metrics.final_training_loss."""
    smoothed = metrics.ema(losses)
    initial = np.asarray(losses, np.float64)[:, 0]
    best = np.min(smoothed, axis=-1)
    final = metrics.final_loss(smoothed)
    ok = np.isfinite(final) & (final < initial) & (final - best <= GIVE_BACK * (initial - best))
    worst = int(np.argmin(ok)) if not ok.all() else int(np.argmax(final))
    return float(initial[worst]), float(best[worst]), float(final[worst]), bool(ok.all())


def check(opt, names, steps, seeds, log=print):
    """[{opt, task, steps, initial, best, final, ok}] for every task name and step count."""
    theta = evaluate.load_theta(opt)
    rows = []
    for name in names:
        task, _ = suite.suite_task(name)
        task = evaluate.prepare(opt, task)
        for t in steps:
            start = time.time()
            losses, _, _ = evaluate.opt_curves(opt, task, t, list(range(seeds)), theta)
            initial, best, final, ok = verdict(losses)
            rows.append(dict(opt=opt, task=name, steps=t, initial=initial,
                             best=evaluate.finite_or_none(best),
                             final=evaluate.finite_or_none(final), ok=ok))
            log(f"{'ok  ' if ok else 'FAIL'} {opt:>11} {name:<30} {t:>5} steps: "
                f"loss {initial:.4g} → {final:.4g} (best {best:.4g})  "
                f"({time.time() - start:.0f} s)")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--opts", default=OPTS, help="comma-separated learned optimizers")
    ap.add_argument("--tasks", default="validation,test", help="evaluate.py task names or suites")
    ap.add_argument("--steps", default=STEPS, help="comma-separated run lengths")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--json", default="")
    a = ap.parse_args(argv)
    try:
        steps = [int(s) for s in a.steps.split(",")]
        names = [n for spec in a.tasks.split(",") for n in suite.resolve_tasks(spec)]
        opts = [evaluate.check_optimizer(o) for o in a.opts.split(",")]
        if set(opts) - set(evaluate.learned_names()):
            raise ValueError(f"--opts takes learned optimizers: {', '.join(evaluate.learned_names())}")
        if a.seeds < 1 or min(steps) < 1:
            raise ValueError("--seeds and --steps must be >= 1")
        rows = [r for o in opts for r in check(o, names, steps, a.seeds)]
    except (ValueError, evaluate.EvaluateError, checkpoint.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = [r for r in rows if not r["ok"]]
    print(f"{len(rows) - len(failed)}/{len(rows)} runs end below their initial loss, "
          f"keeping at least half of their best progress"
          + "".join(f"\nFAIL {r['opt']} {r['task']} {r['steps']}" for r in failed))
    if a.json:
        with checkpoint.atomic_write(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
