"""layers.py: the layers every task in tasks.py is built from, as pure functions of a flat params
dict ("layer/tensor" -> float32 array): initialization plans drawn in one truncated-normal call,
dense, layer norm, MLP, 'SAME' convolution (as an im2col matmul), a pre-LN causal transformer over
bytes, and the cross-entropy loss. Initializations follow haiku's defaults, as learned_optimization
(and so Celo, arXiv 2501.12670, App. A.4) builds its tasks.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

Params = dict   # flat dict: "layer/tensor" -> float32 array
PRNGKey = jax.Array

INIT_TRUNCATION = 2.0       # haiku Linear default: truncated normal ±2σ, σ = 1/sqrt(fan_in)
EMBED_INIT_STD = 1.0        # haiku Embed default: truncated normal, σ = 1
LAYER_NORM_EPS = 1e-5       # haiku LayerNorm default

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "sigmoid": jax.nn.sigmoid,
    "elu": jax.nn.elu,
    "silu": jax.nn.silu,
}


class InitSpec(NamedTuple):
    """How one tensor starts: std · truncated normal (±INIT_TRUNCATION σ), or a constant."""
    shape: tuple[int, ...]
    std: float = 0.0     # > 0: truncated normal with this σ
    const: float = 0.0   # used when std == 0


def init_from_plan(key: PRNGKey, plan: dict[str, InitSpec]) -> Params:
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


def dense_plan(name: str, fan_in: int, fan_out: int) -> dict[str, InitSpec]:
    # haiku Linear default (learned_optimization's hk.nets.MLP): σ = 1/sqrt(fan_in), bias 0
    return {f"{name}/w": InitSpec((fan_in, fan_out), 1.0 / math.sqrt(fan_in)),
            f"{name}/b": InitSpec((fan_out,))}


def zero_plan(fan_in: int, fan_out: int) -> dict[str, InitSpec]:
    """A linear layer l0 (w [fan_in, fan_out], b [fan_out]) that starts at exactly zero."""
    return {"l0/w": InitSpec((fan_in, fan_out)), "l0/b": InitSpec((fan_out,))}


def layer_norm_plan(name: str, dim: int) -> dict[str, InitSpec]:
    return {f"{name}_scale": InitSpec((dim,), const=1.0), f"{name}_offset": InitSpec((dim,))}


def mlp_plan(sizes: Sequence[int], layernorm: bool = False,
              prefix: str = "l") -> dict[str, InitSpec]:
    """Layers l0 … l{D}: l0 reads the input, l{D} is the output layer."""
    plan = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        plan.update(dense_plan(f"{prefix}{i}", fan_in, fan_out))
        if layernorm and i < len(sizes) - 2:
            plan.update(layer_norm_plan(f"{prefix}{i}/ln", fan_out))
    return plan


def layer_norm(x: jax.Array, scale: jax.Array, offset: jax.Array) -> jax.Array:
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.var(x, axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + LAYER_NORM_EPS) * scale + offset


def mlp_apply(params: Params, x: jax.Array, depth: int, activation: str,
               layernorm: bool = False, prefix: str = "l") -> jax.Array:
    act = ACTIVATIONS[activation]
    for i in range(depth):
        x = x @ params[f"{prefix}{i}/w"] + params[f"{prefix}{i}/b"]
        if layernorm:  # Celo App. A.5 task 2: layer-norm followed by the activation
            x = layer_norm(x, params[f"{prefix}{i}/ln_scale"],
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


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[..., None], axis=-1))


def transformer_plan(context: int, embed: int, hidden: int, layers: int) -> dict[str, InitSpec]:
    plan = {"embed/w": InitSpec((256, embed), EMBED_INIT_STD),
            "pos/w": InitSpec((context, embed), EMBED_INIT_STD)}
    for i in range(layers):
        b = f"b{i}/"
        plan.update(layer_norm_plan(b + "ln1", embed))
        plan.update(layer_norm_plan(b + "ln2", embed))
        plan.update(dense_plan(b + "qkv", embed, 3 * embed))
        plan.update(dense_plan(b + "proj", embed, embed))
        plan.update(dense_plan(b + "fc1", embed, hidden))
        plan.update(dense_plan(b + "fc2", hidden, embed))
    plan.update(layer_norm_plan("ln_f", embed))
    plan.update(dense_plan("head", embed, 256))
    return plan


def transformer_logits(params: Params, tokens: jax.Array, layers: int, heads: int,
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
        x = layer_norm(h, params[b + "ln1_scale"], params[b + "ln1_offset"])
        qkv = x @ params[b + "qkv/w"] + params[b + "qkv/b"]
        q, k, v = (t.reshape(batch, length, heads, head_dim) for t in jnp.split(qkv, 3, -1))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)
        scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
        attn = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)
        h = h + attn.reshape(batch, length, embed) @ params[b + "proj/w"] + params[b + "proj/b"]
        x = layer_norm(h, params[b + "ln2_scale"], params[b + "ln2_offset"])
        h = h + act(x @ params[b + "fc1/w"] + params[b + "fc1/b"]) @ params[b + "fc2/w"] \
            + params[b + "fc2/b"]
    h = layer_norm(h, params["ln_f_scale"], params["ln_f_offset"])
    return h @ params["head/w"] + params["head/b"]

