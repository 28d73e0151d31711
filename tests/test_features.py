"""Features: order, normalization, time/progress/loss formulas, width invariance, VeLO oracle."""
import jax
import jax.numpy as jnp
import numpy as np

import accumulators as acc
import features
from conftest import rel_col_err

NAMES = ("bias", "kernel3d", "scale", "weight")


def test_time_features_formula():
    for t in (0, 1, 7, 1000):
        expect = np.tanh(t / np.array(features.TIME_SCALES) - 1)
        np.testing.assert_allclose(features.time_features(t), expect, rtol=1e-6, atol=1e-7)
    assert features.time_features(0).shape == (11,)


def test_progress_features_formula():
    np.testing.assert_allclose(features.progress_features(25, 100),
                               np.tanh(10 * (0.25 - np.array(features.PROGRESS_SHIFTS))), rtol=1e-6)


def test_normalization_invariant():
    x = jax.random.normal(jax.random.PRNGKey(0), (50, 7, 3)) * jnp.array([1e-6, 1.0, 1e4])
    y = features.normalize_columns(x)
    ms = np.mean(np.asarray(y) ** 2, axis=(0, 1))
    np.testing.assert_allclose(ms[1:], 1.0, rtol=1e-4)  # mean square 1 (ε negligible)
    # invariant to rescaling a column (when ε is negligible)
    np.testing.assert_allclose(features.normalize_columns(x * 5.0)[..., 1:], y[..., 1:], rtol=1e-4)


def _state_after(shape, steps, seed=0, scale=1.0):
    key = jax.random.PRNGKey(seed)
    p = jax.random.normal(key, shape) * scale
    s = acc.init_tensor(p)
    for i in range(steps):
        g = jax.random.normal(jax.random.fold_in(key, i), shape) * scale
        s = acc.update_tensor(s, g, acc.MOMENTUM_DECAYS, acc.RMS_DECAYS, acc.ADAFACTOR_DECAYS)
    return p, g, s


def test_shapes_and_scalar_handling():
    for shape in [(5, 3), (2, 3, 4), (6,), ()]:
        p, g, s = _state_after(shape, 2)
        exp = shape if shape else (1,)
        assert features.adafac_features(p, g, s).shape == exp + (28,)
        assert features.velo_features(p, g, s).shape == exp + (30,)


def test_column_order_by_hand():
    p, g, s = _state_after((4, 6), 3)
    x = features.adafac_features(p, g, s)
    np.testing.assert_allclose(x[..., 0], g)
    np.testing.assert_allclose(x[..., 1], p)
    np.testing.assert_allclose(x[..., 2:5], s.m)
    np.testing.assert_allclose(x[..., 5], s.rms[..., 0])
    np.testing.assert_allclose(x[..., 9], 1 / np.sqrt(s.rms[..., 0] + 1e-6), rtol=1e-6)
    y = features.velo_features(p, g, s)
    np.testing.assert_allclose(y[..., 1], np.clip(g, -0.1, 0.1))
    np.testing.assert_allclose(y[..., 14], g / np.sqrt(s.rms[..., 0] + 1e-6), rtol=1e-6)
    # shared columns appear in both sets (28-feature cols 10..27 == 30-feature cols 11..13, 15..29)
    np.testing.assert_allclose(x[..., 10:13], y[..., 11:14], rtol=1e-6)
    np.testing.assert_allclose(x[..., 13:25], y[..., 15:27], rtol=1e-6)


def test_normalized_features_are_width_independent():
    """μLO Corollary A.3: after normalization, per-entry feature RMS is Θ(1) as width grows.
    (Entries of unit scale: for features far below sqrt(1e-5) the ε of the normalization
    dominates and they shrink towards 0, in the reference too.)"""
    rms = []
    for width in (32, 128, 512):
        p, g, s = _state_after((width, width), 3)
        x = features.normalize_columns(features.adafac_features(p, g, s))
        rms.append(np.sqrt(np.mean(np.asarray(x) ** 2, axis=(0, 1))))
    rms = np.array(rms)
    assert np.all(rms > 0.4) and np.all(rms < 1.0 + 1e-3)
    np.testing.assert_allclose(rms[0], rms[-1], rtol=3e-2)  # 16× wider, same feature sizes


def test_velo_features_match_reference(velo_oracle):
    """VeLO's 30 MLP inputs (also Celo's) from the reference run: clip g at ±1000, accumulate, build."""
    o = velo_oracle
    params = {n: jnp.asarray(o[f"init/params/{n}"]) for n in NAMES}
    states = {n: acc.init_tensor(params[n]) for n in NAMES}
    for k in range(6):
        for n in NAMES:
            g = jnp.clip(jnp.asarray(o[f"step{k}/grads/{n}"]), -1000.0, 1000.0)
            states[n] = acc.update_tensor(states[n], g, acc.MOMENTUM_DECAYS, acc.RMS_DECAYS,
                                          acc.ADAFACTOR_DECAYS)
            raw = features.velo_features(params[n], g, states[n])
            assert rel_col_err(raw, o[f"step{k}/mlp_in_raw/{n}"]) < 1e-4, (k, n)
            assert rel_col_err(features.normalize_columns(raw), o[f"step{k}/mlp_in/{n}"]) < 1e-4
            params[n] = jnp.asarray(o[f"step{k}/params/{n}"])  # VeLO's own update is velo.py's


def test_loss_features_reference_and_signs(velo_oracle):
    o = velo_oracle
    s = acc.init_loss_ema(int(o["num_steps"]))
    for k in range(6):
        s, _ = acc.update_loss_ema(s, jnp.float32(o[f"step{k}/loss"]))
        np.testing.assert_allclose(features.loss_features(s), o[f"step{k}/lstm_in"][0, 9:18], atol=1e-4)
    # a steadily falling loss gives −1 everywhere once past the first two updates
    s = acc.init_loss_ema(1000)
    for t in range(50):
        s, _ = acc.update_loss_ema(s, jnp.float32(2.3 * np.exp(-t / 30) + 0.2))
    np.testing.assert_allclose(features.loss_features(s), -1.0)


def test_mean_squares_is_accurate():
    """float64 oracle; 100,003 entries (not a multiple of the block) and a 2-d tensor."""
    rng = np.random.RandomState(0)
    for shape in [(100003,), (37, 29)]:
        cols = [rng.normal(size=shape) * 3 + 1, np.abs(rng.normal(size=shape)) * 1e-3,
                np.ones(shape)]
        expect = [np.mean(c ** 2) for c in cols]
        got = jax.jit(features.mean_squares)([jnp.asarray(c, jnp.float32) for c in cols])
        np.testing.assert_allclose(got, expect, rtol=2e-6)
