"""small_fc_lopt: a tiny per-parameter MLP learned optimizer (Metz et al. 2022, "Practical
tradeoffs between memory, compute, and performance in learned optimizers", arXiv 2203.11860).
Every parameter gets the same MLP, fed 39 features (features.py) from accumulators with learned
decays; it outputs a direction d and a log-magnitude m: Δp = λ1·d·exp(λ2·m)  (Celo Eq. (2)).
"""
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import accumulators as acc
import features
from lopt import (GRAD_RMS_RANGE, MAX_NORM, LearnedOptimizer, cosine_anneal, map_tensors,
                  mlp_initializer, param_scale, per_parameter_mlp)

STEP_MULT = 1e-3     # λ1 (Celo Eq. (2); reference default; μLO uses 0.01 for μLO_M)
EXP_MULT = 1e-3      # λ2 (Celo Eq. (2))
HIDDEN = 4           # reference small_fc_lopt: 39 → 4 → 4 → 2 (μLO_M uses 32)
HIDDEN_LAYERS = 2
DECAY_OFFSET_SCALE = 10.0  # β = 1 − (1 − β0)·exp(10·offset): learned decays (reference)
NUM_INPUTS = features.NUM_ADAFAC_FEATURES + len(features.TIME_SCALES)  # 28 + 11 = 39
# Ours, `relative=True` (`--opt small_fc_lopt_relative`): Celo's and VeLO's relative step on
# small_fc_lopt's network, Δp = λ1·d·exp(λ2·m)·max(rms(p), MIN_PARAM_SCALE), × a cosine from
# ANNEAL[0] to ANNEAL[1] over the run at use, and the MLP started as a relative-step optimizer
# along features.init_directions(ADAFAC_GROUPS)[INIT] (d = INIT_SCALE·Σ w·n(x), steps of ≈ 1%
# of the tensor's RMS; as celo.RULE_INIT). The reference's absolute step of ≈ 1e-3 trails tuned
# Adam 2–10× wherever Adam's best learning rate is far from it (regressions, the quadratic, the
# autoencoder; docs/results.md). INIT chosen on VALIDATION after the same 3000 meta-steps
# (median / IQM): "blend" 1.184 / 1.161, "adafactor" 1.155 / 1.132.
MIN_PARAM_SCALE = 0.1
ANNEAL = (1.0, 0.03)
INIT_SCALE = 10.0
INIT = "blend"
INIT_DIRECTIONS = features.init_directions(features.ADAFAC_GROUPS)


# ----------------------------------------------------------------------------- the optimizer

class State(NamedTuple):
    acc: Any                 # pytree like params, a accumulators.TensorState per tensor
    step: jnp.ndarray        # () int32, updates done so far
    num_steps: jnp.ndarray   # () int32, planned training length (read by relative=True's anneal)


def init_decay_offsets():
    """The learned accumulator decay offsets that `decays` reads, 0 at init ⇒ β = β0 (reference);
    local_sgd.py's θ has them too."""
    return {"momentum_decays": jnp.zeros(len(acc.MOMENTUM_DECAYS), jnp.float32),
            "rms_decays": jnp.zeros(len(acc.RMS_DECAYS), jnp.float32),
            "adafactor_decays": jnp.zeros(len(acc.ADAFACTOR_DECAYS), jnp.float32)}


def init_meta_params(key, hidden=HIDDEN, hidden_layers=HIDDEN_LAYERS, meta_init="random"):
    """θ at meta-initialization: the reference's random MLP ("random"), or (ours) one whose d
    starts as INIT_SCALE·Σ w·n(x) along INIT_DIRECTIONS[meta_init] (lopt.mlp_initializer)."""
    sizes = (NUM_INPUTS,) + (hidden,) * hidden_layers + (2,)
    mlp = mlp_initializer(sizes, meta_init, INIT_DIRECTIONS, INIT_SCALE)(key)
    return {"mlp": mlp, **init_decay_offsets()}


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


def step(theta, state, params, grads, loss=None, step_mult=STEP_MULT, exp_mult=EXP_MULT,
         relative=False, min_scale=None, anneal=True):
    """One small_fc_lopt update: accumulators absorb g, then features, MLP and Eq. (2).
    relative=True (ours): × max(rms(p), min_scale) (None: MIN_PARAM_SCALE) and, if anneal, × the
    ANNEAL cosine over state.num_steps."""
    del loss  # small_fc_lopt does not read the loss
    m_dec, r_dec, a_dec = decays(theta)
    min_scale = MIN_PARAM_SCALE if min_scale is None else min_scale
    if relative and anneal:
        step_mult = step_mult * cosine_anneal(state.step, state.num_steps, *ANNEAL)

    def tensor(p, g, s):
        s = acc.update_tensor(s, g, m_dec, r_dec, a_dec)
        d, m = mlp_outputs(theta, p, g, s, state.step)[:2]
        scale = param_scale(p, min_scale=min_scale) if relative else 1.0
        return -(d * jnp.exp(m * exp_mult) * step_mult * scale).reshape(p.shape), s  # Eq. (2)

    updates, new_acc = map_tensors(tensor, params, grads, state.acc)
    return updates, State(new_acc, state.step + 1, state.num_steps)


def learned_optimizer(hidden=HIDDEN, step_mult=STEP_MULT, exp_mult=EXP_MULT,
                      name="small_fc_lopt", relative=False, min_scale=None, anneal=True,
                      meta_init=None):
    """The contract record; μLO_M is learned_optimizer(hidden=32, step_mult=0.01) plus mup.py.
    relative=True: our relative-step variant, started along INIT_DIRECTIONS[meta_init] (None:
    INIT; the reference step starts "random"), with Celo's max-norm bound at use (a relative step
    can grow a tensor geometrically)."""
    meta_init = meta_init or (INIT if relative else "random")
    return LearnedOptimizer(name, partial(init_meta_params, hidden=hidden, meta_init=meta_init),
                            init, partial(step, step_mult=step_mult, exp_mult=exp_mult,
                                          relative=relative, min_scale=min_scale, anneal=anneal),
                            max_norm=MAX_NORM if relative else 0.0)


def optimizer(theta, num_steps, step_mult=STEP_MULT, exp_mult=EXP_MULT,
              grad_rms_range=GRAD_RMS_RANGE, relative=False):
    """small_fc_lopt with meta-parameters θ as an optax transformation (grad_rms_range=None:
    the raw gradients, lopt.scale_gradients off). relative=True for a θ of the relative-step
    variant (checkpoints/small_fc_lopt_relative.npz)."""
    return learned_optimizer(step_mult=step_mult, exp_mult=exp_mult, relative=relative)._replace(
        grad_rms_range=grad_rms_range).optimizer(theta, num_steps)
