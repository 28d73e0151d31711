"""small_fc_lopt: a tiny per-parameter MLP learned optimizer, and the contract all of ours follow.

Metz et al. 2022, "Practical tradeoffs between memory, compute, and performance in learned
optimizers" (AdafacMLPLOpt, a.k.a. small_fc_lopt; arXiv 2203.11860); Celo (arXiv 2501.12670)
§2 Eq. (2); μLO (arXiv 2406.00153) §2 and App. A.1.1. Every parameter gets the same MLP, fed 39
features (features.py) built from accumulators whose decays are themselves learned; it outputs a
direction d and a log-magnitude m:
    Δp = λ1 · d · exp(λ2 · m),  p ← p − Δp                     (Celo Eq. (2), λ1 = λ2 = 1e-3)

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

import accumulators as acc
import features

STEP_MULT = 1e-3     # λ1 (Celo Eq. (2); reference default; μLO uses 0.01 for μLO_M)
EXP_MULT = 1e-3      # λ2 (Celo Eq. (2))
HIDDEN = 4           # reference small_fc_lopt: 39 → 4 → 4 → 2 (μLO_M uses 32)
HIDDEN_LAYERS = 2
DECAY_OFFSET_SCALE = 10.0  # β = 1 − (1 − β0)·exp(10·offset): learned decays (reference)
NUM_INPUTS = features.NUM_ADAFAC_FEATURES + len(features.TIME_SCALES)  # 28 + 11 = 39


class LearnedOptimizer(NamedTuple):
    """A learned optimizer as the scripts see it (the contract in the module docstring)."""
    name: str
    init_meta_params: Callable[..., Any]
    init: Callable[..., Any]
    step: Callable[..., Any]
    needs_loss: bool = False

    def optimizer(self, theta, num_steps):
        return as_optax(self, theta, num_steps)


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


def count_params(tree):
    """Number of scalars in a pytree (meta-parameter counts in tests and the README)."""
    return sum(int(x.size) for x in jax.tree.leaves(tree))


# ----------------------------------------------------------------------------- building blocks
# The per-parameter MLP and the LSTM cell; celo.py, velo.py and local_sgd.py import them from here.

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
    """init_mlp, except that output 0 starts as exactly scale·x[column]: units 0 and 1 of every
    hidden layer are reserved for relu(x) and relu(−x) (they pass the ReLUs unchanged and receive
    nothing else), and output 0 reads scale·(relu(x) − relu(−x)) = scale·x from them alone.
    The other units and outputs keep their random weights (minus the reserved inputs).

    Ours, not the papers' (they use init_mlp): with x = Adam's direction m·rsqrt(v), normalized
    over the tensor, Celo's rule and VeLO's bank start as a relative-step Adam,
    Δp = λ1·scale·n(m/√v)·rms(p), a working optimizer that meta-training then reshapes; from
    the random init, thousands of CPU meta-steps did not find one (README, Celo)."""
    if len(sizes) < 3 or min(sizes[1:-1]) < 2:
        raise ValueError(f"need ≥ 1 hidden layer of width ≥ 2, got sizes {sizes}")
    mlp = init_mlp(key, sizes)
    last = len(sizes) - 2
    for i in range(last + 1):
        w, b = mlp[f"w{i}"], mlp[f"b{i}"]
        if i == 0:                                    # unit 0 = x, unit 1 = −x
            w = w.at[:, 0:2].set(0.0).at[column, 0].set(1.0).at[column, 1].set(-1.0)
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


# ----------------------------------------------------------------------------- the optimizer

class State(NamedTuple):
    acc: Any                 # pytree like params, a accumulators.TensorState per tensor
    step: jnp.ndarray        # () int32, updates done so far
    num_steps: jnp.ndarray   # () int32, planned training length (stored, unused here)


def init_decay_offsets():
    """The learned accumulator decay offsets that `decays` reads, 0 at init ⇒ β = β0 (reference);
    local_sgd.py's θ has them too."""
    return {"momentum_decays": jnp.zeros(len(acc.MOMENTUM_DECAYS), jnp.float32),
            "rms_decays": jnp.zeros(len(acc.RMS_DECAYS), jnp.float32),
            "adafactor_decays": jnp.zeros(len(acc.ADAFACTOR_DECAYS), jnp.float32)}


def init_meta_params(key, hidden=HIDDEN, hidden_layers=HIDDEN_LAYERS):
    sizes = (NUM_INPUTS,) + (hidden,) * hidden_layers + (2,)
    return {"mlp": init_mlp(key, sizes), **init_decay_offsets()}


def learned_decays(offsets, initial):
    """β = 1 − exp(10·(log(1 − β0)/10 + offset)), formed in float32 as the reference does."""
    log_gap = jnp.log(1.0 - jnp.asarray(initial, jnp.float32)) / DECAY_OFFSET_SCALE
    return 1.0 - jnp.exp(DECAY_OFFSET_SCALE * (log_gap + offsets))


def decays(theta):
    """(momentum, rms, adafactor) decays; rms and Adafactor clipped to [0, 1], momenta not
    (a large offset makes a momentum decay negative, as in the reference)."""
    m = learned_decays(theta["momentum_decays"], acc.MOMENTUM_DECAYS)
    r = jnp.clip(learned_decays(theta["rms_decays"], acc.RMS_DECAYS), 0.0, 1.0)
    a = jnp.clip(learned_decays(theta["adafactor_decays"], acc.ADAFACTOR_DECAYS), 0.0, 1.0)
    return m, r, a


def init(theta, params, num_steps):
    del theta
    return State(jax.tree.map(acc.init_tensor, params), jnp.zeros((), jnp.int32),
                 jnp.asarray(num_steps, jnp.int32))


def mlp_outputs(theta, p, g, tensor_state, t):
    """[d, m] planes for every entry of one tensor: features → normalization → MLP."""
    time_w = theta["mlp"]["w0"][features.NUM_ADAFAC_FEATURES:]
    # Time features are equal for all entries: their first-layer term is a bias (not normalized).
    return per_parameter_mlp(theta["mlp"], p, g, tensor_state, features.ADAFAC_GROUPS,
                             features.RMS_EPS, features.time_features(t) @ time_w)


def step(theta, state, params, grads, loss=None, step_mult=STEP_MULT, exp_mult=EXP_MULT):
    """One small_fc_lopt update: accumulators absorb g, then features, MLP and Eq. (2)."""
    del loss  # small_fc_lopt does not read the loss
    m_dec, r_dec, a_dec = decays(theta)
    leaves, treedef = jax.tree.flatten(params)
    grad_leaves = treedef.flatten_up_to(grads)
    acc_leaves = treedef.flatten_up_to(state.acc)
    updates, new_acc = [], []
    for p, g, s in zip(leaves, grad_leaves, acc_leaves):  # trace-time loop over tensors
        s = acc.update_tensor(s, g, m_dec, r_dec, a_dec)
        d, m = mlp_outputs(theta, p, g, s, state.step)[:2]
        updates.append(-(d * jnp.exp(m * exp_mult) * step_mult).reshape(p.shape))  # Celo Eq. (2)
        new_acc.append(s)
    return (treedef.unflatten(updates),
            State(treedef.unflatten(new_acc), state.step + 1, state.num_steps))


def learned_optimizer(hidden=HIDDEN, step_mult=STEP_MULT, exp_mult=EXP_MULT,
                      name="small_fc_lopt"):
    """The contract record; μLO_M is learned_optimizer(hidden=32, step_mult=0.01) plus mup.py."""
    return LearnedOptimizer(name, partial(init_meta_params, hidden=hidden), init,
                            partial(step, step_mult=step_mult, exp_mult=exp_mult))


def optimizer(theta, num_steps, step_mult=STEP_MULT, exp_mult=EXP_MULT):
    """small_fc_lopt with meta-parameters θ as an optax transformation."""
    return as_optax(learned_optimizer(step_mult=step_mult, exp_mult=exp_mult), theta, num_steps)
