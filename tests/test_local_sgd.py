"""local_sgd.py against oracles: plain SGD, hand-averaged worker deltas, optax's SGD with momentum,
hand-counted bytes, a 2-device run, and a fresh LOpt (= SlowMo(1, 0.8)). Tiny tasks keep it fast."""
import os
import textwrap
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import run_on_two_devices

import checkpoint
import local_sgd
import pes
import tasks

LR = 0.3


@pytest.fixture(scope="module")
def quad():
    return tasks.quadratic(dim=10, condition=10.0, noise=0.1)


@pytest.fixture(scope="module")
def ts():
    return tasks.teacher_student(in_dim=4, hidden=(8,), out_dim=2, batch_size=8, noise=0.1)


def with_random_output(theta, key):
    """θ whose MLP output layer is random (a fresh θ has d ≡ 0, so the MLP would not show)."""
    w = theta["mlp"]["w2"]
    return {**theta, "mlp": {**theta["mlp"], "w2": 0.3 * jax.random.normal(key, w.shape)}}


def sgd_worker(task, params, data, key, steps, lr):
    """A worker written as a Python loop of plain SGD steps (the oracle)."""
    p = params
    for h in range(steps):
        g = jax.grad(task.loss)(p, task.sample_batch(data, jax.random.fold_in(key, h)))
        p = jax.tree.map(lambda x, y: x - lr * y, p, g)
    return jax.tree.map(jnp.subtract, p, params)


def test_one_worker_one_local_step_is_sgd(quad):
    """K = 1, H = 1: every round is one SGD step; train's lax.scan over rounds = a Python loop."""
    key = jax.random.PRNGKey(0)
    params, losses = jax.jit(partial(local_sgd.train, quad, local_sgd.local_sgd(), num_rounds=4,
                                     num_workers=1, local_steps=1, local_lr=LR))(
        local_sgd.local_sgd().init_meta_params(), quad.data, key)
    k_init, k_rounds = jax.random.split(key)
    p = quad.init(k_init)
    for i, k in enumerate(jax.random.split(k_rounds, 4)):
        batch = quad.sample_batch(quad.data, jax.random.fold_in(jax.random.split(k, 1)[0], 0))
        loss, g = jax.value_and_grad(quad.loss)(p, batch)
        np.testing.assert_allclose(losses[i], loss, rtol=1e-6)
        p = {"w": p["w"] - LR * g["w"]}
    np.testing.assert_allclose(params["w"], p["w"], rtol=1e-5, atol=1e-7)


def test_mean_delta_is_the_average_of_worker_deltas_and_is_lopts_input(ts):
    k_workers = 3
    params = ts.init(jax.random.PRNGKey(1))
    keys = jax.random.split(jax.random.PRNGKey(2), k_workers)
    mean, deltas, _ = local_sgd.communicate(ts, params, ts.data, keys, 2, LR, gather=True)
    by_hand = [sgd_worker(ts, params, ts.data, k, 2, LR) for k in keys]
    for name in params:
        np.testing.assert_allclose(mean[name], sum(d[name] for d in by_hand) / k_workers,
                                   rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(deltas[name][1], by_hand[1][name], rtol=1e-5, atol=1e-7)
    # the round hands LOpt exactly g = −Δ̄
    lopt = local_sgd.lopt()
    theta = with_random_output(lopt.init_meta_params(jax.random.PRNGKey(3)), jax.random.PRNGKey(4))
    state = lopt.init(theta, params, 10)
    new, _, _ = local_sgd.round_step(ts, lopt, theta, params, state, ts.data,
                                     jax.random.PRNGKey(2), k_workers, 2, LR)
    upd, _ = lopt.step(theta, state, params, jax.tree.map(jnp.negative, mean), 0.0)
    for name in params:
        np.testing.assert_allclose(new[name], params[name] + upd[name], rtol=1e-5, atol=1e-6)


def test_lagg_without_worker_columns_is_lopt_and_ignores_worker_order(ts):
    """LAgg's own input g is the mean of the K deltas: with the K worker columns' weights set to
    0 it is LOpt; and the sorted worker columns make it invariant to relabelling workers."""
    k_workers = 4
    params = ts.init(jax.random.PRNGKey(4))
    worker_g = jax.tree.map(lambda p: 0.01 * jax.random.normal(jax.random.PRNGKey(5),
                                                               (k_workers,) + p.shape), params)
    lagg, lopt = local_sgd.lagg(k_workers), local_sgd.lopt()
    theta = with_random_output(lagg.init_meta_params(jax.random.PRNGKey(6)),
                               jax.random.PRNGKey(7))
    n = local_sgd.U_COLUMN + 1                     # LAgg's K worker columns follow n(u)
    w0 = theta["mlp"]["w0"]
    w0_lopt = jnp.concatenate([w0[:n], w0[n + k_workers:]])
    theta_lopt = {**theta, "mlp": {**theta["mlp"], "w0": w0_lopt}}
    theta_zero = {**theta, "mlp": {**theta["mlp"], "w0": w0.at[n:n + k_workers].set(0.0)}}
    state = lagg.init(theta, params, 10)
    a, _ = lagg.step(theta_zero, state, params, worker_g, 0.0)
    b, _ = lopt.step(theta_lopt, state, params, jax.tree.map(lambda x: x.mean(0), worker_g), 0.0)
    c, _ = lagg.step(theta, state, params, worker_g, 0.0)
    d, _ = lagg.step(theta, state, params, jax.tree.map(lambda x: x[::-1], worker_g), 0.0)
    for name in params:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(c[name], d[name], rtol=1e-6, atol=1e-9)
        assert not np.allclose(c[name], a[name])  # the worker columns do change the update
    x = jax.random.normal(jax.random.PRNGKey(7), (8, 5, 3))
    np.testing.assert_array_equal(jnp.stack(local_sgd.sort_workers(list(x))), jnp.sort(x, 0))


def test_fresh_lopt_is_slowmo_and_one_weight_scales_it_and_slowmo_is_optax_momentum(ts):
    params = ts.init(jax.random.PRNGKey(8))
    grads = [jax.tree.map(lambda p: jax.random.normal(jax.random.PRNGKey(i), p.shape), params)
             for i in range(3)]
    nominal = local_sgd.slowmo(local_sgd.NOMINAL_SERVER_LR, local_sgd.NOMINAL_MOMENTUM)
    hp = nominal.init_meta_params()
    for update in (local_sgd.lopt(), local_sgd.lagg(2)):
        theta = update.init_meta_params(jax.random.PRNGKey(9))
        s1, s2 = update.init(theta, params, 3), nominal.init(hp, params, 3)
        for g in grads:        # a fresh θ is exactly the nominal SlowMo(1, 0.8) for rounds
            g_in = jax.tree.map(lambda x: jnp.stack([x, x]), g) if update.all_deltas else g
            u1, s1 = update.step(theta, s1, params, g_in, 0.0)
            u2, s2 = nominal.step(hp, s2, params, g, 0.0)
            for name in params:
                np.testing.assert_allclose(u1[name], u2[name], rtol=1e-6)
    # d = s·n(u) through the reserved units (and m ≡ 0): Δθ = −u − λ1·rms(u)·s·u/√(1e-5 + mean u²)
    lopt, s = local_sgd.lopt(), 0.5
    theta = lopt.init_meta_params(jax.random.PRNGKey(9))
    w = jnp.zeros_like(theta["mlp"]["w2"]).at[0, 0].set(s).at[1, 0].set(-s)
    theta = {**theta, "mlp": {**theta["mlp"], "w2": w, "b2": jnp.zeros(2)}}
    state = lopt.init(theta, params, 3)
    for g in grads:
        upd, state = lopt.step(theta, state, params, g, 0.0)
    for name in params:
        u = np.asarray(state.u[name], np.float64)
        ms = np.mean(u ** 2)
        expect = -u - local_sgd.STEP_MULT * np.sqrt(ms) * s * u / np.sqrt(1e-5 + ms)
        np.testing.assert_allclose(upd[name], expect, rtol=1e-5)
        assert np.allclose(u, sum(0.8 ** (2 - i) * np.asarray(g[name]) for i, g in
                                  enumerate(grads)), rtol=1e-5)
    # cosine SlowMo: round r steps −α·½(1 + cos(π r/R))·u; round 0 is SlowMo's step
    cos = local_sgd.slowmo_cosine(0.7, 0.8)
    hp = cos.init_meta_params()
    s1, u = cos.init(hp, params, 3), jax.tree.map(jnp.zeros_like, params)
    for r, g in enumerate(grads):
        upd, s1 = cos.step(hp, s1, params, g, 0.0)
        u = jax.tree.map(lambda u, g: 0.8 * u + g, u, g)
        for name in params:
            np.testing.assert_allclose(upd[name], -0.7 * 0.5 * (1 + np.cos(np.pi * r / 3))
                                       * u[name], rtol=1e-5, atol=1e-7)
    # SlowMo (α, β) = heavy-ball SGD on pseudo-gradients: optax.sgd(α, momentum=β)
    slow = local_sgd.slowmo(0.7, 0.8)
    hp = slow.init_meta_params()
    tx, ours = optax.sgd(0.7, momentum=0.8), slow.optimizer(hp, 3)   # and the record as optax
    s1, s2, s3 = slow.init(hp, params, 3), tx.init(params), ours.init(params)
    for g in grads:
        u1, s1 = slow.step(hp, s1, params, g, 0.0)
        u2, s2 = tx.update(g, s2, params)
        u3, s3 = ours.update(g, s3, params)
        for name in params:
            np.testing.assert_allclose(u1[name], u2[name], rtol=1e-6)
            np.testing.assert_array_equal(u3[name], u1[name])


def test_bytes_per_round_are_k_times_parameter_bytes(quad, ts):
    assert local_sgd.round_bytes(quad.init(jax.random.PRNGKey(0)), 8) == 8 * 10 * 4
    # teacher-student 4 → 8 → 2: 4·8 + 8 + 8·2 + 2 = 58 float32
    c = local_sgd.communication(ts.init(jax.random.PRNGKey(0)), 8, 100)
    assert (c.rounds, c.bytes_per_round, c.total_bytes) == (100, 8 * 58 * 4, 100 * 8 * 58 * 4)


def test_local_sgd_and_lopt_lower_the_loss_with_one_compiled_program(ts):
    """One compiled program serves several H and θ (H is traced), and training lowers the loss."""
    traces = []
    curves = local_sgd.make_curves(ts, local_sgd.local_sgd(), num_rounds=30, num_workers=2)

    def counted(*args):
        traces.append(1)
        return curves(*args)

    fn = jax.jit(counted)
    hp = jax.tree.map(lambda x: jnp.stack([x, x]), local_sgd.local_sgd().init_meta_params())
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    for h in (2, 4):
        losses = np.asarray(fn(hp, jnp.array([0.1, 0.3]), jnp.int32(h), ts.data, keys))
        assert losses.shape == (2, 2, 30) and np.all(np.isfinite(losses))
        assert losses[:, :, -5:].mean() < 0.5 * losses[:, :, :5].mean()
    assert len(traces) == 1


def test_pes_problem_and_train_registry(quad):
    import registry
    import train
    for name in ("local_sgd_lopt", "local_sgd_lagg"):
        r = registry.OPTIMIZERS[name]
        assert not r.per_step
        cfg = train.resolve({"opt": name})
        assert cfg["truncation"] == 50 and cfg["min_horizon"] >= cfg["truncation"]
        assert r.build(None).name == name
    with pytest.raises(tasks.InvalidOptionError):
        local_sgd.train_problem(quad, local_sgd.lopt(), {})
    update = local_sgd.lagg(2)
    prob = local_sgd.make_problem(quad, update, num_workers=2, local_steps=2, local_lr=LR)
    cfg = pes.Config(num_pairs=2, truncation=3, min_horizon=4, max_horizon=6)
    theta = update.init_meta_params(jax.random.PRNGKey(0))
    groups = tasks.stack_data([quad.data])       # PES's leading group axis
    state = pes.init(prob, cfg, theta, {}, groups, jax.random.PRNGKey(1))
    g, state, stats = jax.jit(partial(pes.gradient, prob, cfg))(theta, {}, groups, state,
                                                                jax.random.PRNGKey(2))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(g))
    assert 0 < float(stats.meta_loss) < 1


def test_drawn_local_config_covers_the_ranges_and_pairs_share_it(quad):
    """local_sgd_lopt_ranges: every run draws its H from the choices and its local lr
    log-uniformly from the range; both members of a PES pair share them; a run with a drawn
    (H, lr) steps exactly as the fixed-setting problem with that H and lr."""
    import registry
    draws = [local_sgd.draw_local_config(jax.random.PRNGKey(i), (4, 8, 16), (0.1, 2.0))
             for i in range(64)]
    hs = {int(h) for h, _ in draws}
    lrs = np.array([float(lr) for _, lr in draws])
    assert hs == {4, 8, 16}
    assert lrs.min() >= 0.1 and lrs.max() <= 2.0 and lrs.min() < 0.2 and lrs.max() > 1.0
    assert 0.25 < np.mean(np.log(lrs) < np.log(np.sqrt(0.2))) < 0.75   # log-uniform: median √0.2

    update = local_sgd.lopt(2)
    theta = update.init_meta_params(jax.random.PRNGKey(0))
    drawn = local_sgd.make_problem(quad, update, num_workers=2, local_steps_choices=(1, 2, 3),
                                   local_lr_range=(0.05, 0.4))
    inner = drawn.init_inner(theta, {}, quad.data, jax.random.PRNGKey(3), 10)
    h, lr = int(inner.local_steps), float(inner.local_lr)
    fixed = local_sgd.make_problem(quad, update, num_workers=2, local_steps=h, local_lr=lr)
    ref = fixed.init_inner(theta, {}, quad.data, jax.random.PRNGKey(3), 10)
    a, la = drawn.step_inner(theta, {}, quad.data, inner, jax.random.PRNGKey(4))
    b, lb = fixed.step_inner(theta, {}, quad.data, ref, jax.random.PRNGKey(4))
    assert a.local_steps == h and float(a.local_lr) == lr and float(la) == float(lb)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)

    cfg = pes.Config(num_pairs=8, truncation=2, min_horizon=4, max_horizon=6)
    state = pes.init(drawn, cfg, theta, {}, tasks.stack_data([quad.data]), jax.random.PRNGKey(1))
    h_pairs = np.asarray(state.inner.local_steps)                    # (pairs, ±)
    assert h_pairs.shape == (8, 2) and np.all(h_pairs[:, 0] == h_pairs[:, 1])
    assert np.all(np.asarray(state.inner.local_lr)[:, 0] == np.asarray(state.inner.local_lr)[:, 1])
    assert len(set(h_pairs[:, 0].tolist())) > 1                      # pairs differ from each other
    assert registry.OPTIMIZERS["local_sgd_lopt_ranges"].problem is local_sgd.train_problem_ranges


@pytest.mark.parametrize("name", ["local_sgd_lopt", "local_sgd_lagg"])
def test_shipped_checkpoints_match_the_optimizer(name):
    import registry
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "checkpoints", f"{name}.npz")
    saved, theta = checkpoint.load_checkpoint(path)
    assert saved == name
    fresh = registry.OPTIMIZERS[name].build(None).init_meta_params(jax.random.PRNGKey(0))
    assert jax.tree.structure(theta) == jax.tree.structure(fresh)
    assert jax.tree.map(jnp.shape, theta) == jax.tree.map(jnp.shape, fresh)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(theta))


SHARDED = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    import jax, jax.numpy as jnp, numpy as np
    import local_sgd, tasks
    assert len(jax.devices()) == 2, jax.devices()
    mesh = local_sgd.make_mesh(4)
    assert mesh is not None and mesh.devices.size == 2
    assert local_sgd.make_mesh(3) is None          # 3 workers do not split over 2 devices
    task = tasks.quadratic(dim=6, condition=10.0, noise=0.1)
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    for update in (local_sgd.slowmo(1.0, 0.5), local_sgd.lagg(4)):
        theta = jax.tree.map(lambda x: x[None], update.init_meta_params(jax.random.PRNGKey(1)))
        out = [np.asarray(local_sgd.make_curves(task, update, 5, 4, m)(
                   theta, jnp.array([0.3]), jnp.int32(3), task.data, keys)) for m in (None, mesh)]
        np.testing.assert_allclose(out[0], out[1], rtol=1e-5)
        jaxpr = str(jax.make_jaxpr(lambda p, k: local_sgd.communicate(
            task, p, task.data, k, 3, 0.3, update.all_deltas, mesh))(
            task.init(keys[0]), jax.random.split(keys[1], 4)))
        assert "psum" in jaxpr or "pmean" in jaxpr, "the average is not a collective"
        # the worker losses are always gathered (one all_gather); LAgg also gathers every Δ_k
        assert (jaxpr.count("all_gather[") > 1) == update.all_deltas
    print("ok")
""")


def test_sharded_workers_match_vmapped_workers():
    run_on_two_devices(SHARDED)


def test_experiments_quick_writes_table_json_and_plots(tmp_path, capsys):
    """local_sgd_experiments.py --quick end to end: the table, results.json and one plot per H;
    tuned SlowMo's grid contains local SGD, so it is never worse; a diverged method is a row of
    the table, not a crash; bad flags are one line."""
    import json
    import local_sgd_experiments as lx
    assert lx.main(["--quick", "--out", str(tmp_path), "--local-steps", "2"]) == 0
    r = json.loads((tmp_path / "results.json").read_text())
    assert set(r["results"]) == set(lx.QUICK["tasks"]) and list(r["summary"]) == ["2"]
    for t in r["results"].values():
        finals = {m: np.mean(t["2"][m]["final"]) for m in lx.METHODS}
        assert finals["slowmo"] <= finals["local_sgd"]
        # the baselines and the safeguarded LOpt/LAgg never diverge; the paper's form has only a
        # size bound and may (the shipped θ does on the tiny regression): it is reported, not fatal
        assert all(np.isfinite(finals[m]) for m in lx.METHODS if m != "local_sgd_lopt_paper")
        sgd = t["2"]["local_sgd"]   # a 2-point grid's winner is an edge: widened once (×2, ×½)
        grid, lr = sgd["local_lr_grid"], sgd["local_lr"]
        assert len(grid) == 3 and grid == sorted(grid) and lr in grid
        assert set(lx.QUICK["local_lrs"]) < set(grid)
        assert grid[2] / grid[1] == 2 == grid[1] / grid[0]
        assert sgd["lr_at_grid_edge"] == (lr in (grid[0], grid[-1]))
        assert t["2"]["slowmo_cosine"]["momentum"] in (0.5, 0.9)
    assert (tmp_path / "table.md").read_text().startswith("Local SGD, K = 8")
    assert (tmp_path / "loss_vs_rounds_H2.png").stat().st_size > 0
    capsys.readouterr()
    assert lx.main(["--quick", "--local-steps", "0,x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --local-steps") and err.count("\n") == 1


def random_mlp(theta, scale, seed):
    """θ whose every MLP weight and bias is scale·N(0, 1): a deliberately bad learned update."""
    leaves, treedef = jax.tree.flatten(theta["mlp"])
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return {**theta, "mlp": treedef.unflatten([scale * jax.random.normal(k, x.shape)
                                               for k, x in zip(keys, leaves)])}


def test_bounded_scales_down_to_the_limit_and_zeroes_non_finite_entries():
    x = jnp.array([3.0, -4.0, 0.0])
    np.testing.assert_allclose(local_sgd.bounded(x, 1.0), x / 5.0, rtol=1e-6)  # direction kept
    np.testing.assert_array_equal(local_sgd.bounded(x, 5.0), x)               # inside: unchanged
    np.testing.assert_allclose(local_sgd.bounded(jnp.array([jnp.nan, jnp.inf, 2.0]), 1.0),
                               [0.0, 0.0, 1.0], rtol=1e-6)
    big = local_sgd.bounded(jnp.array([1e38, -1e38, 1.0]), 2.0)  # no overflow, no flush to 0
    np.testing.assert_allclose(big, [2 ** 0.5, -2 ** 0.5, 0.0], rtol=1e-5, atol=1e-30)
    np.testing.assert_array_equal(local_sgd.bounded(jnp.zeros(3), 0.0), jnp.zeros(3))


def test_a_bad_theta_cannot_blow_up_the_loss(ts):
    """The safeguard (module docstring): ‖residual‖ ≤ ½‖α0·u‖ keeps every update within 30° of
    SlowMo(1, 0.8)'s step. θ with random MLP weights of scale 3 (finite, wrong directions) or
    1000 (non-finite outputs), or one that reverses the nominal step ten times over, still lowers
    the loss; unbounded, the same θ blows the loss up (so the test bites)."""
    lopt = local_sgd.lopt()
    theta = lopt.init_meta_params(jax.random.PRNGKey(0))
    w = jnp.zeros_like(theta["mlp"]["w2"]).at[0, 0].set(-10.0).at[1, 0].set(10.0)
    reverse = {**theta, "mlp": {**theta["mlp"], "w2": w, "b2": jnp.zeros(2)}}  # d = −10·n(u)
    for update in (lopt, local_sgd.lagg(4)):
        base = update.init_meta_params(jax.random.PRNGKey(0))
        bad = [random_mlp(base, s, seed) for s in (3.0, 1e3) for seed in (1, 2)]
        if not update.all_deltas:
            bad.append(reverse)
        for bound in (local_sgd.RESIDUAL_BOUND, None):
            step = partial(local_sgd.learned_step, all_deltas=update.all_deltas,
                           residual_bound=bound)
            run = jax.jit(partial(local_sgd.train, ts, update._replace(step=step), num_rounds=40,
                                  num_workers=4, local_steps=4, local_lr=0.1))
            finals = []
            for th in bad:
                losses = np.asarray(run(th, ts.data, jax.random.PRNGKey(2))[1])
                finals.append(losses[-5:].mean() / losses[0])
            if bound is None:
                assert not all(np.isfinite(f) and f <= 1.0 for f in finals), (update.name, finals)
            else:
                assert all(np.isfinite(f) and f <= 1.0 for f in finals), (update.name, finals)


def test_lopt_paper_outputs_the_whole_update_starting_at_local_sgd(ts):
    """The paper's form: no nominal term and no u column; a fresh θ is plain averaging up to
    exp(λ2·m) ≈ 1 ± 1e-3 (d = n(g), m random); any θ's update is finite and at most
    ‖Δ̄‖/(1 − β0) per tensor; it runs under PES and is registered."""
    import registry
    paper = local_sgd.lopt_paper()
    theta = paper.init_meta_params(jax.random.PRNGKey(0))
    time_features = len(local_sgd.features.TIME_SCALES)
    assert theta["mlp"]["w0"].shape[0] == local_sgd.U_COLUMN + time_features   # no n(u)
    params = ts.init(jax.random.PRNGKey(8))
    grads = [jax.tree.map(lambda p: jax.random.normal(jax.random.PRNGKey(i), p.shape), params)
             for i in range(3)]
    state = paper.init(theta, params, 3)
    for g in grads:
        upd, state = paper.step(theta, state, params, g, 0.0)
        for name in params:
            np.testing.assert_allclose(upd[name], -g[name], rtol=5e-3, atol=1e-6)
    huge = random_mlp(theta, 1e3, 1)
    for scale in (1.0, 1e3):
        state = paper.init(huge, params, 3)
        for g in grads:
            g = jax.tree.map(lambda x: scale * x, g)
            upd, state = paper.step(huge, state, params, g, 0.0)
            for name in params:
                assert np.all(np.isfinite(upd[name]))
                assert float(local_sgd.norm(upd[name])) <= \
                    local_sgd.PAPER_UPDATE_BOUND * float(local_sgd.norm(g[name])) * (1 + 1e-5)
    assert registry.OPTIMIZERS["local_sgd_lopt_paper"].build(None).name == "local_sgd_lopt_paper"
    prob = local_sgd.make_problem(ts, paper, num_workers=2, local_steps=2, local_lr=LR)
    cfg = pes.Config(num_pairs=2, truncation=3, min_horizon=4, max_horizon=6)
    groups = tasks.stack_data([ts.data])
    pstate = pes.init(prob, cfg, theta, {}, groups, jax.random.PRNGKey(1))
    g, _, stats = jax.jit(partial(pes.gradient, prob, cfg))(theta, {}, groups, pstate,
                                                            jax.random.PRNGKey(2))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(g))
    assert 0 < float(stats.meta_loss) < 1
