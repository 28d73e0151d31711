"""metrics.py: the scores and aggregate statistics of evaluate.py, in numpy.

Celo (Moudgil et al. 2025, arXiv 2501.12670) §5.4 and App. A.3: EMA-smoothed training loss,
final loss, normalized score s = L_adam / L_opt (Eq. (11)), speedup s = T / T_opt (Eq. (12)).
rliable (Agarwal et al. 2021, arXiv 2108.13264): IQM, median, mean, optimality gap and
stratified-bootstrap CIs. Score matrices are [..., M tasks, N seeds]; leading axes are batches.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

# Celo App. A.3 and §5.4; rliable's defaults for the statistics
EMA_DECAY = 0.9            # "exponential moving average with coefficient 0.9" (Celo App. A.3)
FINAL_WINDOW = 10          # final loss = mean over the last 10 batches (Celo App. A.3)
SCORE_FLOOR = 1e-12        # L_opt below this counts as this (all our losses are >= 0; guard only)
BOOTSTRAP_REPS = 2000      # stratified bootstrap replications (rliable: 50,000; CPU-cheap)
BOOTSTRAP_SEED = 0         # fixed: the CIs are deterministic
CI_LEVEL = 0.95            # 95% percentile intervals (rliable's default method)
IQM_TRIM = 0.25            # IQM drops the top and bottom 25% (Agarwal et al. 2021)
OPTIMALITY_TARGET = 1.0    # optimality gap γ: tuned Adam's score (Celo §5.4)


def ema(losses, decay: float = EMA_DECAY) -> np.ndarray:
    """Smoothed curve along the last axis: y_0 = x_0, y_t = decay·y_{t−1} + (1 − decay)·x_t.

    Celo App. A.3 (coefficient 0.9). Non-finite losses (a diverged run) become +inf, and stay
    +inf from there on: such a run never reaches a target and its final loss is +inf.
    """
    x = np.asarray(losses, np.float64)
    x = np.where(np.isfinite(x), x, np.inf)
    out = np.empty_like(x)
    acc = x[..., 0]
    out[..., 0] = acc
    for t in range(1, x.shape[-1]):
        acc = decay * acc + (1.0 - decay) * x[..., t]
        out[..., t] = acc
    return out


def final_loss(smoothed, window: int = FINAL_WINDOW) -> np.ndarray:
    """Mean of the last `window` values of a smoothed curve (Celo App. A.3: 10 batches)."""
    smoothed = np.asarray(smoothed, np.float64)
    return smoothed[..., -min(window, smoothed.shape[-1]):].mean(-1)


def final_training_loss(losses) -> np.ndarray:
    """Final loss of raw training curves [..., T]: EMA(0.9), then the mean of the last 10 (Celo
    App. A.3); +inf for a diverged run."""
    return final_loss(ema(losses))


def steps_to_reach(smoothed, target) -> np.ndarray:
    """T_opt: the first step t (1-based: the curve's entry i is step i + 1) with smoothed loss
    <= target; 0 where it is never reached (T_opt = ∞ in Celo §4)."""
    hit = np.asarray(smoothed) <= np.asarray(target)[..., None]
    return np.where(hit.any(-1), hit.argmax(-1) + 1, 0)


def speedup(smoothed, target) -> np.ndarray:
    """s = T / T_opt (Celo Eq. (12)); 0 where tuned Adam's final loss is never reached."""
    t_opt = steps_to_reach(smoothed, target)
    steps = np.asarray(smoothed).shape[-1]
    return np.where(t_opt > 0, steps / np.maximum(t_opt, 1), 0.0)


def normalized_score(adam_final, opt_final) -> np.ndarray:
    """s = L_adam / L_opt (Celo Eq. (11)). Our losses are >= 0; L_opt is floored at SCORE_FLOOR
    so an exact 0 cannot divide by zero, and a diverged run (L_opt = ∞ or NaN) scores 0."""
    opt_final = np.asarray(opt_final, np.float64)
    ok = np.isfinite(opt_final)
    return np.where(ok, np.asarray(adam_final, np.float64)
                    / np.maximum(np.where(ok, opt_final, 1.0), SCORE_FLOOR), 0.0)


def iqm(scores, trim: float = IQM_TRIM) -> np.ndarray:
    """Interquartile mean of all M×N scores: sort, drop int(trim·MN) at each end, average the
    rest (scipy.stats.trim_mean(·, 0.25, axis=None), as rliable's aggregate_iqm)."""
    s = np.asarray(scores, np.float64)
    flat = np.sort(s.reshape(s.shape[:-2] + (-1,)), axis=-1)
    n = flat.shape[-1]
    cut = int(trim * n)
    return flat[..., cut:n - cut].mean(-1)


def median(scores) -> np.ndarray:
    """Median over tasks of the per-task mean over seeds (rliable's aggregate_median)."""
    return np.median(np.asarray(scores, np.float64).mean(-1), axis=-1)


def mean(scores) -> np.ndarray:
    """Mean over tasks of the per-task mean over seeds (rliable's aggregate_mean)."""
    return np.asarray(scores, np.float64).mean(-1).mean(-1)


def optimality_gap(scores, target: float = OPTIMALITY_TARGET) -> np.ndarray:
    """γ − mean(min(s, γ)) over all M×N scores, γ = 1 (Celo §5.4; rliable's aggregate_og)."""
    s = np.minimum(np.asarray(scores, np.float64), target)
    return target - s.reshape(s.shape[:-2] + (-1,)).mean(-1)


METRICS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "iqm": iqm, "median": median, "mean": mean, "optimality_gap": optimality_gap}


def stratified_bootstrap(scores, reps: int = BOOTSTRAP_REPS, seed: int = BOOTSTRAP_SEED
                         ) -> np.ndarray:
    """[reps, M, N] resamples: for every task independently, N seeds drawn with replacement
    from its own N (rliable's StratifiedBootstrap with task_bootstrap=False)."""
    s = np.asarray(scores, np.float64)
    m, n = s.shape
    idx = np.random.default_rng(seed).integers(0, n, size=(reps, m, n))
    return s[np.arange(m)[None, :, None], idx]


def confidence_interval(scores, statistic: Callable[[np.ndarray], np.ndarray],
                        level: float = CI_LEVEL, reps: int = BOOTSTRAP_REPS,
                        seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile interval of `statistic` over the stratified bootstrap (rliable's default)."""
    values = statistic(stratified_bootstrap(scores, reps, seed))
    tail = 50.0 * (1.0 - level)
    lo, hi = np.percentile(values, [tail, 100.0 - tail])
    return float(lo), float(hi)


def aggregate(scores, reps: int = BOOTSTRAP_REPS, seed: int = BOOTSTRAP_SEED) -> dict:
    """{iqm, median, mean, optimality_gap, ci95: {metric: [lo, hi]}} of an [M, N] matrix."""
    s = np.asarray(scores, np.float64)
    if s.ndim != 2 or s.size == 0:
        raise ValueError(f"scores must be a non-empty [tasks, seeds] matrix, got {s.shape}")
    out: dict[str, Any] = {k: float(f(s)) for k, f in METRICS.items()}
    out["ci95"] = {k: list(confidence_interval(s, f, CI_LEVEL, reps, seed))
                   for k, f in METRICS.items()}
    return out
