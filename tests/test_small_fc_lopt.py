"""small_fc_lopt against learned_optimization's own AdafacMLPLOpt (tests/data/small_fc_lopt.npz)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import accumulators as acc
import features
import lopt
import small_fc_lopt as sfl
from conftest import rel_col_err

NAMES = ("bias", "kernel3d", "scale", "weight")


def oracle_theta(o):
    mlp = {k: jnp.asarray(o[f"theta/nn/~/{k}"]) for k in ("w0", "b0", "w1", "b1", "w2", "b2")}
    return {"mlp": mlp,
            "momentum_decays": jnp.asarray(o["theta/momentum_decays"]),
            "rms_decays": jnp.asarray(o["theta/rms_decays"]),
            "adafactor_decays": jnp.asarray(o["theta/adafactor_decays"])}


def tree(o, prefix):
    return {n: jnp.asarray(o[f"{prefix}/{n}"]) for n in NAMES}


def test_learned_decays_match_reference(sfl_oracle):
    m, r, a = sfl.decays(oracle_theta(sfl_oracle))
    np.testing.assert_allclose(m, sfl_oracle["derived/decays_used/momentum"], rtol=1e-6)
    np.testing.assert_allclose(r, sfl_oracle["derived/decays_used/rms"], rtol=1e-6)
    np.testing.assert_allclose(a, sfl_oracle["derived/decays_used/adafactor"], rtol=1e-6, atol=1e-7)
    assert m[0] < 0 and a[0] == 0.0  # momentum not clipped, adafactor clipped


def test_five_updates_match_reference(sfl_oracle):
    """Chain all five updates from the inputs alone: features, MLP outputs, state and params."""
    o = sfl_oracle
    theta = oracle_theta(o)
    params = tree(o, "init/params")
    state = sfl.init(theta, params, int(o["num_steps"]))
    m_dec, r_dec, a_dec = sfl.decays(theta)
    step = jax.jit(sfl.step)
    for k in range(5):
        grads = tree(o, f"step{k}/grads")
        # features and MLP outputs, computed from the state before this update
        for n in NAMES:
            s = acc.update_tensor(state.acc[n], grads[n], m_dec, r_dec, a_dec)
            raw = features.adafac_features(params[n], grads[n], s)
            assert rel_col_err(raw, o[f"step{k}/features_prenorm/{n}"]) < 1e-4, (k, n)
            full = jnp.concatenate([features.normalize_columns(raw),
                                    jnp.broadcast_to(features.time_features(k),
                                                     raw.shape[:-1] + (11,))], -1)
            assert rel_col_err(full, o[f"step{k}/features/{n}"]) < 1e-4, (k, n)
            out = jnp.stack(sfl.mlp_outputs(theta, params[n], grads[n], s, jnp.int32(k)), -1)
            assert rel_col_err(out, o[f"step{k}/mlp_out/{n}"]) < 1e-4, (k, n)
            # the fused path equals the plain MLP on the normalized feature matrix
            ref = lopt.apply_mlp(theta["mlp"], full)
            assert rel_col_err(out, ref) < 1e-5, (k, n)
        updates, state = step(theta, state, params, grads, jnp.float32(o[f"step{k}/loss"]))
        params = optax.apply_updates(params, updates)
        for n in NAMES:
            np.testing.assert_allclose(params[n], o[f"step{k}/params/{n}"], atol=1e-6, rtol=0)
            s = state.acc[n]
            assert rel_col_err(s.m, o[f"step{k}/state/m/{n}"]) < 1e-4
            assert rel_col_err(s.rms, o[f"step{k}/state/rms/{n}"]) < 1e-4
            for field in ("v_row", "v_col", "v_diag"):
                ref = o[f"step{k}/state/{field}/{n}"]
                ours = getattr(s.fac, field)
                if ref.shape[0] == 0:
                    assert ours is None
                else:
                    assert rel_col_err(ours, ref) < 1e-4, (k, n, field)
        assert int(state.step) == k + 1


def test_parameter_count_formula():
    for hidden in (4, 32):
        theta = sfl.init_meta_params(jax.random.PRNGKey(0), hidden=hidden)
        mlp = 39 * hidden + hidden + hidden * hidden + hidden + hidden * 2 + 2
        assert lopt.count_params(theta) == mlp + 7
    # 197: the reference code's count (google/learned_optimization)
    assert lopt.count_params(sfl.init_meta_params(jax.random.PRNGKey(0))) == 197


def test_init_is_truncated_normal_with_fan_in_std():
    w = lopt.init_mlp(jax.random.PRNGKey(1), (400, 300))["w0"]
    std = 1 / np.sqrt(400)
    assert np.abs(w).max() <= 2 * std + 1e-7
    # std of N(0,1) truncated at ±2 is 0.8796
    assert abs(float(jnp.std(w)) / std - 0.8796) < 0.01


def _problem():
    k1, k2 = jax.random.split(jax.random.PRNGKey(3))
    params = {"w": jax.random.normal(k1, (7, 5)), "b": jnp.zeros(5), "s": jnp.float32(1.0)}
    grads = jax.tree.map(lambda p: jax.random.normal(k2, p.shape), params)
    return params, grads


def test_optax_wrapper_requires_params():
    tx = sfl.optimizer(sfl.init_meta_params(jax.random.PRNGKey(0)), num_steps=10)
    params, grads = _problem()
    with pytest.raises(ValueError, match="needs the current params"):
        tx.update(grads, tx.init(params))


def test_untrained_step_size_is_of_order_lambda1():
    """Untrained, |d|·exp(λ2 m) is O(1), so every entry moves by about λ1 = 1e-3."""
    theta = sfl.init_meta_params(jax.random.PRNGKey(0))
    params = {"w": jnp.ones((4, 3))}
    tx = sfl.optimizer(theta, num_steps=10)
    state = tx.init(params)
    g = {"w": 2 * params["w"]}
    updates, state = tx.update(g, state, params)
    size = float(jnp.max(jnp.abs(updates["w"])))
    assert 1e-5 < size < 1e-2


def test_relative_variant_steps_relative_to_the_floored_tensor_scale():
    """relative=True (ours): untrained, Δp = −λ1·10·n(Adafactor's momentum)·exp(λ2 m)·
    max(rms(p), 0.1)·cosine(t): the same gradient moves a tensor 4× as large by 4× as much, a
    zero tensor by the floor's step, and the anneal shrinks the step from 1 toward 0.03."""
    lo = sfl.learned_optimizer(relative=True, meta_init="adafactor")
    theta = lo.init_meta_params(jax.random.PRNGKey(0))
    g = jax.random.normal(jax.random.PRNGKey(1), (6, 5))
    p = 0.5 * jax.random.normal(jax.random.PRNGKey(2), (6, 5))

    def first_update(p, t=0, num_steps=100):
        state = lo.init(theta, {"w": p}, num_steps)._replace(step=jnp.asarray(t, jnp.int32))
        return lo.step(theta, state, {"w": p}, {"w": g})[0]["w"]

    s = sfl.acc.update_tensor(sfl.acc.init_tensor(p), g, *sfl.decays(theta))
    d, m = sfl.mlp_outputs(theta, p, g, s, 0)[:2]
    x = features.columns(p, g, s, features.ADAFAC_GROUPS, features.RMS_EPS)
    col = np.asarray(features.stack(x)[..., sfl.INIT_DIRECTIONS["adafactor"]], np.float64)
    np.testing.assert_allclose(d, 10.0 * col / np.sqrt(1e-5 + np.mean(col ** 2)), rtol=1e-4,
                               atol=1e-5)
    rms = float(jnp.sqrt(jnp.mean(p ** 2) + 1e-9))
    expect = -1e-3 * d * jnp.exp(1e-3 * m) * rms
    np.testing.assert_allclose(first_update(p), expect, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(first_update(4 * p), 4 * expect, rtol=1e-4, atol=1e-9)
    zero = first_update(jnp.zeros_like(p))
    assert 0.5e-4 < float(jnp.sqrt(jnp.mean(zero ** 2))) < 5e-3       # ≈ 1e-3·10·0.1
    np.testing.assert_allclose(first_update(p, t=100), 0.03 * expect, rtol=1e-3, atol=1e-10)
    assert lo.max_norm > 0 and sfl.learned_optimizer().max_norm == 0


def test_lstm_step_matches_hand_computed_gates():
    rng = np.random.RandomState(0)
    lstm = {"w": jnp.asarray(rng.normal(size=(3 + 2, 8)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=8), jnp.float32)}
    x, h, c = (jnp.asarray(rng.normal(size=n), jnp.float32) for n in (3, 2, 2))
    z = np.concatenate([x, h]) @ np.asarray(lstm["w"], np.float64) + np.asarray(lstm["b"])
    sig = lambda a: 1 / (1 + np.exp(-a))
    i, g, f, o = z[0:2], z[2:4], z[4:6], z[6:8]
    c_ref = sig(f + 1) * np.asarray(c) + sig(i) * np.tanh(g)
    h_ref = sig(o) * np.tanh(c_ref)
    h2, c2 = lopt.lstm_step(lstm, x, h, c)
    np.testing.assert_allclose(c2, c_ref, rtol=1e-5)
    np.testing.assert_allclose(h2, h_ref, rtol=1e-5)
    assert lopt.init_lstm(jax.random.PRNGKey(0), 18, 64)["w"].shape == (82, 256)


@pytest.mark.parametrize("hidden", [4, 32])
@pytest.mark.parametrize("shape", [(6, 5), (2, 3, 4), (7,), ()])
def test_fused_mlp_equals_plain_mlp_on_stacked_features(hidden, shape):
    key = jax.random.PRNGKey(hidden)
    mlp = lopt.init_mlp(key, (28, hidden, hidden, 2))
    p = jax.random.normal(key, shape)
    s = acc.init_tensor(p)
    for i in range(3):
        g = jax.random.normal(jax.random.fold_in(key, i), shape)
        s = acc.update_tensor(s, g, acc.MOMENTUM_DECAYS, acc.RMS_DECAYS, acc.ADAFACTOR_DECAYS)
    x = features.stack(features.columns(p, g, s, features.ADAFAC_GROUPS, features.RMS_EPS))
    fused = jnp.stack(lopt.per_parameter_mlp(mlp, p, g, s, features.ADAFAC_GROUPS,
                                            features.RMS_EPS), -1)
    plain = lopt.apply_mlp(mlp, x, features.column_scale(x))
    np.testing.assert_allclose(fused, plain, rtol=1e-4, atol=1e-5)


def test_init_mlp_with_direction_starts_as_scale_times_one_input():
    """Output 0 = scale·x[column] exactly, at any depth; the other outputs still see the other
    inputs; too narrow a hidden layer is refused."""
    x = jax.random.normal(jax.random.PRNGKey(2), (50, 30))
    for sizes in [(30, 4, 2), (30, 4, 4, 2), (30, 8, 4, 4, 3)]:
        mlp = lopt.init_mlp_with_direction(jax.random.PRNGKey(1), sizes, 7, 10.0)
        y = lopt.apply_mlp(mlp, x)
        np.testing.assert_allclose(y[:, 0], 10.0 * x[:, 7], rtol=1e-5, atol=1e-5)
        assert float(jnp.std(y[:, 1])) > 0.0
        y2 = lopt.apply_mlp(mlp, x.at[:, 3].add(1.0))
        np.testing.assert_array_equal(y2[:, 0], y[:, 0])
    with pytest.raises(ValueError, match="hidden layer"):
        lopt.init_mlp_with_direction(jax.random.PRNGKey(1), (30, 1, 2), 7, 10.0)


def test_init_mlp_with_direction_mixture_of_inputs():
    """column={i: w_i}: output 0 = scale·Σ w_i·x[i] exactly, and no other input reaches it."""
    x = jax.random.normal(jax.random.PRNGKey(2), (50, 30))
    mlp = lopt.init_mlp_with_direction(jax.random.PRNGKey(1), (30, 4, 4, 2), {7: 0.3, 27: 0.7},
                                       10.0)
    y = lopt.apply_mlp(mlp, x)
    np.testing.assert_allclose(y[:, 0], 10.0 * (0.3 * x[:, 7] + 0.7 * x[:, 27]), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_array_equal(lopt.apply_mlp(mlp, x.at[:, 3].add(1.0))[:, 0], y[:, 0])


def test_column_index_matches_feature_order():
    assert features.column_index(features.VELO_GROUPS, "m_rv", 0) == 7
    assert features.column_index(features.ADAFAC_GROUPS, "m_rv", 2) == 8
    assert sum(features.GROUP_WIDTH.get(g, 1) for g in features.VELO_GROUPS) == 30
    with pytest.raises(ValueError, match="not one of"):
        features.column_index(features.VELO_GROUPS, "nope")
