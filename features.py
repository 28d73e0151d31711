"""Features: what a learned optimizer sees of a parameter tensor, of time and of the loss.

μLO (arXiv 2406.00153) App. A.3: Table 2 (the 28 per-parameter inputs of small_fc_lopt), Table 3
(the 30 per-parameter inputs of VeLO's MLP, which Celo reuses) and Table 4 (VeLO's per-tensor
inputs, which use the progress and loss features below). Celo (arXiv 2501.12670) Alg. 1 lines
4–5.

Per-parameter features are built from the accumulators *after* they absorbed g (as the
reference code, google/learned_optimization).
Each column is normalized over its tensor by x · rsqrt(1e-5 + mean(x²)) — no mean subtraction —
so feature magnitudes are Θ(1) whatever the tensor's width (μLO Corollary A.3).
Features are returned as `Columns` (planes plus Adafactor's reduced row/col arrays) with their
normalization factors `scales`, so an MLP folds the normalization into its first layer,
(x·s) @ W = x @ (s·W), and applies that layer without ever writing the (*S, C) feature matrix
(`first_layer`); `stack` builds that matrix for tests and readers.
"""
from functools import partial
from typing import Any, NamedTuple

import jax
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
    A steadily falling loss gives −1 (the reference code, google/learned_optimization).
    """
    n = state.count
    c = state.means / (1.0 - state.decays ** n.astype(jnp.float32))
    r = state.running_min
    f = (c[:-1] - r[:-1]) / jnp.maximum(1e-8, c[1:] - r[:-1]) - 1.0
    f = jnp.clip(f, -1.0, 1.0)
    return jnp.where(n <= 2, jnp.zeros_like(f), f)


# ----------------------------------------------------------------------------- per-parameter
# Each feature set is defined once, as an ordered list of named column groups. The groups
# "row", "col", "rsqrt_row", "rsqrt_col" of a ≥2-d tensor are its Adafactor accumulators
# broadcast along one axis: `Columns` keeps them at their reduced shape, so an MLP's first layer
# can act on them there (and broadcast the result) instead of on a full copy per entry.

GROUP_WIDTH = {"m": 3, "m_rv": 3, "fac_g": 3, "row": 3, "col": 3, "rsqrt_row": 3,
               "rsqrt_col": 3, "fac_mom": 3}          # all other groups are one column
# small_fc_lopt (μLO Table 2), the order of learned_optimization's AdafacMLPLOpt:
ADAFAC_GROUPS = ("g", "p", "m", "rms", "m_rv", "rv", "fac_g", "row", "col", "rsqrt_row",
                 "rsqrt_col", "fac_mom")
# VeLO's MLP (μLO Table 3), which Celo reuses:
VELO_GROUPS = ("g", "clip_g", "p", "m", "rms", "m_rv", "rv", "fac_g", "g_rv", "row", "col",
               "rsqrt_row", "rsqrt_col", "fac_mom")
ROW_GROUPS, COL_GROUPS = ("row", "rsqrt_row"), ("col", "rsqrt_col")


def column_index(groups, group, j=0):
    """Position of column j of `group` in the feature order `groups` (e.g. Adam's direction
    m_0.9·rsqrt(v) is column_index(VELO_GROUPS, "m_rv", 0) = 7)."""
    if group not in groups:
        raise ValueError(f"feature group {group!r} is not one of {groups}")
    if not 0 <= j < GROUP_WIDTH.get(group, 1):
        raise ValueError(f"feature group {group!r} has {GROUP_WIDTH.get(group, 1)} column(s)")
    return sum(GROUP_WIDTH.get(g, 1) for g in groups[:groups.index(group)]) + j


def init_directions(groups):
    """Where a learned rule over the features `groups` can start (ours; celo.RULE_INIT,
    velo.META_INIT, small_fc_lopt.INIT): the column its output d copies — Adam's direction, or
    Adafactor's momentum m_0.9 over the factored second moment — or {column: weight} for
    d ∝ Σ weight·n(x): "blend", Adam's direction at β1 0.9 and 0.99, the Adafactor-normalized
    gradient and Adafactor's momentum, about as the published Celo rule weighs them
    (docs/celo.md)."""
    col = partial(column_index, groups)
    return {"adam": col("m_rv", 0), "adafactor": col("fac_mom", 0),
            "blend": {col("m_rv", 0): 0.3, col("fac_g", 0): 0.25, col("fac_mom", 0): 0.25,
                      col("m_rv", 1): 0.2}}


VELO_INIT_DIRECTIONS = init_directions(VELO_GROUPS)


class Columns(NamedTuple):
    """The features of one tensor: `dense` ((column, plane of shape S), ...) and, for a ≥2-d
    tensor, `row` / `col` = (columns, array (*reduced shape, k)) that broadcast along d0 / d1."""
    dense: tuple
    row: Any
    col: Any
    dims: Any       # (d1, d0) of accumulators.factored_dims, or None
    shape: tuple    # S, the tensor's shape ((1,) for a scalar)
    num: int        # number of columns


def _as_vector(p, g, state):
    """The reference treats a scalar parameter as shape (1,) when building its features."""
    if p.ndim > 0:
        return p, g, state
    fix = lambda a: None if a is None else a.reshape((1,) + a.shape)
    fac = acc.FactoredState(None, None, fix(state.fac.v_diag))
    return p.reshape(1), g.reshape(1), acc.TensorState(fix(state.m), fix(state.rms), fac)


def columns(p, g, state, groups, fac_mom_eps):
    """Raw (unnormalized) features of tensor p with gradient g and updated accumulators `state`,
    in the order of `groups` (ADAFAC_GROUPS or VELO_GROUPS). fac_mom_eps: ε in m·(u + ε)^−1/2
    for ndim < 2 (small_fc_lopt 1e-6, VeLO 0)."""
    p, g, state = _as_vector(p, g, state)
    rsqrt = jax.lax.rsqrt
    v = state.rms[..., 0]
    rv = rsqrt(v + RMS_EPS)                                        # μLO Table 2: 1/sqrt(V)
    m = [state.m[..., j] for j in range(state.m.shape[-1])]
    dims = acc.factored_dims(p.shape)
    planes = {"g": [g], "clip_g": [jnp.clip(g, -GRAD_CLIP_FEATURE, GRAD_CLIP_FEATURE)],
              "p": [p], "m": m, "rms": [v], "m_rv": [mj * rv for mj in m], "rv": [rv],
              "g_rv": [g * rv]}
    reduced = {}
    if dims is None:
        u = state.fac.v_diag
        uj = [u[..., j] for j in range(u.shape[-1])]
        planes["fac_g"] = [g * acc.safe_rsqrt(x + 1e-9) for x in uj]       # Adafactor, 1-d
        planes["fac_mom"] = [mj * rsqrt(x + fac_mom_eps) for mj, x in zip(m, uj)]
        planes["row"] = planes["col"] = uj
        planes["rsqrt_row"] = planes["rsqrt_col"] = [rsqrt(x + FACTORED_RSQRT_EPS) for x in uj]
    else:
        d1, d0 = dims
        v_row, v_col = state.fac.v_row, state.fac.v_col
        reduced_d1 = d1 - 1 if d1 > d0 else d1
        row_factor = acc.safe_rsqrt(v_row / (jnp.mean(v_row, axis=reduced_d1, keepdims=True) + 1e-9))
        factor = jnp.expand_dims(row_factor, d0) * jnp.expand_dims(acc.safe_rsqrt(v_col), d1)
        fj = [factor[..., j] for j in range(factor.shape[-1])]
        planes["fac_g"] = [g * f for f in fj]                              # μLO Table 2 row 7
        planes["fac_mom"] = [mj * f for mj, f in zip(m, fj)]              # μLO Table 2 row 8
        reduced = {"row": v_row, "col": v_col, "rsqrt_row": rsqrt(v_row + FACTORED_RSQRT_EPS),
                   "rsqrt_col": rsqrt(v_col + FACTORED_RSQRT_EPS)}
    dense, row, col, index = [], ([], []), ([], []), 0
    for name in groups:
        width = GROUP_WIDTH.get(name, 1)
        cols = tuple(range(index, index + width))
        if name in reduced:
            target = row if name in ROW_GROUPS else col
            target[0].extend(cols)
            target[1].append(reduced[name])
        else:
            dense.extend(zip(cols, planes[name]))
        index += width
    pack = lambda r: (tuple(r[0]), jnp.concatenate(r[1], axis=-1)) if r[0] else None
    return Columns(tuple(dense), pack(row), pack(col), dims, p.shape, index)


def stack(cols):
    """The full (*S, num) feature matrix (for tests and for reading; the MLP does not need it)."""
    out = [None] * cols.num
    for c, x in cols.dense:
        out[c] = x
    for part, axis in ((cols.row, 0), (cols.col, 1)):
        if part is not None:
            ax = cols.dims[1 - axis]  # row broadcasts along d0, col along d1
            for j, c in enumerate(part[0]):
                out[c] = jnp.broadcast_to(jnp.expand_dims(part[1][..., j], ax), cols.shape)
    return jnp.stack(out, axis=-1)


SUM_BLOCK = 256  # mean squares are summed in blocks of 256 entries, then over blocks: a
                 # variadic reduction adds sequentially, and one float32 running sum over 1e6
                 # entries drifts by 1e-3–1e-2 relative (measured while writing celo.py)


def means(xs):
    """[mean over all entries] of several same-shaped arrays in ONE variadic reduction, so XLA
    reads their common inputs once instead of once per mean (one pass over memory)."""
    xs = tuple(xs)
    n = xs[0].size
    if xs[0].ndim == 0:
        return list(xs)
    pad = -n % SUM_BLOCK
    blocks = tuple(jnp.pad(x.reshape(-1), (0, pad)).reshape(-1, SUM_BLOCK) for x in xs)
    sums = jax.lax.reduce(blocks, tuple(jnp.zeros((), x.dtype) for x in xs),
                          lambda a, b: tuple(u + v for u, v in zip(a, b)), (1,))
    return [jnp.sum(x) / n for x in sums]


def mean_squares(planes):
    """[mean of x²] of several same-shaped arrays, in one pass (see `means`)."""
    return means([jnp.square(x) for x in planes])


def scales(cols):
    """Per-column normalization factors rsqrt(1e-5 + mean over the tensor of x²), shape (num,).
    A broadcast column has the same mean square as its reduced array."""
    s = [None] * cols.num
    for (c, _), ms in zip(cols.dense, mean_squares([x for _, x in cols.dense])):
        s[c] = ms
    for part in (cols.row, cols.col):
        if part is not None:
            ms = jnp.mean(jnp.square(part[1]), axis=tuple(range(part[1].ndim - 1)))
            for j, c in enumerate(part[0]):
                s[c] = ms[j]
    return jax.lax.rsqrt(NORM_EPS + jnp.stack(s))


def first_layer(cols, w):
    """Σ_c x_c·w[c] for the (num, H) matrix w (normalization already folded into w), as a list
    of H planes of shape S. Dense columns are multiply-adds per entry; row/col columns are a
    small matmul on the reduced arrays, broadcast back: XLA fuses the whole thing into a few
    passes over the tensor and never writes the (*S, num) feature matrix."""
    hidden = w.shape[1]
    out = []
    for j in range(hidden):
        h = sum(x * w[c, j] for c, x in cols.dense)
        out.append(h)
    for part, axis in ((cols.row, 0), (cols.col, 1)):
        if part is not None:
            z = part[1] @ w[jnp.asarray(part[0])]
            ax = cols.dims[1 - axis]
            out = [h + jnp.expand_dims(z[..., j], ax) for j, h in enumerate(out)]
    return out


def adafac_features(p, g, state):
    """The 28 per-parameter inputs of small_fc_lopt (μLO Table 2), raw, shape (*S, 28):
    g, p, m(3), rms, m·rsqrt(rms+1e-6)(3), rsqrt(rms+1e-6), fac_g(3), row(3), col(3),
    rsqrt(row+1e-8)(3), rsqrt(col+1e-8)(3), m·row_factor·col_factor(3). Scalars give (1, 28)."""
    return stack(columns(p, g, state, ADAFAC_GROUPS, RMS_EPS))


def velo_features(p, g, state):
    """The 30 per-parameter inputs of VeLO's MLP (μLO Table 3), also Celo's, raw, (*S, 30):
    g, clip(g, ±0.1), p, m(3), rms, m·rsqrt(rms+1e-6)(3), rsqrt(rms+1e-6), fac_g(3),
    g·rsqrt(rms+1e-6), row(3), col(3), rsqrt(row+1e-8)(3), rsqrt(col+1e-8)(3),
    m·row_factor·col_factor(3) (m·u^−1/2 without ε for ndim < 2)."""
    return stack(columns(p, g, state, VELO_GROUPS, 0.0))


# ----------------------------------------------------------------------------- VeLO per-tensor
# The 30 inputs of VeLO's per-tensor LSTM (μLO App. A.1.2 and Table 4; reference HyperV2's
# lstm_features_for_tensor). Built from p and the accumulators of the *previous* step (g unused).

LOG_FEATURE_MULT = 0.5     # c1 in L(x) = c1·clip(log(eps + |c2·x|), −τ, τ)   (μLO App. A.1.2)
LOG_FEATURE_SCALE = 10.0   # c2                                             (μLO App. A.1.2)
LOG_FEATURE_CLIP = 5.0     # τ                                              (μLO App. A.1.2)
LOG_FEATURE_EPS = 1e-8     # eps inside the log (reference)
PARAM_SCALE_FLOOR = 1e-9   # s = rsqrt(max(1e-9, mean p²)) (reference)
NUM_RANKS = 5              # one-hot of the number of dims of size > 1; rank ≥ 5 → all zeros
NUM_LSTM_FEATURES = 30     # 9 progress + 9 loss + 1 mean_rms + 5 rank + 3 var_m + 3 var_rms


def clip_log_abs(x):
    """L(x) = 0.5·clip(log(1e-8 + |10x|), −5, 5): a log magnitude squashed to [−2.5, 2.5]."""
    return LOG_FEATURE_MULT * jnp.clip(jnp.log(LOG_FEATURE_EPS + jnp.abs(LOG_FEATURE_SCALE * x)),
                                       -LOG_FEATURE_CLIP, LOG_FEATURE_CLIP)


def rank_onehot(shape):
    """One-hot (5,) of the number of dims of size > 1 (μLO Table 4 "tensor rank"); static."""
    rank = sum(1 for d in shape if d > 1)
    return jnp.zeros(NUM_RANKS, jnp.float32).at[rank].set(1.0) if rank < NUM_RANKS \
        else jnp.zeros(NUM_RANKS, jnp.float32)


def tensor_features(p, m, rms):
    """The 12 per-tensor inputs of VeLO's LSTM read from one tensor (μLO Table 4), in the
    reference's order: mean_rms (1), rank one-hot (5), var_m (3), var_rms (3).

    p: (*S), m: (*S, 3), rms: (*S, 1), the accumulators *before* this step's gradient. With
    s = rsqrt(max(1e-9, mean p²)) multiplying p, m and rms once (rms by s, not s²: reference):
      mean_rms = L(mean(s·rms)),  var_m_j = L(var(s·m_j)),
      var_rms_j = L(mean((s·rms − mean(s·m_j))²))   (centred on the *momentum* mean: reference
                                                     quirk, also in μLO App. A.1.2's formula).
    s is factored out of the means (mean(s·x) = s·mean(x), var(s·x) = s²·var(x)) so the means
    of p², m and rms share one pass over the tensor. A scalar tensor gives zero variances.
    """
    ms = [m[..., j] for j in range(m.shape[-1])]
    v = rms[..., 0]
    mean_p2, mean_v, *mean_m = means([jnp.square(p), v] + ms)       # pass 1
    var = means([jnp.square(mj - mu) for mj, mu in zip(ms, mean_m)]  # pass 2
                      + [jnp.square(v - mu) for mu in mean_m])
    s2 = 1.0 / jnp.maximum(PARAM_SCALE_FLOOR, mean_p2)                   # s²
    var_m = s2 * jnp.stack(var[:len(ms)])                                # μLO A.1.2 var_mom
    var_rms = s2 * jnp.stack(var[len(ms):])                              # μLO A.1.2 var_rms
    mean_rms = jnp.sqrt(s2) * mean_v[None]                               # μLO A.1.2 mean_rms
    return jnp.concatenate([clip_log_abs(mean_rms), rank_onehot(p.shape),
                            clip_log_abs(var_m), clip_log_abs(var_rms)])


def velo_lstm_features(t, num_steps, loss_feats, p, m, rms):
    """VeLO's 30 LSTM inputs for one tensor (μLO Table 4): progress tanh(10·(t/N − τ)) (9),
    the loss features (9), then `tensor_features` (12). t = updates done, N = planned steps."""
    return jnp.concatenate([progress_features(t, num_steps), loss_feats,
                            tensor_features(p, m, rms)])
