"""Accumulators against plain numpy loops and the reference vectors."""
import jax.numpy as jnp
import numpy as np

import accumulators as acc


def test_moments_match_numpy_loop():
    rng = np.random.RandomState(0)
    gs = rng.normal(size=(20, 4, 3)).astype(np.float32)
    decays = (0.9, 0.99, 0.999)
    m = acc.init_moments(jnp.zeros((4, 3)))
    v = acc.init_moments(jnp.zeros((4, 3)), 1)
    # float32 arithmetic like the reference (1 − 0.999 differs by 1e-5 relative in float64)
    m_np = np.zeros((4, 3, 3), np.float32)
    v_np = np.zeros((4, 3), np.float32)
    f = np.float32
    for g in gs:
        m = acc.ema(m, jnp.asarray(g), decays)
        v = acc.ema(v, jnp.asarray(g) ** 2, (0.999,))
        for j, d in enumerate(decays):
            m_np[..., j] = f(d) * m_np[..., j] + (f(1) - f(d)) * g
        v_np = f(0.999) * v_np + (f(1) - f(0.999)) * g ** 2
    np.testing.assert_allclose(m, m_np, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(v[..., 0], v_np, rtol=1e-6, atol=1e-9)


def test_factored_dims_pick_two_largest():
    assert acc.factored_dims((5, 3)) == (1, 0)
    assert acc.factored_dims((2, 3, 4)) == (1, 2)
    assert acc.factored_dims((3, 1, 2)) == (2, 0)
    assert acc.factored_dims((7,)) is None and acc.factored_dims(()) is None
    assert acc.factored_dims((4, 4)) == (0, 1)  # stable order on ties


def test_factored_estimate_matches_numpy_loop():
    """Row/col EMAs of g² and the estimate g·rsqrt(row/mean(row))·rsqrt(col) (Shazeer & Stern)."""
    rng = np.random.RandomState(1)
    shape = (6, 4)  # d0 = 0 (largest), d1 = 1
    s = acc.init_factored(jnp.zeros(shape))
    assert s.v_row.shape == (4, 3) and s.v_col.shape == (6, 3) and s.v_diag is None
    row = np.zeros((4, 3)); col = np.zeros((6, 3))
    decays = np.array([0.9, 0.99, 0.999], np.float32)
    gap = (np.float32(1) - decays).astype(np.float64)  # 1 − β formed in float32, as the reference
    for _ in range(5):
        g = rng.normal(size=shape).astype(np.float32)
        s = acc.update_factored(s, jnp.asarray(g), decays)
        g2 = g.astype(np.float64) ** 2 + 1e-30
        row = decays * row + gap * g2.mean(axis=0)[:, None]
        col = decays * col + gap * g2.mean(axis=1)[:, None]
    np.testing.assert_allclose(s.v_row, row, rtol=1e-5)
    np.testing.assert_allclose(s.v_col, col, rtol=1e-5)
    terms = acc.factored_terms(s, jnp.asarray(g))
    rf = 1 / np.sqrt(np.maximum(row / (row.mean(axis=0, keepdims=True) + 1e-9), 1e-9))
    cf = 1 / np.sqrt(np.maximum(col, 1e-9))
    expect = g[..., None] * rf[None, :, :] * cf[:, None, :]
    np.testing.assert_allclose(terms.fac_g, expect, rtol=1e-4)
    # the factored second moment is exact for a rank-one g² (the point of Adafactor)
    u, w = rng.rand(6) + 0.5, rng.rand(4) + 0.5
    g = np.sqrt(np.outer(u, w)).astype(np.float32)
    s = acc.update_factored(acc.init_factored(jnp.zeros(shape)), jnp.asarray(g), np.array([0.0, 0, 0]))
    est = np.asarray(s.v_row)[None, :, 0] * np.asarray(s.v_col)[:, None, 0] / np.asarray(s.v_row)[:, 0].mean()
    np.testing.assert_allclose(est, g.astype(np.float64) ** 2, rtol=1e-5)


def test_vector_accumulator_is_unfactored():
    s = acc.init_factored(jnp.zeros(5))
    g = jnp.arange(5.0)
    s = acc.update_factored(s, g, (0.5, 0.5, 0.5))
    np.testing.assert_allclose(s.v_diag[:, 0], 0.5 * (np.arange(5.0) ** 2 + 1e-30))
    t = acc.factored_terms(s, g)
    np.testing.assert_allclose(t.fac_g[:, 0], g / np.sqrt(np.maximum(s.v_diag[:, 0] + 1e-9, 1e-9)),
                               rtol=1e-6)


def test_loss_ema_matches_velo_reference(velo_oracle):
    o = velo_oracle
    state = acc.init_loss_ema(int(o["num_steps"]))
    np.testing.assert_allclose(state.decays, o["init/loss_buffer/decays"], rtol=1e-6)
    for k in range(6):
        state, clipped = acc.update_loss_ema(state, jnp.float32(o[f"step{k}/loss"]))
        np.testing.assert_allclose(clipped, o[f"step{k}/loss_clipped"], atol=1e-5)
        np.testing.assert_allclose(state.means, o[f"step{k}/state/loss_buffer/means"], atol=1e-5)
        np.testing.assert_allclose(state.running_min, o[f"step{k}/state/loss_buffer/running_min"],
                                   atol=1e-5)
        assert int(state.count) == int(o[f"step{k}/state/loss_buffer/iteration"])


def test_loss_ema_hand_computed():
    """Two losses, N = 10 (h = 10 for every EMA, d = e^−0.1): clip threshold and running min."""
    s = acc.init_loss_ema(10)
    d = np.exp(-0.1)
    np.testing.assert_allclose(s.decays, d, rtol=1e-6)
    s, l0 = acc.update_loss_ema(s, jnp.float32(3.0))
    assert float(l0) == 3.0
    np.testing.assert_allclose(s.means, (1 - d) * 3.0, rtol=1e-6)
    np.testing.assert_allclose(s.running_min, 3.0, rtol=1e-5)  # (1−d)·3/(1−d)
    s, l1 = acc.update_loss_ema(s, jnp.float32(100.0))  # spike: clipped to 2·max(corrected)
    c = (1 - d) * 3.0 / (1 - d ** 2)
    np.testing.assert_allclose(l1, 2 * c, rtol=1e-5)
