"""lopt: the learned-optimizer contract and the building blocks every optimizer here shares.

Per-parameter MLP: Metz et al. 2022 (arXiv 2203.11860); LSTM cell: VeLO (arXiv 2211.09760) App. B.3
and Celo (arXiv 2501.12670) Alg. 1. small_fc_lopt, celo, velo, celo2, local_sgd, mup import them.

THE LEARNED-OPTIMIZER CONTRACT (every optimizer module in this repo follows it)
  init_meta_params(key, ...) -> theta
      θ, a dict pytree of float32 arrays: the only thing meta-training changes.
  init(theta, params, num_steps) -> state
      an immutable NamedTuple pytree. num_steps = the planned length of training (some
      optimizers read it for their progress features; it may be a traced value).
  step(theta, state, params, grads, loss) -> (updates, state)
      pure and jittable; `updates` are *added* to params (optax convention: p ← p + updates).
      `loss` is the minibatch loss at params (ignored by optimizers that do not read it).
  optimizer(theta, num_steps) -> optax.GradientTransformationExtraArgs
      the same step as an optax transformation: `tx.update(grads, state, params, value=loss)`.
  learned_optimizer(...) -> LearnedOptimizer
      the record above, bundling structure options (widths, multipliers) with the functions, so
      train.py, evaluate.py and the tests treat every optimizer alike.
"""
from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

import features


# The loss's scale (scale_gradients, below; ours, part of every shipped learned optimizer at
# use). The learned rules read raw gradients through fixed constants (ε = 1e-6 in
# m·rsqrt(v + ε), 1e-5 in each feature column's normalization, as the reference code has them),
# so unlike Adam they are not invariant to the loss's scale: with a small tanh regression's loss
# × 1e-4, Celo ended 3,000× higher than at × 1 (Adam: 1.1×), and Celo2-base, whose normalized
# output then follows its MLP's bias, above its start. So the rule runs on c·L instead of L, c
# fixed at the first nonzero gradient: c = clip(r, lo, hi) / r, r the RMS of that gradient over
# all parameters. Inside [lo, hi] c = r / r = 1 and every step is unchanged (to float32
# rounding: XLA may fuse the step differently); outside, the rule sees the problem at the
# nearest scale it knows. [1e-4, 1] holds the first gradients of Celo's meta-training task
# (≈ 1e-2) and of every VALIDATION task (3.7e-4 … 4.6e-2), with room on both sides. On the
# VALIDATION tasks with their losses × 1e-4, Celo's median goes 0.79 → 1.05 (docs/results.md).
GRAD_RMS_RANGE = (1e-4, 1.0)


class LearnedOptimizer(NamedTuple):
    """A learned optimizer as the scripts see it (the contract in the module docstring).
    `optimizer()` is the step as used: wrapped in scale_gradients(·, grad_rms_range) unless
    that is None, in bound_norm(·, max_norm) when max_norm > 0, and in portable (`step`
    itself, which meta-training unrolls, has none of them)."""
    name: str
    init_meta_params: Callable[..., Any]
    init: Callable[..., Any]
    step: Callable[..., Any]
    needs_loss: bool = False
    max_norm: float = 0.0
    grad_rms_range: Any = GRAD_RMS_RANGE    # None: the raw gradients (the reference step)

    def optimizer(self, theta, num_steps):
        return at_use(as_optax(self, theta, num_steps), self.max_norm, self.grad_rms_range)


def as_optax(lopt, theta, num_steps):
    """Wrap a LearnedOptimizer and its θ as an optax transformation taking `value=loss`."""

    def init(params):
        return lopt.init(theta, params, num_steps)

    def update(grads, state, params=None, **extra):
        if params is None:
            raise ValueError(f"{lopt.name} needs the current params: "
                             "call tx.update(grads, state, params, value=loss)")
        loss = extra.get("value")
        if lopt.needs_loss and loss is None:
            raise ValueError(f"{lopt.name} reads the training loss: "
                             "call tx.update(grads, state, params, value=loss)")
        return lopt.step(theta, state, params, grads, jnp.float32(0.0) if loss is None else loss)

    return optax.GradientTransformationExtraArgs(init, update)


# ----------------------------------------------------------------------------- the loss's scale
# (GRAD_RMS_RANGE at the top of the file)

def _forwarded_eta(state):
    """The wrapped optimizer's η, where it has one (engine.py records it)."""
    return getattr(state.inner, "eta", None)


class ScaledState(NamedTuple):
    """State of scale_gradients: the wrapped optimizer's state and c (0 until it is fixed)."""
    inner: Any
    scale: jnp.ndarray
    eta = property(_forwarded_eta)


def scale_gradients(tx, rms_range=GRAD_RMS_RANGE):
    """tx run on c·L (gradients and `value` times c), c fixed at the first nonzero gradient so
    that its RMS over all parameters lies in rms_range (GRAD_RMS_RANGE above)."""
    lo, hi = rms_range

    def init(params):
        return ScaledState(tx.init(params), jnp.zeros((), jnp.float32))

    def update(grads, state, params=None, **extra):
        def first_scale():
            r = optax.global_norm(grads) / jnp.sqrt(max(optax.tree_utils.tree_size(grads), 1))
            return jnp.where(r > 0, jnp.clip(r, lo, hi) / jnp.where(r > 0, r, 1.0), 0.0)
        c = jax.lax.cond(state.scale > 0, lambda: state.scale, first_scale)
        c_used = jnp.where(c > 0, c, 1.0)                     # before any nonzero gradient: 1
        grads = jax.tree.map(lambda g: g * c_used.astype(g.dtype), grads)
        if extra.get("value") is not None:
            extra["value"] = extra["value"] * c_used
        updates, inner = tx.update(grads, state.inner, params, **extra)
        return updates, ScaledState(inner, c)

    return optax.GradientTransformationExtraArgs(init, update)


# ----------------------------------------------------------------------------- the max-norm bound

# Ours, a safeguard that is part of Celo, VeLO-small and Celo2-base at use. Each tensor gets a
# radius: MAX_NORM times its RMS at step 0, floored at MAX_NORM_FLOOR, or MAX_NORM_ZERO times
# MAX_NORM for a tensor that starts at exactly zero (a bias, a zero-initialized layer).
#   - A tensor of two or more dimensions (weight matrix, conv kernel, embedding) that has left
#     its ball is pulled back onto it before it takes its step: p ← c·p + u, c = radius / rms(p)
#     (a max-norm constraint, as Srivastava et al. 2014, JMLR 15, §5.1 put on each unit's
#     incoming weights; ours bounds each tensor's RMS, one step late: the RMS can exceed the
#     radius by at most one step's worth).
#   - A vector or scalar (bias, gain) may go anywhere (a bias must reach the targets' offset,
#     whatever it is), but beyond the radius its step is scaled by radius / rms(p), so it grows
#     at most linearly there, as an Adam step does, never exponentially.
#   Both read only the current params, never the update: the learned rule's output is written
#   once, as without the bound (projecting p + u exactly reads it twice, and cost Celo's step
#   3.7× Adam's instead of 2.5×; bench.py).
# Why: a relative step (× the tensor's RMS) plus gradient noise grows the weights exponentially
# while η stays high; in a 25,000-step run of a 3×64 ReLU MLP, Celo's weights grew 10–100× by
# step 5,000 and the loss climbed to chance. With the bound that run ends at 0.32–0.33 (tuned
# Adam 0.23; the published θ: 0.39, where bounding the matrices alone left its biases to blow
# up). κ = 8 still diverges, κ = 6 survives with a loss bump. Chosen on the VALIDATION suite and
# that run (docs/celo.md): it costs Celo's VALIDATION IQM 1.117 → 1.106; a zero-start floor of
# 0.25 (not 0.1) keeps the zero-started logistic regression at 1.05 (0.79 with 0.1).
MAX_NORM = 4.0
MAX_NORM_FLOOR = 0.1
MAX_NORM_ZERO = 0.25


class BoundedState(NamedTuple):
    """State of bound_norm: the wrapped optimizer's state and each tensor's radius (κ × ref RMS)."""
    inner: Any
    radius: Any
    eta = property(_forwarded_eta)


def bound_norm(tx, max_norm=MAX_NORM):
    """tx with each tensor held near its radius, max_norm × its reference RMS (MAX_NORM above).
    With c = min(1, radius / rms(p)) from the current params: a tensor of ≥ 2 dimensions gets
    the update u + (c − 1)·p (p is pulled back onto its ball, then steps), a vector or scalar
    gets c·u. Inside the ball (c = 1) every update passes unchanged, bit for bit."""
    def init(params):
        def radius(p):
            r = param_scale(p, 0.0)
            return max_norm * jnp.where(r > 0, jnp.maximum(r, MAX_NORM_FLOOR), MAX_NORM_ZERO)
        return BoundedState(tx.init(params), jax.tree.map(radius, params))

    def update(grads, state, params=None, **extra):
        if params is None:
            raise ValueError("bound_norm needs the current params: call tx.update(grads, state, "
                             "params, ...)")
        updates, inner = tx.update(grads, state.inner, params, **extra)

        def bound(p, u, radius):
            c = jnp.minimum(radius / jnp.maximum(param_scale(p, 0.0), 1e-30), 1.0).astype(u.dtype)
            if p.ndim < 2:                  # biases and gains: linear growth beyond the radius
                return u * c                                     # c = 1: u unchanged, bit for bit
            return u + (c - 1.0) * p.astype(u.dtype)             # c·p + u − p; c = 1: u exactly

        return (jax.tree.map(bound, params, updates, state.radius),
                BoundedState(inner, state.radius))

    return optax.GradientTransformationExtraArgs(init, update)


def portable(tx):
    """tx for whatever params a user brings (ours; every learned optimizer's `optimizer()` is
    wrapped in it). Tensors of float16 or bfloat16 are read in float32 (the features and
    accumulators need its range) and get updates in their own dtype; tensors with no elements
    are skipped and get empty updates (an empty tensor's mean is NaN, and a feature shared
    across tensors, as VeLO's, would spread it to every tensor). Float32 params pass through
    unchanged, so the wrapped and unwrapped steps agree bit for bit."""
    def f32(tree):                  # float32 leaves, empty ones replaced by None (no leaf)
        leaves, treedef = jax.tree.flatten(tree)
        return treedef.unflatten([None if jnp.size(x) == 0 else jnp.asarray(x, jnp.float32)
                                  for x in leaves])

    def init(params):
        return tx.init(f32(params))

    def update(grads, state, params=None, **extra):
        if extra.get("value") is not None:
            extra["value"] = jnp.asarray(extra["value"], jnp.float32)
        updates, state = tx.update(f32(grads), state, None if params is None else f32(params),
                                   **extra)
        leaves, treedef = jax.tree.flatten(grads)
        return treedef.unflatten([jnp.zeros_like(g) if u is None else jnp.asarray(u, g.dtype)
                                  for g, u in zip(leaves, treedef.flatten_up_to(updates))]), state

    return optax.GradientTransformationExtraArgs(init, update)


def at_use(tx, max_norm, grad_rms_range):
    """The guards a shipped learned optimizer wears at use, innermost first: scale_gradients
    (unless grad_rms_range is None), bound_norm (when max_norm > 0), portable. The one place
    that orders them (LearnedOptimizer.optimizer and celo2.optimizer call it)."""
    if grad_rms_range is not None:
        tx = scale_gradients(tx, grad_rms_range)
    if max_norm > 0:
        tx = bound_norm(tx, max_norm)
    return portable(tx)


def cosine_anneal(t, num_steps, start, end):
    """start → end by a half cosine over the run: end + (start − end)·(1 + cos(π·min(t/N, 1)))/2.
    Celo's scheduler prior (celo.PRIOR_ETA) and VeLO's step multiplier at use (velo.ANNEAL)."""
    frac = jnp.minimum(jnp.asarray(t, jnp.float32) / jnp.asarray(num_steps, jnp.float32), 1.0)
    return end + (start - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))


PARAM_SCALE_EPS = 1e-9   # rms(p) = sqrt(mean(p²) + 1e-9) (Celo's and VeLO's reference code)


def param_scale(p, eps=PARAM_SCALE_EPS, min_scale=0.0):
    """sqrt(mean(p²) + eps), the tensor's RMS that Celo's and VeLO's relative steps multiply,
    floored at min_scale when it is > 0 (ours: a zero-initialized tensor then moves)."""
    rms = jnp.sqrt(jnp.mean(jnp.square(p)) + eps)
    return jnp.maximum(rms, min_scale) if min_scale > 0 else rms


def count_params(tree):
    """Number of scalars in a pytree (meta-parameter counts in tests and the README)."""
    return sum(int(x.size) for x in jax.tree.leaves(tree))


def map_tensors(fn, params, grads, *trees):
    """fn(p, g, *xs) -> (update, new_state) on every tensor of params; returns (updates, new
    states) as pytrees shaped like params. `trees` are per-tensor inputs shaped like params down
    to its leaves (an accumulators.TensorState per tensor, a label, an index). A trace-time loop:
    tensors differ in shape, so they cannot be vmapped; jit unrolls it into one program."""
    leaves, treedef = jax.tree.flatten(params)
    rest = [treedef.flatten_up_to(t) for t in (grads,) + trees]
    out = [fn(p, *xs) for p, *xs in zip(leaves, *rest)]
    return treedef.unflatten([u for u, _ in out]), treedef.unflatten([s for _, s in out])


# ----------------------------------------------------------------------------- building blocks
# The per-parameter MLP and the LSTM cell.

def init_mlp(key, sizes):
    """MLP weights w_i ~ TruncatedNormal(±2σ, σ = 1/sqrt(fan_in)), biases 0 (haiku's default)."""
    mlp = {}
    keys = jax.random.split(key, len(sizes) - 1)
    for i, (k, fan_in, fan_out) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
        w = jax.random.truncated_normal(k, -2.0, 2.0, (fan_in, fan_out), jnp.float32)
        mlp[f"w{i}"] = w / jnp.sqrt(jnp.float32(fan_in))
        mlp[f"b{i}"] = jnp.zeros((fan_out,), jnp.float32)
    return mlp


def init_mlp_with_direction(key, sizes, column, scale):
    """init_mlp, except that output 0 starts as exactly scale·x[column] (column: an index, or a
    mapping {index: weight} for scale·Σ weight·x[index]): units 0 and 1 of every
    hidden layer are reserved for relu(x) and relu(−x) (they pass the ReLUs unchanged and receive
    nothing else), and output 0 reads scale·(relu(x) − relu(−x)) = scale·x from them alone.
    The other units and outputs keep their random weights (minus the reserved inputs).

    Ours, not the papers' (they use init_mlp): with x = Adam's direction m·rsqrt(v), normalized
    over the tensor, a rule starts as a relative-step Adam, Δp = λ1·scale·n(m/√v)·rms(p), a
    working optimizer that meta-training then reshapes; Celo's rule, VeLO's bank and
    small_fc_lopt_relative start from a blend of such directions (features.init_directions).
    From the random init, thousands of CPU meta-steps did not find one (Celo)."""
    if len(sizes) < 3 or min(sizes[1:-1]) < 2:
        raise ValueError(f"need ≥ 1 hidden layer of width ≥ 2, got sizes {sizes}")
    mix = column if isinstance(column, dict) else {column: 1.0}
    idx, wts = jnp.asarray(list(mix), jnp.int32), jnp.asarray(list(mix.values()), jnp.float32)
    mlp = init_mlp(key, sizes)
    last = len(sizes) - 2
    for i in range(last + 1):
        w, b = mlp[f"w{i}"], mlp[f"b{i}"]
        if i == 0:                                    # unit 0 = x, unit 1 = −x
            w = w.at[:, 0:2].set(0.0).at[idx, 0].set(wts).at[idx, 1].set(-wts)
        else:                                         # reserved units feed only themselves
            w = w.at[0:2, :].set(0.0)
        if 0 < i < last:
            w = w.at[:, 0:2].set(0.0).at[0, 0].set(1.0).at[1, 1].set(1.0)
        if i == last:                                 # output 0 = scale·(relu(x) − relu(−x))
            w = w.at[:, 0].set(0.0).at[0, 0].set(scale).at[1, 0].set(-scale)
        else:
            b = b.at[0:2].set(0.0)
        mlp[f"w{i}"], mlp[f"b{i}"] = w, b
    return mlp


def mlp_initializer(sizes, start, directions, scale, arg="meta_init"):
    """key → MLP θ at meta-initialization: init_mlp for start="random" (the papers'), else
    init_mlp_with_direction along directions[start] (ours; features.init_directions). `arg` names
    the option in the error for an unknown start."""
    if start not in ("random", *directions):
        raise ValueError(f"{arg} must be one of random, {', '.join(directions)}, got {start!r}")
    if start == "random":
        return partial(init_mlp, sizes=sizes)
    return partial(init_mlp_with_direction, sizes=sizes, column=directions[start], scale=scale)


def apply_mlp(mlp, x, scale=None, extra_bias=0.0):
    """ReLU MLP on the last axis of x. `scale` (per input column) is folded into the first layer,
    (x·s) @ W0 = x @ (s·W0), so normalized features are never materialized; `extra_bias` adds
    the contribution of inputs that are the same for every parameter (e.g. time features)."""
    num_layers = sum(1 for k in mlp if k.startswith("w"))
    w0 = mlp["w0"][: x.shape[-1]]
    if scale is not None:
        w0 = scale[:, None] * w0
    h = x @ w0 + (mlp["b0"] + extra_bias)
    for i in range(1, num_layers):
        h = jax.nn.relu(h) @ mlp[f"w{i}"] + mlp[f"b{i}"]
    return h


PLANAR_MAX_HIDDEN = 8   # up to this width, hidden units are separate planes (fused multiply-adds)


def mlp_on_columns(mlp, cols, w0, extra_bias=0.0):
    """The MLP on features.Columns, with the first layer's (normalization-folded) weights w0;
    returns the output units as a list of planes of the tensor's shape. A 4-wide MLP is a few
    dozen multiply-adds per entry: written unit by unit, XLA fuses it with the features into
    one pass over the tensor (K = 28, N = 4 matmuls on (…, 28) arrays are several times slower)."""
    num_layers = sum(1 for k in mlp if k.startswith("w"))
    h = [x + b for x, b in zip(features.first_layer(cols, w0), mlp["b0"] + extra_bias)]
    for i in range(1, num_layers):
        w, b = mlp[f"w{i}"], mlp[f"b{i}"]
        a = [jax.nn.relu(x) for x in h]
        if len(a) <= PLANAR_MAX_HIDDEN:
            h = [sum(a[c] * w[c, j] for c in range(len(a))) + b[j] for j in range(w.shape[1])]
        else:  # wide hidden layers (μLO's 32): one matmul
            z = jnp.stack(a, axis=-1) @ w + b
            h = [z[..., j] for j in range(w.shape[1])]
    return h


def per_parameter_mlp_plain(mlp, p, g, state, groups, fac_mom_eps, extra_bias=0.0):
    """The per-parameter MLP as the papers write it (μLO App. A.3; Celo Alg. 1 ll. 10–11):
    features F (*S, C) → each column normalized over the tensor → MLP, one row per parameter.
    Returns the output units as planes of shape S. per_parameter_mlp computes the same, fast."""
    x = features.normalize_columns(features.stack(features.columns(p, g, state, groups,
                                                                   fac_mom_eps)))
    out = apply_mlp(mlp, x, extra_bias=extra_bias)
    return [out[..., j] for j in range(out.shape[-1])]


def per_parameter_mlp(mlp, p, g, state, groups, fac_mom_eps, extra_bias=0.0):
    """apply_mlp(mlp, normalize_columns(features)) for every entry of one tensor, fast: output
    units as planes. Shared by small_fc_lopt, Celo and VeLO (each passes its feature groups).

    Two passes over the tensor: one reduction for the normalization factors (folded into W0),
    then the MLP, which *recomputes* the features instead of reading them back — sharing them,
    XLA writes the whole (…, C) feature array, ~2.5× slower on CPU (measured). The
    optimization_barrier only stops XLA from merging the two identical computations."""
    cols = features.columns(p, g, state, groups, fac_mom_eps)
    w0 = features.scales(cols)[:, None] * mlp["w0"][: cols.num]
    p, g, state = jax.lax.optimization_barrier((p, g, state))
    return mlp_on_columns(mlp, features.columns(p, g, state, groups, fac_mom_eps), w0, extra_bias)


def init_lstm(key, input_size, hidden):
    """An LSTM cell laid out as haiku's: one (input+hidden, 4·hidden) matrix, gates i, g, f, o."""
    return {"w": init_mlp(key, (input_size + hidden, 4 * hidden))["w0"],
            "b": jnp.zeros((4 * hidden,), jnp.float32)}


def lstm_step(lstm, x, h, c):
    """One LSTM step (haiku.LSTM): c' = σ(f + 1)·c + σ(i)·tanh(g), h' = σ(o)·tanh(c').
    Used by VeLO's per-tensor LSTM and Celo's scheduler. Works on any leading batch shape."""
    gates = jnp.concatenate([x, h], axis=-1) @ lstm["w"] + lstm["b"]
    i, g, f, o = jnp.split(gates, 4, axis=-1)
    c = jax.nn.sigmoid(f + 1.0) * c + jax.nn.sigmoid(i) * jnp.tanh(g)  # forget-gate bias +1
    return jax.nn.sigmoid(o) * jnp.tanh(c), c
