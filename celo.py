"""Celo: a learned LSTM scheduler on top of a learned per-parameter MLP update rule.

Moudgil et al., "Celo: Training Versatile Learned Optimizers on a Compute Diet", TMLR 2025
(arXiv 2501.12670) §3 and Algorithm 1. One scalar η_t from an LSTM that reads only global features
(training progress, loss EMAs) scales the step of a tiny MLP applied to every parameter:
    Δp = λ1 · d · exp(λ2 · m) · rms(p) · η_t,   η_t = α · exp(o_t),   p ← p − Δp
The two parts are meta-trained in two stages (§3 "Decoupled training"): stage 1 trains θ["rule"]
with η ≡ 1, stage 2 freezes it and trains θ["scheduler"]. Follows lopt.py's contract.

θ layout (nested dict of float32 arrays; the reference's dead parameters are not kept):
    θ["rule"]       per-parameter MLP 30 → 4 → ReLU → 4 → ReLU → 2 (d, m):
                    w0 (30, 4), b0 (4,), w1 (4, 4), b1 (4,), w2 (4, 2), b2 (2,)     154 numbers
    θ["scheduler"]  mix  {w (18, 64), b (64,)}    x' = proj(x) + ReLU(mix(x))
                    proj {w (18, 64), b (64,)}
                    lstm {w (128, 256), b (256,)} haiku LSTM(64), gates i, g, f, o
                    out  {w (64, 1), b (1,)}      η = α · exp(out(h))
                    h0 (64,), c0 (64,)            learned initial LSTM state       35,649 numbers
Total 35,803 (the published 37,089 less 1,286 dead numbers; see convert_celo_weights.py).
"""
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import accumulators as acc
import features
from lopt import (GRAD_RMS_RANGE, MAX_NORM, LearnedOptimizer, cosine_anneal, init_lstm, init_mlp,
                  lstm_step, map_tensors, mlp_initializer, per_parameter_mlp)
from lopt import PARAM_SCALE_EPS, param_scale as lopt_param_scale

# Fixed scalars of Algorithm 1 (Celo, arXiv 2501.12670, Alg. 1 line 2) and the reference code
# (amoudgl/celo).
STEP_MULT = 1e-3          # λ1 (Celo Eq. (2))
EXP_MULT = 1e-3           # λ2 (Celo Eq. (2))
ALPHA = 0.1               # α: η = α·exp(o) (Celo Alg. 1 line 7; reference `* 0.1`)
OUT_BIAS_INIT = -float(jnp.log(ALPHA))  # ours: out.b = ln(1/α) at init, so a fresh scheduler gives
                          # η ≈ 1, the η ≡ 1 that stage 1 trained the rule with. The reference
                          # starts at η ≈ α = 0.1 and unlearns the 10× over 100K stage-2 steps;
                          # with a CPU budget of a few thousand steps that gap would not close.
GRAD_CLIP = 1000.0        # g ← clip(g, ±1000) before everything (reference, amoudgl/celo)
MIN_PARAM_SCALE = 0.1     # ours: scale = max(rms(p), MIN_PARAM_SCALE), so a tensor that
                          # starts at zero moves (reference: 0, i.e. steps of ~1e-3·3e-5 there);
                          # a step is then at least ≈ 1e-4·d·η, Adam-sized. 0.1 beat 0.01 and 0.03
                          # on VALIDATION at 400 and 1000 steps (docs/celo.md). Used, not
                          # meta-trained: meta-training runs with 0 (registry.CELO_TRAIN).
# Structure (static): widths of the update rule and of the scheduler (Celo §5; published θ).
HIDDEN = 4                # per-parameter MLP hidden width (as VeLO's MLPs)
HIDDEN_LAYERS = 2
NUM_OUTPUTS = 2           # d, m (the reference's third output is never read: dropped)
LSTM_HIDDEN = 64          # scheduler LSTM width (the published θ; reference default 128)
NUM_RULE_INPUTS = features.NUM_VELO_FEATURES                                  # 30
NUM_SCHEDULER_INPUTS = len(features.PROGRESS_SHIFTS) + acc.NUM_LOSS_EMAS - 1  # 9 + 9 = 18
# Ours: the rule starts as a blend of relative-step Adam and Adafactor, d = RULE_INIT_SCALE·Σ w·n(x)
# over Adam's direction m/√v (β1 0.9: 0.3, 0.99: 0.2), the Adafactor-normalized gradient (0.25)
# and Adafactor's momentum (0.25) (features.VELO_INIT_DIRECTIONS; lopt.init_mlp_with_direction),
# about as the published rule weighs them, i.e. steps of ≈ 1e-3·10 = 1% of the tensor's RMS.
# "adafactor" (Adafactor's momentum alone, `--opt celo_adafactor_init`) and "adam" (Adam's
# direction alone, `--opt celo_adam_init`) were the earlier defaults; from the paper's random init
# ("random"), 7,000 CPU meta-steps reached only 0.2 on the quick suite (README, Celo). Chosen on
# VALIDATION after the same 5000 meta-steps (median / IQM, 1000 steps; docs/celo.md): "blend"
# 1.150 / 1.162, "adafactor" 1.112 / 1.118, "adam" 1.084 / 1.092.
RULE_INIT = "blend"
RULE_INIT_SCALE = 10.0
# The direction (or blend of directions) each rule_init starts from.
RULE_INIT_DIRECTIONS = features.VELO_INIT_DIRECTIONS
# Ours: stage 2 starts from a scheduler fitted (fit_scheduler) to a cosine decay of η from
# PRIOR_ETA[0] to PRIOR_ETA[1] over the run. A scheduler that starts flat at η ≈ 1 did not learn
# to anneal in 8,000 CPU meta-steps; the published one did in 100K. (1.0, 0.03) was chosen over
# (1.5, 0.1), (1.25, 0.1) and (1.0, 0.1) on the VALIDATION suite (docs/celo.md).
PRIOR_ETA = (1.0, 0.03)
FIT_ITERS = 300           # Adam steps of that fit (read at call time: tests shorten it)
FIT_LENGTH = 2000         # steps of each fitted run (horizons log-uniform in [50, FIT_LENGTH])
# Meta-training stages (Celo §3 "Decoupled training", Fig. 3): the θ sub-tree a stage trains
# (the rest stays frozen) and whether that stage's optimizer uses the scheduler.
STAGES = {1: ("rule", False), 2: ("scheduler", True)}


# ----------------------------------------------------------------------------- meta-parameters

def init_meta_params(key, hidden=HIDDEN, hidden_layers=HIDDEN_LAYERS, lstm_hidden=LSTM_HIDDEN,
                     rule_init=RULE_INIT):
    """θ at meta-initialization: haiku's defaults (truncated normal 1/sqrt(fan_in), zero biases,
    zero initial LSTM state), as the reference's `Celo.init`, except (ours) the scheduler's output
    bias ln(1/α) (OUT_BIAS_INIT), so that stage 2 starts from stage 1's η ≡ 1, and a rule that
    starts as a relative step along RULE_INIT_DIRECTIONS[rule_init] ("blend", "adafactor",
    "adam"), RULE_INIT_SCALE.
    rule_init="random" is the reference's all-random rule."""
    sizes = (NUM_RULE_INPUTS,) + (hidden,) * hidden_layers + (NUM_OUTPUTS,)
    init_rule = mlp_initializer(sizes, rule_init, RULE_INIT_DIRECTIONS, RULE_INIT_SCALE,
                                "rule_init")
    k_rule, k_mix, k_proj, k_lstm, k_out = jax.random.split(key, 5)
    linear = lambda k, n_in, n_out: {"w": init_mlp(k, (n_in, n_out))["w0"],
                                     "b": jnp.zeros((n_out,), jnp.float32)}
    scheduler = {"mix": linear(k_mix, NUM_SCHEDULER_INPUTS, lstm_hidden),
                 "proj": linear(k_proj, NUM_SCHEDULER_INPUTS, lstm_hidden),
                 "lstm": init_lstm(k_lstm, lstm_hidden, lstm_hidden),
                 "out": {"w": linear(k_out, lstm_hidden, 1)["w"],
                         "b": jnp.full((1,), OUT_BIAS_INIT, jnp.float32)},
                 "h0": jnp.zeros((lstm_hidden,), jnp.float32),
                 "c0": jnp.zeros((lstm_hidden,), jnp.float32)}
    return {"rule": init_rule(k_rule), "scheduler": scheduler}


def num_meta_params(hidden=HIDDEN, hidden_layers=HIDDEN_LAYERS, lstm_hidden=LSTM_HIDDEN):
    """The parameter count by formula (tested against count_params(init_meta_params(...)))."""
    widths = (NUM_RULE_INPUTS,) + (hidden,) * hidden_layers + (NUM_OUTPUTS,)
    rule = sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
    s = lstm_hidden
    scheduler = (2 * (NUM_SCHEDULER_INPUTS * s + s)   # mix and proj
                 + 2 * s * 4 * s + 4 * s              # LSTM: [x', h] (2s) → 4 gates of s
                 + s + 1                              # out
                 + 2 * s)                             # h0, c0
    return rule + scheduler


# ----------------------------------------------------------------------------- state

class State(NamedTuple):
    acc: Any                      # pytree like params: an accumulators.TensorState per tensor
    loss_ema: acc.LossEMAState    # the ten loss EMAs behind the loss features
    lstm_h: jnp.ndarray           # (64,) scheduler LSTM state (one for all tensors: its inputs
    lstm_c: jnp.ndarray           # are global, so the reference's per-tensor copies are equal)
    eta: jnp.ndarray              # () η used by the latest update (0 before the first one)
    step: jnp.ndarray             # () int32, updates done so far (t)
    num_steps: jnp.ndarray        # () int32, planned training length N


def init(theta, params, num_steps):
    """Zero accumulators and loss EMAs; the scheduler starts from its learned (h0, c0)."""
    sched = theta["scheduler"]
    return State(jax.tree.map(acc.init_tensor, params), acc.init_loss_ema(num_steps),
                 sched["h0"], sched["c0"], jnp.zeros((), jnp.float32),
                 jnp.zeros((), jnp.int32), jnp.asarray(num_steps, jnp.int32))


# ----------------------------------------------------------------------------- the scheduler

def scheduler_inputs(t, num_steps, loss_ema):
    """x^s = concat(ω^p, ω^l) (Celo Alg. 1 lines 4–5): 9 progress + 9 loss features.
    Progress first: the reference sorts its input names, "fraction_left" < "loss_features"."""
    return jnp.concatenate([features.progress_features(t, num_steps),
                            features.loss_features(loss_ema)])


def scheduler(sched, x, h, c):
    """o_t = f_lstm(x^s), η_t = α·exp(o_t) (Celo Alg. 1 lines 6–7). Returns (η, h', c').

    x' = proj(x) + ReLU(mix(x)): the reference takes a max over tensors of ReLU(mix(x)), which is
    ReLU(mix(x)) itself since x is the same for every tensor. LSTM(64) with forget bias +1."""
    x = x @ sched["proj"]["w"] + sched["proj"]["b"] + jax.nn.relu(
        x @ sched["mix"]["w"] + sched["mix"]["b"])
    h, c = lstm_step(sched["lstm"], x, h, c)
    o = (h @ sched["out"]["w"] + sched["out"]["b"])[0]              # Celo Alg. 1 line 6
    return ALPHA * jnp.exp(o), h, c                                 # Celo Alg. 1 line 7


def _scheduler_step(theta, state, loss_ema):
    """η_t, h', c' at update t = state.step, from the loss EMAs that already absorbed L_t."""
    x = scheduler_inputs(state.step, state.num_steps, loss_ema)
    return scheduler(theta["scheduler"], x, state.lstm_h, state.lstm_c)


def learning_rate(theta, state, loss):
    """η_t that the next update (from `state`, with minibatch loss `loss`) will use: the ratio of
    the full optimizer's step to the stage-1 (η ≡ 1) step from the same state. For plots of the
    learned schedule; `state.eta` holds the η of the latest update at no extra cost."""
    loss_ema, _ = acc.update_loss_ema(state.loss_ema, jnp.asarray(loss, jnp.float32))
    return _scheduler_step(theta, state, loss_ema)[0]


def prior_eta(t, num_steps, prior=PRIOR_ETA):
    """The cosine decay η*(t) = η_end + (η_0 − η_end)·(1 + cos(π·min(t/N, 1)))/2 (ours)."""
    return cosine_anneal(t, num_steps, *prior)


def synthetic_scheduler_inputs(key, num_steps, length):
    """x^s_t, t < length, of a run of num_steps whose loss falls as a noisy power law
    a·(1 + t/τ)^(−p)·exp(σε_t) with random a, τ, p, σ: plausible loss features to fit on."""
    k = jax.random.split(key, 5)
    a = jnp.exp(jax.random.uniform(k[0], (), minval=-1.0, maxval=1.5))
    tau = jnp.exp(jax.random.uniform(k[1], (), minval=jnp.log(3.0), maxval=jnp.log(num_steps)))
    p = jax.random.uniform(k[2], (), minval=0.2, maxval=1.5)
    noise = jnp.exp(jax.random.uniform(k[3], (), minval=jnp.log(0.01), maxval=jnp.log(0.5)))
    t = jnp.arange(length, dtype=jnp.float32)
    losses = a * (1.0 + t / tau) ** -p * jnp.exp(noise * jax.random.normal(k[4], (length,)))

    def one(ema, tl):
        ema, _ = acc.update_loss_ema(ema, tl[1])
        return ema, scheduler_inputs(tl[0].astype(jnp.int32), num_steps, ema)

    return jax.lax.scan(one, acc.init_loss_ema(num_steps), (t, losses))[1]


def fit_scheduler(sched, key, prior=PRIOR_ETA, iters=None, batch=8, length=None, lr=3e-3):
    """θ["scheduler"] fitted by regression (Adam on the squared error of o_t = ln(η_t/α)) to the
    cosine prior η* over runs of log-uniform horizons N ∈ [50, length], on synthetic loss
    features; after t ≥ N the target stays at η_end. Stage 2's start (ours); ≈ 1 min on a CPU."""
    import optax  # the only optax use in this file: the fit's own optimizer
    iters = FIT_ITERS if iters is None else iters
    length = FIT_LENGTH if length is None else length
    horizons = (min(50.0, length), float(length))

    def outputs(s, xs):                                  # xs [L, 18] -> o [L]
        def one(hc, x):
            eta, h, c = scheduler(s, x, *hc)
            return (h, c), jnp.log(eta / ALPHA)
        return jax.lax.scan(one, (s["h0"], s["c0"]), xs)[1]

    def sample(k):
        kn, kx = jax.random.split(k)
        n = jnp.exp(jax.random.uniform(kn, (batch,), minval=jnp.log(horizons[0]),
                                       maxval=jnp.log(horizons[1]))).astype(jnp.int32)
        xs = jax.vmap(synthetic_scheduler_inputs, (0, 0, None))(
            jax.random.split(kx, batch), n, length)
        target = jnp.log(jax.vmap(lambda m: prior_eta(jnp.arange(length), m, prior))(n) / ALPHA)
        return xs, target

    def loss_fn(s, xs, target):
        return jnp.mean(jnp.square(jax.vmap(outputs, (None, 0))(s, xs) - target))

    tx = optax.adam(lr)

    @jax.jit
    def update(s, opt_state, k):
        xs, target = sample(k)
        loss, g = jax.value_and_grad(loss_fn)(s, xs, target)
        u, opt_state = tx.update(g, opt_state, s)
        return optax.apply_updates(s, u), opt_state, loss

    opt_state = tx.init(sched)
    for i in range(iters):
        sched, opt_state, loss = update(sched, opt_state, jax.random.fold_in(key, i))
    return sched


def with_fitted_scheduler(theta, key, **kw):
    """θ with θ["scheduler"] fitted to the cosine prior (fit_scheduler): stage 2's start."""
    return {**theta, "scheduler": fit_scheduler(theta["scheduler"], key, **kw)}


# ----------------------------------------------------------------------------- the update rule

def rule_outputs(rule, p, g, tensor_state):
    """[d, m] = f_mlp(F) (Celo Alg. 1 lines 10–11): the 30 features (features.VELO_GROUPS) of the
    *updated* accumulators, each normalized over the tensor by rsqrt(1e-5 + mean x²) (folded
    into the first layer; lopt.per_parameter_mlp, shared with VeLO; the same computation written
    plainly, features → normalize → MLP, is lopt.per_parameter_mlp_plain, tested equal)."""
    return per_parameter_mlp(rule, p, g, tensor_state, features.VELO_GROUPS, 0.0)[:2]


def param_scale(p, min_scale=None):
    """sqrt(mean(p²) + 1e-9): the tensor's RMS, as the reference code computes it. Algorithm 1
    line 12 writes the L2 norm ‖p‖₂ (larger by sqrt(p.size)); the published θ was meta-trained
    with the RMS, so we follow the code. An all-zero tensor gets sqrt(1e-9) ≈ 3.2e-5, unless
    min_scale (default MIN_PARAM_SCALE, read at trace time) floors it (ours, as Adafactor's ε2)."""
    return lopt_param_scale(p, PARAM_SCALE_EPS, MIN_PARAM_SCALE if min_scale is None else min_scale)


def step(theta, state, params, grads, loss, use_scheduler=True, min_scale=None):
    """One Celo update (Algorithm 1, in the order of the reference code). Returns optax-style
    updates (to *add* to params) and the new state. `use_scheduler=False` is stage 1: η ≡ 1,
    θ["scheduler"] unused and the LSTM state left as it is. min_scale: the floor of the tensor
    scale (param_scale; default MIN_PARAM_SCALE, 0 for the reference code's exact step)."""
    # Celo Alg. 1 line 3 (the loss part): the EMAs absorb L_t (kept up to date in stage 1 too)
    loss_ema, _ = acc.update_loss_ema(state.loss_ema, jnp.asarray(loss, jnp.float32))
    # reference: g ← clip(g, ±1000); the clipped g is used everywhere after
    grads = jax.tree.map(lambda g: jnp.clip(g, -GRAD_CLIP, GRAD_CLIP), grads)
    if use_scheduler:
        eta, h, c = _scheduler_step(theta, state, loss_ema)         # Celo Alg. 1 lines 4–7
    else:
        eta, h, c = jnp.float32(1.0), state.lstm_h, state.lstm_c    # stage 1: η ≡ 1

    def tensor(p, g, s):                                             # Celo Alg. 1 line 9
        s = acc.update_tensor(s, g, acc.MOMENTUM_DECAYS, acc.RMS_DECAYS,   # Celo Alg. 1 line 3:
                              acc.ADAFACTOR_DECAYS)                        # fixed decays
        d, m = rule_outputs(theta["rule"], p, g, s)
        # Celo Alg. 1 lines 12–13 (Eq. (2) times the tensor RMS, see param_scale, times η_t)
        delta = STEP_MULT * d * jnp.exp(EXP_MULT * m) * (param_scale(p, min_scale) * eta)
        return -delta.reshape(p.shape), s                            # Celo Alg. 1 line 14

    updates, new_acc = map_tensors(tensor, params, grads, state.acc)
    return updates, State(new_acc, loss_ema, h, c, eta, state.step + 1, state.num_steps)


# ----------------------------------------------------------------------------- the contract

def learned_optimizer(use_scheduler=True, hidden=HIDDEN, hidden_layers=HIDDEN_LAYERS,
                      lstm_hidden=LSTM_HIDDEN, name=None, rule_init=RULE_INIT, min_scale=None,
                      max_norm=MAX_NORM):
    """The contract record. use_scheduler=False is stage 1 ("celo_stage1", η ≡ 1); θ keeps the
    same layout in both stages so that a stage-1 θ is the starting point of stage 2.
    max_norm: the bound of lopt.bound_norm on each tensor's RMS at use (ours; 0: none)."""
    name = name or ("celo" if use_scheduler else "celo_stage1")
    return LearnedOptimizer(name, partial(init_meta_params, hidden=hidden,
                                          hidden_layers=hidden_layers, lstm_hidden=lstm_hidden,
                                          rule_init=rule_init),
                            init, partial(step, use_scheduler=use_scheduler, min_scale=min_scale),
                            needs_loss=True, max_norm=max_norm)


def optimizer(theta, num_steps, use_scheduler=True, min_scale=None, max_norm=MAX_NORM,
              grad_rms_range=GRAD_RMS_RANGE):
    """Celo with meta-parameters θ as an optax transformation:
    `updates, state = tx.update(grads, state, params, value=loss)`. min_scale=0, max_norm=0,
    grad_rms_range=None give the reference code's step exactly (a zero tensor then barely
    moves: see param_scale; long runs can diverge: lopt.bound_norm; a tiny loss stalls:
    lopt.scale_gradients)."""
    return learned_optimizer(use_scheduler=use_scheduler, min_scale=min_scale,
                             max_norm=max_norm)._replace(
        grad_rms_range=grad_rms_range).optimizer(theta, num_steps)
