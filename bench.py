"""bench.py: speed of the learned optimizers and of meta-training, as ratios taken in one run.

    python bench.py [--json PATH] [--widths 256,1024,4096] [--skip pes]

Machines are noisy, so every comparison interleaves its contenders (A, B, A, B, …) and reports
the median of each; the README's numbers are the ratios. Measured here:
  * a full training step (forward, backward, update) of an MLP 784 → W → W → 10 (batch 128)
    with each learned optimizer versus optax.adam, and optimizer-state bytes per parameter;
  * PES throughput: inner optimizee steps per second in the Celo meta-training configuration
    (64 particles = 32 antithetic pairs, truncation 50, MLP 64 → 32 → 10, batch 64), on 1 and
    on 2 host devices (separate processes with XLA_FLAGS=--xla_force_host_platform_device_count).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

import pes
import small_fc_lopt
import tasks
import train

BATCH = 128
IN_DIM, OUT_DIM = 784, 10
REPEATS = 7          # timed rounds per contender (median reported)
PES_PAIRS = 32       # 64 particles: Celo's 4 datasets × 8 tasks × an antithetic pair
PES_TRUNCATIONS = 3  # timed truncations per round


def mlp_problem(width, key):
    """Params of an MLP 784 → W → W → 10 and a fixed random batch (no data loading)."""
    sizes = (IN_DIM, width, width, OUT_DIM)
    keys = jax.random.split(key, len(sizes))
    params = {f"l{i}": {"w": jax.random.normal(k, (a, b)) / np.sqrt(a), "b": jnp.zeros(b)}
              for i, (k, a, b) in enumerate(zip(keys, sizes[:-1], sizes[1:]))}
    x = jax.random.normal(keys[-1], (BATCH, IN_DIM))
    y = jax.random.randint(keys[-1], (BATCH,), 0, OUT_DIM)

    def loss(params):
        h = x
        for i in range(len(sizes) - 1):
            h = h @ params[f"l{i}"]["w"] + params[f"l{i}"]["b"]
            if i < len(sizes) - 2:
                h = jax.nn.relu(h)
        return optax.softmax_cross_entropy_with_integer_labels(h, y).mean()

    return params, loss


def train_step_fn(tx, loss):
    @jax.jit
    def step(params, state):
        value, grads = jax.value_and_grad(loss)(params)
        updates, state = tx.update(grads, state, params, value=value)
        return optax.apply_updates(params, updates), state
    return step


def interleaved(fns, repeats=REPEATS, inner=3):
    """Median seconds per call of each fn(), timing them in turns so drifts hit all alike."""
    times = [[] for _ in fns]
    for f in fns:
        jax.block_until_ready(f())  # compile and warm up
    for _ in range(repeats):
        for i, f in enumerate(fns):
            t = time.perf_counter()
            for _ in range(inner):
                out = f()
            jax.block_until_ready(out)
            times[i].append((time.perf_counter() - t) / inner)
    return [float(np.median(t)) for t in times]


def learned_optimizers():
    """name → optax factory (θ from a fresh init: speed does not depend on θ's values)."""
    out = {}
    for name in train.OPTIMIZERS:
        if name.startswith("local_sgd"):
            continue
        task = tasks.get_task("quadratic")
        lopt = train.recipe(name).build(task, **dict(train.recipe(name).stages[-1].build_kwargs))
        theta = lopt.init_meta_params(jax.random.PRNGKey(0))
        out[name] = partial(lopt.optimizer, theta)
    return out


def state_bytes_per_param(state, params):
    n = sum(x.size for x in jax.tree.leaves(params))
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state)) / n


def bench_steps(widths, names=None):
    """Step time of each learned optimizer relative to optax.adam, per MLP width."""
    opts = learned_optimizers()
    if names:
        opts = {k: v for k, v in opts.items() if k in names}
    results = {}
    for width in widths:
        params, loss = mlp_problem(width, jax.random.PRNGKey(width))
        contenders = {"adam": optax.with_extra_args_support(optax.adam(1e-3))}
        contenders.update({k: f(1000) for k, f in opts.items()})
        calls, states = [], {}
        for name, tx in contenders.items():
            state = tx.init(params)
            states[name] = state
            calls.append(partial(train_step_fn(tx, loss), params, state))
        times = interleaved(calls)
        n = sum(x.size for x in jax.tree.leaves(params))
        row = {"params": n, "adam_ms": 1e3 * times[0]}
        for (name, _), t in zip(contenders.items(), times):
            row[f"{name}_ms"] = 1e3 * t
            row[f"{name}_ratio"] = t / times[0]
            row[f"{name}_state_bytes_per_param"] = state_bytes_per_param(states[name], params)
        results[width] = row
        print(f"width {width:5d} ({n:,} params): adam {1e3 * times[0]:.2f} ms; " +
              ", ".join(f"{k} {row[k + '_ratio']:.2f}× ({row[k + '_state_bytes_per_param']:.0f} B/param)"
                        for k in contenders if k != "adam"), flush=True)
    return results


def pes_throughput(opt_name, augment="global"):
    """Inner steps per second of PES in the Celo configuration on all visible devices."""
    task = tasks.get_task("celo_fmnist_8x8")
    r = train.recipe(opt_name)
    lopt = r.build(task, **dict(r.stages[-1].build_kwargs))
    problem = train.make_problem(task, lopt, augment)
    cfg = pes.Config(PES_PAIRS, pes.TRUNCATION, pes.SIGMA, 100, 2000)
    mesh = pes.make_mesh() if len(jax.devices()) > 1 else None
    theta = lopt.init_meta_params(jax.random.PRNGKey(0))
    data = tasks.stack_data([task.data])
    state = jax.jit(partial(pes.init, problem, cfg, mesh=mesh))(theta, {}, data, jax.random.PRNGKey(0))
    grad = jax.jit(partial(pes.gradient, problem, cfg, mesh=mesh))
    holder = {"state": state, "i": 0}

    def call():
        holder["i"] += 1
        g, holder["state"], _ = grad(theta, {}, data, holder["state"], jax.random.PRNGKey(holder["i"]))
        return g

    seconds = interleaved([call], repeats=3, inner=PES_TRUNCATIONS)[0]
    return PES_PAIRS * 2 * cfg.truncation / seconds


def pes_scaling(opt_name):
    """Run pes_throughput in fresh processes with 1 and 2 host devices."""
    out = {}
    for n in (1, 2):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
                   JAX_PLATFORMS="cpu")
        r = subprocess.run([sys.executable, __file__, "--pes-worker", opt_name], env=env,
                           capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(r.stderr[-2000:])
        out[n] = float(r.stdout.strip().splitlines()[-1])
        print(f"PES ({opt_name}, Celo configuration) on {n} host device(s): {out[n]:,.0f} inner steps/s",
              flush=True)
    return {"pes_opt": opt_name, "pes_inner_steps_per_s_1dev": out[1],
            "pes_inner_steps_per_s_2dev": out[2], "pes_scaling_2dev": out[2] / (2 * out[1])}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default="")
    parser.add_argument("--widths", default="256,1024,4096")
    parser.add_argument("--opts", default="", help="comma-separated learned optimizers (default all)")
    parser.add_argument("--pes-opt", default="celo", help="optimizer for the PES throughput")
    parser.add_argument("--skip", default="", help="comma-separated: steps,pes")
    parser.add_argument("--pes-worker", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.pes_worker:
        print(pes_throughput(args.pes_worker))
        return 0
    skip = set(filter(None, args.skip.split(",")))
    result = {"devices": str(jax.devices()), "cpu_count": os.cpu_count()}
    if "steps" not in skip:
        widths = [int(w) for w in args.widths.split(",")]
        steps = bench_steps(widths, set(filter(None, args.opts.split(","))))
        result["steps"] = {str(k): v for k, v in steps.items()}
        at = str(1024 if 1024 in widths else widths[-1])
        result["step_ratio_vs_adam"] = {k[:-6]: v for k, v in steps[int(at)].items()
                                        if k.endswith("_ratio") and not k.startswith("adam")}
    if "pes" not in skip:
        name = args.pes_opt if args.pes_opt in train.OPTIMIZERS else "small_fc_lopt"
        result.update(pes_scaling(name))
        print(f"scaling 1 → 2 devices: {result['pes_scaling_2dev']:.2f} of ideal")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
