"""registry.py: the learned optimizers `--opt` can name, and how each is built and meta-trained.

One Recipe per name (its builder, its paper's settings, its stages, its task preparation), the
shipped checkpoint of each, and the default PES problem of a task trained by a learned optimizer
(Celo, arXiv 2501.12670, §3, Eqs. (7)–(10)). train.py, evaluate.py, bench.py and the experiment
scripts import this module; it imports no script.
"""
import os
from typing import Any, Callable, NamedTuple

import jax
import optax

import celo
import celo2
import local_sgd
import mup
import pes
import small_fc_lopt
import tasks
import velo


class Stage(NamedTuple):
    """One meta-training stage: which top-level θ entries it trains (None: all), the setting that
    holds its number of meta-steps (the last stage runs to meta_steps), keyword options for the
    optimizer's builder (e.g. Celo's η ≡ 1 in stage 1) and what θ starts the stage from."""
    name: str = "all"
    trainable: Any = None
    steps_setting: str = ""
    build_kwargs: Any = ()
    start: Callable = None     # (θ, key) -> θ when the stage begins at its first meta-step (once
                               # per run, also for a stage of 0 meta-steps), e.g. Celo's fit
    train_kwargs: Any = ()     # builder options while meta-training only (evaluation and
                               # make_optax use build_kwargs alone)


class Recipe(NamedTuple):
    """A registered learned optimizer: how to build it for a task, and how to meta-train it."""
    build: Callable            # (task, **stage.build_kwargs) -> lopt.LearnedOptimizer
    settings: Any = ()         # overrides of train.py's settings block: ((name, value), ...)
    stages: Any = (Stage(),)
    task_transform: Callable = lambda task: task   # e.g. μP re-parametrization (mup.py)
    problem: Callable = None   # (task, lopt, cfg) -> pes.Problem; None: make_problem below
    per_step: bool = True      # False: not an optax per-step optimizer (e.g. local-SGD server
                               # updates), so evaluate.py's per-step suite does not apply
    shipped: str = ""          # its θ in checkpoints/ ("": {name}.npz); see shipped_checkpoint
    init_variant_of: str = ""  # the entry whose step this one shares: it differs only in its
                               # meta-initialization (init_meta_params)


# Celo App. A.3: outer AdamW at a constant 3e-4 (weight decay 1e-4), unrolls of 100–2000 steps.
CELO_OUTER = (("meta_lr", 3e-4), ("final_lr", 3e-4), ("warmup_steps", 0), ("max_horizon", 2000))
# The CPU budget of `python train.py --opt celo` (the paper: 100K meta-steps per stage): 5000
# meta-steps of stage 1, then stage 2 is its start alone, the fitted scheduler (0 PES steps):
# on VALIDATION, 2000 stage-2 PES steps after the fit lowered the median score from 1.12 to 1.04
# (docs/celo.md). `--meta-steps 7000` adds them. checkpoints/celo.npz is this recipe's θ, bit for
# bit.
CELO_SETTINGS = CELO_OUTER + (("meta_steps", 5000), ("stage1_steps", 5000))

# Celo §3 "decoupled training": stage 1 learns the rule with η ≡ 1, stage 2 the scheduler, which
# (ours) starts fitted to a cosine decay of η (celo.PRIOR_ETA), not flat at η ≈ 1.
# Meta-training keeps the reference's pure relative step (min_scale 0: augmentation rescales the
# weights by up to 1e3, and a floor would break that invariance); the floor is for use.
CELO_TRAIN = (("min_scale", 0.0),)
CELO_STAGES = (Stage("rule", ("rule",), "stage1_steps", (("use_scheduler", False),),
                     train_kwargs=CELO_TRAIN),
               Stage("scheduler", ("scheduler",), "", (("use_scheduler", True),),
                     start=celo.with_fitted_scheduler, train_kwargs=CELO_TRAIN))

# Celo2 model cards: Celo's tasks, PES with truncation 50, unrolls of 100–2000 steps. Ours: Celo's
# outer AdamW; 3000 meta-steps (CPU budget); τ ∈ [0.1, 10], because Celo2's step has an absolute
# size (lr·unit RMS), so a global τ rescales its effective learning rate by τ and Celo's 1e3 range
# would span 1e6 in learning rate.
CELO2_SETTINGS = CELO_OUTER + (("meta_steps", 3000), ("tau_range", 10.0))

# VeLO's and small_fc_lopt_relative's tensor-scale floor and annealed step (velo.MIN_PARAM_SCALE,
# velo.ANNEAL; small_fc_lopt.py) are for use; meta-training runs the pure relative step, as for
# Celo's floor.
VELO_STAGES = (Stage(train_kwargs=(("min_scale", 0.0), ("anneal", False))),)

OPTIMIZERS = {
    # μLO's outer recipe (AdamW, warm-up to 3e-3, cosine to 1e-3) is the settings default.
    "small_fc_lopt": Recipe(lambda task: small_fc_lopt.learned_optimizer()),
    # Ours: small_fc_lopt's network with Celo's relative step and start (small_fc_lopt.py), Celo's
    # outer recipe; meta-trained with the reference's pure relative step, floor and anneal at use.
    "small_fc_lopt_relative": Recipe(
        lambda task, **kw: small_fc_lopt.learned_optimizer(relative=True, **kw),
        settings=CELO_OUTER + (("meta_steps", 3000),), stages=VELO_STAGES),
    # Celo (arXiv 2501.12670, §3, App. A.3): stage 1 learns the update rule with η ≡ 1, stage 2 the
    # scheduler with the rule frozen; outer AdamW at a constant 3e-4 with weight decay 1e-4.
    "celo": Recipe(lambda task, **kw: celo.learned_optimizer(**kw),
                   settings=CELO_SETTINGS, stages=CELO_STAGES),
    # Ablations of Celo Table 3: (c) single-stage (joint) training, (b) no scheduler (η ≡ 1).
    "celo_joint": Recipe(lambda task, **kw: celo.learned_optimizer(**kw), settings=CELO_SETTINGS),
    "celo_no_scheduler": Recipe(lambda task, **kw: celo.learned_optimizer(use_scheduler=False),
                                settings=CELO_SETTINGS),
    # VeLO (arXiv 2211.09760) at the small size (LSTM 64, bank 32: the widths of Celo's VeLO-S, not
    # its mixing; velo.py); the paper meta-trained with full-run ES: `--estimator es`. Same outer
    # recipe as Celo (App. A.3).
    "velo": Recipe(lambda task, **kw: velo.learned_optimizer("small", **kw),
                   settings=CELO_OUTER + (("meta_steps", 1500),), stages=VELO_STAGES,
                   shipped="velo_small.npz"),
    # Celo2 (arXiv 2602.19142): the normalized rule meta-trained with its harness in the loop
    # (celo2: Newton–Schulz on 2-D weights, AdamW elsewhere) or without it (celo2_base).
    "celo2": Recipe(lambda task, **kw: celo2.learned_optimizer(harness=True),
                    settings=CELO2_SETTINGS),
    "celo2_base": Recipe(lambda task, **kw: celo2.learned_optimizer(harness=False),
                         settings=CELO2_SETTINGS),
    # --- more registry entries below (one per learned optimizer) ---
    # μLO (arXiv 2406.00153, §4, App. C): small_fc_lopt in μP on μP optimizees (mup.py),
    # meta-trained on several widths at once; its SP twin (LO_M) with the same recipe; μVeLO_M.
    "mu_small_fc_lopt": Recipe(lambda task: mup.build_small_fc_lopt(task, mup.MU),
                               settings=mup.TRAIN_SETTINGS, task_transform=mup.mu_task),
    "sp_small_fc_lopt": Recipe(lambda task: mup.build_small_fc_lopt(task, mup.SP),
                               settings=mup.TRAIN_SETTINGS, task_transform=mup.sp_task),
    "mu_velo": Recipe(mup.build_velo, settings=mup.VELO_TRAIN_SETTINGS,
                      task_transform=mup.mu_task),
    # Local SGD with a learned global update (Joseph et al. 2023): one PES step = one round.
    "local_sgd_lopt": Recipe(lambda task: local_sgd.lopt(), settings=local_sgd.TRAIN_SETTINGS,
                             problem=local_sgd.train_problem, per_step=False),
    "local_sgd_lagg": Recipe(lambda task: local_sgd.lagg(), settings=local_sgd.TRAIN_SETTINGS,
                             problem=local_sgd.train_problem, per_step=False),
    # LOpt meta-trained over a range of settings: each run draws H ∈ {4, 8, 16} and a local lr
    # log-uniform in [0.1, 2] (local_sgd.train_problem_ranges; ours).
    "local_sgd_lopt_ranges": Recipe(lambda task: local_sgd.lopt(), settings=local_sgd.TRAIN_SETTINGS,
                                    problem=local_sgd.train_problem_ranges, per_step=False),
    # The paper's form: the MLP outputs the whole server update (no nominal SlowMo step).
    "local_sgd_lopt_paper": Recipe(lambda task: local_sgd.lopt_paper(),
                                   settings=local_sgd.TRAIN_SETTINGS,
                                   problem=local_sgd.train_problem, per_step=False),
}


def _init_variant(base, option, start):
    """OPTIMIZERS[base] with θ started from `start` (its builder's `option`, e.g. rule_init): the
    same step, settings and stages, marked init_variant_of=base, no shipped checkpoint."""
    r = OPTIMIZERS[base]

    def build(task, **kw):
        return r.build(task, **{option: start}, **kw)
    return r._replace(build=build, init_variant_of=base, shipped="")


# Other meta-initializations, for the ablations in docs/celo.md, docs/velo.md and docs/results.md:
# the papers' random one and the earlier starts of ours (the defaults, celo.RULE_INIT,
# velo.META_INIT and small_fc_lopt.INIT, are a blend of Adam's and Adafactor's directions).
INIT_VARIANTS = (("celo", "rule_init", ("random", "adam", "adafactor")),
                 ("velo", "meta_init", ("random", "adam", "adafactor")),
                 ("small_fc_lopt_relative", "meta_init", ("adafactor",)))
OPTIMIZERS.update({f"{base}_{start}_init": _init_variant(base, option, start)
                   for base, option, starts in INIT_VARIANTS for start in starts})


class ConfigError(ValueError):
    """A bad setting or name on the command line (printed as one line, exit code 2)."""


def recipe(name):
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; valid: {', '.join(sorted(OPTIMIZERS))}")
    return OPTIMIZERS[name]


def prepare_task(name, task):
    """The task as optimizer `name` expects it (μ-variants re-parametrize it)."""
    return recipe(name).task_transform(task)


def make_optax(name, theta, task, num_steps):
    """The learned optimizer `name` with meta-parameters θ, for one task, as an optax transform
    (built as in the last meta-training stage, e.g. Celo with its scheduler)."""
    r = recipe(name)
    return r.build(task, **dict(r.stages[-1].build_kwargs)).optimizer(theta, num_steps)


def shipped_checkpoint(name):
    """The θ this repository ships for `--opt name`, an input never written by a run:
    checkpoints/{name}.npz, or its recipe's `shipped` file (velo: checkpoints/velo_small.npz)."""
    shipped = getattr(OPTIMIZERS.get(name), "shipped", "")   # None: a test's stand-in registry
    return os.path.join("checkpoints", shipped or f"{name}.npz")


def run_dir(name):
    """Where a run of `--opt name` writes by default (git-ignored): runs/{name}/{name}.npz, with
    its .csv and _meta_loss.png beside it."""
    return os.path.join("runs", name)


# ----------------------------------------------------------------------------- the inner problem

class Inner(NamedTuple):
    """One inner training run: the optimizee's (augmented) params, the optimizer's state, τ."""
    params: Any
    opt_state: Any
    tau: Any


def make_problem(task, lopt, augment_mode, tau_range=tasks.TAU_HIGH):
    """PES's view of a task trained by a learned optimizer (Celo Eqs. (7)–(10) if augmenting).
    `shared` = the frozen part of θ; `group` = one dataset of the task's stacked data."""

    def init_inner(theta, shared, group, key, num_steps):
        k_init, k_tau = jax.random.split(key)
        params = task.init(k_init)
        tau = None
        if augment_mode != "none":
            tau = tasks.sample_tau(k_tau, params, augment_mode,     # Celo §3, τ ~ logU[1e-3, 1e3]
                                   1.0 / tau_range, tau_range)
            params = tasks.augment_init(params, tau)                # Celo Eq. (8): start at θ0/τ
        return Inner(params, lopt.init({**shared, **theta}, params, num_steps), tau)

    def step_inner(theta, shared, group, inner, key):
        loss_fn = task.loss if inner.tau is None else tasks.augment_loss(task.loss, inner.tau)
        batch = task.sample_batch(group, key)
        loss, grads = jax.value_and_grad(loss_fn)(inner.params, batch)  # Celo Eq. (10)
        updates, opt_state = lopt.step({**shared, **theta}, inner.opt_state, inner.params, grads,
                                       loss)
        return Inner(optax.apply_updates(inner.params, updates), opt_state, inner.tau), loss

    return pes.Problem(init_inner, step_inner, task.loss_cap)
