"""Accumulators: the running statistics every learned optimizer here reads.

Metz et al. 2022, "Practical tradeoffs between memory, compute, and performance in learned
optimizers" (small_fc_lopt / AdafacMLPLOpt; arXiv 2203.11860); μLO (arXiv 2406.00153) App. A.3
Table 2 lists them; Celo (arXiv 2501.12670) Alg. 1 line 3 and VeLO (arXiv 2211.09760) reuse them,
plus the loss EMAs.

Implements, as pure functions over immutable NamedTuples:
  * momenta m ← β m + (1−β) g, for several β at once (trailing "decay" axis);
  * the second moment v ← β v + (1−β) g²;
  * Adafactor's factored second moment (row/column means of g² over the two largest dims);
  * loss EMAs at ten time scales with the running minimum, for the loss features of Celo and VeLO.
No bias correction anywhere, as in the reference code.
"""
from typing import NamedTuple, Optional

import jax.numpy as jnp
import numpy as np

# AdafacMLPLOpt defaults of the reference code (google/learned_optimization).
MOMENTUM_DECAYS = (0.9, 0.99, 0.999)
RMS_DECAYS = (0.999,)
ADAFACTOR_DECAYS = (0.9, 0.99, 0.999)
FACTORED_EPS = 1e-30      # added to g² before the row/column means (reference)
SAFE_RSQRT_FLOOR = 1e-9   # rsqrt(max(x, 1e-9)) in the factored estimate (reference)
NUM_LOSS_EMAS = 10        # VeLO / Celo loss buffer: ten time scales (google/learned_optimization)
LOSS_MIN_INIT = 999999999999.0  # initial running minimum (reference)


# ----------------------------------------------------------------------------- moments

def ema(acc, x, decays):
    """acc ← β·acc + (1−β)·x for every β at once. acc: (*S, K), x: (*S), decays: (K,)."""
    decays = jnp.asarray(decays, jnp.float32)
    return decays * acc + (1.0 - decays) * x[..., None]


def init_moments(p, num_decays=len(MOMENTUM_DECAYS)):
    return jnp.zeros(p.shape + (num_decays,), jnp.float32)


# ----------------------------------------------------------------------------- Adafactor

def factored_dims(shape):
    """(d1, d0): the second-largest and largest dims of a ≥2-d shape (stable argsort), else None."""
    if len(shape) < 2:
        return None
    order = np.argsort(np.asarray(shape), kind="stable")
    return int(order[-2]), int(order[-1])


class FactoredState(NamedTuple):
    """Adafactor accumulators for one tensor; trailing axis = decays.

    ndim ≥ 2: v_row = EMA of mean(g², axis=d0) (shape without d0), v_col = EMA of mean(g², axis=d1).
    ndim < 2: v_diag = EMA of g² (the full, unfactored accumulator). Unused fields are None.
    """
    v_row: Optional[jnp.ndarray]
    v_col: Optional[jnp.ndarray]
    v_diag: Optional[jnp.ndarray]


def init_factored(p, num_decays=len(ADAFACTOR_DECAYS)):
    dims = factored_dims(p.shape)
    if dims is None:
        return FactoredState(None, None, jnp.zeros(p.shape + (num_decays,), jnp.float32))
    d1, d0 = dims
    row = tuple(s for i, s in enumerate(p.shape) if i != d0)
    col = tuple(s for i, s in enumerate(p.shape) if i != d1)
    return FactoredState(jnp.zeros(row + (num_decays,), jnp.float32),
                         jnp.zeros(col + (num_decays,), jnp.float32), None)


def update_factored(state, g, decays):
    """One Adafactor accumulator update (Shazeer & Stern 2018; μLO Table 2 rows 3–4)."""
    g2 = g * g + FACTORED_EPS
    dims = factored_dims(g.shape)
    if dims is None:
        return FactoredState(None, None, ema(state.v_diag, g2, decays))
    d1, d0 = dims
    return FactoredState(ema(state.v_row, jnp.mean(g2, axis=d0), decays),
                         ema(state.v_col, jnp.mean(g2, axis=d1), decays), None)


def safe_rsqrt(x):
    return jnp.reciprocal(jnp.sqrt(jnp.maximum(x, SAFE_RSQRT_FLOOR)))


class FactoredTerms(NamedTuple):
    """What the features read from a FactoredState, broadcast to (*shape, K)."""
    fac_g: jnp.ndarray       # g · row_factor · col_factor (g · rsqrt(v + 1e-9) for ndim < 2)
    row: jnp.ndarray         # v_row broadcast back (v_diag for ndim < 2)
    col: jnp.ndarray         # v_col broadcast back (v_diag for ndim < 2)
    factor: Optional[jnp.ndarray]  # row_factor · col_factor (ndim ≥ 2), None for ndim < 2


def factored_terms(state, g):
    """The factored second-moment estimate row·col/mean(row) and what features need of it."""
    dims = factored_dims(g.shape)
    if dims is None:
        v = state.v_diag
        return FactoredTerms(g[..., None] * safe_rsqrt(v + 1e-9), v, v, None)
    d1, d0 = dims
    reduced_d1 = d1 - 1 if d1 > d0 else d1  # position of d1 once d0 is removed
    row_mean = jnp.mean(state.v_row, axis=reduced_d1, keepdims=True)
    row_factor = jnp.expand_dims(safe_rsqrt(state.v_row / (row_mean + 1e-9)), d0)
    col_factor = jnp.expand_dims(safe_rsqrt(state.v_col), d1)
    factor = row_factor * col_factor
    shape = g.shape + (state.v_row.shape[-1],)
    return FactoredTerms(g[..., None] * factor,
                         jnp.broadcast_to(jnp.expand_dims(state.v_row, d0), shape),
                         jnp.broadcast_to(jnp.expand_dims(state.v_col, d1), shape),
                         factor)


# ----------------------------------------------------------------------------- per-tensor state

class TensorState(NamedTuple):
    """Accumulators of one parameter tensor: momenta (*S, 3), second moment (*S, 1), Adafactor."""
    m: jnp.ndarray
    rms: jnp.ndarray
    fac: FactoredState


def init_tensor(p, num_momenta=len(MOMENTUM_DECAYS), num_rms=len(RMS_DECAYS),
                num_adafactor=len(ADAFACTOR_DECAYS)):
    return TensorState(init_moments(p, num_momenta), init_moments(p, num_rms),
                       init_factored(p, num_adafactor))


def update_tensor(state, g, momentum_decays, rms_decays, adafactor_decays):
    """Update all accumulators of one tensor with its gradient g (before features are built)."""
    return TensorState(ema(state.m, g, momentum_decays),          # μLO Table 2: momenta
                       ema(state.rms, g * g, rms_decays),         # μLO Table 2: second moment
                       update_factored(state.fac, g, adafactor_decays))


# ----------------------------------------------------------------------------- loss EMAs

class LossEMAState(NamedTuple):
    """Ten EMAs of the training loss, their running minima and the count of losses absorbed."""
    decays: jnp.ndarray       # (10,) d = exp(−1/h), h = logspace(1, log10 N, 10)
    means: jnp.ndarray        # (10,)
    running_min: jnp.ndarray  # (10,)
    count: jnp.ndarray        # () int32


def loss_ema_decays(num_steps):
    """d_j = exp(−1/h_j), h = logspace(1, log10 N, 10): the code says "halflife" but it is an
    e-folding time (the reference code, google/learned_optimization)."""
    n = jnp.maximum(jnp.asarray(num_steps, jnp.float32), 1.0)
    h = 10.0 ** jnp.linspace(1.0, jnp.log10(n), NUM_LOSS_EMAS)
    return jnp.exp(-1.0 / h).astype(jnp.float32)


def init_loss_ema(num_steps):
    return LossEMAState(loss_ema_decays(num_steps), jnp.zeros(NUM_LOSS_EMAS, jnp.float32),
                        jnp.full(NUM_LOSS_EMAS, LOSS_MIN_INIT, jnp.float32),
                        jnp.zeros((), jnp.int32))


def update_loss_ema(state, loss):
    """Absorb one loss, clipping spikes at twice the largest bias-corrected EMA (reference)."""
    d, n = state.decays, state.count
    next_correction = 1.0 - d ** (n + 1).astype(jnp.float32)
    corrected = state.means / next_correction          # old means over the *next* correction
    threshold = jnp.where(n == 0, loss, jnp.max(corrected))
    loss = jnp.minimum(2.0 * jnp.abs(threshold), loss)
    means = d * state.means + (1.0 - d) * loss
    running_min = jnp.minimum(state.running_min, means / next_correction)
    return LossEMAState(d, means, running_min, n + 1), loss
