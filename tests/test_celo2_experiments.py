"""celo2_experiments.py: --quick end to end (files only under --out, parameter counts against the
hand formula), θ loading, and one-line errors for bad options."""
import json

import jax
import numpy as np
import pytest

import celo2
import celo2_experiments as cx


def lm_params(embed, layers, context=cx.CONTEXT, ratio=cx.MLP_RATIO):
    """byte_lm's parameter count by hand: embeddings 256·E + C·E; per block 2 layer norms (4E),
    qkv (3E² + 3E), proj (E² + E), MLP (2·rE² + rE + E); final layer norm 2E; head 256·E + 256."""
    e, h = embed, ratio * embed
    block = 4 * e + 3 * e * e + 3 * e + e * e + e + e * h + h + h * e + e
    return 256 * e + context * e + layers * block + 2 * e + 256 * e + 256


def test_quick_end_to_end_writes_only_under_out(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    default = cx.QUICK["out"]        # where --quick writes without --out
    before = sorted(default.rglob("*")) if default.exists() else None
    out = tmp_path / "out"
    assert cx.main(["--quick", "--theta-init", "--out", str(out)]) == 0
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["out/final_loss_vs_params.png", "out/loss_vs_steps.png", "out/results.json",
                     "out/table.md"]
    assert (sorted(default.rglob("*")) if default.exists() else None) == before
    assert all((out / f).stat().st_size > 1000 for f in ("loss_vs_steps.png",
                                                         "final_loss_vs_params.png"))
    r = json.loads((out / "results.json").read_text())
    params = [s["params"] for s in r["sizes"]]
    assert len(params) == 2 and params[0] < params[1]
    assert params == [lm_params(e, l) for e, l in cx.QUICK["sizes"]] == [5368, 12016]
    assert set(r["lr"]) == set(cx.QUICK["contenders"])
    assert all(lr in np.float32(cx.QUICK["lrs"]) for lr in r["lr"].values())
    assert r["config"]["theta"] == {"celo2": "init_meta_params"}
    for s in r["sizes"]:
        f = s["final_loss"]
        assert all(np.isfinite(list(f.values())))
        assert s["advantage_over_adamw"]["celo2"] == pytest.approx(f["adamw"] / f["celo2"])
    cap = capsys.readouterr()
    assert "note: celo2 runs its meta-initialization" in cap.err
    table = (out / "table.md").read_text()
    assert "| 8 × 1 | 5,368 |" in table and "L_adamw / L_celo2" in table and table in cap.out


def test_theta_from_checkpoint_or_meta_init(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(cx.CHECKPOINTS, "celo2", tmp_path / "missing.npz")
    thetas, source = cx.load_thetas(["celo2"], False, print)
    assert source == {"celo2": "init_meta_params"} and "is missing" in capsys.readouterr().out
    ref = celo2.init_meta_params(jax.random.PRNGKey(0), True)
    assert jax.tree.all(jax.tree.map(np.array_equal, thetas["celo2"], ref))
    monkeypatch.setitem(cx.CHECKPOINTS, "celo2", cx.ROOT / "checkpoints" / "celo_paper.npz")
    with pytest.raises(cx.ExperimentError, match="holds optimizer 'celo', not 'celo2'"):
        cx.load_thetas(["celo2"], False, print)


@pytest.mark.parametrize("args, needle", [
    (["--sizes", "8x"], "--sizes takes EMBEDxLAYERS pairs"),
    (["--sizes", "8x1,abc"], "--sizes takes EMBEDxLAYERS pairs"),
    (["--sizes", "7x1"], "embed a multiple of 2"),
    (["--steps", "0"], "--steps and --seeds must be >= 1, got 0"),
    (["--contenders", "celo2,muon"], "adamw (the reference) included"),
    (["--contenders", "adamw,sgd"], "--contenders takes names from"),
])
def test_bad_input_one_line_error(tmp_path, capsys, args, needle):
    assert cx.main(args + ["--out", str(tmp_path / "out")]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err.startswith("error: ") and cap.err.count("\n") == 1
    assert needle in cap.err, cap.err
    assert not (tmp_path / "out").exists()
