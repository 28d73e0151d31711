"""PES and ES against autodiff through the full unroll, finite differences, and NaN handling."""
import textwrap
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_on_two_devices

import pes

A = jnp.array([1.0, 0.5, 2.0])   # curvatures of the toy quadratic
W0 = jnp.array([1.0, -2.0, 0.5])


def quadratic_problem(nan_above=None):
    """Inner run: w ← w − exp(θ)·a·w on L(w) = ½Σ a w² (a learned log learning rate)."""

    def init_inner(theta, shared, group, key, num_steps):
        del theta, shared, group, key, num_steps
        return W0

    def step_inner(theta, shared, group, w, key):
        del shared, group, key
        loss = 0.5 * jnp.sum(A * w * w)
        if nan_above is not None:
            loss = jnp.where(theta["log_lr"] > nan_above, jnp.nan, loss)
        return w - jnp.exp(theta["log_lr"]) * A * w, loss

    return pes.Problem(init_inner, step_inner, loss_cap=10.0)


def full_unroll_loss(theta, steps, objective="mean"):
    """The meta-loss by hand: mean over steps of L/cap, or of log(L/(cap/1e6))/log(1e6)."""
    w, total = W0, 0.0
    for _ in range(steps):
        loss = 0.5 * jnp.sum(A * w * w)
        total += loss / 10.0 if objective == "mean" else jnp.log(loss / 1e-5) / jnp.log(1e6)
        w = w - jnp.exp(theta["log_lr"]) * A * w
    return total / steps


@pytest.mark.parametrize("objective", ["mean", "log"])
def test_pes_matches_autodiff_through_the_full_unroll(objective):
    """Two truncations of T = 4 tile one run of 8 steps; ĝ1 + ĝ2 estimates ∇ of
    mean(trunc 1) + mean(trunc 2) = 2·∇ mean(run), the long-horizon gradient PES is unbiased for,
    for either meta-objective."""
    theta = {"log_lr": jnp.float32(np.log(0.3))}
    cfg = pes.Config(num_pairs=4096, truncation=4, sigma=0.01, min_horizon=8, max_horizon=8,
                     objective=objective)
    prob = quadratic_problem()
    state = pes.init(prob, cfg, theta, None, {}, jax.random.PRNGKey(0), random_offsets=False)
    grad_fn = jax.jit(partial(pes.gradient, prob, cfg))
    g1, state, _ = grad_fn(theta, None, {}, state, jax.random.PRNGKey(1))
    g2, state, stats = grad_fn(theta, None, {}, state, jax.random.PRNGKey(2))
    true = 2 * jax.grad(full_unroll_loss)(theta, 8, objective)["log_lr"]
    est = g1["log_lr"] + g2["log_lr"]
    # the estimate's std is about |true|·sqrt(5/4096) ≈ 3.5% (products of Gaussians); allow 4σ
    assert abs(float(est) - float(true)) < 0.15 * abs(float(true)), (est, true)
    # the truncated (non-persistent) part alone would be biased: ĝ2 without ξ from trunc 1
    # differs from the true second-truncation gradient, PES's accumulated ξ fixes it
    assert int(stats.resets) == 0


def test_antithetic_pair_is_a_finite_difference():
    """One pair: ĝ = (F(θ+ε) − F(θ−ε))·ε/(2σ²), so ĝ·σ²/ε² → F'(θ) as σ → 0."""
    theta = {"log_lr": jnp.float32(np.log(0.2))}
    prob = quadratic_problem()
    cfg = pes.Config(num_pairs=1, truncation=6, sigma=1e-3, min_horizon=6, max_horizon=6)
    key = jax.random.PRNGKey(3)
    state = pes.init(prob, cfg, theta, None, {}, key, random_offsets=False)
    g, _, _ = pes.gradient(prob, cfg, theta, None, {}, state, key)
    eps = pes._perturbations(jax.random.split(key)[0], theta, 1, cfg.sigma)["log_lr"][0]
    f = lambda th: full_unroll_loss({"log_lr": th}, 6)
    fd = (f(theta["log_lr"] + eps) - f(theta["log_lr"] - eps)) * eps / (2 * cfg.sigma ** 2)
    np.testing.assert_allclose(g["log_lr"], fd, rtol=2e-3)
    deriv = jax.grad(f)(theta["log_lr"])
    np.testing.assert_allclose(g["log_lr"] * cfg.sigma ** 2 / eps ** 2, deriv, rtol=2e-2)


def test_es_matches_autodiff():
    theta = {"log_lr": jnp.float32(np.log(0.3))}
    cfg = pes.Config(num_pairs=4096, sigma=0.01)
    g, stats = jax.jit(partial(pes.es_gradient, quadratic_problem(), cfg, num_steps=8))(
        theta, None, {}, jax.random.PRNGKey(4))
    true = jax.grad(full_unroll_loss)(theta, 8)["log_lr"]
    assert abs(float(g["log_lr"]) - float(true)) < 0.15 * abs(float(true))


def test_es_and_pes_agree_in_expectation():
    """Both estimate the gradient of the mean loss of 8-step runs: ES from whole runs, PES from
    two truncations of 4 (their mean, since each truncation's loss is a mean over 4 steps)."""
    theta = {"log_lr": jnp.float32(np.log(0.25))}
    prob = quadratic_problem()
    es = jax.jit(partial(pes.es_gradient, prob, pes.Config(num_pairs=4096), num_steps=8))
    g_es, _ = es(theta, None, {}, jax.random.PRNGKey(7))
    cfg = pes.Config(num_pairs=4096, truncation=4, min_horizon=8, max_horizon=8)
    state = pes.init(prob, cfg, theta, None, {}, jax.random.PRNGKey(8), random_offsets=False)
    grad = jax.jit(partial(pes.gradient, prob, cfg))
    g1, state, _ = grad(theta, None, {}, state, jax.random.PRNGKey(9))
    g2, _, _ = grad(theta, None, {}, state, jax.random.PRNGKey(10))
    g_pes = (g1["log_lr"] + g2["log_lr"]) / 2
    assert abs(float(g_pes) - float(g_es["log_lr"])) < 0.15 * abs(float(g_es["log_lr"]))


def test_runs_restart_and_accumulator_resets():
    theta = {"log_lr": jnp.float32(np.log(0.3))}
    cfg = pes.Config(num_pairs=2, truncation=4, sigma=0.01, min_horizon=6, max_horizon=6)
    prob = quadratic_problem()
    state = pes.init(prob, cfg, theta, None, {}, jax.random.PRNGKey(0), random_offsets=False)
    g = jax.jit(partial(pes.gradient, prob, cfg))
    _, s1, st1 = g(theta, None, {}, state, jax.random.PRNGKey(1))
    assert int(st1.resets) == 0 and list(s1.t) == [4, 4]
    _, s2, st2 = g(theta, None, {}, s1, jax.random.PRNGKey(2))  # run ends after 2 more steps
    assert int(st2.resets) == 2 and list(s2.t) == [2, 2]
    # after a restart ξ holds only this truncation's ε (|ξ| ~ σ, not growing)
    assert float(jnp.max(jnp.abs(s2.acc["log_lr"]))) < 5 * cfg.sigma
    # the restarted runs took the truncation's last 2 steps from W0
    np.testing.assert_allclose(s2.inner[:, 0], np.tile(W0 * (1 - 0.3 * A) ** 2, (2, 1)), rtol=0.05)


def test_random_offsets_desynchronize_pairs():
    theta = {"log_lr": jnp.float32(np.log(0.3))}
    cfg = pes.Config(num_pairs=16, truncation=10, min_horizon=20, max_horizon=40)
    state = pes.init(quadratic_problem(), cfg, theta, None, {}, jax.random.PRNGKey(0))
    assert len(set(np.asarray(state.t).tolist())) > 3
    assert np.all(np.asarray(state.t) < 10)


def test_nan_losses_are_capped_counted_and_never_reach_theta():
    theta = {"log_lr": jnp.float32(0.0)}
    prob = quadratic_problem(nan_above=0.0)  # θ+ε > 0 gives NaN, θ−ε < 0 does not
    cfg = pes.Config(num_pairs=8, truncation=4, min_horizon=8, max_horizon=8)
    state = pes.init(prob, cfg, {"log_lr": jnp.float32(-1.0)}, None, {}, jax.random.PRNGKey(0))
    g, state, stats = jax.jit(partial(pes.gradient, prob, cfg))(theta, None, {}, state,
                                                                 jax.random.PRNGKey(1))
    assert bool(jnp.isfinite(g["log_lr"]))
    assert int(stats.nonfinite) > 0 and bool(jnp.any(state.dead))
    # NaN counts as the worst loss, so the estimate points away from the NaN side (θ up → NaN)
    assert float(g["log_lr"]) > 0
    assert bool(jnp.all(jnp.isfinite(stats.meta_loss)))


def test_a_pair_with_a_non_finite_loss_restarts_at_the_next_truncation():
    """The documented choice (pes.py docstring): a dead pair is not run on to its horizon scoring
    the cap (the reference's way) but restarts at the next truncation, with ξ reset."""
    prob = quadratic_problem(nan_above=0.0)
    cfg = pes.Config(num_pairs=8, truncation=4, min_horizon=40, max_horizon=40)
    theta = {"log_lr": jnp.float32(-0.005)}          # θ+ε > 0 for about half of the pairs
    state = pes.init(prob, cfg, theta, None, {}, jax.random.PRNGKey(0), random_offsets=False)
    grad_fn = jax.jit(partial(pes.gradient, prob, cfg))
    _, state, _ = grad_fn(theta, None, {}, state, jax.random.PRNGKey(1))
    dead = np.asarray(state.dead)
    assert dead.any() and not dead.all() and np.all(np.asarray(state.t) == 4)  # horizon 40
    _, new, stats = grad_fn(theta, None, {}, state, jax.random.PRNGKey(2))
    # dead pairs ran this truncation from step 0 of a new run; the others went on to step 8
    np.testing.assert_array_equal(np.asarray(new.t), np.where(dead, 4, 8))
    assert int(stats.resets) == int(dead.sum())


def test_loss_normalization():
    norm, bad = pes.normalize_loss(jnp.array([-1.0, 0.5, 7.0, jnp.nan, jnp.inf]), 2.0)
    np.testing.assert_allclose(norm, [0.0, 0.25, 1.0, 1.0, 1.0])
    assert list(np.asarray(bad)) == [False, False, False, True, True]
    # log: log(L/(cap/1e6))/log(1e6), L clipped to [cap/1e6, cap]; a halving weighs alike anywhere
    norm, bad = pes.normalize_loss(jnp.array([1e-9, 2e-6, 2e-3, 1e-3, 2.0, 7.0, jnp.nan]), 2.0,
                                   "log")
    np.testing.assert_allclose(norm, [0.0, 0.0, 0.5, 0.5 - np.log(2) / np.log(1e6), 1.0, 1.0, 1.0],
                               atol=1e-6)
    assert list(np.asarray(bad)) == [False] * 6 + [True]
    with pytest.raises(ValueError, match="unknown meta-objective 'final'; valid: mean, log"):
        pes.normalize_loss(jnp.ones(2), 2.0, "final")


def test_horizons_log_uniform():
    cfg = pes.Config(min_horizon=100, max_horizon=2000)
    h = np.asarray(pes.sample_horizon(jax.random.PRNGKey(0), cfg, (20000,)))
    assert h.min() >= 100 and h.max() <= 2000
    # log-uniform: the median is the geometric mean sqrt(100·2000) ≈ 447
    assert 400 < np.median(h) < 500


def test_no_recompilation_across_truncations():
    theta = {"log_lr": jnp.float32(np.log(0.3))}
    cfg = pes.Config(num_pairs=4, truncation=4, min_horizon=6, max_horizon=9)
    prob = quadratic_problem()
    traces = []

    def counted(*args):
        traces.append(1)
        return pes.gradient(prob, cfg, *args)

    g = jax.jit(counted)
    state = pes.init(prob, cfg, theta, None, {}, jax.random.PRNGKey(0))
    for i in range(5):
        grad, state, _ = g(theta, None, {}, state, jax.random.PRNGKey(i))
        theta = jax.tree.map(lambda t, d: t - 0.01 * d, theta, grad)
    assert len(traces) == 1


def test_groups_give_each_pair_its_slice():
    """Pairs are split over a leading group axis (e.g. datasets): pair p sees group p // (P/G)."""

    def init_inner(theta, shared, group, key, n):
        return group["offset"] + 0 * theta["x"]

    def step_inner(theta, shared, group, w, key):
        return w, w

    prob = pes.Problem(init_inner, step_inner, loss_cap=100.0)
    cfg = pes.Config(num_pairs=6, truncation=2, min_horizon=4, max_horizon=4)
    groups = {"offset": jnp.array([1.0, 2.0, 3.0])}
    state = pes.init(prob, cfg, {"x": jnp.float32(0)}, None, groups, jax.random.PRNGKey(0),
                     random_offsets=False)
    np.testing.assert_allclose(state.inner[:, 0], [1, 1, 2, 2, 3, 3])


SHARDED = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r})
    import jax, jax.numpy as jnp, numpy as np
    from functools import partial
    sys.path.insert(0, os.path.join({root!r}, "tests"))
    import pes
    from test_pes import quadratic_problem
    assert len(jax.devices()) == 2, jax.devices()
    mesh = pes.make_mesh()
    theta = {{"log_lr": jnp.float32(np.log(0.3))}}
    cfg = pes.Config(num_pairs=8, truncation=4, min_horizon=6, max_horizon=9)
    prob = quadratic_problem()
    out = []
    for m in (None, mesh):
        state = jax.jit(partial(pes.init, prob, cfg, mesh=m))(theta, None, {{}}, jax.random.PRNGKey(0))
        g = jax.jit(partial(pes.gradient, prob, cfg, mesh=m))
        for i in range(3):
            grad, state, _ = g(theta, None, {{}}, state, jax.random.PRNGKey(i))
        out.append(float(grad["log_lr"]))
        if m is not None:
            assert len(state.t.sharding.device_set) == 2
    print(out)
    np.testing.assert_allclose(out[0], out[1], rtol=1e-5)
""")


def test_sharded_over_two_devices_matches_single_device():
    run_on_two_devices(SHARDED)
