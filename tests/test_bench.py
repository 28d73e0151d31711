"""bench.py's PES scaling figures, at a tiny size: the keys are there and the values are positive
and finite (no timing is asserted: this machine's speed is not the test's business)."""
import json
import math
import os
import subprocess
import sys

import pytest

import bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--pes-opt", "small_fc_lopt", "--pes-pairs", "4", "--pes-truncation", "5",
        "--pes-task", "quadratic"]


def positive(x):
    return isinstance(x, float) and math.isfinite(x) and x > 0


@pytest.mark.skipif(len(bench.one_thread_counts()) < 2, reason="needs 2 cores and CPU affinity")
def test_one_thread_per_device_scaling_is_in_the_json(tmp_path):
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    cache = os.environ.get("LOPT_JAX_CACHE", os.path.join(ROOT, ".cache", "jax"))
    if cache:
        env["JAX_COMPILATION_CACHE_DIR"] = cache
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench.py"), "--skip",
                        "steps,cost,pes_shared", *TINY, "--json", str(out)],
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    for n in bench.one_thread_counts():
        assert positive(result[f"pes_inner_steps_per_s_{n}dev_1thread"])
    assert positive(result["pes_scaling_2dev_1thread"])
    assert "pes_scaling_2dev" not in result              # the shared-cores figure was skipped
    assert result["pes_size"] == {"pairs": 4, "truncation": 5, "task": "quadratic"}


def test_device_mode_measures_the_default_backend():
    result = bench.pes_scaling_device("small_fc_lopt", (4, 5, "quadratic"))
    assert result["pes_backend"] == "cpu"                # the tests run on the CPU
    assert positive(result["pes_inner_steps_per_s_1dev"])


def test_roofline_counts_bytes_and_flops_and_compares_the_update_to_them():
    """Adam must move (12 + 2·8) = 28 bytes per parameter; every figure is positive and finite,
    and the measured time is compared with max(bytes / bandwidth, FLOPs / peak)."""
    r = bench.update_roofline(16, names={"celo"})
    assert positive(r["bandwidth_gb_s"]) and positive(r["matmul_gflop_s"])
    assert set(r["optimizers"]) == {"adam", "celo"}
    adam, celo = r["optimizers"]["adam"], r["optimizers"]["celo"]
    assert adam["bytes_per_param"] == pytest.approx(28.0, rel=1e-3)   # + the step count
    assert celo["bytes_per_param"] > adam["bytes_per_param"]          # more state per parameter
    assert celo["flops_per_param"] > 10 * adam["flops_per_param"]     # a per-parameter MLP
    for row in (adam, celo):
        n = r["params"]
        roof = max(row["bytes_per_param"] * n / (r["bandwidth_gb_s"] * 1e9),
                   row["flops_per_param"] * n / (r["matmul_gflop_s"] * 1e9))
        assert row["roofline_ms"] == pytest.approx(1e3 * roof)
        assert row["vs_roofline"] == pytest.approx(row["ms"] / row["roofline_ms"])
