"""engine.py: the training runs that evaluate.py and baselines.py score (Celo, arXiv 2501.12670,
§4: the training loss at step t is the minibatch loss before update t).

One jit-compiled lax.scan over steps, vmapped over seeds (and a grid of hyper-parameters, e.g.
learning rates); the task's data is an argument of the compiled function, and compiled runners are
kept per (what, task functions, steps), so a new θ, grid or dataset does not recompile. Seed n
gives every optimizer the same initial point and the same batches; η is recorded when the
optimizer's state exposes one (Celo's State.eta).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import tasks as tasks_lib


def _schedule_of(state) -> jax.Array:
    """η of the latest update when the optimizer state exposes one (Celo's State.eta), else NaN."""
    eta = getattr(state, "eta", None)
    if eta is None or jnp.ndim(eta) != 0:
        return jnp.float32(jnp.nan)
    return jnp.asarray(eta, jnp.float32)


def _unroll(task: tasks_lib.Task, make_tx: Callable[[Any], Any], steps: int):
    """run(hp, data, key) -> (losses [steps], η [steps]): train task from init(key) with
    make_tx(hp); losses[i] is the minibatch loss before update i + 1 (the papers' training loss).
    Seed key → (init key, data key); batch i uses fold_in(data key, i), so every optimizer sees
    the same initial point and the same batches on the same seed."""
    def run(hp, data, key):
        k_init, k_data = jax.random.split(key)
        params = task.init(k_init)
        tx = make_tx(hp)
        state = tx.init(params)

        def body(carry, t):
            params, state = carry
            batch = task.sample_batch(data, jax.random.fold_in(k_data, t))
            loss, grads = jax.value_and_grad(task.loss)(params, batch)
            updates, state = tx.update(grads, state, params, value=loss)  # the contract
            return (optax.apply_updates(params, updates), state), (loss, _schedule_of(state))

        _, (losses, etas) = jax.lax.scan(body, (params, state), jnp.arange(steps))
        return losses, etas
    return run


_RUNNERS: dict = {}   # compiled runners, keyed by (what, task functions, steps)


def _runner(cache_key, task, make_tx, steps, grid: bool):
    fn = _RUNNERS.get(cache_key) if cache_key is not None else None
    if fn is None:
        run = jax.vmap(_unroll(task, make_tx, steps), (None, None, 0))    # seeds
        fn = jax.jit(jax.vmap(run, (0, None, None)) if grid else run)      # grid of hp
        if cache_key is not None:
            _RUNNERS[cache_key] = fn
    return fn


def seed_keys(seeds: Sequence[int]) -> jax.Array:
    return jnp.stack([jax.random.key(int(s)) for s in seeds])


def run_curves(task: tasks_lib.Task, make_tx: Callable[[Any], Any], hparams, steps: int,
               seeds: Sequence[int], grid: bool = False, cache_key=None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Training losses and η of make_tx(hparams) on `task`: [N, T] each, or [K, N, T] with
    grid=True (hparams then has a leading axis K: one compiled call for all K × N runs)."""
    fn = _runner(cache_key, task, make_tx, int(steps), grid)
    losses, etas = fn(hparams, task.data, seed_keys(seeds))
    return np.asarray(losses, np.float32), np.asarray(etas, np.float32)
