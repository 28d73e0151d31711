"""Persistent Evolution Strategies (PES) and plain antithetic ES: gradients of unrolled losses.

Vicol, Metz & Sohl-Dickstein 2021, "Unbiased gradient estimation in unrolled computation graphs
with persistent evolution strategies" (ICML), Alg. 2 (antithetic PES); Salimans et al. 2017 for
ES. Celo (arXiv 2501.12670) §2 "Meta-training" and App. A.3; μLO (arXiv 2406.00153) §5 use the
same estimator.

Meta-training minimizes the mean inner loss L(φ) of training runs driven by the learned optimizer
φ (Celo Eq. (3)). PES cuts each run into truncations of T steps and, after every truncation,
returns an unbiased estimate of ∇φ of that truncation's loss *including* its dependence on all
earlier truncations of the same run:
    ξ ← ξ + ε,   ε ~ N(0, σ²I)                    (accumulated perturbation of this run)
    ĝ = 1/(2σ²) · (L(φ + ε) − L(φ − ε)) · ξ        (antithetic pair; Vicol et al. Eq. (6))
ξ resets to 0 when a run ends. Plain ES (`es_gradient`) is the same with one truncation that
is the whole run.

Non-finite losses (ours, a deliberate departure from the reference): a loss that is NaN or inf
scores the cap (normalized 1) and is counted; the steps left in that truncation score the cap too
(a NaN state stays NaN), and then the pair — both members — restarts at the first step of the
next truncation, with a new run and ξ reset (`State.dead`). google/learned_optimization instead
keeps such a run and scores the cap at every step until its horizon. Why we restart: a NaN run is
an absorbing state whose remaining steps say nothing more about θ than "it diverged", and with
runs of up to 2000 steps (40 truncations) the reference spends up to 40 truncations of a pair's
compute on it, while the restart spends it on runs that carry a gradient. The cost: the
meta-objective changes for θ that diverge — the reference charges a divergence the cap for
every step left in the run, ours only for the steps left in its truncation — so the penalty for
diverging is weaker here (the estimate still points away from it: tests/test_pes.py). A finite
but capped loss (above loss_cap) is clipped and the run goes on, as in the reference.

This file knows nothing about optimizers or tasks: a `Problem` says how to start a run and how
to take one inner step. Pairs are vmapped; the truncation is a `lax.scan`; the pair axis can be
sharded over devices (`shard`), the same code on one CPU, N simulated CPUs, or N accelerators.
"""
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

SIGMA = 0.01        # perturbation std (Celo, arXiv 2501.12670, App. A.3)
TRUNCATION = 50     # inner steps per truncation (Celo App. A.3, μLO §5)
NUM_PAIRS = 8       # antithetic pairs per estimate (μLO: 8 per task)


class Config(NamedTuple):
    num_pairs: int = NUM_PAIRS
    truncation: int = TRUNCATION
    sigma: float = SIGMA
    min_horizon: int = 100      # run lengths ~ log-uniform[min, max] (Celo App. A.3: 100–2000)
    max_horizon: int = 2000
    objective: str = "mean"     # per-step loss the meta-loss averages: "mean" = L/cap (Celo
                                # Eq. (3)); "log" = log(L) rescaled to [0, 1] (ours: normalize_loss)


class Problem(NamedTuple):
    """What PES needs to know about the inner training runs.

    init_inner(theta, shared, group, key, num_steps) -> inner      start a run of num_steps
    step_inner(theta, shared, group, inner, key) -> (inner, loss)   one step; loss = the training
        minibatch loss *before* the update (the meta-loss, μLO §5; google/learned_optimization)
    `shared` is passed to every call unchanged (e.g. frozen meta-parameters); `group` is one slice
    of a pytree with a leading group axis (e.g. one dataset of a stack): pairs are split evenly
    among groups. Both are jit arguments, never baked-in constants.
    loss_cap: losses are clipped to [0, loss_cap] (non-finite → loss_cap) and divided by it, so
    every task's meta-loss lies in [0, 1] (google/learned_optimization: 1.5·ln(num_classes) for
    classifiers).
    """
    init_inner: Callable
    step_inner: Callable
    loss_cap: float


class State(NamedTuple):
    """Persistent state of all pairs; leading axis = pairs (P), then ± for `inner`."""
    inner: Any              # leaves (P, 2, ...): the two runs of each antithetic pair
    t: jnp.ndarray          # (P,) int32 steps done in the current run
    horizon: jnp.ndarray    # (P,) int32 length of the current run
    acc: Any                # leaves (P, ...): ξ, the perturbation accumulated over this run
    key: jnp.ndarray        # (P, 2) uint32 per-pair PRNG keys (shared by the two members)
    dead: jnp.ndarray       # (P,) bool: a non-finite loss was seen; restart at the next truncation


class Stats(NamedTuple):
    meta_loss: jnp.ndarray  # mean normalized inner loss of this truncation over all runs
    nonfinite: jnp.ndarray  # number of non-finite inner losses replaced by the cap
    resets: jnp.ndarray     # number of pairs whose run ended (and restarted) in this truncation


# ----------------------------------------------------------------------------- helpers

def sample_horizon(key, config, shape=()):
    """Run lengths log-uniform in [min_horizon, max_horizon] (Celo App. A.3)."""
    lo, hi = jnp.log(config.min_horizon), jnp.log(config.max_horizon + 1.0)
    n = jnp.exp(jax.random.uniform(key, shape, minval=lo, maxval=hi))
    return jnp.clip(jnp.floor(n), config.min_horizon, config.max_horizon).astype(jnp.int32)


OBJECTIVES = ("mean", "log")
LOG_RANGE = 1e6     # objective "log": losses below cap/LOG_RANGE count as cap/LOG_RANGE


def normalize_loss(loss, cap, objective="mean"):
    """Each step's loss as a number in [0, 1], NaN/inf → 1 (the cap): never a crash, never NaN in
    θ. "mean": clip(L, 0, cap)/cap, the paper's mean-loss objective (Celo Eq. (3)). "log" (ours):
    log(L / (cap/LOG_RANGE)) / log(LOG_RANGE), L clipped to [cap/LOG_RANGE, cap]: a loss halved
    counts the same at 1.0 as at 0.001, so a regression that must converge precisely, and the late
    steps of every run, weigh as much in ĝ as a classifier's early fall."""
    finite = jnp.isfinite(loss)
    if objective == "mean":
        return jnp.where(finite, jnp.clip(loss, 0.0, cap), cap) / cap, ~finite
    if objective != "log":
        raise ValueError(f"unknown meta-objective {objective!r}; valid: {', '.join(OBJECTIVES)}")
    lo = cap / LOG_RANGE
    logged = jnp.log(jnp.clip(loss, lo, cap) / lo) / jnp.log(LOG_RANGE)
    return jnp.where(finite, logged, 1.0), ~finite


def _tree_where(cond, a, b):
    return jax.tree.map(lambda x, y: jnp.where(cond.reshape(cond.shape + (1,) * (x.ndim - cond.ndim)),
                                               x, y), a, b)


def _perturbations(key, theta, num_pairs, sigma):
    leaves, treedef = jax.tree.flatten(theta)
    keys = jax.random.split(key, len(leaves))
    eps = [sigma * jax.random.normal(k, (num_pairs,) + x.shape, x.dtype) for k, x in zip(keys, leaves)]
    return treedef.unflatten(eps)


def _pm(theta, eps):
    """θ ± ε for every pair: leaves (P, 2, ...)."""
    return jax.tree.map(lambda t, e: t + jnp.stack([e, -e], axis=1), theta, eps)


def _per_pair(fn, groups, num_pairs):
    """vmap fn over pairs (and over the ± members inside fn), giving pair p the group slice
    p // (P/G): the group axis is vmapped *outside* the pairs, so a stack of datasets is indexed,
    never copied per pair."""
    num_groups = jax.tree.leaves(groups)[0].shape[0] if jax.tree.leaves(groups) else 1
    if num_pairs % num_groups:
        raise ValueError(f"{num_pairs} pairs cannot be split evenly over {num_groups} groups")
    per = num_pairs // num_groups

    def grouped(*args):  # args: leaves with leading axis P
        split = jax.tree.map(lambda x: x.reshape((num_groups, per) + x.shape[1:]), args)
        inner = jax.vmap(fn, in_axes=(None,) + (0,) * len(args))
        out = jax.vmap(inner, in_axes=(0 if jax.tree.leaves(groups) else None,) + (0,) * len(args))(
            groups, *split)
        return jax.tree.map(lambda x: x.reshape((num_pairs,) + x.shape[2:]), out)

    return grouped


def make_mesh(devices=None):
    """A 1-d mesh over all devices (of every host, after jax.distributed.initialize()); the pair
    axis of the PES state is split over it and XLA inserts the cross-device mean of ĝ."""
    devices = jax.devices() if devices is None else devices
    return jax.sharding.Mesh(devices, ("pairs",),
                             axis_types=(jax.sharding.AxisType.Auto,))


def shard(tree, mesh):
    """Place the leading (pair) axis of every leaf across the mesh's devices (replicate scalars)."""
    if mesh is None:
        return tree
    spec = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, spec) if x.ndim else x, tree)


# ----------------------------------------------------------------------------- PES

def _member_step(problem, theta, shared, group, inner, fresh, t, horizon, fresh_horizon, key, active):
    """One inner step of one run: restart it first if its previous run just ended."""
    reset = t >= horizon
    inner = _tree_where(reset, fresh, inner)
    horizon = jnp.where(reset, fresh_horizon, horizon)
    t = jnp.where(reset, 0, t)
    new_inner, loss = problem.step_inner(theta, shared, group, inner, key)
    inner = _tree_where(active, new_inner, inner)
    return inner, jnp.where(active, t + 1, t), horizon, loss, reset


def _unroll(problem, config, theta_pm, shared, groups, state, fresh, fresh_horizon, key, num_active):
    """Scan one truncation for all pairs. Returns the final runs and per-step (P, 2) losses."""
    num_pairs = config.num_pairs

    def pair_step(group, theta2, inner2, fresh2, t, horizon, fresh_h, k, n_active, i):
        active = i < n_active
        step = lambda th, inn, fr: _member_step(problem, th, shared, group, inn, fr, t, horizon,
                                                fresh_h, jax.random.fold_in(k, i), active)
        inner2, t2, h2, loss2, reset2 = jax.vmap(step)(theta2, inner2, fresh2)
        return inner2, t2[0], h2[0], loss2, reset2[0]  # both members share t, horizon and resets

    def body(carry, i):
        inner, t, horizon = carry
        fn = _per_pair(lambda g, *a: pair_step(g, *a, i), groups, num_pairs)
        inner, t, horizon, loss, reset = fn(theta_pm, inner, fresh, t, horizon, fresh_horizon,
                                            key, num_active)
        return (inner, t, horizon), (loss, reset)

    (inner, t, horizon), (losses, resets) = jax.lax.scan(
        body, (state.inner, state.t, state.horizon), jnp.arange(config.truncation))
    return inner, t, horizon, losses, resets


def _fresh_runs(problem, config, theta_pm, shared, groups, key):
    """A new run for every pair (used where a run ends): both members share key and length."""
    k_h, k_i = jax.random.split(key)
    horizon = sample_horizon(k_h, config, (config.num_pairs,))
    keys = jax.random.split(k_i, config.num_pairs)

    def pair_init(group, theta2, k, n):
        return jax.vmap(lambda th: problem.init_inner(th, shared, group, k, n))(theta2)

    return _per_pair(pair_init, groups, config.num_pairs)(theta_pm, keys, horizon), horizon


def init(problem, config, theta, shared, groups, key, mesh=None, random_offsets=True):
    """Start every pair's run, then advance each by a random 0..T−1 steps with unperturbed θ so
    that truncations of different pairs do not end together (random initial offsets)."""
    if config.min_horizon < config.truncation:
        raise ValueError(f"min_horizon {config.min_horizon} must be ≥ truncation "
                         f"{config.truncation} (at most one restart per truncation)")
    k_init, k_off, k_run, k_keys = jax.random.split(key, 4)
    zero = jax.tree.map(lambda x: jnp.zeros((config.num_pairs,) + x.shape, x.dtype), theta)
    theta_pm = _pm(theta, zero)
    inner, horizon = _fresh_runs(problem, config, theta_pm, shared, groups, k_init)
    state = State(inner, jnp.zeros(config.num_pairs, jnp.int32), horizon, zero,
                  jax.random.split(k_keys, config.num_pairs), jnp.zeros(config.num_pairs, bool))
    if not random_offsets:
        return shard(state, mesh)
    offsets = jax.random.randint(k_off, (config.num_pairs,), 0, config.truncation)
    inner, t, horizon, _, _ = _unroll(problem, config, theta_pm, shared, groups, state, inner,
                                      horizon, jax.random.split(k_run, config.num_pairs), offsets)
    return shard(state._replace(inner=inner, t=t, horizon=horizon), mesh)


def gradient(problem, config, theta, shared, groups, state, key, mesh=None):
    """One PES truncation for every pair: (ĝ, new state, Stats). Jit this (problem, config and
    mesh static); θ, shared, groups, state, key are arguments."""
    k_eps, k_fresh = jax.random.split(key)
    eps = shard(_perturbations(k_eps, theta, config.num_pairs, config.sigma), mesh)
    theta_pm = _pm(theta, eps)
    fresh, fresh_horizon = _fresh_runs(problem, config, theta_pm, shared, groups, k_fresh)
    # a pair that produced a non-finite loss restarts at the first step of this truncation
    state = state._replace(t=jnp.where(state.dead, state.horizon, state.t))
    step_keys = jax.vmap(lambda k: jax.random.split(k, 2))(state.key)
    inner, t, horizon, losses, resets = _unroll(
        problem, config, theta_pm, shared, groups, state, fresh, fresh_horizon,
        step_keys[:, 0], jnp.full((config.num_pairs,), config.truncation))

    norm, nonfinite = normalize_loss(losses, problem.loss_cap, config.objective)  # (T, P, 2)
    diff = norm[:, :, 0] - norm[:, :, 1]                                 # L(θ+ε) − L(θ−ε) per step
    before_reset = jnp.cumsum(resets, axis=0) == 0                       # steps of the old run
    s_all = jnp.mean(diff, axis=0)                                       # (P,)
    s_old = jnp.sum(jnp.where(before_reset, diff, 0.0), axis=0) / config.truncation
    scale = 1.0 / (2.0 * config.sigma ** 2)
    # Steps of the old run saw ξ_old + ε, steps of a restarted run only ε (Vicol et al. Alg. 2):
    # Σ_t Δ_t·ξ_t = s_all·ε + s_old·ξ_old.
    grad = jax.tree.map(
        lambda e, a: scale * jnp.mean(s_all.reshape((-1,) + (1,) * (e.ndim - 1)) * e
                                      + s_old.reshape((-1,) + (1,) * (a.ndim - 1)) * a, axis=0),
        eps, state.acc)
    restarted = jnp.any(resets, axis=0)
    acc = jax.tree.map(lambda a, e: jnp.where(restarted.reshape((-1,) + (1,) * (a.ndim - 1)), e, a + e),
                       state.acc, eps)
    dead = jnp.any(nonfinite, axis=(0, 2))
    new_state = State(inner, t, horizon, acc, step_keys[:, 1], dead)
    stats = Stats(jnp.mean(norm), jnp.sum(nonfinite), jnp.sum(restarted))
    return grad, shard(new_state, mesh), stats


# ----------------------------------------------------------------------------- plain ES

def es_gradient(problem, config, theta, shared, groups, key, num_steps, mesh=None):
    """Antithetic ES over whole runs of `num_steps` (static) steps:
    ĝ = mean over pairs of 1/(2σ²)·(L(θ+ε) − L(θ−ε))·ε, L = mean normalized loss of the run.
    The estimator is VeLO's (antithetic ES on full-length unrolls, both members of a pair from
    the same initialization on the same batches: VeLO App. D.2); the objective is not. Ours, L, is
    the *mean* over the run's steps of the normalized training minibatch loss (Celo Eq. (3), the
    objective PES estimates), runs of one fixed length; VeLO's is the training loss at the *end*
    of inner training (App. D: "targeting final loss yields better results than average loss"),
    with a curriculum over unroll lengths, and each task's meta-gradient normalized to unit
    length before averaging (App. D.3), where train.py averages the task groups' ĝ as they are."""
    k_eps, k_init, k_run = jax.random.split(key, 3)
    eps = shard(_perturbations(k_eps, theta, config.num_pairs, config.sigma), mesh)
    theta_pm = _pm(theta, eps)
    keys = jax.random.split(k_init, config.num_pairs)
    n = jnp.full((config.num_pairs,), num_steps, jnp.int32)

    def pair_init(group, theta2, k, steps):
        return jax.vmap(lambda th: problem.init_inner(th, shared, group, k, steps))(theta2)

    inner = _per_pair(pair_init, groups, config.num_pairs)(theta_pm, keys, n)
    state = State(inner, jnp.zeros_like(n), n, None, jax.random.split(k_run, config.num_pairs),
                  jnp.zeros(config.num_pairs, bool))
    run = config._replace(truncation=num_steps)
    _, _, _, losses, _ = _unroll(problem, run, theta_pm, shared, groups, state, inner, n,
                                 state.key, n)
    norm, nonfinite = normalize_loss(losses, problem.loss_cap, config.objective)
    diff = jnp.mean(norm[:, :, 0] - norm[:, :, 1], axis=0)
    scale = 1.0 / (2.0 * config.sigma ** 2)
    grad = jax.tree.map(lambda e: scale * jnp.mean(diff.reshape((-1,) + (1,) * (e.ndim - 1)) * e, 0),
                        eps)
    return grad, Stats(jnp.mean(norm), jnp.sum(nonfinite), jnp.int32(config.num_pairs))
