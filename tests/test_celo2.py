"""celo2.py: unit-RMS normalization, Newton–Schulz, harness routing (vs optax.adamw), the fresh
θ as a hand-designed optimizer, optax chain = contract step, short meta-training."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import celo2
import registry
import train

SHAPES = [(), (7,), (5, 3), (3, 9), (16, 16), (2, 3, 4), (3, 3, 2, 4)]


def _rms(x):
    return float(jnp.sqrt(jnp.mean(jnp.square(x))))


def random_tree(rng, scale=1.0):
    return {f"t{i}": jnp.asarray(scale * rng.normal(size=s), jnp.float32)
            for i, s in enumerate(SHAPES)}


def noisy_theta(key, rng, harness=True):
    theta = celo2.init_meta_params(key, harness)
    return jax.tree.map(lambda x: x + jnp.asarray(0.3 * rng.normal(size=x.shape), jnp.float32),
                        theta)


# ----------------------------------------------------------------------------- building blocks

@pytest.mark.parametrize("shape", [(8, 8), (4, 32), (32, 4), (64, 10), (1, 5)])
def test_newton_schulz_gives_singular_values_near_one(shape):
    x = jax.random.normal(jax.random.PRNGKey(sum(shape)), shape)
    s = np.linalg.svd(np.asarray(celo2.newton_schulz(x)), compute_uv=False)
    # the public quintic coefficients land singular values in ≈ [0.7, 1.2], not exactly on 1
    assert s.min() > 0.6 and s.max() < 1.25, s
    # and the direction is U Vᵀ's: NS(x) has the singular vectors of x
    u, _, vt = np.linalg.svd(np.asarray(x), full_matrices=False)
    cos = np.sum(np.asarray(celo2.newton_schulz(x)) * (u @ vt)) / (
        np.linalg.norm(np.asarray(celo2.newton_schulz(x))) * np.linalg.norm(u @ vt))
    assert cos > 0.97, cos


@pytest.mark.parametrize("harness", [True, False])
def test_every_learned_update_has_unit_rms(harness):
    """U (before the learning rate) has RMS 1 for every tensor the rule updates, any shape."""
    rng = np.random.RandomState(0)
    params = random_tree(rng)
    tx = celo2.scale_by_celo2(noisy_theta(jax.random.PRNGKey(1), rng, harness), harness)
    state = tx.init(params)
    labels = celo2.default_labels(params, harness)
    for i in range(3):
        grads = random_tree(rng, 10.0 ** (i - 1))
        updates, state = tx.update(grads, state, params)
        for k, u in updates.items():
            if labels[k] != celo2.ADAM:
                assert abs(_rms(u) - 1.0) < 1e-4, (k, _rms(u))


def test_harness_routes_tensors():
    params = {"embed": {"w": jnp.ones((11, 4))}, "l0": {"w": jnp.ones((4, 6)), "b": jnp.ones(6)},
              "conv": jnp.ones((3, 3, 2, 4)), "scale": jnp.ones(())}
    labels = celo2.default_labels(params)
    assert labels == {"embed": {"w": "adam"}, "l0": {"w": "orthogonal", "b": "adam"},
                      "conv": "orthogonal", "scale": "adam"}
    assert set(jax.tree.leaves(celo2.default_labels(params, harness=False))) == {"learned"}


def test_harness_matches_optax_adamw_on_1d_and_embeddings():
    """celo2.optimizer on biases, scalars and embeddings is optax.adamw(lr, 0.9, 0.95, wd)."""
    rng = np.random.RandomState(3)
    params = {"embed": {"w": jnp.asarray(rng.normal(size=(9, 4)), jnp.float32)},
              "l0": {"w": jnp.asarray(rng.normal(size=(4, 5)), jnp.float32),
                     "b": jnp.asarray(rng.normal(size=5), jnp.float32)},
              "gain": jnp.asarray(1.5, jnp.float32)}
    lr, wd = 1e-2, 0.1
    ours = celo2.optimizer(noisy_theta(jax.random.PRNGKey(0), rng), lr, weight_decay=wd)
    ref = optax.adamw(lr, b1=0.9, b2=0.95, eps=1e-8, weight_decay=wd)
    s1, s2 = ours.init(params), ref.init(params)
    p1 = p2 = params
    for _ in range(4):
        g1 = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), p1)
        u1, s1 = ours.update(g1, s1, p1)
        u2, s2 = ref.update(g1, s2, p2)
        for path in (("embed", "w"), ("l0", "b"), ("gain",)):
            a, b = u1, u2
            for k in path:
                a, b = a[k], b[k]
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)
        assert abs(_rms(u1["l0"]["w"] + lr * wd * p1["l0"]["w"]) - lr) < 1e-5  # the rule's step
        p1 = optax.apply_updates(p1, u1)
        p2 = optax.apply_updates(p2, u2)


def test_fresh_theta_is_muon_on_momentum_and_normalized_adam():
    """A fresh θ is a hand-designed optimizer (ours): celo2 on a hidden weight = NS(m_0.9) at
    unit RMS; celo2_base = m_0.9/√(v + 1e-6) at unit RMS (the hand formulas)."""
    rng = np.random.RandomState(4)
    p = jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)
    gs = [jnp.asarray(rng.normal(size=(6, 5)), jnp.float32) for _ in range(3)]
    m, v = jnp.zeros_like(p), jnp.zeros_like(p)
    for harness in (True, False):
        tx = celo2.scale_by_celo2(celo2.init_meta_params(jax.random.PRNGKey(5), harness), harness)
        state, m, v = tx.init({"w": p}), jnp.zeros_like(p), jnp.zeros_like(p)
        for g in gs:
            m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
            u, state = tx.update({"w": g}, state, {"w": p})
            if harness:
                ns = celo2.newton_schulz(m)
                want = ns / jnp.sqrt(jnp.mean(ns ** 2))
            else:
                d = m / jnp.sqrt(v + 1e-6)
                want = d / jnp.sqrt(jnp.mean(d ** 2))
            np.testing.assert_allclose(u["w"], want, rtol=2e-4, atol=2e-5)


def test_zero_tensor_moves_by_the_learning_rate():
    """A weight that starts at zero moves by lr per entry (RMS) at the first step, unlike a
    relative-step rule (Celo), whose step scales with the tensor's RMS."""
    params = {"w": jnp.zeros((8, 4)), "b": jnp.zeros(4)}
    grads = {"w": jnp.asarray(np.random.RandomState(0).normal(size=(8, 4)), jnp.float32),
             "b": jnp.ones(4)}
    for harness in (True, False):
        tx = celo2.optimizer(celo2.init_meta_params(jax.random.PRNGKey(0), harness), 1e-2,
                             harness=harness)
        u, _ = tx.update(grads, tx.init(params), params)
        assert abs(_rms(u["w"]) - 1e-2) < 1e-6 and abs(_rms(u["b"]) - 1e-2) < 1e-6



def test_default_bound_holds_celo2_base_at_base_max_norm_and_leaves_celo2_free():
    """On a loss that rewards growth, celo2_base's default use stops each tensor on its ball,
    BASE_MAX_NORM × its starting RMS, give or take the one step (lr, unit RMS) the bound lets it
    take past it; celo2 (no bound: Newton–Schulz steps have a fixed size) runs far past it."""
    p0 = {"w": jnp.asarray(0.2 * np.random.RandomState(1).normal(size=(16, 8)), jnp.float32)}
    loss = lambda p: -jnp.sum(jnp.square(p["w"]))
    start = _rms(p0["w"])

    def final_rms(harness):
        tx = celo2.optimizer(celo2.init_meta_params(jax.random.PRNGKey(0), harness), 0.05,
                             harness=harness)
        p, s = p0, tx.init(p0)
        for _ in range(60):
            u, s = tx.update(jax.grad(loss)(p), s, p)
            p = optax.apply_updates(p, u)
        return _rms(p["w"])

    assert celo2.default_max_norm(False) == celo2.BASE_MAX_NORM < 4.0
    radius = celo2.BASE_MAX_NORM * start
    assert radius <= final_rms(False) <= radius + 1.001 * 0.05
    assert final_rms(True) > 1.5 * celo2.BASE_MAX_NORM * start
# ----------------------------------------------------------------------------- contract, JAX

def test_optax_chain_equals_contract_step_and_cosine_schedule():
    rng = np.random.RandomState(6)
    params = random_tree(rng)
    theta = noisy_theta(jax.random.PRNGKey(2), rng)
    n = 7
    tx = celo2.optimizer(theta, num_steps=n)                  # the default, untuned use
    s_tx, s_raw = tx.init(params), celo2.init(theta, params, n)
    for t in range(n + 2):
        grads = random_tree(rng)
        u1, s_tx = tx.update(grads, s_tx, params)
        u2, s_raw = celo2.step(theta, s_raw, params, grads)
        for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
            np.testing.assert_array_equal(a, b)
        lr = celo2.LEARNING_RATE * 0.5 * (1 + np.cos(np.pi * min(t / n, 1.0)))
        u = u1["t3"]   # a 2-D hidden weight: RMS = lr_t exactly
        assert abs(_rms(u) - lr) <= 1e-6 + 1e-4 * lr, (t, _rms(u), lr)
        params = optax.apply_updates(params, u1)


def test_default_learning_rate_trains_a_small_mlp_untuned():
    rng = np.random.RandomState(8)
    x = jnp.asarray(rng.normal(size=(128, 8)), jnp.float32)
    y = jnp.tanh(x @ jnp.asarray(rng.normal(size=(8, 2)), jnp.float32))
    params = {"l0": {"w": jnp.asarray(rng.normal(size=(8, 16)) / 3, jnp.float32),
                     "b": jnp.zeros(16)},
              "l1": {"w": jnp.zeros((16, 2)), "b": jnp.zeros(2)}}   # zero-initialized head

    def loss(p):
        return jnp.mean(jnp.square(jnp.tanh(x @ p["l0"]["w"] + p["l0"]["b"]) @ p["l1"]["w"]
                                   + p["l1"]["b"] - y))

    for harness in (True, False):
        tx = celo2.optimizer(celo2.init_meta_params(jax.random.PRNGKey(0), harness),
                             num_steps=300, harness=harness)

        @jax.jit
        def run(params):
            def body(c, _):
                p, s = c
                g = jax.grad(loss)(p)
                u, s = tx.update(g, s, p)
                return (optax.apply_updates(p, u), s), None
            return jax.lax.scan(body, (params, tx.init(params)), None, length=300)[0][0]

        first, final = float(loss(params)), float(loss(run(params)))
        assert final < 0.1 * first, (harness, first, final)


@pytest.mark.parametrize("opt", ["celo2", "celo2_base"])
def test_meta_training_with_the_harness_lowers_the_meta_loss(tmp_path, monkeypatch, opt):
    """From a random rule (the hand init is already a good optimizer), a short PES run with the
    harness in the loop lowers the meta-loss (lr 0.03 so that 20 inner steps make progress)."""
    harness = opt == "celo2"
    monkeypatch.setitem(registry.OPTIMIZERS, opt, registry.OPTIMIZERS[opt]._replace(
        build=lambda task, **kw: celo2.learned_optimizer(harness, 3e-2, rule_init="random")))
    cfg = train.resolve({"opt": opt, "task_set": "teacher_student", "pairs_per_task": 4,
                         "truncation": 5, "min_horizon": 10, "max_horizon": 20,
                         "eval_steps": 0, "save_every_s": 1e9, "augment": "none",
                         "meta_steps": 40, "meta_lr": 3e-2, "final_lr": 3e-2,
                         "out": str(tmp_path / "run.npz")})
    train.meta_train(cfg, log=lambda *a: None)
    rows = open(os.path.splitext(cfg["out"])[0] + ".csv").read().splitlines()[1:]
    loss = np.array([float(r.split(",")[2]) for r in rows])
    assert loss[-10:].mean() < 0.9 * loss[:10].mean(), loss
