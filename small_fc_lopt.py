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
from lopt import GRAD_RMS_RANGE, LearnedOptimizer, init_mlp, map_tensors, per_parameter_mlp

STEP_MULT = 1e-3     # λ1 (Celo Eq. (2); reference default; μLO uses 0.01 for μLO_M)
EXP_MULT = 1e-3      # λ2 (Celo Eq. (2))
HIDDEN = 4           # reference small_fc_lopt: 39 → 4 → 4 → 2 (μLO_M uses 32)
HIDDEN_LAYERS = 2
DECAY_OFFSET_SCALE = 10.0  # β = 1 − (1 − β0)·exp(10·offset): learned decays (reference)
NUM_INPUTS = features.NUM_ADAFAC_FEATURES + len(features.TIME_SCALES)  # 28 + 11 = 39


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

    def tensor(p, g, s):
        s = acc.update_tensor(s, g, m_dec, r_dec, a_dec)
        d, m = mlp_outputs(theta, p, g, s, state.step)[:2]
        return -(d * jnp.exp(m * exp_mult) * step_mult).reshape(p.shape), s  # Celo Eq. (2)

    updates, new_acc = map_tensors(tensor, params, grads, state.acc)
    return updates, State(new_acc, state.step + 1, state.num_steps)


def learned_optimizer(hidden=HIDDEN, step_mult=STEP_MULT, exp_mult=EXP_MULT,
                      name="small_fc_lopt"):
    """The contract record; μLO_M is learned_optimizer(hidden=32, step_mult=0.01) plus mup.py."""
    return LearnedOptimizer(name, partial(init_meta_params, hidden=hidden), init,
                            partial(step, step_mult=step_mult, exp_mult=exp_mult))


def optimizer(theta, num_steps, step_mult=STEP_MULT, exp_mult=EXP_MULT,
              grad_rms_range=GRAD_RMS_RANGE):
    """small_fc_lopt with meta-parameters θ as an optax transformation (grad_rms_range=None:
    the raw gradients, lopt.scale_gradients off)."""
    return learned_optimizer(step_mult=step_mult, exp_mult=exp_mult)._replace(
        grad_rms_range=grad_rms_range).optimizer(theta, num_steps)
