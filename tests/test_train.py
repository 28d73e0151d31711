"""train.py: resumable meta-training, atomic checkpoints, one compile, clear errors."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"opt": "small_fc_lopt", "task_set": "teacher_student", "pairs_per_task": 2,
        "truncation": 5, "min_horizon": 10, "max_horizon": 20, "eval_steps": 0,
        "warmup_steps": 2, "save_every_s": 1e9}


def tiny_cfg(tmp_path, **kw):
    return train.resolve({**TINY, "out": str(tmp_path / "run.npz"), **kw})


def quiet(*a, **k):
    pass


def test_resume_gives_identical_theta(tmp_path):
    a = tiny_cfg(tmp_path / "a", meta_steps=6)
    theta_a, done = train.meta_train(a, log=quiet)
    assert done
    b = tiny_cfg(tmp_path / "b", meta_steps=3)
    train.meta_train(b, log=quiet)
    theta_b, _ = train.meta_train(tiny_cfg(tmp_path / "b", meta_steps=6, resume=True), log=quiet)
    for x, y in zip(jax.tree.leaves(theta_a), jax.tree.leaves(theta_b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    name, loaded = train.load_checkpoint(b["out"])
    assert name == "small_fc_lopt"
    for x, y in zip(jax.tree.leaves(theta_a), jax.tree.leaves(loaded)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    rows = open(os.path.splitext(b["out"])[0] + ".csv").read().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == list(range(6))  # no duplicated rows
    assert os.path.exists(os.path.splitext(b["out"])[0] + "_meta_loss.png")


def test_meta_step_compiles_once(tmp_path, monkeypatch):
    made = []
    real = train.Trainer.__init__

    def spy(self, *a, **k):
        real(self, *a, **k)
        made.append(self)

    monkeypatch.setattr(train.Trainer, "__init__", spy)
    train.meta_train(tiny_cfg(tmp_path, meta_steps=5), log=quiet)
    assert made[0].step._cache_size() == 1


@pytest.mark.parametrize("opt, lr, drop", [("small_fc_lopt", 1e-2, 0.9), ("celo_joint", 3e-2, 0.9)])
def test_meta_training_lowers_the_meta_loss(tmp_path, opt, lr, drop):
    """A short run on a tiny task: the meta-loss of the last steps is below the first steps'
    (small_fc_lopt; Celo's rule and scheduler trained together)."""
    cfg = tiny_cfg(tmp_path, opt=opt, meta_steps=60, meta_lr=lr, final_lr=lr,
                   augment="none", pairs_per_task=4)
    train.meta_train(cfg, log=quiet)
    rows = open(os.path.splitext(cfg["out"])[0] + ".csv").read().splitlines()[1:]
    loss = np.array([float(r.split(",")[2]) for r in rows])
    assert loss[-15:].mean() < drop * loss[:15].mean(), loss


def test_interrupted_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "c.npz")
    train.save_checkpoint(path, "small_fc_lopt", {"a": jnp.ones(3)})
    real = np.savez

    def crash(f, **arrays):
        f.write(b"PK partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError):
        train.save_checkpoint(path, "small_fc_lopt", {"a": jnp.zeros(3)})
    monkeypatch.setattr(np, "savez", real)
    name, theta = train.load_checkpoint(path)
    np.testing.assert_array_equal(theta["a"], np.ones(3))
    assert os.listdir(tmp_path) == ["c.npz"]  # no temporary file left behind


def test_a_new_run_never_overwrites_an_earlier_one(tmp_path):
    cfg = tiny_cfg(tmp_path, meta_steps=2)
    train.meta_train(cfg, log=quiet)
    _, first = train.load_checkpoint(cfg["out"])
    notes = []
    train.meta_train({**cfg, "seed": 1}, log=notes.append)
    moved = [p for p in os.listdir(tmp_path) if p.startswith("run.2") and p.endswith(".npz")]
    assert len(moved) == 1 and any("moved to" in n for n in notes), (os.listdir(tmp_path), notes)
    _, kept = train.load_checkpoint(str(tmp_path / moved[0]))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(kept)))
    assert os.path.exists(str(tmp_path / moved[0]).replace(".npz", ".csv"))


def test_bad_checkpoints_give_one_line_errors(tmp_path):
    with pytest.raises(train.CheckpointError, match="does not exist"):
        train.load_checkpoint(str(tmp_path / "missing.npz"))
    good = str(tmp_path / "good.npz")
    train.save_checkpoint(good, "x", {"a": jnp.ones(1000)})
    raw = open(good, "rb").read()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(train.CheckpointError, match="unreadable or truncated"):
        train.load_checkpoint(str(truncated))
    foreign = str(tmp_path / "foreign.npz")
    np.savez(foreign, weights=np.ones(3))
    with pytest.raises(train.CheckpointError, match="not a"):
        train.load_checkpoint(foreign)


def test_checkpoint_keys_and_no_pickle(tmp_path):
    cfg = tiny_cfg(tmp_path, meta_steps=2)
    train.meta_train(cfg, log=quiet)
    with np.load(cfg["out"], allow_pickle=False) as f:
        keys = f.files
    assert any(k.startswith("theta/") for k in keys)
    assert any(k.startswith("state/opt/") for k in keys) and any(k.startswith("state/pes/") for k in keys)
    assert "config" in keys and "state/step" in keys
    # a stripped (shipped) checkpoint keeps θ exactly, drops the resume state, refuses --resume
    _, theta = train.load_checkpoint(cfg["out"])
    small = str(tmp_path / "stripped.npz")
    train.strip_checkpoint(cfg["out"], small)
    with np.load(small, allow_pickle=False) as f:
        assert not any(k.startswith("state/") for k in f.files)
    name, stripped = train.load_checkpoint(small)
    assert name == cfg["opt"]
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), theta, stripped))
    with pytest.raises(train.CheckpointError, match="holds θ only"):
        train.meta_train({**cfg, "out": small, "resume": True, "meta_steps": 3}, log=quiet)


def test_cli_errors_are_one_line(tmp_path):
    for args, needle in ((["--opt", "nope"], "unknown optimizer"),
                         (["--task-set", "nope"], "unknown task"),
                         (["--augment", "sideways"], "is not one of"),
                         (["--resume", "--out", str(tmp_path / "none.npz")], "does not exist")):
        r = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *args],
                           capture_output=True, text=True, cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], r.stderr


def test_settings_block_is_overridable():
    cfg = train.resolve(train.parse_args(["--meta-lr", "0.5", "--task-set", "quadratic"]))
    assert cfg["meta_lr"] == 0.5 and cfg["task_set"] == "quadratic"
    assert cfg["out"] == os.path.join("checkpoints", "small_fc_lopt.npz")


def test_celo_stage2_trains_only_the_scheduler(tmp_path):
    kw = dict(opt="celo", meta_lr=1e-2, final_lr=1e-2)
    stage1 = tiny_cfg(tmp_path / "s", meta_steps=2, stage1_steps=2, **kw)
    theta1, _ = train.meta_train(stage1, log=quiet)
    theta2, _ = train.meta_train(tiny_cfg(tmp_path / "s", meta_steps=4, stage1_steps=2,
                                          resume=True, **kw), log=quiet)
    init = train.recipe("celo").build(None).init_meta_params(jax.random.fold_in(jax.random.PRNGKey(0), 10 ** 6))
    changed = lambda a, b: any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert changed(init["rule"], theta1["rule"]) and not changed(init["scheduler"], theta1["scheduler"])
    assert not changed(theta1["rule"], theta2["rule"]) and changed(theta1["scheduler"], theta2["scheduler"])


def test_augmented_inner_loss_is_the_plain_loss_at_tau_w():
    """Celo Eqs. (7)–(10): the optimizer holds w = θ0/τ; the loss it sees is L(τ·w)."""
    task = train.tasks.get_task("teacher_student")
    lopt = train.small_fc_lopt.learned_optimizer()
    theta = lopt.init_meta_params(jax.random.PRNGKey(0))
    prob = train.make_problem(task, lopt, "global")
    key = jax.random.PRNGKey(3)
    inner = prob.init_inner(theta, {}, task.data, key, 100)
    tau = jax.tree.leaves(inner.tau)[0]
    assert not np.isclose(float(tau), 1.0)
    batch = task.sample_batch(task.data, jax.random.PRNGKey(5))
    _, loss = prob.step_inner(theta, {}, task.data, inner, jax.random.PRNGKey(5))
    plain = task.loss(jax.tree.map(lambda w: tau * w, inner.params), batch)
    np.testing.assert_allclose(loss, plain, rtol=1e-5)
    np.testing.assert_allclose(plain, task.loss(task.init(jax.random.split(key)[0]), batch), rtol=1e-4)
