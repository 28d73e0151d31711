"""Celo against the published implementation (amoudgl/celo) and against formulas.

Parity numbers are the test vectors of the released θ (phase 2), computed with the authors' own
code and listed in the weights README that came with celo_paper_theta.npz; they are inlined here.
The released θ itself is read from checkpoints/celo_paper.npz (convert_celo_weights.py).
"""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import accumulators as acc
import celo
import checkpoint
import convert_celo_weights as convert
import features
import lopt
from conftest import ROOT

CHECKPOINT = os.path.join(ROOT, "checkpoints", "celo_paper.npz")
# One compiled step shared by the tests (each compilation costs seconds on 2 shared cores): the
# reference code's exact step (min_scale=0: no floor under the tensor scale; see the last tests).
_STEP = jax.jit(functools.partial(celo.step, min_scale=0.0), static_argnames="use_scheduler")


def STEP(theta, state, params, grads, loss, use_scheduler=True):
    """The jitted step; the loss is made a float32 array so a Python float does not recompile."""
    return _STEP(theta, state, params, grads, jnp.float32(loss), use_scheduler=use_scheduler)


INIT_THETA = jax.jit(celo.init_meta_params)
LEARNING_RATE = jax.jit(celo.learning_rate)

# --- test vectors of the weights README (released θ, phase 2) -----------------------------------
ETA0 = 0.44360
ETA_T = (0, 1, 2, 3, 5, 10, 50, 100, 250, 500, 750, 900, 999)
ETA_SMOOTH = (0.4436, 0.9023, 1.3063, 1.8331, 2.0881, 2.2322, 2.0894, 1.3733, 1.1807, 1.6120,
              1.0548, 0.2482, 0.1766)     # N = 1000, L_t = 2.3·exp(−t/300) + 0.2
ETA_WIGGLY = (0.4436, 0.9023, 1.1628, 1.3287, 1.4739, 1.5464, 1.9564, 1.3292, 1.1722, 0.5454,
              0.6142, 0.0516, 0.1237)     # the same + 0.1·sin(t/5)
LOSS_FEATURES_100 = (-0.8053,) + (-1.0,) * 8  # wiggly loss, after 100 updates
DW_PHASE2 = (5.6025e-4, 4.7786e-4, 3.3598e-4, -4.1423e-4, -3.6283e-4, -3.8312e-4, -3.9168e-4,
             3.9906e-4, 4.6216e-4, 5.3516e-4, 5.8362e-4, 3.8205e-4)  # Δw = p − p_new
DB_PHASE2 = (2.1994e-7, -1.4316e-7, 1.7547e-7, -3.0619e-8)
DW0_PHASE1, DB0_PHASE1 = 1.2629e-3, 4.9580e-7   # given explicitly for phase 1
# η is printed to 4 decimals: half a unit in the last place is 5e-5; measured worst 4.8e-5.
# 1e-4 leaves room for float32 noise, which the loss features amplify (see run_schedule).
ETA_ATOL = 1e-4
STEP_RTOL = 1e-4


@pytest.fixture(scope="module")
def paper_theta():
    name, theta = checkpoint.load_checkpoint(CHECKPOINT)
    assert name == "celo"
    return theta


@functools.lru_cache(maxsize=None)
def paper_optax():
    """The released optimizer as an optax transformation (N = 300), its update jitted once."""
    tx = celo.optimizer(checkpoint.load_checkpoint(CHECKPOINT)[1], num_steps=300, min_scale=0.0)
    return tx, jax.jit(tx.update)


def readme_problem():
    """The first-update inputs of the weights README."""
    params = {"w": 0.1 * jnp.sin(jnp.arange(12, dtype=jnp.float32) + 1).reshape(3, 4),
              "b": jnp.zeros(4, jnp.float32)}
    grads = {"w": jnp.cos(0.7 * jnp.arange(12, dtype=jnp.float32)).reshape(3, 4),
             "b": jnp.asarray([0.5, -0.25, 0.1, 0.0], jnp.float32)}
    return params, grads


def readme_losses(wiggle):
    t = np.arange(1000, dtype=np.float64)
    return jnp.asarray(2.3 * np.exp(-t / 300) + 0.2 + wiggle * np.sin(t / 5), jnp.float32)


@functools.lru_cache(maxsize=None)
def schedule_run(wiggle):
    """run_schedule on the paper θ for one of the README loss curves, computed once."""
    losses = readme_losses(wiggle)
    theta = checkpoint.load_checkpoint(CHECKPOINT)[1]
    return jax.device_get(run_schedule(theta, losses, jnp.int32(losses.shape[0])))


@jax.jit
def run_schedule(theta, losses, num_steps):
    """1000 real updates on the README problem; per step: η stored by the full step, η measured
    end to end (phase-2 step / phase-1 step from the same state), learning_rate() beforehand,
    the loss features after the update, and the update of w. num_steps is traced, as in the
    reference's jitted init: a constant N gets its loss-EMA decays constant-folded by XLA, which
    can differ by 1 ulp, and the loss features amplify that to ~1e-4 in η (t = 5, wiggly loss)."""
    params, grads = readme_problem()

    def body(carry, loss):
        params, state = carry
        predicted = celo.learning_rate(theta, state, loss)
        u2, new_state = celo.step(theta, state, params, grads, loss, min_scale=0.0)
        u1, _ = celo.step(theta, state, params, grads, loss, use_scheduler=False, min_scale=0.0)
        a, b = (jnp.concatenate([x.ravel() for x in jax.tree.leaves(u)]) for u in (u2, u1))
        measured = jnp.dot(a, b) / jnp.dot(b, b)
        out = (new_state.eta, measured, predicted, features.loss_features(new_state.loss_ema),
               u2["w"])
        return (optax.apply_updates(params, u2), new_state), out

    state = celo.init(theta, params, num_steps)
    return jax.lax.scan(body, (params, state), losses)[1]


# ----------------------------------------------------------------------------- parity

@pytest.mark.parametrize("wiggle,expect", [(0.0, ETA_SMOOTH), (0.1, ETA_WIGGLY)])
def test_eta_sequence_matches_reference(paper_theta, wiggle, expect):
    stored, measured, predicted, _, _ = schedule_run(wiggle)
    t = np.asarray(ETA_T)
    np.testing.assert_allclose(measured[t], expect, rtol=0, atol=ETA_ATOL)
    np.testing.assert_allclose(measured, stored, rtol=1e-5)   # end to end = the η it used
    np.testing.assert_allclose(predicted, stored, rtol=1e-6)  # learning_rate() predicts it


def test_loss_features_after_100_updates(paper_theta):
    loss_features = schedule_run(0.1)[3]
    np.testing.assert_allclose(loss_features[99], LOSS_FEATURES_100, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(loss_features[:2], 0.0)     # zero for the first two losses


def test_eta0_is_the_same_for_every_task(paper_theta):
    """Any loss, horizon and parameters (that η never reads parameters is tested below)."""
    params = readme_problem()[0]
    for scale, num_steps, loss in [(1.0, 1000, 2.0), (-30.0, 17, 1e4), (0.0, 100000, 0.01)]:
        p = jax.tree.map(lambda x: scale * x, params)
        state = celo.init(paper_theta, p, num_steps)
        np.testing.assert_allclose(LEARNING_RATE(paper_theta, state, loss), ETA0, atol=1e-5)


def test_first_update_matches_reference(paper_theta):
    params, grads = readme_problem()
    state = celo.init(paper_theta, params, 1000)
    loss = jnp.float32(2.0)
    u2, s2 = STEP(paper_theta, state, params, grads, loss)
    u1, s1 = STEP(paper_theta, state, params, grads, loss, use_scheduler=False)
    np.testing.assert_allclose(-u2["w"].ravel(), DW_PHASE2, rtol=STEP_RTOL)
    np.testing.assert_allclose(-u2["b"], DB_PHASE2, rtol=STEP_RTOL)
    np.testing.assert_allclose(-u1["w"].ravel(), np.asarray(DW_PHASE2) / ETA0, rtol=STEP_RTOL)
    np.testing.assert_allclose(-u1["b"], np.asarray(DB_PHASE2) / ETA0, rtol=STEP_RTOL)
    np.testing.assert_allclose(-u1["w"][0, 0], DW0_PHASE1, rtol=STEP_RTOL)
    np.testing.assert_allclose(-u1["b"][0], DB0_PHASE1, rtol=STEP_RTOL)
    np.testing.assert_allclose(s2.eta, ETA0, atol=1e-5)
    assert float(s1.eta) == 1.0


# ----------------------------------------------------------------------------- formulas

def test_parameter_count_formula():
    rule = 30 * 4 + 4 + 4 * 4 + 4 + 4 * 2 + 2                 # 30 → 4 → 4 → 2
    scheduler = 2 * (18 * 64 + 64) + (128 * 256 + 256) + (64 + 1) + 2 * 64
    theta = jax.eval_shape(celo.init_meta_params, jax.random.PRNGKey(0))
    assert lopt.count_params(theta["rule"]) == rule == 154
    assert lopt.count_params(theta["scheduler"]) == scheduler == 35649
    assert lopt.count_params(theta) == celo.num_meta_params() == 35803
    for hidden, layers, lstm in [(8, 3, 16), (4, 1, 32)]:
        init = functools.partial(celo.init_meta_params, hidden=hidden, hidden_layers=layers,
                                 lstm_hidden=lstm)
        theta = jax.eval_shape(init, jax.random.PRNGKey(1))
        widths = [30] + [hidden] * layers + [2]
        expect = (sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
                  + 2 * (18 * lstm + lstm) + 2 * lstm * 4 * lstm + 4 * lstm + lstm + 1 + 2 * lstm)
        assert lopt.count_params(theta) == celo.num_meta_params(hidden, layers, lstm) == expect


def test_paper_checkpoint_has_our_layout_and_licence(paper_theta):
    init = jax.eval_shape(celo.init_meta_params, jax.random.PRNGKey(0))
    assert jax.tree.map(jnp.shape, paper_theta) == jax.tree.map(jnp.shape, init)
    name, _, config, _, meta = checkpoint.read_checkpoint(CHECKPOINT)
    assert name == "celo" and config["use_scheduler"] is True
    assert meta["licence"] == "MIT" and meta["copyright"] == "Copyright (c) 2025 Abhinav Moudgil"
    assert "Permission is hereby granted" in meta["notice"]
    with open(os.path.join(ROOT, "checkpoints", "LICENSE-celo-paper.txt")) as f:
        text = f.read()
    assert "Copyright (c) 2025 Abhinav Moudgil" in text and "Permission is hereby granted" in text


def test_untrained_theta_and_eta0():
    """Meta-init as haiku's: weights truncated normal (±2σ, σ = 1/sqrt(fan_in)), zero biases, a
    zero initial LSTM state; except the output bias ln(1/α), so the untrained scheduler gives
    η₀ = α·exp(ln(1/α) + small) ≈ 1: stage 2 starts from stage 1's η ≡ 1."""
    theta = celo.init_meta_params(jax.random.PRNGKey(3), rule_init="random")
    s = theta["scheduler"]
    assert not np.any(s["h0"]) and not np.any(s["c0"])
    np.testing.assert_allclose(s["out"]["b"], [np.log(10.0)], rtol=1e-6)
    assert not np.any(theta["rule"]["b0"]) and not np.any(s["lstm"]["b"])
    for w, fan_in in [(theta["rule"]["w0"], 30), (s["mix"]["w"], 18), (s["lstm"]["w"], 128)]:
        assert np.abs(w).max() <= 2 / np.sqrt(fan_in) + 1e-7
        assert abs(float(jnp.std(w)) * np.sqrt(fan_in) - 0.88) < 0.1   # truncation shrinks σ
    state = celo.init(theta, readme_problem()[0], 10)
    eta = LEARNING_RATE(theta, state, 1.0)
    assert 0.5 < float(eta) < 2.0


def three_steps(shape, rng):
    """A tensor, its last gradient and its accumulators after three random gradients."""
    p = jnp.asarray(rng.normal(size=shape), jnp.float32)
    s = acc.init_tensor(p)
    for _ in range(3):
        g = jnp.asarray(rng.normal(size=shape), jnp.float32)
        s = acc.update_tensor(s, g, acc.MOMENTUM_DECAYS, acc.RMS_DECAYS, acc.ADAFACTOR_DECAYS)
    return p, g, s


def assert_rule_starts_along(theta, x, p, g, s):
    """Output d of a fresh rule is exactly 10 · x normalized over the tensor; m stays random."""
    d, m = jax.jit(celo.rule_outputs)(theta["rule"], p, g, s)
    np.testing.assert_allclose(d, 10.0 * x / np.sqrt(1e-5 + np.mean(x ** 2)), rtol=1e-4,
                               atol=1e-5)
    assert float(jnp.std(m)) > 0.0


def test_adam_rule_init_starts_as_relative_adam():
    """rule_init="adam" (ours, `--opt celo_adam_init`): d = 10 · x₇ / sqrt(1e-5 + mean x₇²)
    exactly, x₇ = m_0.9·rsqrt(v) (Adam's direction, normalized over the tensor), so a fresh θ
    steps Δp = −1e-3·10·n(x₇)·exp(1e-3·m)·rms(p)·η; the m output stays random."""
    theta = celo.init_meta_params(jax.random.PRNGKey(3), rule_init="adam")
    assert celo.RULE_INIT_DIRECTIONS["adam"] == 7   # Adam's direction m_0.9·rsqrt(v)
    rng = np.random.RandomState(5)
    for shape in [(20, 30), (7,)]:
        p, g, s = three_steps(shape, rng)
        x = np.asarray(s.m[..., 0] / np.sqrt(np.asarray(s.rms[..., 0]) + features.RMS_EPS),
                       np.float64)
        assert_rule_starts_along(theta, x, p, g, s)
    with pytest.raises(ValueError, match="rule_init"):
        celo.init_meta_params(jax.random.PRNGKey(0), rule_init="xavier")


def test_adafactor_rule_starts_as_relative_adafactor():
    """rule_init="adafactor" (ours, `--opt celo_adafactor_init`): d = 10 · n(x₂₇), x₂₇ = m_0.9
    over the factored second moment (Adafactor with momentum), for a matrix and a vector."""
    theta = celo.init_meta_params(jax.random.PRNGKey(3), rule_init="adafactor")
    col = celo.RULE_INIT_DIRECTIONS["adafactor"]
    assert features.column_index(features.VELO_GROUPS, "fac_mom", 0) == col == 27
    rng = np.random.RandomState(6)
    for shape in [(20, 30), (7,)]:
        p, g, s = three_steps(shape, rng)
        x = np.asarray(features.velo_features(p, g, s)[..., col], np.float64)
        assert np.std(x) > 0
        assert_rule_starts_along(theta, x, p, g, s)


def test_default_rule_starts_as_blend_of_normalized_directions():
    """The default rule_init="blend" (ours): d = 10 · Σ_i w_i·n(x_i), each column normalized
    over the tensor on its own (the MLP's first-layer normalization)."""
    assert celo.RULE_INIT == "blend"
    theta = INIT_THETA(jax.random.PRNGKey(3))
    mix = celo.RULE_INIT_DIRECTIONS["blend"]
    assert abs(sum(mix.values()) - 1.0) < 1e-6 and celo.RULE_INIT_DIRECTIONS["adam"] in mix
    rng = np.random.RandomState(7)
    for shape in [(20, 30), (7,)]:
        p, g, s = three_steps(shape, rng)
        x = np.asarray(features.velo_features(p, g, s), np.float64)
        expect = sum(w * x[..., i] / np.sqrt(1e-5 + np.mean(x[..., i] ** 2))
                     for i, w in mix.items())
        d, _ = jax.jit(celo.rule_outputs)(theta["rule"], p, g, s)
        np.testing.assert_allclose(d, 10.0 * expect, rtol=1e-4, atol=1e-5)


def noisy(theta, rng, scale=0.5):
    """θ far from its init: every array + N(0, scale²) (numpy noise: nothing to compile)."""
    return jax.tree.map(lambda x: x + scale * rng.normal(size=x.shape).astype(np.float32), theta)


@jax.jit
def rule_and_oracle(rule, params, grads):
    """(ours, oracle) per tensor, after three accumulator updates, in one compiled call."""
    out = {}
    for n, p in params.items():
        s = acc.init_tensor(p)
        for i in range(3):
            g = grads[n] * (i + 1.0)
            s = acc.update_tensor(s, g, acc.MOMENTUM_DECAYS, acc.RMS_DECAYS,
                                      acc.ADAFACTOR_DECAYS)
        x = features.velo_features(p, g, s)
        out[n] = (jnp.stack(celo.rule_outputs(rule, p, g, s), -1),
                  lopt.apply_mlp(rule, x, features.column_scale(x)))
    return out


def test_rule_equals_apply_mlp_on_normalized_features():
    """Our one-pass normalization and column-wise first layer = lopt.apply_mlp applied
    to features.column_scale-normalized features (the plain form), for a 3-d and a scalar tensor
    (matrices and vectors: the parity tests)."""
    rng = np.random.RandomState(2)
    shapes = {"kernel3d": (20, 30, 4), "scalar": ()}
    params = {n: jnp.asarray(rng.normal(size=s), jnp.float32) for n, s in shapes.items()}
    grads = {n: jnp.asarray(rng.normal(size=s), jnp.float32) for n, s in shapes.items()}
    rule = noisy(INIT_THETA(jax.random.PRNGKey(2)), rng)["rule"]
    for n, (ours, oracle) in rule_and_oracle(rule, params, grads).items():
        assert ours.shape == oracle.shape == (shapes[n] or (1,)) + (2,)
        np.testing.assert_allclose(ours, oracle, rtol=1e-5, atol=1e-5 * np.abs(oracle).max())


def test_step_is_eq2_times_tensor_rms_times_eta(paper_theta):
    """Δp = 1e-3·d·exp(1e-3·m)·sqrt(mean p² + 1e-9)·η — the RMS, not Algorithm 1's ‖p‖₂; the
    all-zero b gets sqrt(1e-9). A rule with zero weights outputs its last bias: d = 0.7, m = 300."""
    params, grads = readme_problem()
    rule = jax.tree.map(jnp.zeros_like, paper_theta["rule"])
    rule["b2"] = jnp.asarray([0.7, 300.0], jnp.float32)
    theta = dict(paper_theta, rule=rule)
    state = celo.init(theta, params, 100)
    updates, new = STEP(theta, state, params, grads, 1.5)
    for n in params:
        rms = np.sqrt(np.mean(np.asarray(params[n], np.float64) ** 2) + 1e-9)
        expect = -1e-3 * 0.7 * np.exp(1e-3 * 300.0) * rms * float(new.eta)
        np.testing.assert_allclose(updates[n], np.full(params[n].shape, expect), rtol=1e-6)
    assert abs(float(new.eta) - ETA0) < 1e-5
    # the released rule: scaling a tensor (and nothing else) scales its step, since its
    # features are normalized per tensor and the step is proportional to its RMS
    state = celo.init(paper_theta, params, 100)
    updates, _ = STEP(paper_theta, state, params, grads, 1.5)
    u10, _ = STEP(paper_theta, state, {"w": 10 * params["w"], "b": params["b"]}, grads, 1.5)
    np.testing.assert_allclose(u10["w"], 10 * updates["w"], rtol=1e-4)
    np.testing.assert_array_equal(u10["b"], updates["b"])


def test_gradients_are_clipped_to_1000(paper_theta):
    params, grads = readme_problem()
    big = {"w": grads["w"].at[0, 0].set(1e7), "b": grads["b"].at[1].set(-1e9)}
    clipped = {"w": grads["w"].at[0, 0].set(1000.0), "b": grads["b"].at[1].set(-1000.0)}
    state = celo.init(paper_theta, params, 50)
    ua, sa = STEP(paper_theta, state, params, big, 1.0)
    ub, sb = STEP(paper_theta, state, params, clipped, 1.0)
    for a, b in zip(jax.tree.leaves((ua, sa)), jax.tree.leaves((ub, sb))):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- scheduler and stages

# A second parameter structure: a 3-d kernel, a scalar, an all-zero vector.
OTHER_PARAMS = {"k": jnp.full((4, 2, 3), 5.0, jnp.float32), "s": jnp.float32(-2.0),
                "v": jnp.zeros(9, jnp.float32)}


def _etas(theta, params, grads_fn, losses, num_steps=40, use_scheduler=True):
    state = celo.init(theta, params, num_steps)
    out = []
    for i, loss in enumerate(losses):
        updates, state = STEP(theta, state, params, grads_fn(params, i), jnp.float32(loss),
                              use_scheduler=use_scheduler)
        params = optax.apply_updates(params, updates)
        out.append(float(state.eta))
    return np.asarray(out)


def test_scheduler_reads_only_global_features(paper_theta):
    losses = 3.0 * np.exp(-np.arange(12) / 4.0) + 0.1 * np.cos(np.arange(12))
    a = _etas(paper_theta, readme_problem()[0], lambda p, i: readme_problem()[1], losses)
    other = OTHER_PARAMS
    b = _etas(paper_theta, other,
              lambda p, i: jax.tree.map(lambda x: jnp.sin(x + i) * 100.0, p), losses)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    c = _etas(paper_theta, other, lambda p, i: p, losses[::-1])   # another loss curve
    assert np.max(np.abs(c - a)) > 1e-2
    assert len(set(np.round(a, 6))) > 5                            # η does change over time


def test_stage1_uses_eta_one_and_ignores_the_scheduler(paper_theta):
    params, grads = readme_problem()
    assert {part for part, _ in celo.STAGES.values()} == set(paper_theta)
    noisy_sched = dict(paper_theta, scheduler=jax.tree.map(lambda x: x + 1.0,
                                                           paper_theta["scheduler"]))
    noisy_rule = dict(paper_theta, rule=jax.tree.map(lambda x: x * 1.1, paper_theta["rule"]))
    stage1 = celo.learned_optimizer(use_scheduler=False)
    assert stage1.name == "celo_stage1" and stage1.needs_loss
    state = celo.init(paper_theta, params, 100)
    # the record's step is celo.step(use_scheduler=False), which STEP runs below
    assert stage1.step.func is celo.step and stage1.step.keywords == {"use_scheduler": False,
                                                                      "min_scale": None}
    u, s = STEP(paper_theta, state, params, grads, 1.0, use_scheduler=False)
    u_sched, _ = STEP(noisy_sched, state, params, grads, 1.0, use_scheduler=False)
    u_rule, _ = STEP(noisy_rule, state, params, grads, 1.0, use_scheduler=False)
    assert float(s.eta) == 1.0
    for a, b, c in zip(jax.tree.leaves(u), jax.tree.leaves(u_sched), jax.tree.leaves(u_rule)):
        np.testing.assert_array_equal(a, b)
        assert np.max(np.abs(a - c)) > 0
    np.testing.assert_array_equal(s.lstm_h, state.lstm_h)
    # stage 2 reads both parts
    u2, _ = STEP(paper_theta, state, params, grads, 1.0)
    u2_sched, _ = STEP(noisy_sched, state, params, grads, 1.0)
    assert np.max(np.abs(u2["w"] - u2_sched["w"])) > 0
    assert _etas(paper_theta, params, lambda p, i: grads, [1.0] * 5,
                 use_scheduler=False).tolist() == [1.0] * 5


# ----------------------------------------------------------------------------- contract and JAX

def test_missing_loss_is_a_clear_error(paper_theta):
    params, grads = readme_problem()
    tx = celo.optimizer(paper_theta, num_steps=10)
    with pytest.raises(ValueError, match="reads the training loss"):
        tx.update(grads, tx.init(params), params)


def test_random_theta_gives_finite_updates_on_odd_tensors():
    """Finite updates and η > 0 from θ far from its init, on a 3-D, a scalar and an all-zero
    tensor, with gradients from 1 to 1e3 (one compilation: tests/test_contract.py)."""
    rng = np.random.RandomState(11)
    params = dict(OTHER_PARAMS, k=jnp.asarray(rng.normal(size=(4, 2, 3)), jnp.float32))
    for seed in range(3):
        theta = noisy(INIT_THETA(jax.random.PRNGKey(100 + seed)), rng)
        state = celo.init(theta, params, 50)
        for i in range(4):
            grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape) * 10.0 ** i,
                                                       jnp.float32), params)
            updates, state = STEP(theta, state, params, grads, jnp.float32(10.0 ** (3 - 2 * i)))
            assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
            assert bool(jnp.isfinite(state.eta)) and float(state.eta) > 0
            params = optax.apply_updates(params, updates)


def test_paper_theta_trains_a_least_squares_problem():
    """The released optimizer, loaded from its checkpoint, in a plain optax loop:
    fit y = x W* + b* (W* 3×4) from a random start."""
    rng = np.random.RandomState(5)
    x = jnp.asarray(rng.normal(size=(64, 3)), jnp.float32)
    y = x @ jnp.asarray(rng.normal(size=(3, 4)), jnp.float32) + 0.5
    params = {"w": jnp.asarray(0.3 * rng.normal(size=(3, 4)), jnp.float32),
              "b": jnp.full((4,), 0.1, jnp.float32)}
    loss_and_grad = jax.jit(jax.value_and_grad(
        lambda p: jnp.mean(jnp.square(x @ p["w"] + p["b"] - y))))
    tx, update = paper_optax()    # celo.optimizer(θ, num_steps=300) and jax.jit(tx.update)
    opt_state = tx.init(params)
    first = float(loss_and_grad(params)[0])
    for _ in range(300):
        loss, grads = loss_and_grad(params)
        updates, opt_state = update(grads, opt_state, params, value=loss)
        params = optax.apply_updates(params, updates)
    final = float(loss_and_grad(params)[0])
    assert final < 1e-3 * first, (first, final)   # measured: 2.9 → 1.2e-6


# ----------------------------------------------------------------------------- the converter

def _fake_reference(rng):
    """Published-θ-shaped arrays with recognisable values: row c of layer 1 holds c."""
    ref, channel = {}, 0
    for k, c_k in enumerate((1, 1, 1, 3, 1, 3, 1, 3, 1, 3, 3, 3, 3, 3)):
        rows = np.arange(channel, channel + c_k, dtype=np.float32)[:, None]
        ref[f"ff_mod_stack/~/w0__{k}"] = np.broadcast_to(rows, (c_k, 4))[None].copy()
        channel += c_k
    shapes = {"ff_mod_stack/~/b0": (1, 4), "ff_mod_stack/~/w1": (1, 4, 4),
              "ff_mod_stack/~/b1": (1, 4), "ff_mod_stack/~/w2": (1, 4, 3),
              "ff_mod_stack/~/b2": (1, 3), "lstm_init_state/hidden": (1, 64),
              "lstm_init_state/cell": (1, 64)}
    for name in ("linear", "linear_1", "linear_2"):
        shapes.update({f"rnn_params/{name}/w": (18, 64), f"rnn_params/{name}/b": (64,)})
    shapes.update({"rnn_params/rnn/linear/w": (128, 256), "rnn_params/rnn/linear/b": (256,),
                   "rnn_params/rnn_to_controls/w": (64, 1), "rnn_params/rnn_to_controls/b": (1,),
                   "rnn_params/step_size/w": (64, 1), "rnn_params/step_size/b": (1,)})
    ref.update({k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()})
    return ref


def test_converter_keeps_numeric_group_order_and_drops_dead_parts():
    ref = _fake_reference(np.random.RandomState(0))
    groups = [k.rsplit("__", 1)[1] for k in sorted(ref) if "w0__" in k]
    assert groups[:3] == ["0", "1", "10"]                  # the string-sort trap is real here
    theta = convert.convert(ref)
    np.testing.assert_array_equal(theta["rule"]["w0"][:, 0], np.arange(30))
    np.testing.assert_array_equal(theta["rule"]["w2"], ref["ff_mod_stack/~/w2"][0, :, :2])
    np.testing.assert_array_equal(theta["rule"]["b2"], ref["ff_mod_stack/~/b2"][0, :2])
    s = theta["scheduler"]
    np.testing.assert_array_equal(s["mix"]["w"], ref["rnn_params/linear_1/w"])
    np.testing.assert_array_equal(s["proj"]["b"], ref["rnn_params/linear_2/b"])
    np.testing.assert_array_equal(s["lstm"]["w"], ref["rnn_params/rnn/linear/w"])
    np.testing.assert_array_equal(s["out"]["w"], ref["rnn_params/step_size/w"])
    np.testing.assert_array_equal(s["h0"], ref["lstm_init_state/hidden"][0])
    np.testing.assert_array_equal(s["c0"], ref["lstm_init_state/cell"][0])
    total = sum(v.size for v in ref.values())
    assert total == 37089 and convert.dead_count(ref) == 1286
    assert lopt.count_params(theta) == total - 1286
    del ref["ff_mod_stack/~/w0__7"]
    with pytest.raises(ValueError, match="w0__0..w0__12"):
        convert.convert(ref)


def test_fitted_scheduler_anneals_at_every_horizon():
    """Stage 2's start (ours): a short regression fit brings η_t near the cosine prior celo.PRIOR_ETA
    (η_0 → η_end) on runs it never saw, so η falls over the run whatever the horizon N."""
    theta = celo.init_meta_params(jax.random.PRNGKey(0))
    fitted = celo.with_fitted_scheduler(theta, jax.random.PRNGKey(1), iters=60, length=400)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(theta["rule"]),
                                                    jax.tree.leaves(fitted["rule"])))

    def etas(sched, n):
        xs = celo.synthetic_scheduler_inputs(jax.random.PRNGKey(9), n, n)
        one = lambda hc, x: (lambda e, h, c: ((h, c), e))(*celo.scheduler(sched, x, *hc))
        return np.asarray(jax.lax.scan(one, (sched["h0"], sched["c0"]), xs)[1])

    for n in (100, 400):
        before, after = etas(theta["scheduler"], n), etas(fitted["scheduler"], n)
        target = np.asarray(celo.prior_eta(np.arange(n), n))
        assert np.all(np.abs(before - 1.0) < 0.3)          # a fresh scheduler is flat at η ≈ 1
        err = lambda e: np.mean(np.abs(np.log(e / target)))
        assert err(after) < 0.25 < err(before)              # the fit tracks the prior (log error)
        eta0, eta_end = celo.PRIOR_ETA
        assert after[:n // 10].mean() > 0.7 * eta0                     # starts near η_0 ...
        assert after[-n // 10:].mean() < min(0.3 * eta0, 4 * eta_end)   # ... ends near η_end


def test_zero_tensor_moves_a_sensible_amount_in_one_step(paper_theta):
    """Ours: the tensor scale has a floor (celo.MIN_PARAM_SCALE = 0.1), so an all-zero tensor (a
    regression from zeros, zero biases, a zero-initialized output layer) takes a first step of
    1e-3·d·0.1·η rather than 1e-3·d·3e-5·η: ≈ 3000× the reference's, which left such tensors
    at their start. A tensor whose RMS is above the floor takes exactly the reference's step."""
    floor = celo.MIN_PARAM_SCALE
    params, grads = readme_problem()                      # b starts at zero, w does not
    params = dict(params, w=3.0 * params["w"], z=jnp.zeros((5, 3)))   # RMS(w) ≈ 0.22
    grads = dict(grads, z=jnp.full((5, 3), 0.5))
    state = celo.init(paper_theta, params, 1000)
    ref, _ = STEP(paper_theta, state, params, grads, 2.0)           # min_scale = 0
    ours, new = jax.jit(celo.step)(paper_theta, state, params, grads, jnp.float32(2.0))
    assert float(jnp.sqrt(jnp.mean(jnp.square(params["w"])))) > floor
    np.testing.assert_allclose(ours["w"], ref["w"], rtol=1e-6)      # RMS(w) > floor: unchanged
    for n in ("b", "z"):
        ratio = np.abs(np.asarray(ours[n])) / np.abs(np.asarray(ref[n]))
        np.testing.assert_allclose(ratio, floor / np.sqrt(1e-9), rtol=1e-3)
    step_z = float(jnp.sqrt(jnp.mean(jnp.square(ours["z"]))))
    assert 1e-5 < step_z < 1e-2, step_z   # a learning-rate-sized move, not 1e-8 or a jump
