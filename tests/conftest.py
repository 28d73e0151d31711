"""Shared test set-up: float32 JAX on CPU, the repo root on sys.path, the oracle files."""
import os
import sys

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")
sys.path.insert(0, ROOT)

# Compiling dominates this suite's time (and XLA compiles on one core, hence `pytest -n 2`): keep
# compiled programs on disk (same program in several tests, and across runs), so each is compiled
# once; the xdist workers share the directory (JAX only warns on an unreadable entry, then
# compiles). Set LOPT_JAX_CACHE="" to turn it off.
_CACHE = os.environ.get("LOPT_JAX_CACHE", os.path.join(ROOT, ".cache", "jax"))
if _CACHE:
    jax.config.update("jax_compilation_cache_dir", _CACHE)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def load_oracle(name):
    """Reference vectors of Google's learned_optimization (copied from the shared oracles)."""
    return np.load(os.path.join(DATA, name), allow_pickle=False)


@pytest.fixture(scope="session")
def sfl_oracle():
    return load_oracle("small_fc_lopt.npz")


@pytest.fixture(scope="session")
def velo_oracle():
    return load_oracle("velo_tiny.npz")


def rel_col_err(ours, ref):
    """|ours − ref| / column RMS of ref (the oracle README's measure); all-zero columns absolute."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    ref2 = ref.reshape(-1, ref.shape[-1]) if ref.ndim > 1 else ref.reshape(-1, 1)
    ours2 = ours.reshape(ref2.shape)
    scale = np.sqrt(np.mean(ref2 ** 2, axis=0))
    scale = np.where(scale == 0, 1.0, scale)
    return float(np.max(np.abs(ours2 - ref2) / scale))


def run_on_two_devices(script):
    """Run `script` (its `{root}` filled in) in a fresh Python with 2 simulated CPU devices;
    fail with its stderr unless it exits 0. Device count is fixed at start-up, hence the process."""
    import subprocess
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", script.format(root=ROOT)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout
