"""Features: what a learned optimizer sees of a parameter tensor, of time and of the loss.

μLO paper (mulo.txt) App. A.3: Table 2 (the 28 per-parameter inputs of small_fc_lopt), Table 3
(the 30 per-parameter inputs of VeLO's MLP, which Celo reuses) and Table 4 (VeLO's per-tensor
inputs, which use the progress and loss features below). Celo (celo.txt) Alg. 1 lines 4–5.

Per-parameter features are built from the accumulators *after* they absorbed g (REFERENCE.md).
Each column is normalized over its tensor by x · rsqrt(1e-5 + mean(x²)) — no mean subtraction —
so feature magnitudes are Θ(1) whatever the tensor's width (μLO Corollary A.3).
The helpers return raw columns plus `column_scale`, so an MLP can fold the normalization into
its first layer (x·s) @ W = x @ (s·W) instead of writing a normalized copy of every feature.
"""
import jax.numpy as jnp

import accumulators as acc

NORM_EPS = 1e-5           # x · rsqrt(1e-5 + mean x²)          (reference, μLO App. A.3)
RMS_EPS = 1e-6            # m · rsqrt(v + 1e-6), rsqrt(v + 1e-6) (μLO Table 2)
FACTORED_RSQRT_EPS = 1e-8  # rsqrt(row + 1e-8), rsqrt(col + 1e-8) (μLO Table 2)
GRAD_CLIP_FEATURE = 0.1   # clip(g, −0.1, 0.1)                 (μLO Table 3)
# small_fc_lopt time scales: tanh(t/x − 1). The μLO table writes tanh(t/x); the code (and we) use −1.
TIME_SCALES = (1, 3, 10, 30, 100, 300, 1e3, 3e3, 1e4, 3e4, 1e5)
# VeLO/Celo progress features tanh(10·(t/N − s)) (μLO Table 4 "training progress").
PROGRESS_SHIFTS = (0.03, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1)
NUM_ADAFAC_FEATURES = 28
NUM_VELO_FEATURES = 30


# ----------------------------------------------------------------------------- normalization

def column_scale(x):
    """s_c = rsqrt(1e-5 + mean over the tensor of x_c²), for x of shape (*S, C) → (C,)."""
    axes = tuple(range(x.ndim - 1))
    return jnp.reciprocal(jnp.sqrt(NORM_EPS + jnp.mean(jnp.square(x), axis=axes)))


def normalize_columns(x):
    """Per-tensor, per-column second-moment normalization (μLO App. A.3)."""
    return x * column_scale(x)


# ----------------------------------------------------------------------------- global features

def time_features(t):
    """small_fc_lopt's 11 time features tanh(t/x − 1), t = updates done (0 first)."""
    t = jnp.asarray(t, jnp.float32)
    return jnp.tanh(t / jnp.asarray(TIME_SCALES, jnp.float32) - 1.0)


def progress_features(t, num_steps):
    """tanh(10·(t/N − s)): the fraction of training done (the reference calls it fraction_left)."""
    frac = jnp.asarray(t, jnp.float32) / jnp.asarray(num_steps, jnp.float32)
    return jnp.tanh(10.0 * (frac - jnp.asarray(PROGRESS_SHIFTS, jnp.float32)))


def loss_features(state):
    """Nine normalized loss-EMA features f_j = clip((c_j − r_j)/max(1e-8, c_{j+1} − r_j) − 1, ±1).

    c = bias-corrected EMAs, r = their running minima; all zero for the first two losses.
    A steadily falling loss gives −1 (REFERENCE.md "Loss features").
    """
    n = state.count
    c = state.means / (1.0 - state.decays ** n.astype(jnp.float32))
    r = state.running_min
    f = (c[:-1] - r[:-1]) / jnp.maximum(1e-8, c[1:] - r[:-1]) - 1.0
    f = jnp.clip(f, -1.0, 1.0)
    return jnp.where(n <= 2, jnp.zeros_like(f), f)


# ----------------------------------------------------------------------------- per-parameter

def _as_vector(p, g, state):
    """The reference treats a scalar parameter as shape (1,) when building its features."""
    if p.ndim > 0:
        return p, g, state
    fix = lambda a: None if a is None else a.reshape((1,) + a.shape)
    fac = acc.FactoredState(None, None, fix(state.fac.v_diag))
    return p.reshape(1), g.reshape(1), acc.TensorState(fix(state.m), fix(state.rms), fac)


def _shared_terms(p, g, state):
    p, g, state = _as_vector(p, g, state)
    v = state.rms[..., 0]
    rsqrt_v = jnp.reciprocal(jnp.sqrt(v + RMS_EPS))
    fac = acc.factored_terms(state.fac, g)
    return p, g, state, rsqrt_v, fac


def _fac_mom(state, fac, eps):
    """m_j · row_factor_j · col_factor_j; for ndim < 2, m_j · (u_j + eps)^−1/2 with u the Adafactor
    diagonal accumulator (small_fc_lopt uses eps = 1e-6, VeLO eps = 0)."""
    if fac.factor is not None:
        return state.m * fac.factor
    return state.m * jnp.reciprocal(jnp.sqrt(fac.row + eps))


def adafac_features(p, g, state):
    """The 28 per-parameter inputs of small_fc_lopt (μLO Table 2), raw (not normalized).

    Column order of learned_optimization's AdafacMLPLOpt: g, p, m(3), rms, m·rsqrt(rms+1e-6)(3),
    rsqrt(rms+1e-6), fac_g(3), row(3), col(3), rsqrt(row+1e-8)(3), rsqrt(col+1e-8)(3),
    m·row_factor·col_factor(3). Shape (*S, 28); a scalar tensor gives (1, 28).
    """
    p, g, state, rsqrt_v, fac = _shared_terms(p, g, state)
    cols = [g[..., None], p[..., None], state.m, state.rms,
            state.m * rsqrt_v[..., None], rsqrt_v[..., None],
            fac.fac_g, fac.row, fac.col,
            jnp.reciprocal(jnp.sqrt(fac.row + FACTORED_RSQRT_EPS)),
            jnp.reciprocal(jnp.sqrt(fac.col + FACTORED_RSQRT_EPS)),
            _fac_mom(state, fac, RMS_EPS)]
    return jnp.concatenate(cols, axis=-1)


def velo_features(p, g, state):
    """The 30 per-parameter inputs of VeLO's MLP (μLO Table 3), also Celo's update-rule inputs.

    Order: g, clip(g, ±0.1), p, m(3), rms, m·rsqrt(rms+1e-6)(3), rsqrt(rms+1e-6), fac_g(3),
    g·rsqrt(rms+1e-6), row(3), col(3), rsqrt(row+1e-8)(3), rsqrt(col+1e-8)(3),
    m·row_factor·col_factor(3) (m·u^−1/2 without epsilon for ndim < 2). Raw, shape (*S, 30).
    """
    p, g, state, rsqrt_v, fac = _shared_terms(p, g, state)
    cols = [g[..., None], jnp.clip(g, -GRAD_CLIP_FEATURE, GRAD_CLIP_FEATURE)[..., None],
            p[..., None], state.m, state.rms,
            state.m * rsqrt_v[..., None], rsqrt_v[..., None],
            fac.fac_g, (g * rsqrt_v)[..., None], fac.row, fac.col,
            jnp.reciprocal(jnp.sqrt(fac.row + FACTORED_RSQRT_EPS)),
            jnp.reciprocal(jnp.sqrt(fac.col + FACTORED_RSQRT_EPS)),
            _fac_mom(state, fac, 0.0)]
    return jnp.concatenate(cols, axis=-1)
