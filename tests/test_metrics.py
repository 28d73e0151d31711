"""metrics.py: the Celo scores and rliable's statistics against hand-computed values, and the
stratified bootstrap's coverage of a known mean."""
import numpy as np
import pytest

import metrics


def test_ema_formula_by_hand():
    # y0 = x0; y1 = 0.9·1 + 0.1·2 = 1.1; y2 = 0.9·1.1 + 0.1·3 = 1.29 (Celo App. A.3)
    np.testing.assert_allclose(metrics.ema([1.0, 2.0, 3.0]), [1.0, 1.1, 1.29], rtol=1e-12)
    np.testing.assert_allclose(metrics.ema([[4.0, 0.0]], decay=0.5), [[4.0, 2.0]])
    # a non-finite loss makes the rest of the run +inf (diverged: never reaches, final = inf)
    assert np.isinf(metrics.ema([1.0, np.nan, 0.5])[1:]).all()


def test_final_loss_is_mean_of_last_ten():
    x = np.arange(30.0)
    assert metrics.final_loss(x) == np.mean(np.arange(20.0, 30.0))
    assert metrics.final_loss(np.array([2.0, 4.0])) == 3.0   # shorter than the window: all of it


def test_speedup_edge_cases():
    target = np.array(1.0)
    assert metrics.speedup(np.array([0.5, 0.4, 0.3, 0.2]), target) == 4.0        # reached at step 1
    assert metrics.speedup(np.array([3.0, 2.0, 1.5, 1.2]), target) == 0.0        # never → 0
    curve = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.9, 0.8, 0.7])
    assert metrics.steps_to_reach(curve, target) == 5                           # <= counts
    assert metrics.speedup(curve, target) == 8 / 5
    batch = metrics.speedup(np.stack([curve, curve[::-1]]), np.array([1.0, 10.0]))
    np.testing.assert_allclose(batch, [8 / 5, 8.0])                         # per-row targets


def test_normalized_score_and_guards():
    np.testing.assert_allclose(metrics.normalized_score(1.0, [0.5, 2.0]), [2.0, 0.5])
    assert metrics.normalized_score(1.0, np.inf) == 0.0
    assert metrics.normalized_score(1.0, np.nan) == 0.0
    assert metrics.normalized_score(1e-6, 0.0) == 1e-6 / metrics.SCORE_FLOOR   # no division by 0


def test_iqm_median_mean_optimality_gap_by_hand():
    s = np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 100.0]])   # 2 tasks × 4 seeds
    assert metrics.iqm(s) == np.mean([3.0, 4.0, 5.0, 6.0])               # drop 2 at each end of 8
    s6 = np.array([[9.0, 1.0, 2.0], [3.0, 4.0, 50.0]])               # 6 scores: drop int(1.5)=1
    assert metrics.iqm(s6) == np.mean([2.0, 3.0, 4.0, 9.0])
    t = np.array([[1.0, 3.0], [2.0, 10.0], [4.0, 4.0]])              # task means 2, 6, 4
    assert metrics.median(t) == 4.0 and metrics.mean(t) == 4.0
    g = np.array([[0.5, 1.5], [1.0, 0.8]])                           # clipped: .5, 1, 1, .8
    assert metrics.optimality_gap(g) == pytest.approx(1.0 - 0.825)
    assert metrics.optimality_gap(np.full((2, 3), 2.0)) == 0.0


def test_stratified_bootstrap_by_hand():
    s = np.array([[0.0, 1.0], [10.0, 11.0]])
    boot = metrics.stratified_bootstrap(s, reps=4000, seed=1)
    assert boot.shape == (4000, 2, 2)
    assert set(np.unique(boot[:, 0])) == {0.0, 1.0}                  # seeds never cross tasks
    assert set(np.unique(boot[:, 1])) == {10.0, 11.0}
    # one task, seeds {0, 1}: the resampled mean is 0, .5, 1 with probabilities ¼, ½, ¼
    means = metrics.mean(metrics.stratified_bootstrap(s[:1], reps=4000, seed=1))
    assert abs(np.mean(means == 0.5) - 0.5) < 0.03
    assert metrics.confidence_interval(s[:1], metrics.mean) == (0.0, 1.0)
    assert (metrics.confidence_interval(s, metrics.iqm)                       # seeded
            == metrics.confidence_interval(s, metrics.iqm))


def test_bootstrap_ci_covers_known_mean_at_nominal_rate():
    """4 tasks × 20 seeds of N(1.3, 1): the 95% CIs of the mean and of the IQM (population value
    1.3 by symmetry) cover 1.3 in about 95% of 200 independent experiments."""
    rng = np.random.default_rng(0)
    covered = {"mean": 0, "iqm": 0}
    trials = 200
    for i in range(trials):
        s = 1.3 + rng.standard_normal((4, 20))
        for name in covered:
            lo, hi = metrics.confidence_interval(s, metrics.METRICS[name], reps=500, seed=i)
            covered[name] += lo <= 1.3 <= hi
    for name, c in covered.items():
        assert 0.88 <= c / trials <= 0.99, (name, c / trials)


def test_aggregate_structure():
    s = np.array([[1.2, 0.9, 1.1], [0.7, 0.8, 1.0]])
    agg = metrics.aggregate(s, reps=200)
    assert set(agg) == {"iqm", "median", "mean", "optimality_gap", "ci95"}
    for m in metrics.METRICS:
        lo, hi = agg["ci95"][m]
        assert lo <= agg[m] + 1e-12 and agg[m] <= hi + 1e-12
    with pytest.raises(ValueError, match="non-empty"):
        metrics.aggregate(np.zeros((0, 3)))
