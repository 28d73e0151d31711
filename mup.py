"""μP for learned optimizers: the optimizee's parametrization and the μLO update rule.

μLO (arXiv 2406.00153) §4 "Initialization-μ", "Multipliers-μ", "Optimizer Update Scaling-μ"
(Eq. (3)), Propositions 4.1–4.2 (small_fc_lopt and VeLO in μP), App. C (recipe, zero output init, μVeLO
without the parameter-norm factor); Yang et al. 2021 (Tensor Programs V) for μP itself.
This file implements one `Scalings` table per parametrization (μP and the standard one, SP), one
wrapper that applies a table to an MLP task of tasks.py, one wrapper that applies its update
multipliers to any learned optimizer (μLO_M, μVeLO_M), and the multi-width meta-training recipe.

Per tensor kind, for a layer whose weight has fan_in rows (μLO, arXiv 2406.00153, §4):

    kind          init (μP)                 forward multiplier   update multiplier (Eq. (3))
    input  W      N(0, 1/fan_in) trunc ±2σ  1                    1
    hidden W      N(0, 1/fan_in) trunc ±2σ  1                    1/fan_in
    output W      0                         1/fan_in             1
    hidden bias   N(0, 1)                   1                    1
    output bias   N(0, 1)                   1/fan_in (of its W)  1
    norm gain/off as built (1, 0)           1                    1

SP is the same table with "as built" everywhere (tasks.py's haiku init: truncated normal
σ = 1/sqrt(fan_in), zero biases) and all multipliers 1. The two share every line of code below;
only the numbers in the table (and λ1) differ.
"""
from __future__ import annotations

import math
import re
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

import layers
import small_fc_lopt
import tasks
import velo
from lopt import LearnedOptimizer, param_scale

# ----------------------------------------------------------------------------- constants
INIT_TRUNCATION = layers.INIT_TRUNCATION  # ±2σ: the μLO code's truncated normal, no variance fix
BIAS_INIT_STD = 1.0        # "all biases start at N(0,1)" (μLO code; §4: biases are input layers)
MU_STEP_MULT = 0.01        # λ1 of μLO_M (App. C ablation, Fig. 7: 0.01 beats the default)
SP_STEP_MULT = 1e-3        # λ1 of the SP baseline LO_M (small_fc_lopt's default)
LOPT_HIDDEN = 4            # per-parameter MLP width. The paper's μLO_M uses 39 → 32 → 32 → 2; on
                           #   this CPU the 32-wide MLP costs 30× more per step (354 vs 11.6 ms on
                           #   MLP 64→512³→10, batch 128), so we keep small_fc_lopt's 4 (pass
                           #   hidden=32 for the paper's size). The μ and SP twins use the same.
VELO_SIZE = "small"        # velo.SIZES: VeLO-S's widths (H = 64, K = 32) on CPU; paper: (512, 256)
VELO_STEP_MULT = velo.STEP_MULT  # μVeLO keeps λ1 = 1e-3 (App. C: "not necessary to change")

KINDS = ("input", "hidden", "output", "bias", "output_bias", "norm")
BUILT = None               # in a table: "keep the builder's (SP, haiku) initialization"


class MuPError(tasks.TaskError, ValueError):
    """A task whose parameters are not an MLP this file knows how to parametrize."""


# ----------------------------------------------------------------------------- the tables

def _one(fan_in):
    return 1.0


def _inv(fan_in):
    return 1.0 / fan_in


class Scalings(NamedTuple):
    """A parametrization: per kind, the init σ (None: as built), and the forward and update
    multipliers, each a function of the layer's fan_in; plus the LO's λ1 that goes with it."""
    name: str
    init_std: dict        # kind -> (fan_in -> σ) | BUILT ; σ = 0 means zeros
    forward: dict         # kind -> (fan_in -> multiplier in the forward pass)
    update: dict          # kind -> (fan_in -> multiplier of the optimizer's update)
    step_mult: float      # λ1 of the learned optimizers trained in this parametrization


MU = Scalings(
    "mu",
    init_std={"input": lambda n: 1.0 / math.sqrt(n),     # §4 Initialization-μ: N(0, 1/fan_in)
              "hidden": lambda n: 1.0 / math.sqrt(n),
              "output": lambda n: 0.0,                   # App. C: zero (the table says N(0,1))
              "bias": lambda n: BIAS_INIT_STD,           # §4: biases are input layers, fan_in 1
              "output_bias": lambda n: BIAS_INIT_STD,
              "norm": BUILT},                            # §4: norm weights are input layers
    forward={"input": _one, "hidden": _one,
             "output": _inv,                             # §4 Multipliers-μ: output × 1/fan_in
             "output_bias": _inv,                        # logits = (hW + b)/fan_in (μLO code)
             "bias": _one, "norm": _one},
    update={"input": _one,
            "hidden": _inv,                              # Eq. (3): hidden layers × 1/fan_in
            "output": _one, "bias": _one, "output_bias": _one, "norm": _one},
    step_mult=MU_STEP_MULT)

SP = Scalings("sp", init_std={k: BUILT for k in KINDS}, forward={k: _one for k in KINDS},
              update={k: _one for k in KINDS}, step_mult=SP_STEP_MULT)

PARAMETRIZATIONS = {"mu": MU, "sp": SP}


# ----------------------------------------------------------------------------- layer kinds

_WEIGHT = re.compile(r"^(?P<prefix>[A-Za-z_]+)(?P<index>\d+)/w$")


class TensorInfo(NamedTuple):
    kind: str       # one of KINDS
    fan_in: int     # rows of the weight of the tensor's layer


def layer_table(shapes: dict) -> dict[str, TensorInfo]:
    """Kind and fan_in of every tensor of an MLP laid out as tasks.py builds it: a flat dict
    with {prefix}{i}/w of shape (fan_in, fan_out) and {prefix}{i}/b, i = 0 … D. Layer 0 reads the
    input (an input layer), layer D writes the output, the rest are hidden (μLO §4's definition:
    which of fan_in, fan_out grow with width). Other 1-d tensors (layer-norm) are "norm"."""
    weights = {}
    for name, shape in shapes.items():
        m = _WEIGHT.match(name)
        if m and len(shape) == 2:
            weights[name] = (m["prefix"], int(m["index"]))
    prefixes = {p for p, _ in weights.values()}
    if len(prefixes) != 1:
        raise MuPError(f"μP needs an MLP with layers l0/w … lD/w (tasks.image_mlp, teacher_student, "
                       f"image_autoencoder); got tensors {sorted(shapes)}")
    (prefix,) = prefixes
    last = max(i for _, i in weights.values())
    if sorted(i for _, i in weights.values()) != list(range(last + 1)) or last < 1:
        raise MuPError(f"μP needs layers {prefix}0 … {prefix}D with D ≥ 1; got {sorted(weights)}")
    table = {}
    for name, shape in shapes.items():
        layer, _, leaf = name.rpartition("/")
        m = re.fullmatch(rf"{prefix}(\d+)", layer)
        i = int(m[1]) if m else None
        if name in weights:
            kind = "input" if i == 0 else "output" if i == last else "hidden"
        elif m and leaf == "b" and len(shape) == 1:
            kind = "output_bias" if i == last else "bias"
        elif len(shape) <= 1 and m:
            kind = "norm"
        else:
            raise MuPError(f"μP: cannot tell the kind of tensor {name} {tuple(shape)}")
        table[name] = TensorInfo(kind, int(shapes[f"{prefix}{i}/w"][0]))
    return table


def task_layer_table(task: tasks.Task) -> dict[str, TensorInfo]:
    """layer_table of a task's parameters (shapes only: nothing is computed)."""
    shapes = jax.eval_shape(task.init, jax.random.PRNGKey(0))
    return layer_table({k: v.shape for k, v in shapes.items()})


def multiplier_table(table: dict[str, TensorInfo], column: dict) -> dict[str, float]:
    """One column (forward or update) of a Scalings, evaluated per tensor."""
    return {name: float(column[info.kind](info.fan_in)) for name, info in table.items()}


# ----------------------------------------------------------------------------- the optimizee

def parametrize(task: tasks.Task, scalings: Scalings) -> tasks.Task:
    """`task` (an MLP from tasks.py) in the parametrization `scalings`.

    init: the builder's draw, then every tensor whose kind has a σ in the table is redrawn
    (truncated normal ±2σ; σ = 0 gives zeros; biases are plain normals). loss: the builder's
    loss at the forward-multiplied parameters p·f (the same function as multiplying the layer's
    output, since (hW + b)·f = h(W·f) + b·f; its gradient is f·∇, as μP's). multipliers: the
    update column, read by the learned optimizers (scale_updates); None when all are 1 (SP)."""
    table = task_layer_table(task)
    fwd = multiplier_table(table, scalings.forward)
    upd = multiplier_table(table, scalings.update)
    redraw = {n: scalings.init_std[i.kind](i.fan_in) for n, i in table.items()
              if scalings.init_std[i.kind] is not BUILT}
    base_init, base_loss = task.init, task.loss

    def init(key):
        params = dict(base_init(key))
        for j, (name, std) in enumerate(sorted(redraw.items())):
            k = jax.random.fold_in(key, j + 1)
            shape = params[name].shape
            if std == 0.0:
                params[name] = jnp.zeros(shape, jnp.float32)                   # App. C
            elif table[name].kind in ("bias", "output_bias"):
                params[name] = std * jax.random.normal(k, shape, jnp.float32)  # N(0, 1)
            else:                                                              # N(0, 1/fan_in)
                params[name] = std * jax.random.truncated_normal(
                    k, -INIT_TRUNCATION, INIT_TRUNCATION, shape, jnp.float32)
        return params

    scaled = {n: f for n, f in fwd.items() if f != 1.0}

    def loss(params, batch):
        return base_loss({n: p * scaled[n] if n in scaled else p for n, p in params.items()},
                         batch)                                                # §4 Multipliers-μ

    if not redraw and not scaled and all(m == 1.0 for m in upd.values()):
        return task._replace(multipliers=None)   # SP: the builder's task, untouched
    multipliers = {n: jnp.float32(m) for n, m in upd.items()}
    return task._replace(name=f"{scalings.name}_{task.name}", init=jax.jit(init),
                         loss=jax.jit(loss), multipliers=multipliers)


def mu_task(task: tasks.Task) -> tasks.Task:
    """The μP version of an MLP task (μLO §4): the registry's task_transform for μ-optimizers."""
    return parametrize(task, MU)


def sp_task(task: tasks.Task) -> tasks.Task:
    """The standard parametrization: the task as tasks.py builds it (multipliers None)."""
    return parametrize(task, SP)


# ----------------------------------------------------------------------------- the optimizer

def scale_updates(updates, multipliers):
    """u ⊙ multiplier per tensor (μLO Eq. (3)); multipliers None (an SP model) leaves u as is."""
    if multipliers is None:
        return updates
    if jax.tree.structure(updates) != jax.tree.structure(multipliers):
        raise MuPError(f"the multiplier table has tensors {sorted(multipliers)}, the updates "
                       f"{jax.tree.structure(updates)}: build the optimizer for this task "
                       "(train.make_optax / mup.small_fc_lopt_m(task.multipliers))")
    return jax.tree.map(lambda u, m: u * m, updates, multipliers)


def scaled(lopt: LearnedOptimizer, multipliers, name: str | None = None,
           transform: Callable | None = None) -> LearnedOptimizer:
    """`lopt` with its final step multiplied per tensor by `multipliers` (μLO Eq. (3): "the only
    change from small_fc_lopt is the final step p ← p − step·multiplier"; features, their
    normalization and the MLP see the raw gradients and parameters). `transform(updates,
    params)` runs first (μVeLO drops VeLO's parameter-norm factor there)."""

    def step(theta, state, params, grads, loss=None):
        updates, state = lopt.step(theta, state, params, grads, loss)
        if transform is not None:
            updates = transform(updates, params)
        return scale_updates(updates, multipliers), state

    return lopt._replace(name=name or lopt.name, step=step)


def small_fc_lopt_m(multipliers=None, scalings: Scalings = MU, hidden: int = LOPT_HIDDEN
                    ) -> LearnedOptimizer:
    """μLO_M (scalings=MU: λ1 = 0.01, updates × the task's multipliers) or its SP twin LO_M
    (scalings=SP: λ1 = 1e-3, multipliers None): the same small_fc_lopt, the same wrapper."""
    base = small_fc_lopt.learned_optimizer(hidden=hidden, step_mult=scalings.step_mult)
    return scaled(base, multipliers, f"{scalings.name}_small_fc_lopt")


def without_param_scale(updates, params):
    """VeLO's update divided by its parameter-RMS factor sqrt(mean p² + 1e-9) (μLO App. C:
    μVeLO removes it, since zero-initialized tensors would never move)."""
    return jax.tree.map(
        lambda u, p: u / param_scale(p, velo.PARAM_SCALE_EPS), updates, params)


def velo_m(multipliers=None, size: str = VELO_SIZE, step_mult: float = VELO_STEP_MULT
           ) -> LearnedOptimizer:
    """μVeLO_M (μLO Prop. 4.2, App. C): VeLO without the parameter-norm factor, its update
    × the task's multipliers; λ1 unchanged."""
    return scaled(velo.learned_optimizer(size, step_mult, min_scale=0.0, anneal=False,
                                         max_norm=0.0),
                  multipliers, f"mu_velo_{size}",
                  transform=without_param_scale)


def optimizer(theta, num_steps, multipliers, scalings: Scalings = MU, hidden: int = LOPT_HIDDEN):
    """μLO_M (or its SP twin) with meta-parameters θ as an optax transformation for a model whose
    update multipliers are `multipliers` (a μ task's .multipliers)."""
    return small_fc_lopt_m(multipliers, scalings, hidden).optimizer(theta, num_steps)


def adam_m(learning_rate, multipliers):
    """μAdam (Yang et al. 2021, Table 3; μLO §5 baseline): Adam whose update is multiplied per
    tensor by the μ table (hidden layers × 1/fan_in), on the μ-parametrized model."""
    def init(params):
        return optax.EmptyState()

    def update(updates, state, params=None):
        return scale_updates(updates, multipliers), state

    return optax.chain(optax.adam(learning_rate), optax.GradientTransformation(init, update))


# ----------------------------------------------------------------------------- meta-training

DATASET = "fashion_mnist_8x8"   # all 60k images, 64 inputs (the paper: ImageNet 32×32×3)
DEPTH = 3                       # hidden layers: the paper's d3 MLP (input, 2 hidden, output W)
BATCH_SIZE = 128                # the paper: 4096 per task (CPU budget)
META_WIDTHS = (16, 32, 64)      # the paper's {128, 512, 1024} scaled by 1/16 (CPU budget)


def width_task(width: int, depth: int = DEPTH, batch_size: int = BATCH_SIZE,
               dataset: str = DATASET) -> tasks.Task:
    """The μLO_M task family member: MLP 64 → width^depth → 10, ReLU, in SP as tasks.py builds
    it (μ recipes apply mu_task on top)."""
    return tasks.image_mlp(dataset, hidden=(width,) * depth, activation="relu",
                           batch_size=batch_size)._replace(name=task_name(width, depth))


def task_name(width: int, depth: int = DEPTH) -> str:
    return f"mulo_fmnist8_d{depth}_w{width}"


def _named(width):
    def build():
        return width_task(width)
    build.__doc__ = f"mup.width_task({width}): MLP 64 → {width}^{DEPTH} → 10 (μLO_M meta-training)"
    return build


TASKS = {task_name(w): _named(w) for w in META_WIDTHS}


def register_tasks():
    """Make the meta-training widths resolvable by name (train.py --task-set, evaluate.py
    --tasks): adds TASKS to tasks.TASKS; never replaces an entry of the same name."""
    for name, build in TASKS.items():
        if tasks.TASKS.setdefault(name, build) is not build:
            raise MuPError(f"tasks.TASKS already has a different task named {name!r}")


register_tasks()

META_STEPS = 1800               # CPU budget (the paper: 5000): ~27 min at ~0.9 s per meta-step here
# μLO (arXiv 2406.00153) App. C, meta-training μLO_M: every meta-step one PES estimate per width
# (8 antithetic pairs each), averaged; truncation 50, σ 0.01, horizons log-uniform [100, 1000];
# AdamW warm-up 100 to 3e-3, cosine to 1e-3 at the end of the budget; no task augmentation.
TRAIN_SETTINGS = (("task_set", ",".join(TASKS)),
                  ("meta_steps", META_STEPS),
                  ("pairs_per_task", 8),
                  ("truncation", 50),
                  ("sigma", 0.01),
                  ("min_horizon", 100),
                  ("max_horizon", 1000),
                  ("augment", "none"),
                  ("meta_lr", 3e-3),
                  ("final_lr", 1e-3),
                  ("warmup_steps", 100),
                  ("decay_steps", META_STEPS),
                  ("eval_steps", 0))   # the per-width comparison is mulo_experiments.py width
# μVeLO_M (App. C): truncation 20, 8 perturbations per task, σ 0.01, the same schedule.
VELO_TRAIN_SETTINGS = tuple((k, 20 if k == "truncation" else v) for k, v in TRAIN_SETTINGS)


def build_small_fc_lopt(task, scalings: Scalings = MU):
    """The registry's build(task): μLO_M / LO_M with the task's own multiplier table."""
    return small_fc_lopt_m(task.multipliers, scalings)


def build_velo(task):
    return velo_m(task.multipliers)
