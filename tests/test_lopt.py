"""lopt.py: the fast per-parameter MLP equals the plain form the papers write; the max-norm
bound (bound_norm) pulls back exactly what it says and stops a deliberate blow-up; every shipped
optimizer takes bfloat16 and empty tensors (portable)."""
from typing import NamedTuple

import jax, jax.numpy as jnp, numpy as np, optax, pytest
import accumulators as acc, features, lopt


@pytest.mark.parametrize("groups,eps,hidden", [(features.VELO_GROUPS, 0.0, 4),
                                               (features.ADAFAC_GROUPS, 1e-6, 32)])
@pytest.mark.parametrize("shape", [(), (7,), (5, 3), (3, 9), (2, 3, 4)])
def test_fast_per_parameter_mlp_equals_the_plain_form(groups, eps, hidden, shape):
    """lopt.per_parameter_mlp (normalization folded into W0, features recomputed, planes) is
    lopt.per_parameter_mlp_plain (features → normalize → MLP) to float32 rounding."""
    rng = np.random.RandomState(len(shape) + hidden)
    p = jnp.asarray(rng.normal(size=shape), jnp.float32)
    s = acc.init_tensor(p)
    for _ in range(3):
        g = jnp.asarray(rng.normal(size=shape), jnp.float32)
        s = acc.update_tensor(s, g, acc.MOMENTUM_DECAYS, acc.RMS_DECAYS, acc.ADAFACTOR_DECAYS)
    n_in = features.stack(features.columns(p, g, s, groups, eps)).shape[-1]
    mlp = lopt.init_mlp(jax.random.PRNGKey(0), (n_in, hidden, hidden, 2))
    fast = lopt.per_parameter_mlp(mlp, p, g, s, groups, eps)
    plain = lopt.per_parameter_mlp_plain(mlp, p, g, s, groups, eps)
    assert len(fast) == len(plain) == 2
    for a, b in zip(fast, plain):
        np.testing.assert_allclose(np.asarray(a).reshape(-1), np.asarray(b).reshape(-1),
                                   rtol=2e-4, atol=2e-5)


# ----------------------------------------------------------------------------- the max-norm bound

def _identity():
    """An inner transformation whose updates are the 'gradients' given (to drive p anywhere)."""
    return optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(),
                                                 lambda g, s, p=None, **kw: (g, s))


def test_bound_norm_pulls_back_only_tensors_outside_their_ball():
    rng = np.random.RandomState(0)
    params = {"w": jnp.asarray(0.3 * rng.normal(size=(6, 5)), jnp.float32),   # rms ≈ 0.3
              "small": jnp.asarray(0.01 * rng.normal(size=(4, 4)), jnp.float32),
              "zero": jnp.zeros((3, 2), jnp.float32),
              "b": jnp.zeros((5,), jnp.float32), "s": jnp.float32(1.0)}
    tx = lopt.bound_norm(_identity(), 4.0)
    state = tx.init(params)
    rms = lambda x: float(jnp.sqrt(jnp.mean(jnp.square(x))))
    # radius = κ · (RMS at step 0, floored at 0.1; 0.25 for an all-zero tensor)
    np.testing.assert_allclose(state.radius["w"], 4 * rms(params["w"]), rtol=1e-6)
    np.testing.assert_allclose(state.radius["small"], 4 * lopt.MAX_NORM_FLOOR, rtol=1e-6)
    np.testing.assert_allclose(state.radius["zero"], 4 * lopt.MAX_NORM_ZERO, rtol=1e-6)
    grads = {"w": 9.0 * params["w"] + 0.5,                        # takes w out of its ball
             "small": jnp.full((4, 4), 0.01, jnp.float32),        # stays inside
             "zero": jnp.asarray(rng.normal(size=(3, 2)) * 50, jnp.float32),
             "b": jnp.full((5,), 1e3, jnp.float32), "s": jnp.float32(-7.0)}
    # every tensor starts inside its ball: the updates pass unchanged, bit for bit
    updates, state = tx.update(grads, state, params)
    for k in grads:
        np.testing.assert_array_equal(updates[k], grads[k])
    new = optax.apply_updates(params, updates)
    assert rms(new["w"]) > state.radius["w"] and rms(new["zero"]) > state.radius["zero"]
    # next step: a matrix outside is pulled back onto its ball (same direction), then steps
    updates, _ = tx.update(grads, state, new)
    for k in ("w", "zero"):
        c = state.radius[k] / rms(new[k])
        np.testing.assert_allclose(new[k] + updates[k], c * new[k] + grads[k], rtol=1e-5,
                                   atol=1e-5)
        np.testing.assert_allclose(rms(c * new[k]), state.radius[k], rtol=1e-5)
    np.testing.assert_array_equal(updates["small"], grads["small"])     # still inside
    # a vector or scalar outside its ball moves on, its step scaled by radius / rms(p)
    np.testing.assert_allclose(updates["b"], grads["b"] * 4 * lopt.MAX_NORM_ZERO / 1e3, rtol=1e-5)
    np.testing.assert_allclose(updates["s"], grads["s"] * 4 / 6.0, rtol=1e-5)   # |1 − 7| > 4


def test_bound_norm_forwards_eta_and_needs_params():
    class Inner(NamedTuple):
        eta: jax.Array
    inner = optax.GradientTransformationExtraArgs(lambda p: Inner(jnp.float32(0.7)),
                                                  lambda g, s, p=None, **kw: (g, s))
    tx = lopt.bound_norm(inner)
    params = {"w": jnp.ones((2, 2))}
    state = tx.init(params)
    assert float(state.eta) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="needs the current params"):
        tx.update(params, state)


@pytest.mark.parametrize("name,steps", [("celo", 400), ("velo", 400), ("celo2_base", 3000)])
def test_shipped_optimizer_cannot_blow_up_the_weights(name, steps):
    """A deliberately bad objective, L = −‖p‖² (its gradient always points inward, so every step
    goes outward): the raw step grows the weights many times over (exponentially for the
    relative steps of Celo and VeLO, linearly for Celo2-base's); the shipped optimizer
    (bound_norm on) keeps every matrix within 4× its start (plus the one step it may take
    beyond) and slows the bias's growth."""
    import celo, celo2, evaluate, velo
    theta = evaluate.load_theta(name)
    make = {"celo": lambda m: celo.optimizer(theta, steps, max_norm=m),
            "velo": lambda m: velo.optimizer(theta, steps, max_norm=m),
            "celo2_base": lambda m: celo2.optimizer(theta, num_steps=steps, harness=False,
                                                    max_norm=m)}[name]
    p0 = {"w": jnp.asarray(0.2 * np.random.RandomState(1).normal(size=(16, 8)), jnp.float32),
          "b": jnp.full((8,), 0.2, jnp.float32)}
    loss = lambda p: -jnp.sum(jnp.square(p["w"])) - jnp.sum(jnp.square(p["b"]))

    def final_rms(tx):
        def body(c, _):
            p, s = c
            l, g = jax.value_and_grad(loss)(p)
            u, s = tx.update(g, s, p, value=l)
            return (optax.apply_updates(p, u), s), None
        (p, _), _ = jax.lax.scan(body, (p0, tx.init(p0)), None, length=steps)
        return [float(jnp.sqrt(jnp.mean(jnp.square(p[k])))) for k in ("w", "b")]

    start = float(jnp.sqrt(jnp.mean(jnp.square(p0["w"]))))
    raw_w, raw_b = final_rms(make(0.0))
    w, b = final_rms(make(lopt.MAX_NORM))
    assert raw_w > 6 * start and raw_b > 6 * 0.2                  # the raw step runs away
    assert w <= 1.01 * lopt.MAX_NORM * start           # on its ball, give or take one step
    assert b < raw_b / 1.5             # the bias grows slower (measured: 0.23, 0.06, 0.56×)


# ----------------------------------------------------------------------------- portable

@pytest.mark.parametrize("name", ["celo", "velo", "small_fc_lopt", "celo2", "celo2_base"])
def test_shipped_optimizers_take_bfloat16_and_empty_tensors(name):
    """lopt.portable, around every shipped optimizer: float32 params give the unwrapped step bit
    for bit; bfloat16 params are stepped in float32 and get bfloat16 updates (the float32 step
    rounded); an empty tensor gets an empty update and changes no other tensor's (VeLO's
    cross-tensor features made every update NaN; bfloat16 failed to compile)."""
    import celo, celo2, evaluate, small_fc_lopt, velo
    theta = evaluate.load_theta(name)
    make = {"celo": lambda: celo.optimizer(theta, 50), "velo": lambda: velo.optimizer(theta, 50),
            "small_fc_lopt": lambda: small_fc_lopt.optimizer(theta, 50),
            "celo2": lambda: celo2.optimizer(theta, num_steps=50),
            "celo2_base": lambda: celo2.optimizer(theta, num_steps=50, harness=False)}[name]
    rng = np.random.RandomState(2)
    params = {"w": jnp.asarray(rng.normal(size=(8, 4)) / 3, jnp.bfloat16),
              "b": jnp.asarray(rng.normal(size=(4,)) / 3, jnp.bfloat16)}
    grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
             for _ in range(3)]
    f32 = lambda t: jax.tree.map(lambda x: x.astype(jnp.float32), t)

    def run(tx, params, grads):
        state, out = tx.init(params), []
        for g in grads:
            u, state = tx.update(g, state, params, value=jnp.float32(1.0))
            out.append(u)
        return out

    reference = run(make(), f32(params), [f32(g) for g in grads])
    low = run(make(), params, grads)
    for u, ref in zip(low, reference):
        for k in params:
            assert u[k].dtype == jnp.bfloat16
            np.testing.assert_array_equal(u[k], ref[k].astype(jnp.bfloat16))
            assert np.all(np.isfinite(np.asarray(u[k], np.float32)))
    empty = {**f32(params), "e": jnp.zeros((0, 3), jnp.float32)}
    with_empty = run(make(), empty, [{**f32(g), "e": jnp.zeros((0, 3))} for g in grads])
    for u, ref in zip(with_empty, reference):
        assert u["e"].shape == (0, 3)
        for k in params:
            np.testing.assert_array_equal(u[k], ref[k])


def test_portable_passes_float32_through_bit_for_bit():
    """portable(tx) on float32 params is tx: the same updates and the same state."""
    tx = optax.with_extra_args_support(optax.adam(1e-2))
    params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
    g = jax.tree.map(lambda p: jnp.sin(p) + 0.1, params)
    u1, s1 = tx.update(g, tx.init(params), params)
    u2, s2 = lopt.portable(tx).update(g, lopt.portable(tx).init(params), params)
    for a, b in zip(jax.tree.leaves((u1, s1)), jax.tree.leaves((u2, s2))):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- the loss's scale

def _recording():
    """An inner transformation whose updates are its gradients and whose state is the last value."""
    return optax.GradientTransformationExtraArgs(
        lambda p: jnp.float32(0.0), lambda g, s, p=None, value=None, **kw: (g, value))


def test_scale_gradients_fixes_c_at_the_first_nonzero_gradient():
    tx = lopt.scale_gradients(_recording(), (1e-4, 1.0))
    params = {"w": jnp.ones((3, 4)), "b": jnp.ones(4)}
    state = tx.init(params)
    zero = jax.tree.map(jnp.zeros_like, params)
    u, state = tx.update(zero, state, params, value=jnp.float32(2.0))     # no scale yet: c = 1
    assert float(state.scale) == 0.0 and float(state.inner) == 2.0
    small = {"w": jnp.full((3, 4), 1e-7), "b": jnp.full((4,), -1e-7)}    # RMS 1e-7: c = 1e3
    u, state = tx.update(small, state, params, value=jnp.float32(2.0))
    np.testing.assert_allclose(float(state.scale), 1e3, rtol=1e-5)
    np.testing.assert_allclose(u["w"], 1e-4, rtol=1e-5)
    np.testing.assert_allclose(float(state.inner), 2e3, rtol=1e-5)          # the loss too
    u, state = tx.update(jax.tree.map(lambda x: 50 * x, small), state, params)   # c stays
    np.testing.assert_allclose(u["b"], -5e-3, rtol=1e-5)
    big = lopt.scale_gradients(_recording(), (1e-4, 1.0))                 # RMS 10: c = 0.1
    u, s = big.update({"w": jnp.full((3, 4), 10.0), "b": jnp.full((4,), 10.0)},
                      big.init(params), params)
    np.testing.assert_allclose(u["w"], 1.0, rtol=1e-6)
    inside = {"w": jnp.full((3, 4), 0.03), "b": jnp.linspace(-0.1, 0.1, 4)}   # c = 1 exactly
    u, s = tx.update(inside, tx.init(params), params, value=jnp.float32(0.3))
    assert float(s.scale) == 1.0 and float(s.inner) == np.float32(0.3)
    for k in inside:
        np.testing.assert_array_equal(u[k], inside[k])


@pytest.mark.parametrize("name", ["celo", "celo2_base"])
def test_learned_optimizer_ignores_the_losss_scale_outside_its_range(name):
    """The shipped optimizer on a tanh regression whose loss is multiplied by 1e-6 or 1e-8
    takes the same steps in both (the rule sees the loss at the edge of GRAD_RMS_RANGE) and
    lowers the loss fivefold; raw (no scale_gradients), Celo2-base's steps follow its MLP's bias
    there and the loss ends above its start."""
    import celo, celo2, evaluate
    theta, steps = evaluate.load_theta(name), 300
    make = {"celo": lambda: celo.optimizer(theta, steps),
            "celo2_base": lambda: celo2.optimizer(theta, num_steps=steps, harness=False)}[name]
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(k1, (256, 16))
    y = jnp.tanh(x @ jax.random.normal(k2, (16, 4)))
    base = lambda p: jnp.mean((jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] - y) ** 2)
    p0 = {"w1": jax.random.normal(k3, (16, 32)) / 4, "b1": jnp.zeros(32), "w2": jnp.zeros((32, 4))}

    def run(tx, scale):
        def body(c, _):
            p, s = c
            l, g = jax.value_and_grad(lambda p: scale * base(p))(p)
            u, s = tx.update(g, s, p, value=l)
            return (optax.apply_updates(p, u), s), None
        (p, _), _ = jax.lax.scan(body, (p0, tx.init(p0)), None, length=steps)
        return p

    a, b = run(make(), 1e-6), run(make(), 1e-8)
    for k in p0:   # equal up to float rounding carried through 300 steps (weights are O(0.1–2);
        # Celo's blended rule carries it to ≈ 2.5e-4 on a few of 512 weights)
        np.testing.assert_allclose(a[k], b[k], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(float(base(a)), float(base(b)), rtol=1e-2)
    assert float(base(a)) < 0.2 * float(base(p0))
    if name == "celo2_base":
        raw = celo2.optimizer(theta, num_steps=steps, harness=False, grad_rms_range=None)
        assert float(base(run(raw, 1e-6))) > float(base(p0))
