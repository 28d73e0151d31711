"""Tasks: the problems learned optimizers are meta-trained and evaluated on.

Celo (arXiv 2501.12670) §5.2 and App. A.4: meta-training uses small image MLPs (64 → 32 → 10,
ReLU, 8×8 grey-scale images, batch 64, cross-entropy) on MNIST, Fashion-MNIST, CIFAR-10 and SVHN;
App. A.5 lists the held-out evaluation tasks, of which this file builds CPU-sized analogues;
§3 Eqs. (7)–(10) (after Metz et al. 2022b, VeLO) define task augmentation, which re-parametrizes
the optimizee weights by a random τ. This file holds the Task builders, the named-task registry,
the meta-training and random task families, and task augmentation; data.py loads the data.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Params = dict   # flat dict: "layer/tensor" -> float32 array
Batch = dict
Data = dict     # pytree of device arrays, passed to jitted code as an argument
PRNGKey = jax.Array

# ----------------------------------------------------------------------------------------------
# Settings and constants (each with its source)
# ----------------------------------------------------------------------------------------------
IMAGE_SCALE = 255.0         # uint8 → [0, 1]; no centring, as learned_optimization's _image_map_fn
LOSS_CAP_FACTOR = 1.5       # PES meta-loss clip [0, 1.5·ln C] (learned_optimization normalizer)
AE_LOSS_CAP = 1.0           # learned_optimization image_mlp_ae normalizer: clip(loss, 0, 1)
REGRESSION_LOSS_CAP = 1.5   # 1.5 × the loss of predicting 0 for unit-variance targets (our choice,
                            # by analogy with 1.5·ln C = 1.5 × the loss of a uniform prediction)
INIT_TRUNCATION = 2.0       # haiku Linear default: truncated normal ±2σ, σ = 1/sqrt(fan_in)
EMBED_INIT_STD = 1.0        # haiku Embed default: truncated normal, σ = 1
LAYER_NORM_EPS = 1e-5       # haiku LayerNorm default
TEXT_TEST_FRACTION = 0.1    # last 10% of the text corpus is its test split
TEACHER_WIDTH = 32          # teacher_student: one tanh hidden layer of this width (default)
TEACHER_NORM_SAMPLES = 4096  # inputs used once to scale the teacher to unit output variance
TAU_LOW, TAU_HIGH = 1e-3, 1e3  # Celo §5.2 / App. A.3: τ log-uniform in [0.001, 1000]
AUGMENT_MODES = ("global", "tensor", "parameter")  # Celo App. A.3 (global is the default)

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "sigmoid": jax.nn.sigmoid,
    "elu": jax.nn.elu,
    "silu": jax.nn.silu,
}


# The data layer (data.py) owns the errors; they are re-exported here, so `tasks.TaskError` etc.
# stay the names the scripts catch.
from data import (DATASETS, SPLITS, DataFileError, DatasetNotAvailableError,  # noqa: F401
                  InvalidOptionError, TaskError, UnknownNameError, _choose, _load_dataset,
                  cache_dir, dataset_available, load_dataset, load_text)


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


# ----------------------------------------------------------------------------------------------
# Layers (pure functions of a flat params dict)
# ----------------------------------------------------------------------------------------------
class InitSpec(NamedTuple):
    """How one tensor starts: std · truncated normal (±INIT_TRUNCATION σ), or a constant."""
    shape: tuple[int, ...]
    std: float = 0.0     # > 0: truncated normal with this σ
    const: float = 0.0   # used when std == 0


def _init_from_plan(key: PRNGKey, plan: dict[str, InitSpec]) -> Params:
    """Params from a static plan, with ONE truncated-normal draw sliced into the tensors (one
    small program to compile instead of one per tensor)."""
    random = [(n, s) for n, s in sorted(plan.items()) if s.std > 0]
    total = sum(math.prod(s.shape) for _, s in random)
    flat = jax.random.truncated_normal(key, -INIT_TRUNCATION, INIT_TRUNCATION, (max(total, 1),),
                                       jnp.float32)
    params, offset = {}, 0
    for name, spec in sorted(plan.items()):
        if spec.std > 0:
            size = math.prod(spec.shape)
            params[name] = spec.std * flat[offset:offset + size].reshape(spec.shape)
            offset += size
        else:
            params[name] = jnp.full(spec.shape, spec.const, jnp.float32)
    return params


def _dense_plan(name: str, fan_in: int, fan_out: int) -> dict[str, InitSpec]:
    # haiku Linear default (learned_optimization's hk.nets.MLP): σ = 1/sqrt(fan_in), bias 0
    return {f"{name}/w": InitSpec((fan_in, fan_out), 1.0 / math.sqrt(fan_in)),
            f"{name}/b": InitSpec((fan_out,))}


def _layer_norm_plan(name: str, dim: int) -> dict[str, InitSpec]:
    return {f"{name}_scale": InitSpec((dim,), const=1.0), f"{name}_offset": InitSpec((dim,))}


def _mlp_plan(sizes: Sequence[int], layernorm: bool = False,
              prefix: str = "l") -> dict[str, InitSpec]:
    """Layers l0 … l{D}: l0 reads the input, l{D} is the output layer."""
    plan = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        plan.update(_dense_plan(f"{prefix}{i}", fan_in, fan_out))
        if layernorm and i < len(sizes) - 2:
            plan.update(_layer_norm_plan(f"{prefix}{i}/ln", fan_out))
    return plan


def _layer_norm(x: jax.Array, scale: jax.Array, offset: jax.Array) -> jax.Array:
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.var(x, axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + LAYER_NORM_EPS) * scale + offset


def _mlp_apply(params: Params, x: jax.Array, depth: int, activation: str,
               layernorm: bool = False, prefix: str = "l") -> jax.Array:
    act = ACTIVATIONS[activation]
    for i in range(depth):
        x = x @ params[f"{prefix}{i}/w"] + params[f"{prefix}{i}/b"]
        if layernorm:  # Celo App. A.5 task 2: layer-norm followed by the activation
            x = _layer_norm(x, params[f"{prefix}{i}/ln_scale"],
                            params[f"{prefix}{i}/ln_offset"])
        x = act(x)
    return x @ params[f"{prefix}{depth}/w"] + params[f"{prefix}{depth}/b"]


def conv2d_same(x: jax.Array, w: jax.Array, stride: int) -> jax.Array:
    """'SAME' 2-D convolution, NHWC input, HWIO kernel, as an im2col matmul.

    Equal to jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME", ("NHWC", "HWIO",
    "NHWC")) (tested), with TF/haiku padding (the odd row/column of padding goes at the end).
    Written with slices and one matmul because XLA:CPU runs the *gradient* of
    conv_general_dilated about 100× slower inside lax.scan/while loops (measured with
    jax 0.10.2), which is exactly where PES unrolls inner training; slices and matmuls are fast
    everywhere.
    """
    k, size = w.shape[0], x.shape[1]
    out = -(-size // stride)                               # ceil(size / stride)
    pad = max((out - 1) * stride + k - size, 0)
    xp = jnp.pad(x, ((0, 0), (pad // 2, pad - pad // 2), (pad // 2, pad - pad // 2), (0, 0)))
    span = stride * (out - 1) + 1
    patches = jnp.concatenate([xp[:, i:i + span:stride, j:j + span:stride, :]
                               for i in range(k) for j in range(k)], axis=-1)  # (i, j, c) order
    return patches @ w.reshape(-1, w.shape[-1])             # HWIO flattens in the same order


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[..., None], axis=-1))


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


def image_mlp(dataset: str = "fashion_mnist_8x8", hidden: Sequence[int] = (32,),
              activation: str = "relu", batch_size: int = 64, layernorm: bool = False,
              split: str = "train") -> Task:
    """Flattened image → MLP → softmax cross-entropy (Celo App. A.4; App. A.5 tasks 1–3)."""
    hidden = _check_widths("hidden", hidden)
    activation = _choose("activation", activation, ACTIVATIONS)
    ds, data, batch_size = _image_dataset_args(dataset, split, batch_size)
    sizes = (int(np.prod(ds.x.shape[1:])), *hidden, ds.num_classes)
    depth, layernorm = len(hidden), bool(layernorm)

    plan = _mlp_plan(sizes, layernorm)

    def init(key: PRNGKey) -> Params:
        return _init_from_plan(key, plan)

    def loss(params: Params, batch: Batch) -> jax.Array:
        x = batch["x"].reshape(batch["x"].shape[0], -1)
        return _cross_entropy(_mlp_apply(params, x, depth, activation, layernorm), batch["y"])

    name = (f"mlp_{dataset}_{'x'.join(map(str, hidden))}_{activation}"
            f"{'_ln' if layernorm else ''}_bs{batch_size}{_split_suffix(split)}")
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

    plan = _dense_plan("head", channels[-1], num_classes)
    for i, (c_in, c_out) in enumerate(zip((in_channels, *channels[:-1]), channels)):
        plan[f"conv{i}/w"] = InitSpec((kernel, kernel, c_in, c_out),
                                      1.0 / math.sqrt(kernel * kernel * c_in))  # fan-in scaling
        plan[f"conv{i}/b"] = InitSpec((c_out,))

    def init(key: PRNGKey) -> Params:
        return _init_from_plan(key, plan)

    def loss(params: Params, batch: Batch) -> jax.Array:
        h = batch["x"]
        for i in range(len(channels)):
            stride = 2 if i == 0 else 1
            h = act(conv2d_same(h, params[f"conv{i}/w"], stride) + params[f"conv{i}/b"])
        logits = jnp.mean(h, axis=(1, 2)) @ params["head/w"] + params["head/b"]
        return _cross_entropy(logits, batch["y"])

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

    plan = _mlp_plan(sizes)

    def init(key: PRNGKey) -> Params:
        return _init_from_plan(key, plan)

    def loss(params: Params, batch: Batch) -> jax.Array:
        x = batch["x"].reshape(batch["x"].shape[0], -1)
        recon = jax.nn.sigmoid(_mlp_apply(params, x, depth, activation))
        return jnp.mean(jnp.square(x - recon))

    def sample_batch(data: Data, key: PRNGKey) -> Batch:
        return {"x": _images_to_float(data["x"][_sample_rows(data, key, batch_size)])}

    name = (f"ae_{dataset}_{'x'.join(map(str, hidden))}_{activation}_bs{batch_size}"
            f"{_split_suffix(split)}")
    return _task(name, init, loss, sample_batch, data, AE_LOSS_CAP)


def _transformer_plan(context: int, embed: int, hidden: int, layers: int) -> dict[str, InitSpec]:
    plan = {"embed/w": InitSpec((256, embed), EMBED_INIT_STD),
            "pos/w": InitSpec((context, embed), EMBED_INIT_STD)}
    for i in range(layers):
        b = f"b{i}/"
        plan.update(_layer_norm_plan(b + "ln1", embed))
        plan.update(_layer_norm_plan(b + "ln2", embed))
        plan.update(_dense_plan(b + "qkv", embed, 3 * embed))
        plan.update(_dense_plan(b + "proj", embed, embed))
        plan.update(_dense_plan(b + "fc1", embed, hidden))
        plan.update(_dense_plan(b + "fc2", hidden, embed))
    plan.update(_layer_norm_plan("ln_f", embed))
    plan.update(_dense_plan("head", embed, 256))
    return plan


def _transformer_logits(params: Params, tokens: jax.Array, layers: int, heads: int,
                        activation: str = "gelu") -> jax.Array:
    """Pre-LN causal transformer over bytes: tokens int32 [B, L] → logits [B, L, 256]."""
    batch, length = tokens.shape
    h = params["embed/w"][tokens] + params["pos/w"][:length]
    embed = h.shape[-1]
    head_dim = embed // heads
    causal = jnp.tril(jnp.ones((length, length), bool))
    act = ACTIVATIONS[activation]
    for i in range(layers):
        b = f"b{i}/"
        x = _layer_norm(h, params[b + "ln1_scale"], params[b + "ln1_offset"])
        qkv = x @ params[b + "qkv/w"] + params[b + "qkv/b"]
        q, k, v = (t.reshape(batch, length, heads, head_dim) for t in jnp.split(qkv, 3, -1))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)
        scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
        attn = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)
        h = h + attn.reshape(batch, length, embed) @ params[b + "proj/w"] + params[b + "proj/b"]
        x = _layer_norm(h, params[b + "ln2_scale"], params[b + "ln2_offset"])
        h = h + act(x @ params[b + "fc1/w"] + params[b + "fc1/b"]) @ params[b + "fc2/w"] \
            + params[b + "fc2/b"]
    h = _layer_norm(h, params["ln_f_scale"], params["ln_f_offset"])
    return h @ params["head/w"] + params["head/b"]


@functools.lru_cache(maxsize=4)
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

    plan = _transformer_plan(context, embed, hidden, layers)

    def init(key: PRNGKey) -> Params:
        return _init_from_plan(key, plan)

    def loss(params: Params, batch: Batch) -> jax.Array:
        logits = _transformer_logits(params, batch["x"], layers, heads, activation)
        return _cross_entropy(logits, batch["y"])

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

    plan = _mlp_plan(sizes)

    def init(key: PRNGKey) -> Params:
        return _init_from_plan(key, plan)

    def loss(params: Params, batch: Batch) -> jax.Array:
        return jnp.mean(jnp.square(_mlp_apply(params, batch["x"], depth, activation)
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


def _zero_plan(fan_in: int, fan_out: int) -> dict[str, InitSpec]:
    """A linear layer l0 (w [fan_in, fan_out], b [fan_out]) that starts at exactly zero."""
    return {"l0/w": InitSpec((fan_in, fan_out)), "l0/b": InitSpec((fan_out,))}


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
    plan = _zero_plan(in_dim, out_dim)

    def init(key: PRNGKey) -> Params:
        return _init_from_plan(key, plan)

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
    plan = _zero_plan(int(np.prod(ds.x.shape[1:])), ds.num_classes)

    def init(key: PRNGKey) -> Params:
        return _init_from_plan(key, plan)

    def loss(params: Params, batch: Batch) -> jax.Array:
        x = batch["x"].reshape(batch["x"].shape[0], -1)
        return _cross_entropy(x @ params["l0/w"] + params["l0/b"], batch["y"])

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
# Task families
# ----------------------------------------------------------------------------------------------
CELO_DATASETS = ("fashion_mnist_8x8", "mnist_8x8", "cifar10_grey_8x8")  # Celo App. A.4 (no SVHN)


def celo_meta_training_tasks(datasets: Sequence[str] | None = None) -> list[Task]:
    """The Celo meta-training tasks (App. A.4): MLP 64 → 32 → 10, ReLU, batch 64, 8×8 grey.

    One task per dataset, all with the same structure, so their data stack (stack_data) and
    one loss / sample_batch serves all of them under vmap. datasets=None takes the embedded
    Fashion-MNIST plus MNIST and CIFAR-10 when their files are already in the cache directory
    (never downloads); an explicit list loads exactly those (downloading when missing). SVHN,
    the paper's fourth dataset, is not supported (its files are MATLAB .mat).
    """
    if datasets is None:
        datasets = [d for d in CELO_DATASETS if dataset_available(d)]
    if isinstance(datasets, str) or not datasets:
        raise InvalidOptionError(f"datasets must be a non-empty list of names, got {datasets!r}")
    valid = [d for d, s in DATASETS.items() if s.size == 8 and s.variant != "5class"]
    out = []
    for d in datasets:
        _choose("8x8 ten-class dataset", d, valid)
        out.append(image_mlp(d, hidden=(32,), activation="relu", batch_size=64)
                   ._replace(name=f"celo_{d}"))
    return out


# The documented distribution of sample_task_family: kinds with probabilities, then per kind a
# uniform choice of each structural option below. All are small and CPU-cheap.
FAMILY_KIND_PROBS = {"image_mlp": 0.5, "image_conv": 0.15, "image_autoencoder": 0.1,
                     "teacher_student": 0.15, "byte_lm": 0.1}
FAMILY_DATASETS = ("fashion_mnist_8x8", "fashion_mnist_16x16", "fashion_mnist_8x8_inverted",
                   "fashion_mnist_8x8_5class")
FAMILY_WIDTHS = (16, 32, 64, 128)       # image MLP width (all hidden layers alike)
FAMILY_DEPTHS = (1, 2, 3)               # image MLP hidden layers
FAMILY_ACTIVATIONS = ("relu", "tanh", "gelu", "sigmoid", "elu")
FAMILY_BATCH_SIZES = (32, 64, 128)
FAMILY_LAYERNORM_PROB = 0.25
FAMILY_CONV_CHANNELS = ((8, 16), (16, 32), (16, 16, 32))
FAMILY_AE_HIDDEN = ((32, 8, 32), (64, 16, 64), (128, 32, 128))
FAMILY_TS = {"in_dim": (8, 16, 32), "width": (16, 32, 64), "depth": (1, 2), "out_dim": (1, 4, 8)}
FAMILY_LM = {"context": (8, 16), "embed": (16, 32), "layers": (1, 2), "batch_size": (16, 32)}


def sample_task_family(seed: int, num_tasks: int, kinds: Sequence[str] | None = None,
                       datasets: Sequence[str] | None = None) -> list[Task]:
    """Draw `num_tasks` task structures from the documented distribution (FAMILY_* above).

    Same seed → same list. `kinds` restricts the task kinds (renormalizing FAMILY_KIND_PROBS);
    `datasets` replaces FAMILY_DATASETS for the image tasks. Each Task has static shapes.
    """
    seed = _check_int("seed", seed, 0)
    num_tasks = _check_int("num_tasks", num_tasks, 1)
    kinds = list(FAMILY_KIND_PROBS) if kinds is None else list(kinds)
    for k in kinds:
        _choose("task kind", k, FAMILY_KIND_PROBS)
    datasets = list(FAMILY_DATASETS if datasets is None else datasets)
    for d in datasets:
        _choose("dataset", d, DATASETS)
    if not kinds or not datasets:
        raise InvalidOptionError("kinds and datasets must not be empty")
    probs = np.asarray([FAMILY_KIND_PROBS[k] for k in kinds])
    rng = np.random.default_rng(seed)

    def pick(options):
        return options[int(rng.integers(len(options)))]

    family = []
    for _ in range(num_tasks):  # options are drawn left to right, so a seed fixes the list
        kind = kinds[int(rng.choice(len(kinds), p=probs / probs.sum()))]
        if kind == "image_mlp":
            width, depth = pick(FAMILY_WIDTHS), pick(FAMILY_DEPTHS)
            task = image_mlp(pick(datasets), hidden=(width,) * depth,
                             activation=pick(FAMILY_ACTIVATIONS),
                             batch_size=pick(FAMILY_BATCH_SIZES),
                             layernorm=bool(rng.random() < FAMILY_LAYERNORM_PROB))
        elif kind == "image_conv":
            task = image_conv(pick(datasets), channels=pick(FAMILY_CONV_CHANNELS),
                              activation=pick(FAMILY_ACTIVATIONS),
                              batch_size=pick(FAMILY_BATCH_SIZES))
        elif kind == "image_autoencoder":
            task = image_autoencoder(pick(datasets), hidden=pick(FAMILY_AE_HIDDEN),
                                     batch_size=pick(FAMILY_BATCH_SIZES))
        elif kind == "teacher_student":
            width, depth = pick(FAMILY_TS["width"]), pick(FAMILY_TS["depth"])
            task = teacher_student(in_dim=pick(FAMILY_TS["in_dim"]), hidden=(width,) * depth,
                                   out_dim=pick(FAMILY_TS["out_dim"]),
                                   batch_size=pick(FAMILY_BATCH_SIZES),
                                   activation=pick(FAMILY_ACTIVATIONS),
                                   teacher_seed=int(rng.integers(2 ** 31)))
        else:
            embed = pick(FAMILY_LM["embed"])
            task = byte_lm(context=pick(FAMILY_LM["context"]), embed=embed, hidden=2 * embed,
                           layers=pick(FAMILY_LM["layers"]), heads=2,
                           batch_size=pick(FAMILY_LM["batch_size"]))
        family.append(task)
    return family


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
