"""Local SGD with a learned global update: LOpt (sees the mean delta) and LAgg (sees all K deltas).

Joseph et al. 2023, "Can we learn communication-efficient optimizers?" (arXiv 2312.02204).
K workers each take H local SGD steps from
the server's parameters θ on their own minibatches; once per communication round the server
receives Δ_k = θ_k − θ and a global update turns them into θ's step. Baselines: local SGD
(Stich 2019: θ ← θ + mean_k Δ_k) and SlowMo (Wang et al. 2020, Alg. 1: server momentum), also
with a cosine-annealed server lr (`slowmo_cosine`).

One round (`round_step`), with the pseudo-gradient g = −Δ̄ = −(1/K) Σ_k Δ_k:
    θ_k ← θ;  H times: θ_k ← θ_k − η ∇L(θ_k; batch_k,h)          (local SGD, η = local lr)
    Δ_k = θ_k − θ                                                 (the round's one upload)
    local SGD   θ ← θ − g                                          (plain averaging)
    SlowMo      u ← β u + g;  θ ← θ − α u                          (Wang et al. Alg. 1, γ folded in)
    LOpt/LAgg   u ← β0 u + g;  θ ← θ − u − r,  r = λ1 · rms(u) · d · exp(λ2 · m),
                ‖r‖ ≤ ½‖u‖ per tensor                                   (ours, see below)
    lopt_paper  θ ← θ − λ1 · rms(g) · d · exp(λ2 · m), ‖·‖ ≤ 5‖g‖     (the MLP's whole update)
where (d, m) is a per-parameter MLP 40 → 32 → 32 → 2 (Joseph et al.: two hidden layers of 32) on
small_fc_lopt's 28 features (features.py) with g in place of the gradient, plus n(u), the server
momentum normalized over its tensor, plus 11 time features; LAgg adds the K worker
pseudo-gradients −Δ_k, sorted per entry (so the update does not depend on worker labels), as K
more columns normalized like the others.

The output form is ours (the paper's is not in our materials): a learned residual on a nominal
server update (Harrison et al. 2022 add such a "nominal" term to learned optimizers), SlowMo(α0,
β0) = SlowMo(1, 0.8), in units of the tensor's rms(u), so the update is scale-equivariant. The MLP
starts with d ≡ 0 (lopt.init_mlp_with_direction with gain 0 on n(u)): a fresh θ *is*
SlowMo(1, 0.8), and scaling the nominal step, d = s·n(u) ⇒ θ ← θ − (1 + λ1·s)·u (as n(u) ≈
u/rms(u)), is one weight away. Why: our first version was a residual on plain averaging (a zero MLP
= local SGD); after 130 meta-steps it beat tuned local SGD but lost to tuned SlowMo on every task
(README), and residual updates in units of rms(g) cannot express momentum, which needs
rms(u)/rms(g) per tensor. The same lesson as Celo's and VeLO's Adam-direction init: start
meta-training from an optimizer that works. β0 = 0.8 is the top of Wang et al.'s recommended range
[0.5, 0.8] and what tuning picks on our held-out MLPs (0.9 is worse there), so what LOpt gains over
tuned SlowMo is what it learned.

`lopt_paper` is the paper's form as its abstract states it ("we meta-learn how to perform global
updates given an update from local SGD iterations"): the MLP (39 inputs: no n(u)) outputs the
whole server update, with no nominal term and no server momentum besides its accumulators'.
Ours where our materials are silent: the units, rms(g) per tensor (scale-equivariant, as LOpt's
rms(u)), and the start, d = n(g) (lopt.init_mlp_with_direction), so a fresh θ is local SGD up to
exp(λ2·m) ≈ 1 ± 1e-3 — a working optimizer to meta-train from. Shipped:
checkpoints/local_sgd_lopt_paper.npz (`python train.py --opt local_sgd_lopt_paper`, θ only).

Safeguard (ours; issue #20: on a problem outside the repository the shipped LAgg diverged,
loss 2.3 → 18.2). The learned residual r = λ1·rms(u)·d·exp(λ2·m) is bounded per tensor to
‖r‖ ≤ c·‖α0·u‖, c = RESIDUAL_BOUND = 1/2 (non-finite entries of r are zeroed first, `bounded`):
a trust region around the nominal step. Every update then lies within 30° of SlowMo(α0, β0)'s
step −α0·u, with a length between 1/2 and 3/2 of it: ⟨Δθ, −u⟩ ≥ ½·α0·‖u‖², so the update
descends wherever the nominal SlowMo step does, and it is never larger than SlowMo(1.5, 0.8)'s
(inside the tuned grid's α range). The MLP keeps what it is for — rescaling and turning the
step per entry — but no θ can reverse it or replace it with noise. c = 1 (which still forbids
reversal) was too loose: θ with random MLP weights of scale 3 drove a teacher–student loss up
6–22× in 40 rounds (two of four seeds; random weights of scale 1 once to NaN); at c = 1/2 none
of scales 1, 3, 10, 1000 did (tests/test_local_sgd.py). The shipped checkpoints were
meta-trained unbounded; on the held-out tasks their residual is 0.40–0.53‖α0·u‖ on average and
at most 0.70‖α0·u‖, so the bound binds in part of the rounds and tensors and costs them < 1% of
final loss at lr 0.5 (docs/local_sgd.md). `learned_step(..., residual_bound=None)` is the
unbounded form. lopt_paper (below), which has no nominal step, gets only a size bound
‖Δθ‖ ≤ ‖Δ̄‖/(1 − β0): it removes overflow-sized updates but cannot stop a bad θ from diverging
(measured: random θ of scale 1–10 diverged with it), which is why LOpt and LAgg keep the
nominal form.

Data shards: worker k of round r draws i.i.d. minibatches from the task's training data with its
own key (split(round key, K)[k]): the homogeneous-data setting, where every worker's shard is an
independent stream over the same data, which works for every Task without copying its data.
Workers are vmapped on one device; with `make_mesh` they are placed over devices by shard_map and
the average is `lax.pmean` (LAgg: `lax.all_gather`), the round's collective. Communication is
counted as the uploads: K × (bytes of θ) per round (the download of θ is the same size again).
"""
from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

import accumulators as acc
import features
import pes
import small_fc_lopt
import tasks
from lopt import LearnedOptimizer, apply_mlp, init_mlp_with_direction, map_tensors

NUM_WORKERS = 8             # K (Joseph et al. 2023's main setting)
LOCAL_STEPS = (4, 8, 16)    # H evaluated (Joseph et al. 2023)
LOCAL_LR = 0.5              # local SGD learning rate (Joseph et al. 2023)
HIDDEN = 32                 # per-parameter MLP: two hidden layers of 32 (Joseph et al. 2023)
HIDDEN_LAYERS = 2
STEP_MULT = 1.0             # λ1, in units of rms(u) of the tensor (ours: residual output form)
EXP_MULT = small_fc_lopt.EXP_MULT   # λ2 = 1e-3 (Celo Eq. (2), small_fc_lopt)
NOMINAL_SERVER_LR = 1.0     # α0 of the nominal SlowMo step the MLP corrects (module docstring)
NOMINAL_MOMENTUM = 0.8      # β0, the top of Wang et al.'s range; tuned SlowMo picks it here
DIRECTION_INIT = 0.0        # d = DIRECTION_INIT·n(u) at init: 0 ⇒ a fresh θ is SlowMo(α0, β0)
RESIDUAL_BOUND = 0.5        # ours: ‖learned residual‖ ≤ c·‖α0·u‖ per tensor (docstring, Safeguard)
U_COLUMN = features.NUM_ADAFAC_FEATURES      # input column of n(u); LAgg's K columns follow
G_COLUMN = features.column_index(features.ADAFAC_GROUPS, "g")   # input column of n(g) (= 0)
PAPER_DIRECTION_INIT = 1.0  # lopt_paper: d = n(g) at init ⇒ a fresh θ ≈ local SGD (ours)
PAPER_UPDATE_BOUND = 1.0 / (1.0 - NOMINAL_MOMENTUM)   # lopt_paper: ‖Δθ‖ ≤ 5·‖Δ̄‖ (ours, below)
SCALE_EPS = 1e-30           # rms(u) = sqrt(mean u² + ε): an all-zero u gives a zero step
WORKER_AXIS = "workers"     # mesh axis the workers are placed on

# Meta-training (train.py --opt local_sgd_lopt / local_sgd_lagg): the reference's Fashion-MNIST
# MLP with two hidden layers of 128 on the 8×8 images (all 60k; CPU-feasible), K = 8 workers,
# H = 16 local steps (the setting of the target; H = 4 and 8 test generalization in H),
# PES truncations of 50 rounds (Joseph et al. 2023).
META_HIDDEN = (128, 128)
META_BATCH_SIZE = 32        # per worker and local step (ours: CPU budget)
META_LOCAL_STEPS = 16
META_DATASET = "fashion_mnist_8x8"
# `--opt local_sgd_lopt_ranges` (ours): every meta-training run draws its own H from these and
# its local lr log-uniformly from this range, so the learned update sees the H and local lrs that
# tuning picks on held-out tasks (1–2; the fixed recipe sees only H = 16 at lr 0.5). H is traced
# per run: one compiled program.
META_LOCAL_STEPS_CHOICES = (4, 8, 16)
META_LOCAL_LR_RANGE = (0.1, 2.0)


# ----------------------------------------------------------------------------- the record

class GlobalUpdate(NamedTuple):
    """A server update in the learned-optimizer contract (lopt.py's module docstring): the fields
    of lopt.LearnedOptimizer, plus `all_deltas`.
    init_meta_params(key) -> θ;  init(θ, params, num_rounds) -> state;
    step(θ, state, params, grads, loss) -> (updates, state), updates added to params.
    `grads` is the round's pseudo-gradient −Δ̄, or, when `all_deltas`, the K workers' −Δ_k
    stacked on a leading axis. For the baselines θ holds their hyper-parameters.
    A record of its own because a NamedTuple cannot gain a field by subclassing, and
    `all_deltas` (what the round feeds the step) means nothing to a per-step optimizer."""
    name: str
    init_meta_params: Callable[..., Any]
    init: Callable[..., Any]
    step: Callable[..., Any]
    needs_loss: bool = False
    all_deltas: bool = False
    max_norm: float = 0.0    # no lopt.bound_norm: the learned residual is bounded itself
    grad_rms_range: Any = None   # no lopt.scale_gradients: pseudo-gradients as they come

    optimizer = LearnedOptimizer.optimizer   # as optax on pseudo-gradients (lopt.as_optax)


# ----------------------------------------------------------------------------- baselines

class MomentumState(NamedTuple):
    u: Any                  # server momentum buffer, like params
    step: jnp.ndarray       # () int32 rounds done


def slowmo_init(theta, params, num_steps):
    del theta, num_steps
    return MomentumState(jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.int32))


def slowmo_step(theta, state, params, grads, loss=None):
    """u ← β·u + g;  Δθ = −α·u  (Wang et al. 2020 Alg. 1 with the local lr γ folded into u).
    θ = {"server_lr": α, "momentum": β}; α = 1, β = 0 is plain local SGD (averaging)."""
    del params, loss
    u = jax.tree.map(lambda u, g: theta["momentum"] * u + g, state.u, grads)
    return (jax.tree.map(lambda u: -theta["server_lr"] * u, u),
            MomentumState(u, state.step + 1))


def slowmo(server_lr=1.0, momentum=0.0):
    """SlowMo's server update; its hyper-parameters are "θ" (so a grid of them is vmapped)."""
    hp = lambda key=None: {"server_lr": jnp.float32(server_lr), "momentum": jnp.float32(momentum)}
    return GlobalUpdate("slowmo", hp, slowmo_init, slowmo_step)


def local_sgd():
    """Plain local SGD: the server adds the mean delta (SlowMo with α = 1, β = 0)."""
    return slowmo(1.0, 0.0)._replace(name="local_sgd")


class ScheduledState(NamedTuple):
    u: Any                  # server momentum buffer, like params
    step: jnp.ndarray       # () int32 rounds done
    num_steps: jnp.ndarray  # () int32 rounds planned (R)


def slowmo_cosine_init(theta, params, num_steps):
    del theta
    return ScheduledState(jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.int32),
                          jnp.asarray(num_steps, jnp.int32))


def slowmo_cosine_step(theta, state, params, grads, loss=None):
    """SlowMo with α annealed by a cosine over the R planned rounds: round r (0-based) uses
    α_r = α·½(1 + cos(π·r/R)), u ← β·u + g, Δθ = −α_r·u (a stronger baseline: the learned
    updates see the fraction of training done and can learn such a schedule)."""
    del params, loss
    frac = state.step.astype(jnp.float32) / jnp.maximum(state.num_steps, 1).astype(jnp.float32)
    alpha = theta["server_lr"] * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.minimum(frac, 1.0)))
    u = jax.tree.map(lambda u, g: theta["momentum"] * u + g, state.u, grads)
    return (jax.tree.map(lambda u: -alpha * u, u),
            ScheduledState(u, state.step + 1, state.num_steps))


def slowmo_cosine(server_lr=1.0, momentum=0.0):
    """SlowMo with a cosine-annealed server lr; θ = {"server_lr": α, "momentum": β}, as slowmo."""
    return slowmo(server_lr, momentum)._replace(name="slowmo_cosine", init=slowmo_cosine_init,
                                                step=slowmo_cosine_step)


# ----------------------------------------------------------------------------- learned updates

class ServerState(NamedTuple):
    """LOpt/LAgg state: small_fc_lopt's (accumulators of g, round count, horizon) and the
    nominal server momentum u (like params)."""
    lopt: small_fc_lopt.State
    u: Any


def init_meta_params(key, num_workers=0, hidden=HIDDEN, hidden_layers=HIDDEN_LAYERS):
    """θ of LOpt (num_workers = 0) or LAgg (K extra input columns): the MLP, whose output d starts
    as DIRECTION_INIT·n(u) (0: the nominal SlowMo step, module docstring), and the learned
    accumulator decay offsets of small_fc_lopt."""
    inputs = U_COLUMN + 1 + num_workers + len(features.TIME_SCALES)
    sizes = (inputs,) + (hidden,) * hidden_layers + (2,)
    mlp = init_mlp_with_direction(key, sizes, U_COLUMN, DIRECTION_INIT)
    return {"mlp": mlp, **small_fc_lopt.init_decay_offsets()}


def init(theta, params, num_steps):
    return ServerState(small_fc_lopt.init(theta, params, num_steps),
                       jax.tree.map(jnp.zeros_like, params))


def sort_workers(planes):
    """Sort a list of K same-shaped arrays entrywise (odd–even transposition network: K rounds
    of min/max on neighbours, K(K−1)/2 comparators). Elementwise, so XLA fuses it: 24× faster
    on CPU than jnp.sort over a K axis (measured, K = 8, 16×128×128 entries)."""
    a = list(planes)
    for r in range(len(a)):
        for i in range(r % 2, len(a) - 1, 2):
            a[i], a[i + 1] = jnp.minimum(a[i], a[i + 1]), jnp.maximum(a[i], a[i + 1])
    return a


def append_columns(cols, planes):
    """Append same-shaped planes (one per entry of the tensor) as dense columns num, num + 1, …"""
    extra = tuple((cols.num + k, x.reshape(cols.shape)) for k, x in enumerate(planes))
    return cols._replace(dense=cols.dense + extra, num=cols.num + len(extra))


def mlp_outputs(mlp, p, g, s, u, worker_g, time):
    """(*S, 2) outputs [d, m] for one tensor: small_fc_lopt's 28 features of (p, g, accumulators
    s), n(u) (none when u is None: lopt_paper), and LAgg's K worker pseudo-gradients (leading
    axis K) sorted per entry (order statistics: invariant to worker labels), each column
    normalized over the tensor (features.scales, folded into the first layer by
    lopt.apply_mlp), plus the 11 time features as a bias. apply_mlp (one (…, C) @ (C, 32)
    matmul), not the planar mlp_on_columns: at width 32 the matmul is 2× faster on CPU
    (measured on 16×128×128 entries: 0.12 s vs 0.24 s)."""
    cols = append_columns(features.columns(p, g, s, features.ADAFAC_GROUPS, features.RMS_EPS),
                          [] if u is None else [u])            # lopt_paper has no u
    if worker_g is not None:
        cols = append_columns(cols, sort_workers([worker_g[k] for k in range(worker_g.shape[0])]))
    time_bias = time @ mlp["w0"][cols.num:]          # time features: equal for all entries
    return apply_mlp(mlp, features.stack(cols), features.scales(cols), time_bias)


def norm(x):
    """‖x‖₂ of one finite tensor without overflow: max|x|·‖x/max|x|‖ (a residual of 1e20 per
    entry still has a finite norm in float32, so `bounded` shrinks it instead of making 0·inf).
    x/max|x| is taken as (x·s)·s, s = max|x|^(−1/2): XLA turns the division into a product with
    1/max|x|, which flushes to 0 on CPU for max|x| > 8.5e37."""
    peak = jnp.max(jnp.abs(x))
    s = jax.lax.rsqrt(jnp.where(peak > 0, peak, 1.0))
    return peak * jnp.sqrt(jnp.sum(jnp.square((x * s) * s)))


def bounded(x, limit):
    """x with its non-finite entries zeroed, then scaled down to ‖x‖ ≤ limit (unchanged when
    already inside): the safeguard of the learned server updates (module docstring)."""
    x = jnp.where(jnp.isfinite(x), x, 0.0)
    n = norm(x)
    return x * jnp.where(n > limit, limit / jnp.where(n > 0, n, 1.0), 1.0)


def learned_step(theta, state, params, grads, loss=None, all_deltas=False,
                 step_mult=STEP_MULT, exp_mult=EXP_MULT, residual_bound=RESIDUAL_BOUND):
    """LOpt / LAgg: accumulators absorb g = −Δ̄, u ← β0·u + g, then features, the MLP, and
    Δθ = −α0·u − r per tensor, r = λ1·rms(u)·d·exp(λ2·m) bounded to ‖r‖ ≤ c·‖α0·u‖ with
    c = residual_bound (module docstring, "Safeguard"; None: unbounded, the shipped runs' form)."""
    del loss
    leaves, treedef = jax.tree.flatten(params)
    if all_deltas:
        worker_leaves = treedef.flatten_up_to(grads)
        grad_leaves = [jnp.mean(w, axis=0) for w in worker_leaves]   # −Δ̄, LOpt's input
    else:
        grad_leaves = treedef.flatten_up_to(grads)
    acc_leaves = treedef.flatten_up_to(state.lopt.acc)
    u_leaves = treedef.flatten_up_to(state.u)
    m_dec, r_dec, a_dec = small_fc_lopt.decays(theta)
    time = features.time_features(state.lopt.step)
    updates, new_acc, new_u = [], [], []
    for i, (p, g, s, u) in enumerate(zip(leaves, grad_leaves, acc_leaves, u_leaves)):  # trace-time
        s = acc.update_tensor(s, g, m_dec, r_dec, a_dec)
        u = NOMINAL_MOMENTUM * u + g                                   # SlowMo's buffer
        w = worker_leaves[i] if all_deltas else None
        out = mlp_outputs(theta["mlp"], p, g, s, u, w, time)
        d, m = out[..., 0], out[..., 1]
        scale = jnp.sqrt(jnp.mean(jnp.square(u)) + SCALE_EPS)                # rms(u)
        step = (step_mult * scale * d * jnp.exp(exp_mult * m)).reshape(p.shape)
        nominal = NOMINAL_SERVER_LR * u
        if residual_bound is not None:          # ours: ‖r‖ ≤ c·‖α0·u‖, never a reversed step
            step = bounded(step, residual_bound * norm(nominal))
        updates.append(-(nominal + step))       # θ ← θ − α0·u − λ1·rms(u)·d·exp(λ2·m)
        new_acc.append(s)
        new_u.append(u)
    lopt = small_fc_lopt.State(treedef.unflatten(new_acc), state.lopt.step + 1,
                               state.lopt.num_steps)
    return treedef.unflatten(updates), ServerState(lopt, treedef.unflatten(new_u))


def lopt(num_workers=NUM_WORKERS):
    """LOpt: the learned global update whose input is the mean delta (plus its accumulators)."""
    del num_workers  # LOpt works for any K
    return GlobalUpdate("local_sgd_lopt", partial(init_meta_params, num_workers=0),
                        init, partial(learned_step, all_deltas=False))


def lagg(num_workers=NUM_WORKERS):
    """LAgg: as LOpt, plus the K individual deltas as inputs (its θ is tied to K)."""
    return GlobalUpdate("local_sgd_lagg", partial(init_meta_params, num_workers=num_workers),
                        init, partial(learned_step, all_deltas=True),
                        all_deltas=True)


# ----------------------------------------------------------------------------- the paper's form

def init_paper_meta_params(key, hidden=HIDDEN, hidden_layers=HIDDEN_LAYERS):
    """θ of lopt_paper: an MLP on small_fc_lopt's 28 features of g = −Δ̄ and the 11 time features
    (no n(u): there is no server momentum besides the accumulators'), whose output d starts as
    PAPER_DIRECTION_INIT·n(g), and small_fc_lopt's learned accumulator decay offsets."""
    sizes = (U_COLUMN + len(features.TIME_SCALES),) + (hidden,) * hidden_layers + (2,)
    mlp = init_mlp_with_direction(key, sizes, G_COLUMN, PAPER_DIRECTION_INIT)
    return {"mlp": mlp, **small_fc_lopt.init_decay_offsets()}


def paper_step(theta, state, params, grads, loss=None, step_mult=STEP_MULT, exp_mult=EXP_MULT,
               update_bound=PAPER_UPDATE_BOUND):
    """lopt_paper: accumulators absorb g = −Δ̄, then features, the MLP, and the whole update
    Δθ = −λ1·rms(g)·d·exp(λ2·m) per tensor, bounded to ‖Δθ‖ ≤ c·‖Δ̄‖ with c = update_bound
    (None: unbounded). State: small_fc_lopt's (accumulators, round count, horizon)."""
    del loss
    m_dec, r_dec, a_dec = small_fc_lopt.decays(theta)
    time = features.time_features(state.step)

    def tensor(p, g, s):
        s = acc.update_tensor(s, g, m_dec, r_dec, a_dec)
        out = mlp_outputs(theta["mlp"], p, g, s, None, None, time)
        d, m = out[..., 0], out[..., 1]
        scale = jnp.sqrt(jnp.mean(jnp.square(g)) + SCALE_EPS)                # rms(g) = rms(Δ̄)
        step = (step_mult * scale * d * jnp.exp(exp_mult * m)).reshape(p.shape)
        if update_bound is not None:           # ours: ‖Δθ‖ ≤ c·‖Δ̄‖ (module docstring)
            step = bounded(step, update_bound * norm(g))
        return -step, s

    updates, new_acc = map_tensors(tensor, params, grads, state.acc)
    return updates, small_fc_lopt.State(new_acc, state.step + 1, state.num_steps)


def lopt_paper(num_workers=NUM_WORKERS):
    """LOpt in the paper's form: the MLP's output is the whole server update (no nominal SlowMo
    term, no server momentum besides the accumulators'); input the mean delta, as LOpt's."""
    del num_workers  # works for any K
    return GlobalUpdate("local_sgd_lopt_paper", init_paper_meta_params, small_fc_lopt.init,
                        paper_step)


# ----------------------------------------------------------------------------- workers, rounds

def worker_deltas(task, params, data, keys, local_steps, local_lr):
    """Every worker (one key each, vmapped) takes `local_steps` (≥ 1) SGD steps from params; step
    h uses the batch of fold_in(worker key, h). A Python-int H is a lax.scan (fori_loop lowers a
    static trip count to scan); a traced H (one compiled program for every H) is a while loop.
    Returns Δ_k = θ_k − θ (leaves (K, ...)) and each worker's first minibatch loss (K,), which is
    a loss at the server's θ."""

    def sgd_step(p, key, h):
        batch = task.sample_batch(data, jax.random.fold_in(key, h))
        loss, g = jax.value_and_grad(task.loss)(p, batch)
        return jax.tree.map(lambda x, y: x - local_lr * y, p, g), loss   # local SGD step

    def one(key):
        p, first = sgd_step(params, key, 0)     # step 0 at the server's θ: the round's loss
        p = jax.lax.fori_loop(1, local_steps, lambda h, p: sgd_step(p, key, h)[0], p)
        return jax.tree.map(jnp.subtract, p, params), first

    return jax.vmap(one)(keys)


def _communicate(task, gather, axis_name, params, data, keys, local_steps, local_lr):
    """Local work and the round's collective: Δ̄ (and all Δ_k when `gather`), worker losses."""
    deltas, losses = worker_deltas(task, params, data, keys, local_steps, local_lr)
    mean = jax.tree.map(lambda d: jnp.mean(d, axis=0), deltas)
    if axis_name is not None:  # inside shard_map: each device holds K/D workers
        mean = jax.lax.pmean(mean, axis_name)                           # the all-reduce
        losses = jax.lax.all_gather(losses, axis_name, tiled=True)
        if gather:
            deltas = jax.lax.all_gather(deltas, axis_name, tiled=True)  # LAgg needs every Δ_k
    return mean, (deltas if gather else None), losses


def make_mesh(num_workers, devices=None):
    """A 1-d mesh placing the K workers over the largest number of devices D that divides K
    (None when D = 1: the workers are then simply vmapped)."""
    devices = jax.devices() if devices is None else list(devices)
    d = max(n for n in range(1, len(devices) + 1) if num_workers % n == 0)
    if d == 1:
        return None
    return jax.sharding.Mesh(np.asarray(devices[:d]), (WORKER_AXIS,),
                             axis_types=(jax.sharding.AxisType.Auto,))


def communicate(task, params, data, keys, local_steps, local_lr, gather=False, mesh=None):
    """(Δ̄, all Δ_k or None, worker losses) of one round: vmapped workers, or with `mesh` the
    same function under shard_map with the workers' axis split over the devices."""
    fn = partial(_communicate, task, gather)
    if mesh is None:
        return fn(None, params, data, keys, local_steps, local_lr)
    sharded = jax.shard_map(partial(fn, WORKER_AXIS), mesh=mesh,
                            in_specs=(P(), P(), P(WORKER_AXIS), P(), P()),
                            out_specs=P(),   # replicated after the collectives
                            check_vma=False)  # JAX cannot infer it through the loop
    return sharded(params, data, keys, local_steps, local_lr)


def round_step(task, update, theta, params, state, data, key, num_workers, local_steps,
               local_lr, mesh=None):
    """One communication round: K workers × H local steps, one upload each, the global update.
    Returns (params, state, loss) with loss = mean over workers of their first minibatch loss,
    i.e. the training loss at θ *before* the round (K·batch examples)."""
    keys = jax.random.split(key, num_workers)
    mean, deltas, losses = communicate(task, params, data, keys, local_steps, local_lr,
                                       update.all_deltas, mesh)
    grads = jax.tree.map(jnp.negative, deltas if update.all_deltas else mean)  # g = −Δ
    loss = jnp.mean(losses)
    updates, state = update.step(theta, state, params, grads, loss)
    return optax.apply_updates(params, updates), state, loss


def train(task, update, theta, data, key, num_rounds, num_workers=NUM_WORKERS,
          local_steps=META_LOCAL_STEPS, local_lr=LOCAL_LR, mesh=None):
    """Train `task` from task.init for `num_rounds` rounds (lax.scan). Seed key → (init key,
    round keys), so every global update sees the same start and the same batches on a seed.
    Returns (final params, per-round losses (num_rounds,))."""
    k_init, k_rounds = jax.random.split(key)
    params = task.init(k_init)
    state = update.init(theta, params, num_rounds)

    def body(carry, k):
        params, state = carry
        params, state, loss = round_step(task, update, theta, params, state, data, k,
                                         num_workers, local_steps, local_lr, mesh)
        return (params, state), loss

    (params, _), losses = jax.lax.scan(body, (params, state),
                                       jax.random.split(k_rounds, num_rounds))
    return params, losses


def make_curves(task, update, num_rounds, num_workers=NUM_WORKERS, mesh=None):
    """jit(curves(thetas, local_lrs, local_steps, data, keys) -> losses (C, S, num_rounds)):
    C configurations (θ leaves and local lrs with a leading axis C) × S seeds, vmapped, one
    compiled call; local_steps H is traced, so one program serves every H."""

    def one(theta, lr, local_steps, data, key):
        return train(task, update, theta, data, key, num_rounds, num_workers, local_steps, lr,
                     mesh)[1]

    seeds = jax.vmap(one, (None, None, None, None, 0))
    return jax.jit(jax.vmap(seeds, (0, 0, None, None, None)))


# ----------------------------------------------------------------------------- communication

class Communication(NamedTuple):
    rounds: int
    bytes_per_round: int      # uploads: K × bytes of θ
    total_bytes: int


def round_bytes(params, num_workers):
    """Bytes the server receives per round: each of the K workers uploads its Δ_k, shaped
    and typed like θ."""
    return num_workers * sum(int(x.size) * jnp.dtype(x.dtype).itemsize
                             for x in jax.tree.leaves(params))


def communication(params, num_workers, num_rounds):
    per = round_bytes(params, num_workers)
    return Communication(int(num_rounds), per, per * int(num_rounds))


# ----------------------------------------------------------------------------- meta-training

class Inner(NamedTuple):
    params: Any
    state: Any
    local_steps: Any = None   # () int32, this run's H when make_problem draws it, else None
    local_lr: Any = None      # () float32, this run's local lr, likewise


def draw_local_config(key, local_steps_choices, local_lr_range):
    """(H, local lr) of one meta-training run: H uniform over the choices, the lr log-uniform."""
    k_h, k_lr = jax.random.split(key)
    choices = jnp.asarray(local_steps_choices, jnp.int32)
    h = choices[jax.random.randint(k_h, (), 0, choices.shape[0])]
    lo, hi = np.log(local_lr_range[0]), np.log(local_lr_range[1])
    return h, jnp.exp(jax.random.uniform(k_lr, (), jnp.float32, lo, hi))


def make_problem(task, update, num_workers=NUM_WORKERS, local_steps=META_LOCAL_STEPS,
                 local_lr=LOCAL_LR, local_steps_choices=None, local_lr_range=None):
    """PES's view (pes.Problem) of local SGD with a learned global update: one inner step is one
    communication ROUND; its loss is the training loss at θ before the round (round_step).
    local_steps_choices / local_lr_range: each run (both particles of an antithetic pair, which
    share its key) draws its own H and local lr (draw_local_config) instead of the fixed ones."""
    draws = local_steps_choices is not None or local_lr_range is not None

    def init_inner(theta, shared, group, key, num_steps):
        params = task.init(key)
        state = update.init({**(shared or {}), **theta}, params, num_steps)
        if not draws:
            return Inner(params, state)
        h, lr = draw_local_config(jax.random.fold_in(key, 1),
                                  local_steps_choices or (local_steps,),
                                  local_lr_range or (local_lr, local_lr))
        return Inner(params, state, h, lr)

    def step_inner(theta, shared, group, inner, key):
        h = local_steps if inner.local_steps is None else inner.local_steps
        lr = local_lr if inner.local_lr is None else inner.local_lr
        params, state, loss = round_step(task, update, {**(shared or {}), **theta}, inner.params,
                                         inner.state, group, key, num_workers, h, lr)
        return inner._replace(params=params, state=state), loss

    return pes.Problem(init_inner, step_inner, task.loss_cap)


def meta_training_task():
    """The reference meta-training task: Fashion-MNIST MLP 64 → 128 → 128 → 10 (8×8 images)."""
    return tasks.image_mlp(META_DATASET, hidden=META_HIDDEN, batch_size=META_BATCH_SIZE)


def train_problem(task, update, cfg, **draws):
    """train.py's Recipe.problem hook. `task` (task_set) supplies the data; the network is the
    reference's 2×128 MLP (tasks.TASKS has no 8×8 one), so the data must be 8×8 images.
    draws: make_problem's local_steps_choices / local_lr_range (local_sgd_lopt_ranges)."""
    del cfg
    ref = meta_training_task()
    shapes = lambda d: jax.tree.map(lambda x: tuple(np.shape(x)[1:]), d)
    if jax.tree.structure(task.data) != jax.tree.structure(ref.data) or \
            shapes(task.data) != shapes(ref.data):
        raise tasks.InvalidOptionError(
            f"local-SGD meta-training trains an MLP on 8×8 images; task {task.name!r} has "
            "other data: use --task-set celo_fmnist_8x8")
    return make_problem(ref, update, **draws)


def train_problem_ranges(task, update, cfg):
    """train_problem with every run's H and local lr drawn (META_LOCAL_STEPS_CHOICES,
    META_LOCAL_LR_RANGE): the problem of `--opt local_sgd_lopt_ranges`."""
    return train_problem(task, update, cfg, local_steps_choices=META_LOCAL_STEPS_CHOICES,
                         local_lr_range=META_LOCAL_LR_RANGE)


# Settings of train.py for these two (its settings block; the command line wins).
TRAIN_SETTINGS = (("meta_steps", 400),             # the shipped checkpoints (≈ 1.5 h each, the
                                                   # two runs sharing 2 cores; README)
                  ("task_set", "celo_fmnist_8x8"),  # its data: Fashion-MNIST 8×8, all 60k
                  ("augment", "none"),              # no task augmentation (local SGD lr is fixed)
                  ("pairs_per_task", 4),            # CPU budget (μLO: 8)
                  ("min_horizon", 50),              # runs of 50–200 ROUNDS (≥ truncation 50)
                  ("max_horizon", 200),
                  ("warmup_steps", 20),
                  ("eval_steps", 0))                # evaluate.py's per-step suite does not apply
