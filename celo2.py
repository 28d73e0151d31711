"""Celo2: a normalized learned update rule inside Muon's harness.

Moudgil, Knyazev, Belilovsky, "Celo2: Towards Learned Optimization Free Lunch", ICLR 2026,
arXiv 2602.19142 (abstract and public model cards; the paper's text and code are not public here,
so every choice they do not state is marked "ours"). A tiny MLP maps per-parameter features to a
direction that is rescaled to unit RMS per tensor at every step; the user supplies the learning
rate schedule and weight decay, as for any optax scaling:
    u = d / rms(d)                              (per tensor, every step: "normalized" rule)
    celo2:      U = NS(u)·sqrt(rows·cols)/‖NS(u)‖_F for 2-D hidden weights, AdamW(0.9, 0.95) else
    celo2_base: U = u for every tensor
    p ← p − lr_t · (U + wd·p)
"""
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

import accumulators as acc
import features
from lopt import (GRAD_RMS_RANGE, LearnedOptimizer, at_use, map_tensors, mlp_initializer,
                  per_parameter_mlp)

# Structure (static). Celo2 model cards: one MLP with 2 hidden layers of 8 units.
HIDDEN = 8
HIDDEN_LAYERS = 2
NUM_OUTPUTS = 1             # ours: only a direction; its magnitude is normalized away
GROUPS = features.VELO_GROUPS   # ours: Celo's 30 inputs (g, clip(g), p, momenta, second moment,
NUM_INPUTS = features.NUM_VELO_FEATURES  # Adafactor terms), each normalized over the tensor
# Hyper-parameters.
GRAD_CLIP = 1000.0          # ours, from Celo's reference: g ← clip(g, ±1000) before everything
OUTPUT_RMS_EPS = 1e-12      # ours: u = d / sqrt(mean d² + ε), so d ≡ 0 gives u ≡ 0
NS_STEPS = 5                # public Muon: 5 quintic Newton–Schulz steps with these coefficients
NS_COEFFS = (3.4445, -4.7750, 2.0315)
NS_EPS = 1e-7               # X / (‖X‖_F + ε) before the iteration (public Muon)
ADAM_B1, ADAM_B2 = 0.9, 0.95  # Celo2 harness: AdamW(0.9, 0.95) on biases, 1-D tensors, embeddings
ADAM_EPS = 1e-8
EMBEDDING_NAMES = ("embed", "pos", "wte", "wpe")  # ours: a 2-D tensor whose key path contains one
                            # of these is an embedding (AdamW in the harness); pass `labels` to override
# Defaults of `optimizer()` and of meta-training (ours; chosen on the validation family, README).
LEARNING_RATE = 3e-3        # peak learning rate, for updates of unit RMS per tensor
WEIGHT_DECAY = 0.0          # decoupled, times the learning rate (AdamW's convention)
# Meta-initialization (ours): the direction starts as one feature column, so a fresh θ *is* a
# hand-designed optimizer: celo2 = Muon on momentum m_0.9 (AdamW elsewhere), celo2_base = Adam's
# m_0.9/√v normalized per tensor. Meta-training reshapes it.
INIT_DIRECTION = {True: features.column_index(GROUPS, "m", 0),
                  False: features.column_index(GROUPS, "m_rv", 0)}

# celo2_base's bound at use (ours): each tensor's RMS ≤ 3× its start (lopt.bound_norm), tighter
# than the other rules' lopt.MAX_NORM = 4 because its rule pushes every weight matrix outward and
# the balls compound over depth: at 4 a 6-layer ReLU net trained to 0.65 and collapsed to chance
# over 5000 steps (2.45), at 3 it ends at 0.63. The largest of {4, 3, 2.5, 2} that passes
# stability.py; VALIDATION median / IQM 1.020 / 1.029 at 4, 1.006 / 1.020 at 3 (docs/results.md).
BASE_MAX_NORM = 3.0

LEARNED, ORTHOGONAL, ADAM = "learned", "orthogonal", "adam"   # how a tensor is updated


# ----------------------------------------------------------------------------- meta-parameters

def init_meta_params(key, harness=True, rule_init="hand", hidden=HIDDEN,
                     hidden_layers=HIDDEN_LAYERS):
    """θ = {"rule": MLP 30 → 8 → ReLU → 8 → ReLU → 1}. rule_init="hand": the output starts as
    exactly one feature column (INIT_DIRECTION), the other units keep haiku's random init;
    "random": haiku's init everywhere (a random rule, for tests and ablations)."""
    sizes = (NUM_INPUTS,) + (hidden,) * hidden_layers + (NUM_OUTPUTS,)
    return {"rule": mlp_initializer(sizes, rule_init, {"hand": INIT_DIRECTION[harness]}, 1.0,
                                    "rule_init")(key)}


# ----------------------------------------------------------------------------- building blocks

def newton_schulz(x, steps=NS_STEPS, coeffs=NS_COEFFS):
    """≈ U Vᵀ of x = U Σ Vᵀ (Muon): X ← aX + (bA + cA²)X with A = XXᵀ, from X = x/‖x‖_F.
    The quintic's coefficients trade exactness for speed: singular values end in ≈ [0.7, 1.2]."""
    a, b, c = coeffs
    wide = x.shape[0] <= x.shape[1]
    X = x if wide else x.T                      # iterate on the smaller Gram matrix
    X = X / (jnp.linalg.norm(X) + NS_EPS)
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X if wide else X.T


def unit_rms(u):
    """u / rms(u): the per-tensor, per-step output normalization (Celo2's ablation winner)."""
    return u * jax.lax.rsqrt(jnp.mean(jnp.square(u)) + OUTPUT_RMS_EPS)


def orthogonalized(u):
    """NS(u) for a ≥2-D tensor (ours: all leading dims are folded into rows, e.g. a conv kernel
    HWIO → (H·W·I, O)), rescaled to unit RMS so one learning rate serves every tensor (ours;
    Muon instead scales by sqrt(max(1, rows/cols)) and takes its own learning rate)."""
    return unit_rms(newton_schulz(u.reshape(-1, u.shape[-1])).reshape(u.shape))


def default_labels(params, harness=True):
    """LEARNED for every tensor (celo2_base), or, with the harness (celo2): ORTHOGONAL for ≥2-D
    weights, ADAM for biases, other 1-D tensors, scalars and embeddings (EMBEDDING_NAMES)."""
    def label(path, p):
        if not harness:
            return LEARNED
        name = jax.tree_util.keystr(path).lower()
        if jnp.ndim(p) < 2 or any(e in name for e in EMBEDDING_NAMES):
            return ADAM
        return ORTHOGONAL
    return jax.tree_util.tree_map_with_path(label, params)


def rule_direction(rule, p, g, s):
    """d = f_mlp(features): Celo's 30 per-parameter inputs, each normalized over the tensor
    (lopt.per_parameter_mlp), through the MLP; then normalized to unit RMS."""
    return unit_rms(per_parameter_mlp(rule, p, g, s, GROUPS, 0.0)[0].reshape(p.shape))


# ----------------------------------------------------------------------------- the transformation

class AdamMoments(NamedTuple):
    mu: jnp.ndarray
    nu: jnp.ndarray


class ScaleState(NamedTuple):
    tensors: tuple       # per tensor (flattened order): accumulators.TensorState or AdamMoments
    count: jnp.ndarray   # () int32, updates done (AdamW's bias correction)


def _init_tensor(label, p):
    if label == ADAM:
        return AdamMoments(jnp.zeros_like(p), jnp.zeros_like(p))
    return acc.init_tensor(p)


def _update_tensor(rule, label, p, g, s, count):
    """One tensor's unit-scale update U (before −lr) and its new state."""
    g = jnp.clip(g, -GRAD_CLIP, GRAD_CLIP)
    if label == ADAM:                                   # Celo2 harness: Adam(0.9, 0.95)
        mu = ADAM_B1 * s.mu + (1 - ADAM_B1) * g
        nu = ADAM_B2 * s.nu + (1 - ADAM_B2) * g * g
        t = (count + 1).astype(jnp.float32)
        mu_hat, nu_hat = mu / (1 - ADAM_B1 ** t), nu / (1 - ADAM_B2 ** t)
        return mu_hat / (jnp.sqrt(nu_hat) + ADAM_EPS), AdamMoments(mu, nu)
    s = acc.update_tensor(s, g, acc.MOMENTUM_DECAYS, acc.RMS_DECAYS, acc.ADAFACTOR_DECAYS)
    u = rule_direction(rule, p, g, s)                   # Celo2: normalized learned update
    return (orthogonalized(u) if label == ORTHOGONAL else u), s


def scale_by_celo2(theta, orthogonalize=True, labels=None):
    """The learned rule as an optax transformation producing unit-scale updates (chain it with a
    learning rate, as in `optimizer`). orthogonalize=True is celo2's harness, False celo2_base.
    `labels`: a pytree like params of LEARNED / ORTHOGONAL / ADAM, or a function of params
    (default_labels by default)."""
    def labels_of(params):
        if labels is None:
            return default_labels(params, orthogonalize)
        return labels(params) if callable(labels) else labels

    def init(params):
        leaves, treedef = jax.tree.flatten(params)
        lab = treedef.flatten_up_to(labels_of(params))
        return ScaleState(tuple(_init_tensor(l, p) for l, p in zip(lab, leaves)),
                          jnp.zeros((), jnp.int32))

    def update(grads, state, params=None, **extra):
        del extra
        if params is None:
            raise ValueError("celo2 needs the current params: call tx.update(grads, state, params)")
        treedef = jax.tree.structure(params)
        updates, tensors = map_tensors(
            lambda p, g, l, s: _update_tensor(theta["rule"], l, p, g, s, state.count),
            params, grads, labels_of(params), treedef.unflatten(state.tensors))
        return updates, ScaleState(tuple(treedef.flatten_up_to(tensors)), state.count + 1)

    return optax.GradientTransformationExtraArgs(init, update)


def cosine_schedule(learning_rate, num_steps):
    """Ours, the default: lr_t = lr · ½(1 + cos(π·min(t/N, 1))). N may be a traced value."""
    def schedule(t):
        frac = jnp.minimum(jnp.asarray(t, jnp.float32) / jnp.asarray(num_steps, jnp.float32), 1.0)
        return learning_rate * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
    return schedule


def default_max_norm(harness):
    """lopt.bound_norm's bound at use: BASE_MAX_NORM for celo2_base, none (0) for celo2, whose
    Newton–Schulz steps have a fixed size."""
    return 0.0 if harness else BASE_MAX_NORM


def optimizer(theta, learning_rate=LEARNING_RATE, num_steps=None, weight_decay=WEIGHT_DECAY,
              harness=True, labels=None, max_norm=None, grad_rms_range=GRAD_RMS_RANGE):
    """Celo2 as a drop-in optax optimizer:
    chain(scale_by_celo2(θ, orthogonalize=harness), add_decayed_weights(wd), scale_by_lr(lr_t)).
    learning_rate: a float, or an optax schedule; a float with num_steps decays by
    cosine_schedule over num_steps (the default, untuned use), without num_steps it stays constant.
    max_norm: lopt.bound_norm's bound on each tensor's RMS (ours); None: BASE_MAX_NORM for
    celo2_base (harness=False; its 25,000-step run diverges without it), 0 (none) for celo2.
    grad_rms_range: lopt.scale_gradients' range (ours); None: the raw gradients (meta-training)."""
    if not callable(learning_rate) and num_steps is not None:
        learning_rate = cosine_schedule(learning_rate, num_steps)
    tx = optax.chain(scale_by_celo2(theta, harness, labels),
                     optax.add_decayed_weights(weight_decay),
                     optax.scale_by_learning_rate(learning_rate))
    return at_use(tx, default_max_norm(harness) if max_norm is None else max_norm, grad_rms_range)


# ----------------------------------------------------------------------------- the contract

class State(NamedTuple):
    inner: Any              # the optimizer() chain's state
    num_steps: jnp.ndarray  # () int32, planned training length N (the cosine's horizon)


def init(theta, params, num_steps, harness=True, learning_rate=LEARNING_RATE,
         weight_decay=WEIGHT_DECAY):
    tx = optimizer(theta, learning_rate, num_steps, weight_decay, harness, max_norm=0.0,
                   grad_rms_range=None)
    return State(tx.init(params), jnp.asarray(num_steps, jnp.int32))


def step(theta, state, params, grads, loss=None, harness=True, learning_rate=LEARNING_RATE,
         weight_decay=WEIGHT_DECAY):
    """One update of `optimizer(θ, learning_rate, num_steps=state.num_steps)`: the same
    function that meta-training unrolls (the harness is in the loop) and evaluation runs."""
    del loss  # Celo2 reads no loss
    tx = optimizer(theta, learning_rate, state.num_steps, weight_decay, harness, max_norm=0.0,
                   grad_rms_range=None)
    updates, inner = tx.update(grads, state.inner, params)
    return updates, State(inner, state.num_steps)


def learned_optimizer(harness=True, learning_rate=LEARNING_RATE, weight_decay=WEIGHT_DECAY,
                      name=None, rule_init="hand"):
    """The contract record: celo2 (harness=True) or celo2_base, at a given peak learning rate."""
    kw = dict(harness=harness, learning_rate=learning_rate, weight_decay=weight_decay)
    return LearnedOptimizer(name or ("celo2" if harness else "celo2_base"),
                            partial(init_meta_params, harness=harness, rule_init=rule_init),
                            partial(init, **kw), partial(step, **kw),
                            max_norm=default_max_norm(harness))   # bounded at use only
