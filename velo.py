"""VeLO: a per-tensor LSTM hypernetwork that writes a tiny per-parameter MLP for every tensor.

Metz et al. 2022, "VeLO: Training Versatile Learned Optimizers by Scaling Up" (arXiv 2211.09760)
App. B.3 (tensor-level LSTM), B.4 (parameter-level MLP), B.7 (cost); μLO (arXiv 2406.00153)
App. A.1.2 Eq. (9) and App. A.3 Tables 3–4 (the 30 MLP and 30 LSTM inputs). Matches learned_optimization's
HyperV2 (the released VeLO configuration) on tests/data/velo_tiny.npz.

One step, for a model with T parameter tensors:
  1. the loss EMAs absorb the minibatch loss (accumulators.py); g ← clip(g, ±1000);
  2. per tensor, 30 LSTM inputs from p and the *previous* m, rms (features.velo_lstm_features),
     stacked to X (T, 30); one batched LSTM step for all tensors (VeLO App. B.3):
        v = max_t relu(X W_mix + b_mix),  X' = X W_in + b_in + v,  (h, c) ← LSTM(X', h, c),
        controls C = h W_c + b_c (T, K),  lr_mult α = h w_s + b_s (T,)  (raw: may be negative);
  3. the bank of K MLPs is mixed into one MLP per tensor, θ_t = (100/K)·Σ_k C_tk θ_k (App. B.4);
  4. accumulators absorb g; per parameter, 30 normalized inputs (μLO Table 3) → θ_t → (d, m);
        p ← p − α_t · d · sqrt(mean_t(p²) + 1e-9) · exp(λ2·m) · λ1      (μLO Eq. (9), B.4).

θ layout (reference haiku name in brackets; H = LSTM width, K = bank size, F = 4):
  mix       {w (30, H), b (H,)}       [rnn_params/linear_1]   relu → max over tensors
  proj      {w (30, H), b (H,)}       [rnn_params/linear_2]   LSTM input projection
  lstm      {w (2H, 4H), b (4H,)}     [rnn_params/rnn/linear] rows [x'; h], gates i, g, f, o
  lstm_init {h (H,), c (H,)}          [lstm_init_state/{hidden, cell}]
  controls  {w (H, K), b (K,)}        [rnn_params/rnn_to_controls]
  lr_mult   {w (H, 1), b (1,)}        [rnn_params/step_size]
  bank      {w0 (K, 30, F), b0 (K, F), w1 (K, F, F), b1 (K, F), w2 (K, F, 2), b2 (K, 2)}
            [ff_mod_stack/~: w0 = rows of w0__0 … w0__13 in *numeric* order]
Two groups of reference parameters are dead and left out of θ: rnn_params/linear (a first mix
layer computed, then overwritten: 31·H) and the bank's third output (never read: 5·K).
Sizes are read back from θ's shapes, so a checkpoint alone defines the optimizer.
"""
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import accumulators as acc
import features
from lopt import (GRAD_RMS_RANGE, MAX_NORM, LearnedOptimizer, cosine_anneal, init_lstm, init_mlp,
                  PARAM_SCALE_EPS, lstm_step, map_tensors, mlp_initializer, param_scale,
                  per_parameter_mlp)

STEP_MULT = 1e-3       # λ1 (μLO Eq. (9); reference step_mult)
EXP_MULT = 1e-3        # λ2 (μLO Eq. (9); reference exp_mult)
GRAD_CLIP = 1000.0     # g ← clip(g, ±1000) before anything reads it (reference)
MIX_SCALE = 100.0      # θ_t = 100 · mean_k(C_tk θ_k) (reference interpolate_theta)
# Ours, in use only (meta-training runs the reference step: registry.py), as for Celo: a floor
# under the tensor scale, so that zero-initialized tensors move, and the step multiplied by a
# cosine from ANNEAL[0] to ANNEAL[1] over the run (Celo's fitted prior, celo.PRIOR_ETA). Without
# them our VeLO diverged at 5000 steps (a tanh MLP, 2.33 → 12.8: it grows the output layer's
# RMS exponentially) and never moved a deep ReLU net with zero biases (docs/velo.md).
MIN_PARAM_SCALE = 0.1
ANNEAL = (1.0, 0.03)
FF_HIDDEN = 4          # per-parameter MLP 30 → 4 → 4 → (d, m) (VeLO App. B.4)
FF_HIDDEN_LAYERS = 2
FF_OUTPUTS = 2         # direction, log-magnitude; the reference's third output is never read
FAC_MOM_EPS = 0.0      # m·(u + ε)^−1/2 for < 2-d tensors: VeLO has no ε (small_fc_lopt: 1e-6)
NUM_MLP_INPUTS = features.NUM_VELO_FEATURES    # 30 (μLO Table 3)
NUM_LSTM_INPUTS = features.NUM_LSTM_FEATURES   # 30 (μLO Table 4)

# Ours (not the paper's): a directed meta_init starts VeLO as a relative-step optimizer, as Celo's
# rule (celo.RULE_INIT): every bank member's output d reads only Σ w·n(x) over the columns of
# features.VELO_INIT_DIRECTIONS[meta_init] ("blend", the default: Adam's and Adafactor's
# directions as celo.RULE_INIT; "adam": n(m_0.9/√v), the earlier default, `--opt velo_adam_init`;
# "adafactor"), the controls start at CONTROLS_INIT each and every member at
# 1/(MIX_SCALE·CONTROLS_INIT) = 1/10 of the target MLP, so the mixed MLP is d = INIT_SCALE·Σ w·n(x)
# plus the members' mean random part. The product C·θ_k is split evenly (√(1/MIX_SCALE) each):
# with controls at 0.01 and full-size members, PES (σ = 0.01) and AdamW (3e-4 per step) move the
# mixing scale 100·mean_k(ΔC_k), tens of percent per step, and meta-training made the held-out
# score worse (0.79 untrained → 0.29). The controls' h-weights are shrunk by
# CONTROLS_INIT_SHRINK and lr_mult starts at 1 (weights shrunk by LR_MULT_INIT_SHRINK), so every
# tensor starts alike. The paper's random init is "random". Chosen on VALIDATION after the same
# 1500 meta-steps (median / IQM; docs/velo.md): "blend" 1.085 / 1.088, "adafactor" 1.050 / 1.048,
# "adam" 1.043 / 1.036.
META_INIT = "blend"
INIT_SCALE = 10.0
CONTROLS_INIT = 0.1
CONTROLS_INIT_SHRINK = 0.01
LR_MULT_INIT_SHRINK = 0.1

# (LSTM width H, bank size K). paper: VeLO App. B.3 / the released weights (2,320,385 reference
# meta-parameters, 2,303,233 live). small: the widths of "VeLO-S" (Celo §5 and App. A.2), our
# default for CPU meta-training (see `learned_optimizer`) — but not Celo's VeLO-S itself, which
# mixes the bank with a factor of 1.0 where we keep the reference's MIX_SCALE = 100. tiny: the
# oracle file's size (reference count 1985).
SIZES = {"paper": (512, 256), "small": (64, 32), "tiny": (8, 4)}


def reference_param_count(lstm_hidden, bank):
    """Meta-parameters of the reference HyperV2 at width H and bank K, dead ones included
    (google/learned_optimization): LSTM gates, controls head, three 30→H layers, step-size head,
    initial state, and K MLPs of 30·4+4 + 4·4+4 + 4·3+3 = 159."""
    h, k = lstm_hidden, bank
    mlp = (NUM_MLP_INPUTS * FF_HIDDEN + FF_HIDDEN + FF_HIDDEN * FF_HIDDEN + FF_HIDDEN
           + FF_HIDDEN * 3 + 3)
    return ((2 * h * 4 * h + 4 * h) + (h * k + k) + 3 * (NUM_LSTM_INPUTS * h + h) + (h + 1)
            + 2 * h + k * mlp)


def dead_param_count(lstm_hidden, bank):
    """Reference parameters that never affect an update, hence not in our θ: the overwritten
    first mix layer (30·H + H) and each bank member's third output column and bias (4 + 1)."""
    return (NUM_LSTM_INPUTS * lstm_hidden + lstm_hidden) + bank * (FF_HIDDEN + 1)


# ----------------------------------------------------------------------------- meta-parameters

def _linear(key, fan_in, fan_out):
    """haiku.Linear's default init: truncated normal (±2σ, σ = 1/sqrt(fan_in)), zero bias."""
    mlp = init_mlp(key, (fan_in, fan_out))
    return {"w": mlp["w0"], "b": mlp["b0"]}


def init_meta_params(key, lstm_hidden=SIZES["small"][0], bank=SIZES["small"][1],
                     meta_init=META_INIT):
    """θ at meta-initialization. meta_init="random": as the reference (haiku defaults, zero
    initial LSTM state). "blend" (ours, the default), "adam", "adafactor": a relative-step
    optimizer to start, along features.VELO_INIT_DIRECTIONS[meta_init] (META_INIT)."""
    sizes = (NUM_MLP_INPUTS,) + (FF_HIDDEN,) * FF_HIDDEN_LAYERS + (FF_OUTPUTS,)
    # Each member: truncated normal σ = 1/sqrt(fan_in) (first layer: fan_in = all 30 inputs).
    member = mlp_initializer(sizes, meta_init, features.VELO_INIT_DIRECTIONS, INIT_SCALE)
    directed = meta_init != "random"
    k_mix, k_proj, k_lstm, k_ctl, k_lr, k_bank = jax.random.split(key, 6)
    bank_mlps = jax.vmap(member)(jax.random.split(k_bank, bank))
    controls, lr_mult = _linear(k_ctl, lstm_hidden, bank), _linear(k_lr, lstm_hidden, 1)
    if directed:   # mixed MLP = the members' mean, lr_mult = 1, up to small h terms
        bank_mlps = jax.tree.map(lambda w: w / (MIX_SCALE * CONTROLS_INIT), bank_mlps)
        controls = {"w": controls["w"] * CONTROLS_INIT_SHRINK,
                    "b": jnp.full((bank,), CONTROLS_INIT, jnp.float32)}
        lr_mult = {"w": lr_mult["w"] * LR_MULT_INIT_SHRINK, "b": jnp.ones((1,), jnp.float32)}
    return {"mix": _linear(k_mix, NUM_LSTM_INPUTS, lstm_hidden),
            "proj": _linear(k_proj, NUM_LSTM_INPUTS, lstm_hidden),
            "lstm": init_lstm(k_lstm, lstm_hidden, lstm_hidden),
            "lstm_init": {"h": jnp.zeros((lstm_hidden,), jnp.float32),
                          "c": jnp.zeros((lstm_hidden,), jnp.float32)},
            "controls": controls,
            "lr_mult": lr_mult,
            "bank": bank_mlps}


def sizes_of(theta):
    """(LSTM width H, bank size K) read from θ's shapes."""
    return theta["lstm_init"]["h"].shape[-1], theta["bank"]["w0"].shape[0]


# ----------------------------------------------------------------------------- the two networks

def lstm_forward(theta, x, h, c):
    """One LSTM step for all T tensors at once (VeLO App. B.3). x: (T, 30); h, c: (T, H).
    Returns controls (T, K), lr_mult (T,) and the new (h, c)."""
    mix = jax.nn.relu(x @ theta["mix"]["w"] + theta["mix"]["b"])
    v = jnp.max(mix, axis=0, keepdims=True)                   # shares information across tensors
    x = x @ theta["proj"]["w"] + theta["proj"]["b"] + v
    h, c = lstm_step(theta["lstm"], x, h, c)                   # haiku LSTM, forget bias +1
    controls = h @ theta["controls"]["w"] + theta["controls"]["b"]
    lr_mult = (h @ theta["lr_mult"]["w"] + theta["lr_mult"]["b"])[:, 0]  # raw, linear
    return controls, lr_mult, h, c


def mix_bank(bank, controls):
    """θ_t = (100/K) Σ_k C_tk θ_k for every weight and bias (VeLO App. B.4; the reference writes
    100·mean_k). One (T, K) × (K, ·) matmul per leaf; leaves gain a leading tensor axis T."""
    k = controls.shape[-1]
    return jax.tree.map(lambda w: jnp.tensordot(controls, w, axes=1) * (MIX_SCALE / k), bank)


def mlp_outputs(mlp, p, g, state):
    """[d, m] for every entry of one tensor (planes of shape p.shape, (1,) for a scalar): the 30
    features of μLO Table 3 → per-column normalization → the tensor's mixed MLP (VeLO App. B.4).

    Per-parameter cost dominates (VeLO App. B.7), so this is lopt.per_parameter_mlp,
    shared with small_fc_lopt and Celo: normalization folded into the first layer, Adafactor
    row/column features kept at their reduced shape, the 4-wide MLP unrolled into elementwise
    multiply-adds that XLA fuses; the (*S, 30) feature matrix is never written."""
    return per_parameter_mlp(mlp, p, g, state, features.VELO_GROUPS, FAC_MOM_EPS)[:FF_OUTPUTS]


def tensor_step(mlp, lr_mult, p, g, state, step_mult=STEP_MULT, exp_mult=EXP_MULT, min_scale=0.0):
    """The update added to one tensor, Δp = −α · d · RMS(p) · exp(λ2 m) · λ1 (μLO Eq. (9);
    VeLO App. B.4). `state` holds the accumulators that already absorbed g. min_scale > 0 floors
    RMS(p) (ours; 0: the reference)."""
    d, m = mlp_outputs(mlp, p, g, state)
    scale = param_scale(p, PARAM_SCALE_EPS, min_scale)               # the RMS, not the norm
    step = d * (scale * jnp.exp(m * exp_mult)) * step_mult * lr_mult
    return -step.reshape(p.shape)


# ----------------------------------------------------------------------------- the optimizer

class State(NamedTuple):
    acc: Any                 # pytree like params, an accumulators.TensorState per tensor
    lstm_h: jnp.ndarray      # (T, H) per-tensor LSTM state, carried across steps
    lstm_c: jnp.ndarray      # (T, H)
    loss: acc.LossEMAState   # the ten loss EMAs (VeLO App. B.2)
    step: jnp.ndarray        # () int32, updates done so far
    num_steps: jnp.ndarray   # () int32, planned training length (progress features)


def init(theta, params, num_steps):
    num_tensors = len(jax.tree.leaves(params))
    tile = lambda x: jnp.broadcast_to(x, (num_tensors,) + x.shape)  # learned initial state
    return State(jax.tree.map(acc.init_tensor, params),
                 tile(theta["lstm_init"]["h"]), tile(theta["lstm_init"]["c"]),
                 acc.init_loss_ema(num_steps), jnp.zeros((), jnp.int32),
                 jnp.asarray(num_steps, jnp.int32))


def lstm_inputs(state, params, loss_state):
    """X (T, 30): one row of LSTM inputs per tensor, from p and the previous m, rms."""
    leaves, treedef = jax.tree.flatten(params)
    acc_leaves = treedef.flatten_up_to(state.acc)
    shared = jnp.concatenate([features.progress_features(state.step, state.num_steps),
                              features.loss_features(loss_state)])       # same for all tensors
    per_tensor = jnp.stack([features.tensor_features(p, s.m, s.rms)
                            for p, s in zip(leaves, acc_leaves)])       # trace-time loop
    return jnp.concatenate([jnp.broadcast_to(shared, (len(leaves),) + shared.shape),
                            per_tensor], axis=1)


def step(theta, state, params, grads, loss, step_mult=STEP_MULT, exp_mult=EXP_MULT,
         min_scale=None, anneal=True):
    """One VeLO update (module docstring, steps 1–4); returns (updates to add, new state).
    min_scale (None: MIN_PARAM_SCALE, read at trace time) and anneal (× the ANNEAL cosine) are
    ours; min_scale=0, anneal=False is the reference step (the oracle tests)."""
    min_scale = MIN_PARAM_SCALE if min_scale is None else min_scale
    if anneal:
        step_mult = step_mult * cosine_anneal(state.step, state.num_steps, *ANNEAL)
    loss_state, _ = acc.update_loss_ema(state.loss, loss)
    grads = jax.tree.map(lambda g: jnp.clip(g, -GRAD_CLIP, GRAD_CLIP), grads)
    x = lstm_inputs(state, params, loss_state)
    controls, lr_mult, h, c = lstm_forward(theta, x, state.lstm_h, state.lstm_c)
    mixed = mix_bank(theta["bank"], controls)

    def tensor(p, g, s, i):                                   # i: the tensor's row of X
        s = acc.update_tensor(s, g, acc.MOMENTUM_DECAYS, acc.RMS_DECAYS, acc.ADAFACTOR_DECAYS)
        mlp = jax.tree.map(lambda w: w[i], mixed)
        return tensor_step(mlp, lr_mult[i], p, g, s, step_mult, exp_mult, min_scale), s

    index = jax.tree.unflatten(jax.tree.structure(params), list(range(x.shape[0])))
    updates, new_acc = map_tensors(tensor, params, grads, state.acc, index)
    return updates, State(new_acc, h, c, loss_state, state.step + 1, state.num_steps)


def learned_optimizer(size="small", step_mult=STEP_MULT, exp_mult=EXP_MULT,
                      meta_init=META_INIT, min_scale=None, anneal=True, max_norm=MAX_NORM):
    """The contract record for one of SIZES. max_norm: lopt.bound_norm's bound at use (ours;
    0: none).

    "small" (H = 64, K = 32) has the widths of Celo's VeLO-S (Celo §5, App. A.2) — a published
    size, the same LSTM width as Celo's scheduler, and 44,193 live meta-parameters, about
    Celo's 35.6k that the same PES budget trains — but it is not Celo's VeLO-S: that mixes the
    bank with a factor of 1.0, ours with the reference's MIX_SCALE = 100 (θ_t = 100·mean_k
    C_tk θ_k), so Celo's VeLO-S numbers (Tables 1, 4, 5) are a neighbour to compare with, not
    the same optimizer. Its LSTM costs 2H·4H ≈ 33k multiply-adds per tensor per step, about the
    per-parameter work on the small meta-training MLPs (~2.4k parameters × ~150 FLOPs), so CPU
    meta-training is not dominated by the hypernetwork; the paper size (H = 512) costs 64× that
    per tensor.
    """
    lstm_hidden, bank = SIZES[size]
    return LearnedOptimizer(f"velo_{size}",
                            partial(init_meta_params, lstm_hidden=lstm_hidden, bank=bank,
                                    meta_init=meta_init),
                            init, partial(step, step_mult=step_mult, exp_mult=exp_mult,
                                          min_scale=min_scale, anneal=anneal),
                            needs_loss=True, max_norm=max_norm)


def optimizer(theta, num_steps, step_mult=STEP_MULT, exp_mult=EXP_MULT, min_scale=None,
              anneal=True, max_norm=MAX_NORM, grad_rms_range=GRAD_RMS_RANGE):
    """VeLO with meta-parameters θ (any size: step reads the widths from θ) as an optax
    transformation; call `tx.update(grads, state, params, value=loss)`. min_scale=0,
    anneal=False, max_norm=0, grad_rms_range=None: the reference."""
    return learned_optimizer(step_mult=step_mult, exp_mult=exp_mult, min_scale=min_scale,
                             anneal=anneal, max_norm=max_norm)._replace(
        grad_rms_range=grad_rms_range).optimizer(theta, num_steps)


def theta_from_reference(flat):
    """Our θ from a reference HyperV2 θ given as {"theta/<haiku path>": array} (the oracle npz
    layout): drops the dead parameters and concatenates w0__0 … w0__13 in numeric order (string
    order — w0__0, w0__1, w0__10, … — gives the right shape with the wrong rows)."""
    get = lambda k: jnp.asarray(flat[f"theta/{k}"], jnp.float32)
    lin = lambda k: {"w": get(f"rnn_params/{k}/w"), "b": get(f"rnn_params/{k}/b")}
    ff = "ff_mod_stack/~"
    blocks = sorted((k for k in flat if k.startswith(f"theta/{ff}/w0__")),
                    key=lambda k: int(k.rsplit("__", 1)[1]))
    bank = {"w0": jnp.concatenate([jnp.asarray(flat[k], jnp.float32) for k in blocks], axis=1),
            "b0": get(f"{ff}/b0"), "w1": get(f"{ff}/w1"), "b1": get(f"{ff}/b1"),
            "w2": get(f"{ff}/w2")[..., :FF_OUTPUTS], "b2": get(f"{ff}/b2")[..., :FF_OUTPUTS]}
    return {"mix": lin("linear_1"), "proj": lin("linear_2"), "lstm": lin("rnn/linear"),
            "lstm_init": {"h": get("lstm_init_state/hidden")[0],
                          "c": get("lstm_init_state/cell")[0]},
            "controls": lin("rnn_to_controls"), "lr_mult": lin("step_size"), "bank": bank}

