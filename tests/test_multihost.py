"""Multi-host meta-training, on one machine: two processes of `train.py` (one CPU device each)
joined by jax.distributed over localhost, with gloo cross-process CPU collectives, give the θ and
the PES / AdamW state of a single-process run, and only process 0 writes files."""
import os
import socket
import subprocess
import sys

import numpy as np

import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the quadratic task: the cheapest to compile (two processes compile at once on 2 cores)
TINY = {"opt": "small_fc_lopt", "task_set": "quadratic", "pairs_per_task": 4, "truncation": 5,
        "min_horizon": 10, "max_horizon": 20, "warmup_steps": 2, "meta_steps": 3,
        "eval_steps": 0, "save_every_s": 1e9}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flags(settings):
    return [a for k, v in settings.items() for a in (f"--{k.replace('_', '-')}", str(v))]


def arrays(path):
    """Every array of a run's checkpoint (θ, AdamW and PES state, step), by name."""
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files if k.startswith(("theta/", "state/"))}


def test_two_processes_give_the_theta_of_one(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}   # one device per process
    env.update(JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
               JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2")
    cache = os.environ.get("LOPT_JAX_CACHE", os.path.join(ROOT, ".cache", "jax"))
    if cache:
        env["JAX_COMPILATION_CACHE_DIR"] = cache
    # the same command on both "hosts", except --out: each process gets its own folder, so the
    # test sees which process wrote
    procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *flags(TINY),
                               "--out", str(tmp_path / f"p{i}" / "run.npz")],
                              env={**env, "JAX_PROCESS_ID": str(i)}, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    try:
        # meanwhile, the single-process run (one device) in this process
        single = str(tmp_path / "single" / "run.npz")
        train.meta_train(train.resolve({**TINY, "out": single}), log=lambda *a, **k: None)
        logs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"process {i}:\n{log[-3000:]}"
        assert "2 device(s)" in log, log[-3000:]       # the mesh spans both processes' devices
    # process 0 writes the checkpoint, its CSV and plot; process 1 writes nothing
    assert sorted(os.listdir(tmp_path / "p0")) == ["run.csv", "run.npz", "run_meta_loss.png"]
    assert not (tmp_path / "p1").exists() or not os.listdir(tmp_path / "p1")
    assert "wrote" in logs[0] and "wrote" not in logs[1]
    multi, one = arrays(str(tmp_path / "p0" / "run.npz")), arrays(single)
    assert multi.keys() == one.keys()
    # Each pair's inner run is the same computation in both, and the gathered PES state matched
    # bit for bit when this was written; what differs is where ĝ's mean over pairs is summed (two
    # partial sums joined by gloo vs one sum): float32 rounding, ≈ 1e-7 relative, which AdamW's
    # first steps (lr ≤ 3e-3 × warm-up) carry into θ as ≈ 1e-8 (measured 7e-9). 1e-6 leaves room
    # for other XLA versions and stays far below what a real bug does: AdamW moves each coordinate
    # of θ by up to lr (1.5e-3 at step 1) along ĝ, so a wrong ĝ (a pair dropped or counted twice,
    # a per-process mean without the all-reduce) moves θ by ~1e-3; a wrong gather permutes pairs.
    for k in one:
        np.testing.assert_allclose(multi[k], one[k], rtol=0, atol=1e-6, err_msg=k)
