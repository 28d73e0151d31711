"""Tasks: the problems learned optimizers are meta-trained and evaluated on.

Celo (arXiv 2501.12670) §5.2 and App. A.4: meta-training uses small image MLPs (64 → 32 → 10,
ReLU, 8×8 grey-scale images, batch 64, cross-entropy) on MNIST, Fashion-MNIST, CIFAR-10 and SVHN;
App. A.5 lists the held-out evaluation tasks, of which this file builds CPU-sized analogues;
§3 Eqs. (7)–(10) (after Metz et al. 2022b, VeLO) define task augmentation, which re-parametrizes
the optimizee weights by a random τ. This file holds the Task builders, the named-task registry
and task augmentation; layers.py the layers the builders use, task_families.py the meta-training
and random task families, data.py the data.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from layers import (ACTIVATIONS, InitSpec, Params, PRNGKey, conv2d_same, cross_entropy,
                    dense_plan, init_from_plan, mlp_apply, mlp_plan, transformer_logits,
                    transformer_plan, zero_plan)

Batch = dict
Data = dict     # pytree of device arrays, passed to jitted code as an argument

# ----------------------------------------------------------------------------------------------
# Settings and constants (each with its source)
# ----------------------------------------------------------------------------------------------
IMAGE_SCALE = 255.0         # uint8 → [0, 1]; no centring, as learned_optimization's _image_map_fn
LOSS_CAP_FACTOR = 1.5       # PES meta-loss clip [0, 1.5·ln C] (learned_optimization normalizer)
AE_LOSS_CAP = 1.0           # learned_optimization image_mlp_ae normalizer: clip(loss, 0, 1)
REGRESSION_LOSS_CAP = 1.5   # 1.5 × the loss of predicting 0 for unit-variance targets (our choice,
                            # by analogy with 1.5·ln C = 1.5 × the loss of a uniform prediction)
TEXT_TEST_FRACTION = 0.1    # last 10% of the text corpus is its test split
TEACHER_WIDTH = 32          # teacher_student: one tanh hidden layer of this width (default)
TEACHER_NORM_SAMPLES = 4096  # inputs used once to scale the teacher to unit output variance
TAU_LOW, TAU_HIGH = 1e-3, 1e3  # Celo §5.2 / App. A.3: τ log-uniform in [0.001, 1000]
AUGMENT_MODES = ("global", "tensor", "parameter")  # Celo App. A.3 (global is the default)


# The data layer (data.py) owns the errors; they are re-exported here, so `tasks.TaskError` etc.
# stay the names the scripts catch.
from data import (DATASETS, SPLITS, DataFileError, DatasetNotAvailableError,  # noqa: F401
                  InvalidOptionError, TaskError, UnknownNameError, _choose, _load_dataset,
                  cache_dir, load_dataset, load_text)


def _check_int(name: str, value, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidOptionError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        upper = "" if high is None else f" and <= {high}"
        raise InvalidOptionError(f"{name} must be >= {low}{upper}, got {value}")
    return int(value)


def _check_widths(name: str, value, allow_empty: bool = False) -> tuple[int, ...]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, (tuple, list)) or (not value and not allow_empty):
        raise InvalidOptionError(f"{name} must be a non-empty tuple of positive integers, "
                                 f"got {value!r}")
    return tuple(_check_int(f"{name} entry", v, 1) for v in value)


def _check_float(name: str, value, low: float, inclusive: bool = True) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InvalidOptionError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value) or value < low or (not inclusive and value == low):
        raise InvalidOptionError(f"{name} must be {'>=' if inclusive else '>'} {low}, got {value}")
    return value


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidOptionError(f"{name} must be True or False, got {value!r}")
    return bool(value)


# ----------------------------------------------------------------------------------------------
# Task and data on device
# ----------------------------------------------------------------------------------------------
class Task(NamedTuple):
    """One optimization problem (the interface every optimizer, PES and script relies on).

    `data` is passed to jitted code as an argument, never closed over. Tasks built by the same
    builder with the same structure on different data compute the same functions, so after
    stack_data any member's loss / sample_batch serves the whole group under vmap.
    `multipliers` is filled by mup.py (μP per-tensor update multipliers) or left None.
    """
    name: str
    init: Callable[[PRNGKey], Params]
    loss: Callable[[Params, Batch], jax.Array]
    sample_batch: Callable[[Data, PRNGKey], Batch]
    data: Data
    loss_cap: float
    multipliers: Any = None


def _task(name: str, init, loss, sample_batch, data: Data, loss_cap: float) -> Task:
    """A Task whose functions are jitted, so that calling them outside jit compiles one program
    each (inside an outer jit they are simply inlined)."""
    return Task(name, jax.jit(init), jax.jit(loss), jax.jit(sample_batch), data,
                float(loss_cap))


@functools.lru_cache(maxsize=32)
def _device_images(name: str, split: str, root: str) -> Data:
    ds = _load_dataset(name, split, root)
    return {"x": jnp.asarray(ds.x), "y": jnp.asarray(ds.y), "n": jnp.asarray(len(ds.y),
                                                                             jnp.int32)}


def image_data(dataset: str, split: str = "train") -> Data:
    """Device data {"x": uint8 [N,H,W,C], "y": int32 [N], "n": int32 []} of an image dataset."""
    load_dataset(dataset, split)  # validates the names and surfaces data errors here
    return _device_images(dataset, split, str(cache_dir()))


def stack_data(datas: Sequence[Data]) -> Data:
    """Stack same-structure Data on a new leading axis, for vmapping tasks over datasets.

    Arrays whose shapes differ only in their first (row) axis are zero-padded to the longest;
    each member keeps its own row count in data["n"], and sample_batch draws rows below it, so
    the padding is never sampled.
    """
    if not datas:
        raise InvalidOptionError("stack_data needs at least one Data")
    flat = [jax.tree_util.tree_flatten_with_path(d) for d in datas]
    treedef = flat[0][1]
    for leaves, tdef in flat[1:]:
        if tdef != treedef:
            raise InvalidOptionError(f"stack_data: members have different structures: "
                                     f"{treedef} vs {tdef}")
    out = []
    for column in zip(*(leaves for leaves, _ in flat)):
        path = jax.tree_util.keystr(column[0][0])
        arrays = [jnp.asarray(a) for _, a in column]
        if len({a.dtype for a in arrays}) > 1:
            raise InvalidOptionError(f"stack_data: {path} has dtypes "
                                     f"{sorted({str(a.dtype) for a in arrays})}")
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            if len({s[1:] for s in shapes}) > 1 or min(len(s) for s in shapes) == 0:
                raise InvalidOptionError(f"stack_data: {path} has shapes {sorted(shapes)}, which "
                                         "differ beyond the row axis")
            rows = max(a.shape[0] for a in arrays)
            arrays = [jnp.pad(a, [(0, rows - a.shape[0])] + [(0, 0)] * (a.ndim - 1))
                      for a in arrays]
        out.append(jnp.stack(arrays))
    return jax.tree_util.tree_unflatten(treedef, out)


def _sample_rows(data: Data, key: PRNGKey, batch_size: int) -> jax.Array:
    return jax.random.randint(key, (batch_size,), 0, data["n"])


def _images_to_float(x: jax.Array) -> jax.Array:
    return x.astype(jnp.float32) / IMAGE_SCALE


def _classification_cap(num_classes: int) -> float:
    return LOSS_CAP_FACTOR * math.log(num_classes)


# ----------------------------------------------------------------------------------------------
# Builders
# ----------------------------------------------------------------------------------------------
def _image_dataset_args(dataset: str, split: str, batch_size: int):
    _choose("dataset", dataset, DATASETS)
    _choose("split", split, SPLITS)
    batch_size = _check_int("batch_size", batch_size, 1)
    ds = load_dataset(dataset, split)
    return ds, image_data(dataset, split), batch_size


def _split_suffix(split: str) -> str:
    return "" if split == "train" else f"_{split}"


def _image_sampler(batch_size: int) -> Callable[[Data, PRNGKey], Batch]:
    def sample_batch(data: Data, key: PRNGKey) -> Batch:
        rows = _sample_rows(data, key, batch_size)
        return {"x": _images_to_float(data["x"][rows]), "y": data["y"][rows]}
    return sample_batch


def small_training_set(data: Data, num_classes: int, subset: int, label_noise: float) -> Data:
    """The first `subset` rows of image data, a fraction `label_noise` of them (fixed rows, numpy
    seed 0) relabelled with uniformly drawn classes: a problem whose training loss can be driven
    far below what the full dataset allows, i.e. one that rewards fitting hard (memorization)."""
    subset = _check_int("subset", subset, 1, int(data["n"]))
    label_noise = _check_float("label_noise", label_noise, 0.0)
    if label_noise > 1.0:
        raise InvalidOptionError(f"label_noise must be a fraction in [0, 1], got {label_noise}")
    rng = np.random.default_rng(0)  # numpy: the problem, not the run's seed
    y = np.array(data["y"][:subset])
    rows = rng.permutation(subset)[:round(label_noise * subset)]
    y[rows] = rng.integers(0, num_classes, len(rows))
    return {"x": data["x"][:subset], "y": jnp.asarray(y, jnp.int32),
            "n": jnp.asarray(subset, jnp.int32)}


def image_mlp(dataset: str = "fashion_mnist_8x8", hidden: Sequence[int] = (32,),
              activation: str = "relu", batch_size: int = 64, layernorm: bool = False,
              split: str = "train", subset: int = 0, label_noise: float = 0.0) -> Task:
    """Flattened image → MLP → softmax cross-entropy (Celo App. A.4; App. A.5 tasks 1–3).

    subset > 0 trains on the first `subset` images only, `label_noise` of them relabelled at
    random (small_training_set): a memorization problem."""
    hidden = _check_widths("hidden", hidden)
    activation = _choose("activation", activation, ACTIVATIONS)
    ds, data, batch_size = _image_dataset_args(dataset, split, batch_size)
    subset = _check_int("subset", subset, 0)
    if subset:
        data = small_training_set(data, ds.num_classes, subset, label_noise)
    elif label_noise:
        raise InvalidOptionError("label_noise needs subset > 0 (the relabelled training set)")
    sizes = (int(np.prod(ds.x.shape[1:])), *hidden, ds.num_classes)
    depth, layernorm = len(hidden), bool(layernorm)

    plan = mlp_plan(sizes, layernorm)

    def init(key: PRNGKey) -> Params:
        return init_from_plan(key, plan)

    def loss(params: Params, batch: Batch) -> jax.Array:
        x = batch["x"].reshape(batch["x"].shape[0], -1)
        return cross_entropy(mlp_apply(params, x, depth, activation, layernorm), batch["y"])

    small = f"_sub{subset}_noise{label_noise:g}" if subset else ""
    name = (f"mlp_{dataset}_{'x'.join(map(str, hidden))}_{activation}"
            f"{'_ln' if layernorm else ''}_bs{batch_size}{_split_suffix(split)}{small}")
    return _task(name, init, loss, _image_sampler(batch_size), data,
                _classification_cap(ds.num_classes))


def image_conv(dataset: str = "fashion_mnist_16x16", channels: Sequence[int] = (16, 32),
               kernel: int = 3, activation: str = "relu", batch_size: int = 64,
               split: str = "train") -> Task:
    """Small conv net → global mean pool → linear → cross-entropy (Celo App. A.5 task 4).

    3×3 'SAME' convolutions (conv2d_same), stride 2 in the first layer and 1 after, as
    Conv_Cifar10_32x64x64; weights truncated normal with σ = 1/sqrt(k·k·C_in), biases 0.
    Params: conv{i}/w [k, k, C_in, C_out] (HWIO), conv{i}/b, head/w, head/b.
    """
    channels = _check_widths("channels", channels)
    kernel = _check_int("kernel", kernel, 1, 7)
    activation = _choose("activation", activation, ACTIVATIONS)
    ds, data, batch_size = _image_dataset_args(dataset, split, batch_size)
    in_channels, num_classes = ds.x.shape[-1], ds.num_classes
    act = ACTIVATIONS[activation]

    plan = dense_plan("head", channels[-1], num_classes)
    for i, (c_in, c_out) in enumerate(zip((in_channels, *channels[:-1]), channels)):
        plan[f"conv{i}/w"] = InitSpec((kernel, kernel, c_in, c_out),
                                      1.0 / math.sqrt(kernel * kernel * c_in))  # fan-in scaling
        plan[f"conv{i}/b"] = InitSpec((c_out,))

    def init(key: PRNGKey) -> Params:
        return init_from_plan(key, plan)

    def loss(params: Params, batch: Batch) -> jax.Array:
        h = batch["x"]
        for i in range(len(channels)):
            stride = 2 if i == 0 else 1
            h = act(conv2d_same(h, params[f"conv{i}/w"], stride) + params[f"conv{i}/b"])
        logits = jnp.mean(h, axis=(1, 2)) @ params["head/w"] + params["head/b"]
        return cross_entropy(logits, batch["y"])

    name = (f"conv_{dataset}_c{'x'.join(map(str, channels))}_k{kernel}_{activation}"
            f"_bs{batch_size}{_split_suffix(split)}")
    return _task(name, init, loss, _image_sampler(batch_size), data,
                _classification_cap(num_classes))


def image_autoencoder(dataset: str = "fashion_mnist_16x16",
                      hidden: Sequence[int] = (128, 32, 128), activation: str = "relu",
                      batch_size: int = 128, split: str = "train") -> Task:
    """MLP autoencoder, loss = mean (x − sigmoid(MLP(x)))² (Celo App. A.5 tasks 13–14; the
    loss and its cap of 1 follow learned_optimization's image_mlp_ae)."""
    hidden = _check_widths("hidden", hidden)
    activation = _choose("activation", activation, ACTIVATIONS)
    ds, data, batch_size = _image_dataset_args(dataset, split, batch_size)
    dim = int(np.prod(ds.x.shape[1:]))
    sizes, depth = (dim, *hidden, dim), len(hidden)

    plan = mlp_plan(sizes)

    def init(key: PRNGKey) -> Params:
        return init_from_plan(key, plan)

    def loss(params: Params, batch: Batch) -> jax.Array:
        x = batch["x"].reshape(batch["x"].shape[0], -1)
        recon = jax.nn.sigmoid(mlp_apply(params, x, depth, activation))
        return jnp.mean(jnp.square(x - recon))

    def sample_batch(data: Data, key: PRNGKey) -> Batch:
        return {"x": _images_to_float(data["x"][_sample_rows(data, key, batch_size)])}

    name = (f"ae_{dataset}_{'x'.join(map(str, hidden))}_{activation}_bs{batch_size}"
            f"{_split_suffix(split)}")
    return _task(name, init, loss, sample_batch, data, AE_LOSS_CAP)


def _device_text(split: str, reverse: bool = False) -> Data:
    text = load_text()
    cut = int(round(len(text) * (1.0 - TEXT_TEST_FRACTION)))
    part = text[:cut] if split == "train" else text[cut:]
    part = part[::-1] if reverse else part   # the same split, read from its end to its start
    return {"tokens": jnp.asarray(part), "length": jnp.asarray(len(part), jnp.int32)}


def byte_lm(context: int = 16, embed: int = 32, hidden: int = 64, layers: int = 1,
            heads: int = 2, batch_size: int = 32, activation: str = "gelu",
            split: str = "train", reverse: bool = False) -> Task:
    """Next-byte prediction on The Devil's Dictionary with a tiny causal transformer.

    A CPU-sized stand-in for Celo App. A.5 tasks 10–12 (TransformerLM on LM1B): vocabulary 256
    bytes, learned positions, `layers` pre-LN blocks, mean cross-entropy over all positions.
    data = {"tokens": uint8 [T], "n": number of valid window starts, "length": T}.
    reverse=True reads the text backwards (predict the previous byte): another sequence
    distribution from the only embedded corpus, for a held-out LM that shares no data with one
    trained forwards (a byte permutation would not do: it only permutes the embedding rows).
    """
    context = _check_int("context", context, 2, 512)
    embed = _check_int("embed", embed, 1)
    hidden = _check_int("hidden", hidden, 1)
    layers = _check_int("layers", layers, 1)
    heads = _check_int("heads", heads, 1)
    batch_size = _check_int("batch_size", batch_size, 1)
    activation = _choose("activation", activation, ACTIVATIONS)
    _choose("split", split, SPLITS)
    reverse = _check_bool("reverse", reverse)
    if embed % heads:
        raise InvalidOptionError(f"embed ({embed}) must be divisible by heads ({heads})")
    text = dict(_device_text(split, reverse))
    if int(text["length"]) <= context + 1:
        raise InvalidOptionError(f"context {context} is longer than the {split} text")
    data = {**text, "n": text["length"] - context}  # starts 0 … T − context − 1

    plan = transformer_plan(context, embed, hidden, layers)

    def init(key: PRNGKey) -> Params:
        return init_from_plan(key, plan)

    def loss(params: Params, batch: Batch) -> jax.Array:
        logits = transformer_logits(params, batch["x"], layers, heads, activation)
        return cross_entropy(logits, batch["y"])

    def sample_batch(data: Data, key: PRNGKey) -> Batch:
        starts = _sample_rows(data, key, batch_size)
        window = data["tokens"][starts[:, None] + jnp.arange(context + 1)].astype(jnp.int32)
        return {"x": window[:, :-1], "y": window[:, 1:]}

    name = (f"bytelm_devil{'_reversed' if reverse else ''}_ctx{context}_e{embed}_h{hidden}"
            f"_l{layers}_nh{heads}_{activation}_bs{batch_size}{_split_suffix(split)}")
    return _task(name, init, loss, sample_batch, data, _classification_cap(256))


def teacher_student(in_dim: int = 16, hidden: Sequence[int] = (32,), out_dim: int = 4,
                    batch_size: int = 64, activation: str = "relu", noise: float = 0.0,
                    teacher_seed: int = 0, teacher_width: int = TEACHER_WIDTH) -> Task:
    """Regression onto a fixed random teacher: y = T(x) + noise·ε, x ~ N(0, I), fresh each batch.

    Teacher: in_dim → teacher_width (tanh) → out_dim, weights N(0, 1/fan_in), its output layer
    rescaled once (on TEACHER_NORM_SAMPLES inputs) to unit variance per output, so predicting 0
    costs 1 + noise²; the cap is REGRESSION_LOSS_CAP times that. The student is an MLP with
    `hidden` widths and `activation`; loss = mean squared error over batch and outputs.
    """
    in_dim = _check_int("in_dim", in_dim, 1)
    out_dim = _check_int("out_dim", out_dim, 1)
    hidden = _check_widths("hidden", hidden)
    batch_size = _check_int("batch_size", batch_size, 1)
    activation = _choose("activation", activation, ACTIVATIONS)
    noise = _check_float("noise", noise, 0.0)
    teacher_seed = _check_int("teacher_seed", teacher_seed, 0)
    teacher_width = _check_int("teacher_width", teacher_width, 1)
    rng = np.random.default_rng(teacher_seed)  # numpy: unrelated to the student's init keys
    w0 = rng.standard_normal((in_dim, teacher_width)) / math.sqrt(in_dim)
    w1 = rng.standard_normal((teacher_width, out_dim)) / math.sqrt(teacher_width)
    probe = np.tanh(rng.standard_normal((TEACHER_NORM_SAMPLES, in_dim)) @ w0) @ w1
    w1 = w1 / probe.std(axis=0)
    data = {"teacher/w0": jnp.asarray(w0, jnp.float32), "teacher/w1": jnp.asarray(w1, jnp.float32),
            "noise": jnp.asarray(noise, jnp.float32)}
    sizes, depth = (in_dim, *hidden, out_dim), len(hidden)

    plan = mlp_plan(sizes)

    def init(key: PRNGKey) -> Params:
        return init_from_plan(key, plan)

    def loss(params: Params, batch: Batch) -> jax.Array:
        return jnp.mean(jnp.square(mlp_apply(params, batch["x"], depth, activation)
                                   - batch["y"]))

    def sample_batch(data: Data, key: PRNGKey) -> Batch:
        kx, ke = jax.random.split(key)
        x = jax.random.normal(kx, (batch_size, data["teacher/w0"].shape[0]), jnp.float32)
        y = jnp.tanh(x @ data["teacher/w0"]) @ data["teacher/w1"]
        y = y + data["noise"] * jax.random.normal(ke, y.shape, jnp.float32)
        return {"x": x, "y": y}

    teacher = "" if teacher_width == TEACHER_WIDTH else f"_tw{teacher_width}"
    name = (f"teacher_student_in{in_dim}_{'x'.join(map(str, hidden))}_out{out_dim}_{activation}"
            f"_noise{noise:g}_seed{teacher_seed}{teacher}_bs{batch_size}")
    return _task(name, init, loss, sample_batch, data, REGRESSION_LOSS_CAP * (1.0 + noise ** 2))


def quadratic(dim: int = 10, condition: float = 100.0, noise: float = 0.0,
              seed: int = 0) -> Task:
    """L(w) = mean_i ½ h_i (w_i − c_i − noise·ε_i)², a tiny synthetic problem for fast tests.

    Curvatures h_i are log-spaced from 1 down to 1/condition; the centre c ~ N(0, I) is fixed by
    `seed`; ε ~ N(0, I) is fresh in every batch; w0 ~ N(0, I). The cap is 1.5 × the expected
    loss at initialization, ½·mean_i h_i (1 + c_i² + noise²).
    """
    dim = _check_int("dim", dim, 1)
    condition = _check_float("condition", condition, 1.0)
    noise = _check_float("noise", noise, 0.0)
    seed = _check_int("seed", seed, 0)
    h = condition ** (-np.arange(dim) / max(dim - 1, 1))
    c = np.random.default_rng(seed).standard_normal(dim)  # numpy: unrelated to init keys
    cap = LOSS_CAP_FACTOR * float(np.mean(0.5 * h * (1.0 + c ** 2 + noise ** 2)))
    data = {"h": jnp.asarray(h, jnp.float32), "c": jnp.asarray(c, jnp.float32),
            "noise": jnp.asarray(noise, jnp.float32)}

    def init(key: PRNGKey) -> Params:
        return {"w": jax.random.normal(key, (dim,), jnp.float32)}

    def loss(params: Params, batch: Batch) -> jax.Array:
        return jnp.mean(0.5 * batch["h"] * jnp.square(params["w"] - batch["target"]))

    def sample_batch(data: Data, key: PRNGKey) -> Batch:
        eps = jax.random.normal(key, data["c"].shape, jnp.float32)
        return {"h": data["h"], "target": data["c"] + data["noise"] * eps}

    name = f"quadratic_d{dim}_k{condition:g}_noise{noise:g}_seed{seed}"
    return _task(name, init, loss, sample_batch, data, cap)


def linear_regression(in_dim: int = 32, out_dim: int = 1, batch_size: int = 64,
                      noise: float = 0.1, seed: int = 0) -> Task:
    """Least squares ŷ = x·w + b from w = 0, b = 0: y = x·w* + b* + noise·ε, x ~ N(0, I).

    Each column of w* is a random unit vector and b* ~ N(0, 1), fixed by `seed`; x and ε ~ N(0, I)
    are fresh every batch. The loss is the mean squared error; its expectation at the zero start
    is 1 + mean(b*²) + noise² (the cap is REGRESSION_LOSS_CAP times that), its minimum noise².
    """
    in_dim = _check_int("in_dim", in_dim, 1)
    out_dim = _check_int("out_dim", out_dim, 1)
    batch_size = _check_int("batch_size", batch_size, 1)
    noise = _check_float("noise", noise, 0.0)
    seed = _check_int("seed", seed, 0)
    rng = np.random.default_rng(seed)  # numpy: the problem, not the (zero) start
    w_true = rng.standard_normal((in_dim, out_dim))
    w_true /= np.linalg.norm(w_true, axis=0)          # x·w* has unit variance per output
    b_true = rng.standard_normal(out_dim)
    data = {"w": jnp.asarray(w_true, jnp.float32), "b": jnp.asarray(b_true, jnp.float32),
            "noise": jnp.asarray(noise, jnp.float32)}
    plan = zero_plan(in_dim, out_dim)

    def init(key: PRNGKey) -> Params:
        return init_from_plan(key, plan)

    def loss(params: Params, batch: Batch) -> jax.Array:
        return jnp.mean(jnp.square(batch["x"] @ params["l0/w"] + params["l0/b"] - batch["y"]))

    def sample_batch(data: Data, key: PRNGKey) -> Batch:
        kx, ke = jax.random.split(key)
        x = jax.random.normal(kx, (batch_size, data["w"].shape[0]), jnp.float32)
        y = x @ data["w"] + data["b"] + data["noise"] * jax.random.normal(
            ke, (batch_size, data["w"].shape[1]), jnp.float32)
        return {"x": x, "y": y}

    name = f"linreg_in{in_dim}_out{out_dim}_noise{noise:g}_seed{seed}_bs{batch_size}"
    cap = REGRESSION_LOSS_CAP * (1.0 + float(np.mean(b_true ** 2)) + noise ** 2)
    return _task(name, init, loss, sample_batch, data, cap)


def logistic_regression(dataset: str = "fashion_mnist_8x8", batch_size: int = 128,
                        split: str = "train") -> Task:
    """Multinomial logistic regression on flattened pixels, softmax(x·w + b), from w = 0, b = 0.

    A convex problem; at the zero start every prediction is uniform, so the loss there is exactly
    ln C, and the cap is 1.5·ln C, as for every classifier here.
    """
    ds, data, batch_size = _image_dataset_args(dataset, split, batch_size)
    plan = zero_plan(int(np.prod(ds.x.shape[1:])), ds.num_classes)

    def init(key: PRNGKey) -> Params:
        return init_from_plan(key, plan)

    def loss(params: Params, batch: Batch) -> jax.Array:
        x = batch["x"].reshape(batch["x"].shape[0], -1)
        return cross_entropy(x @ params["l0/w"] + params["l0/b"], batch["y"])

    name = f"logreg_{dataset}_bs{batch_size}{_split_suffix(split)}"
    return _task(name, init, loss, _image_sampler(batch_size), data,
                _classification_cap(ds.num_classes))


# ----------------------------------------------------------------------------------------------
# Registry of named tasks (all available offline)
# ----------------------------------------------------------------------------------------------
def _named(name: str, builder: Callable[..., Task], **kwargs) -> Callable[[], Task]:
    def build() -> Task:
        return builder(**kwargs)._replace(name=name)
    build.__doc__ = f"{builder.__name__}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
    return build


TASKS: dict[str, Callable[[], Task]] = {
    # Celo App. A.4: the meta-training task (Fashion-MNIST member of the four)
    "celo_fmnist_8x8": _named("celo_fmnist_8x8", image_mlp, dataset="fashion_mnist_8x8",
                              hidden=(32,), activation="relu", batch_size=64),
    # CPU-sized analogues of Celo App. A.5 evaluation tasks 1, 2, 3, 4, 14 and 10–12
    "fmnist16_mlp_128x128": _named("fmnist16_mlp_128x128", image_mlp,
                                   dataset="fashion_mnist_16x16", hidden=(128, 128),
                                   batch_size=128),
    "fmnist16_mlp_128x128x128_ln": _named("fmnist16_mlp_128x128x128_ln", image_mlp,
                                          dataset="fashion_mnist_16x16",
                                          hidden=(128, 128, 128), layernorm=True,
                                          batch_size=128),
    "fmnist16_mlp_128x128x128_tanh": _named("fmnist16_mlp_128x128x128_tanh", image_mlp,
                                            dataset="fashion_mnist_16x16",
                                            hidden=(128, 128, 128), activation="tanh",
                                            batch_size=128),
    "fmnist16_conv_16x32": _named("fmnist16_conv_16x32", image_conv,
                                  dataset="fashion_mnist_16x16", channels=(16, 32),
                                  batch_size=64),
    "fmnist16_ae_128x32x128": _named("fmnist16_ae_128x32x128", image_autoencoder,
                                     dataset="fashion_mnist_16x16", hidden=(128, 32, 128),
                                     batch_size=128),
    "devil_byte_lm": _named("devil_byte_lm", byte_lm, context=16, embed=32, hidden=64,
                            layers=1, heads=2, batch_size=32),
    # synthetic
    "teacher_student": _named("teacher_student", teacher_student, in_dim=16, hidden=(32,),
                              out_dim=4, batch_size=64),
    "quadratic": _named("quadratic", quadratic, dim=10, condition=100.0, noise=0.0),
    "quadratic_noisy": _named("quadratic_noisy", quadratic, dim=10, condition=100.0,
                              noise=0.1),
}


def get_task(name: str) -> Task:
    """Build the registered task `name`."""
    return TASKS[_choose("task", name, TASKS)]()


# ----------------------------------------------------------------------------------------------
# Task augmentation (Celo §3 Eqs. (7)–(10); VeLO's reparametrized weights)
# ----------------------------------------------------------------------------------------------
def sample_tau(key: PRNGKey, params: Params, mode: str = "global", low: float = TAU_LOW,
               high: float = TAU_HIGH) -> Params:
    """τ, a pytree like params, log-uniform in [low, high] (Celo §5.2: [1e-3, 1e3]).

    global: one τ for all tensors (the Celo default); tensor: one τ per tensor; parameter:
    one τ per entry. Leaves are float32 scalars (global, tensor) or the parameter's shape.
    """
    _choose("augmentation mode", mode, AUGMENT_MODES)
    low = _check_float("low", low, 0.0, inclusive=False)
    high = _check_float("high", high, low)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    lo, hi = math.log(low), math.log(high)

    def draw(k, shape):
        u = jax.random.uniform(k, shape, jnp.float32, lo, hi)
        return jnp.clip(jnp.exp(u), low, high)  # the clip only removes float32 rounding

    if mode == "global":
        tau = draw(key, ())
        taus = [tau for _ in leaves]
    else:
        keys = jax.random.split(key, max(len(leaves), 1))
        taus = [draw(k, () if mode == "tensor" else jnp.shape(p)) for k, p in zip(keys, leaves)]
    return jax.tree_util.tree_unflatten(treedef, taus)


def reparametrize(w: Params, tau: Params) -> Params:
    """The optimizee's weights τ·w seen by the forward pass (Celo Eq. (7))."""
    return jax.tree_util.tree_map(lambda wi, t: t * wi, w, tau)


def augment_init(params: Params, tau: Params) -> Params:
    """The optimizer's starting point θ0 / τ (Celo Eq. (8)), so τ·w0 = θ0."""
    return jax.tree_util.tree_map(lambda p, t: p / t, params, tau)


def augment_loss(loss: Callable[[Params, Batch], jax.Array],
                 tau: Params) -> Callable[[Params, Batch], jax.Array]:
    """w ↦ loss(τ·w, batch) (Celo Eq. (7)); its gradient is τ ⊙ (∇L)(τ·w) (Celo Eq. (10))."""
    def augmented(w: Params, batch: Batch) -> jax.Array:
        return loss(reparametrize(w, tau), batch)
    return augmented
