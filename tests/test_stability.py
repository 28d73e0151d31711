"""stability.py: a real run of the shipped Celo that must end below its initial loss, and the
verdict on a run that ends above it (a fake curve), with the exit code and the JSON."""
import json

import numpy as np

import evaluate
import stability


def test_shipped_celo_lowers_a_quadratic_and_the_json_says_so(tmp_path):
    out = tmp_path / "s.json"
    assert stability.main(["--opts", "celo", "--tasks", "quadratic_d64_k1e3", "--steps", "30",
                           "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["ok"] and row["final"] < row["initial"] and row["steps"] == 30


def test_a_run_that_ends_above_its_start_fails(tmp_path, monkeypatch, capsys):
    rising = np.linspace(1.0, 3.0, 50)[None]               # [seeds, T]
    monkeypatch.setattr(evaluate, "opt_curves", lambda *a, **k: (rising, None, {}))
    out = tmp_path / "s.json"
    code = stability.main(["--opts", "celo", "--tasks", "quadratic_d64_k1e3", "--steps", "50",
                           "--json", str(out)])
    assert code == 1 and "FAIL celo quadratic_d64_k1e3 50" in capsys.readouterr().out
    assert json.loads(out.read_text())[0]["ok"] is False


def test_a_run_that_trains_then_collapses_fails_though_it_ends_below_its_start():
    """VeLO-small's old 25,000-step run: 2.317 → 0.6 → back to chance, 2.303 (a hair below)."""
    curve = np.concatenate([np.linspace(2.317, 0.6, 300), np.linspace(0.6, 2.303, 300)])[None]
    initial, best, final, ok = stability.verdict(curve)
    assert not ok and final < initial and best < 0.7
    # a run that keeps most of its progress (a late bump) passes; a NaN run fails
    kept = np.concatenate([np.linspace(2.3, 0.6, 300), np.linspace(0.6, 1.0, 300)])[None]
    assert stability.verdict(kept)[3]
    assert not stability.verdict(np.array([[2.0, 1.0, np.nan, 1.0]]))[3]


def test_bad_input_is_one_line(capsys):
    assert stability.main(["--opts", "adam"]) == 2
    assert stability.main(["--tasks", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and err.startswith("error: ")
