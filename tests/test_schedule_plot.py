"""schedule_plot.py on the shipped Celo θ at tiny horizons: one η per step for each horizon, the
same η_0 at every horizon (before any loss, Celo's scheduler sees only t/N = 0), a plot, and a
one-line error for a checkpoint of another optimizer."""
import json

import numpy as np
import pytest

import schedule_plot

CKPT = "checkpoints/celo.npz"


def test_one_eta_per_step_at_every_horizon_and_a_plot(tmp_path):
    out, js = tmp_path / "s.png", tmp_path / "s.json"
    schedule_plot.main(["--checkpoints", CKPT, "--horizons", "8,16", "--out", str(out),
                        "--json", str(js)])
    assert out.stat().st_size > 0
    curves = json.loads(js.read_text())[CKPT]
    eta8, eta16 = np.array(curves["8"]), np.array(curves["16"])
    assert eta8.shape == (8,) and eta16.shape == (16,)
    assert np.all(np.isfinite(eta16)) and np.all(eta16 > 0)
    np.testing.assert_allclose(eta8[0], eta16[0], rtol=1e-6)
    assert np.std(eta16) > 0                               # a schedule, not a constant


def test_a_checkpoint_of_another_optimizer_is_refused_in_one_line(tmp_path):
    with pytest.raises(SystemExit, match="this plot is for Celo"):
        schedule_plot.main(["--checkpoints", "checkpoints/small_fc_lopt.npz", "--horizons", "4",
                            "--out", str(tmp_path / "s.png")])
