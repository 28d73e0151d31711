"""The learned-optimizer contract (lopt.py), checked on every per-step optimizer of the registry:
finite steps from a random θ, the optax wrapper = the raw step, one compilation for new values of
the same shapes, lax.scan = a Python loop. Optimizer-specific tests stay in their
own files; this one holds the checks every optimizer shares."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt as lopt_lib
import registry
import tasks

PER_STEP = [n for n, r in registry.OPTIMIZERS.items() if r.per_step and not r.init_variant_of]
INIT_VARIANTS = [n for n, r in registry.OPTIMIZERS.items() if r.init_variant_of]
NUM_STEPS = 20      # planned training length passed to init (progress features)
STEPS = 4           # updates per check
TASK = "teacher_student"   # MLP 16 → 32 → 4: 2-D weights and biases, ~700 parameters


def noise_scale(name):
    """θ = init + N(0, σ²). VeLO: a PES-sized σ; a larger one overflows exp(λ2·m), since the
    ×100/K bank mixing makes an untrained MLP's outputs huge, as in the reference (test_velo)."""
    return 0.01 if "velo" in name else 0.5


def setup(name, seed):
    """The optimizer as evaluate.py builds it (last stage), its task's params, a random θ, and
    STEPS gradients (scales 0.1 … 100) and losses (100 … 0.1)."""
    r = registry.OPTIMIZERS[name]
    task = registry.prepare_task(name, tasks.get_task(TASK))
    lopt = r.build(task, **dict(r.stages[-1].build_kwargs))
    params = task.init(jax.random.PRNGKey(0))
    rng = np.random.RandomState(seed)
    theta = jax.tree.map(
        lambda x: x + jnp.asarray(noise_scale(name) * rng.normal(size=x.shape), x.dtype),
        lopt.init_meta_params(jax.random.PRNGKey(seed)))
    grads = jax.tree.map(lambda p: jnp.asarray(
        rng.normal(size=(STEPS,) + p.shape) * np.logspace(-1, 2, STEPS).reshape(
            (STEPS,) + (1,) * p.ndim), jnp.float32), params)
    losses = jnp.asarray(np.logspace(2, -1, STEPS), jnp.float32)
    return lopt, params, theta, grads, losses


def at(tree, t):
    return jax.tree.map(lambda x: x[t], tree)


def finite(tree):
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


def test_every_per_step_optimizer_is_covered():
    """Nothing is left out: the parametrization below is every per-step name of the registry but
    the init variants (checked against their base below), and every other entry says it is not
    a per-step optimizer."""
    ids = test_contract_holds.pytestmark[0].args[1]
    assert sorted(ids + INIT_VARIANTS) == sorted(
        n for n, r in registry.OPTIMIZERS.items() if r.per_step)
    assert {"small_fc_lopt", "celo", "velo", "celo2", "mu_small_fc_lopt"} <= set(ids)
    assert all(not registry.OPTIMIZERS[n].per_step
               for n in set(registry.OPTIMIZERS) - set(ids) - set(INIT_VARIANTS))


@pytest.mark.parametrize("name", PER_STEP)
def test_contract_holds(name):
    traces = []

    def counted(lopt, theta, state, params, grads, loss):
        traces.append(1)   # runs once per compilation
        return lopt.step(theta, state, params, grads, loss)

    for seed in range(2):
        lopt, params0, theta, grads, losses = setup(name, seed)
        if seed == 0:
            jitted = jax.jit(lambda *args, lopt=lopt: counted(lopt, *args))
            # the optax wrapper, used as evaluate.py does (value=loss), is the raw step exactly
            tx = lopt.optimizer(theta, NUM_STEPS)
            # (inside bound_norm's ball and scale_gradients' range: their states wrap the raw one)
            def raw(s):
                while isinstance(s, (lopt_lib.BoundedState, lopt_lib.ScaledState)):
                    s = s.inner
                return s
            s_tx, s_raw, p = tx.init(params0), lopt.init(theta, params0, NUM_STEPS), params0
            assert_trees_equal(raw(s_tx), s_raw)
            for t in range(2):
                u1, s_tx = tx.update(at(grads, t), s_tx, p, value=losses[t])
                u2, s_raw = lopt.step(theta, s_raw, p, at(grads, t), losses[t])
                assert_trees_equal((u1, raw(s_tx)), (u2, s_raw))
                p = optax.apply_updates(p, u1)
        # a Python loop of the jitted step: finite, and compiled once for new θ, states, grads
        state0 = lopt.init(theta, params0, NUM_STEPS)
        params, state = params0, state0
        for t in range(STEPS):
            updates, state = jitted(theta, state, params, at(grads, t), losses[t])
            assert finite(updates) and finite(state), (name, seed, t)
            params = optax.apply_updates(params, updates)
        assert len(traces) == 1, f"{name} recompiled for new values of the same shapes"

    # lax.scan over the same steps gives the loop's result
    def body(carry, x):
        p, s = carry
        u, s = lopt.step(theta, s, p, *x)
        return (optax.apply_updates(p, u), s), None

    scanned = jax.jit(lambda p, s, xs: jax.lax.scan(body, (p, s), xs)[0][0])(
        params0, state0, (grads, losses))
    for a, b in zip(jax.tree.leaves(scanned), jax.tree.leaves(params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", INIT_VARIANTS)
def test_init_variant_differs_from_its_base_only_in_theta_init(name):
    """An init variant (registry.Recipe.init_variant_of) has its base's settings, stages and θ
    shapes, and a different θ at init; its step then is the base's step, which the contract test
    checks (same builder function, other init)."""
    r = registry.OPTIMIZERS[name]
    base = registry.OPTIMIZERS[r.init_variant_of]
    assert (r.settings, r.stages, r.per_step) == (base.settings, base.stages, base.per_step)
    task = tasks.get_task(TASK)
    mine, theirs = r.build(task), base.build(task)
    assert mine.step.func is theirs.step.func and mine.max_norm == theirs.max_norm
    key = jax.random.PRNGKey(0)
    a, b = jax.eval_shape(mine.init_meta_params, key), jax.eval_shape(theirs.init_meta_params, key)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    assert [x.shape for x in jax.tree.leaves(a)] == [x.shape for x in jax.tree.leaves(b)]
    ta, tb = mine.init_meta_params(key), theirs.init_meta_params(key)
    assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(ta), jax.tree.leaves(tb)))
