"""train.py: resumable meta-training, atomic checkpoints, one compile, clear errors; its run log
(run_log.py): progress, meta-loss plot, setting an earlier run aside."""
import os
import re
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import celo
import checkpoint
import pes
import registry
import run_log
import small_fc_lopt
import tasks
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
    name, loaded = checkpoint.load_checkpoint(b["out"])
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


def test_a_new_run_never_overwrites_an_earlier_one(tmp_path):
    cfg = tiny_cfg(tmp_path, meta_steps=2)
    train.meta_train(cfg, log=quiet)
    _, first = checkpoint.load_checkpoint(cfg["out"])
    notes = []
    train.meta_train({**cfg, "seed": 1}, log=notes.append)
    moved = [p for p in os.listdir(tmp_path) if p.startswith("run.2") and p.endswith(".npz")]
    assert len(moved) == 1 and any("moved to" in n for n in notes), (os.listdir(tmp_path), notes)
    _, kept = checkpoint.load_checkpoint(str(tmp_path / moved[0]))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(kept)))
    assert os.path.exists(str(tmp_path / moved[0]).replace(".npz", ".csv"))


def test_checkpoint_keys_and_no_pickle(tmp_path):
    cfg = tiny_cfg(tmp_path, meta_steps=2)
    train.meta_train(cfg, log=quiet)
    with np.load(cfg["out"], allow_pickle=False) as f:
        keys = f.files
    assert any(k.startswith("theta/") for k in keys)
    assert any(k.startswith("state/opt/") for k in keys) and any(k.startswith("state/pes/") for k in keys)
    assert "config" in keys and "state/step" in keys
    # a stripped (shipped) checkpoint keeps θ exactly, drops the resume state, refuses --resume
    _, theta = checkpoint.load_checkpoint(cfg["out"])
    small = str(tmp_path / "stripped.npz")
    checkpoint.strip_checkpoint(cfg["out"], small)
    with np.load(small, allow_pickle=False) as f:
        assert not any(k.startswith("state/") for k in f.files)
    name, stripped = checkpoint.load_checkpoint(small)
    assert name == cfg["opt"]
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), theta, stripped))
    with pytest.raises(checkpoint.CheckpointError, match="holds θ only"):
        train.meta_train({**cfg, "out": small, "resume": True, "meta_steps": 3}, log=quiet)


def test_cli_errors_are_one_line(tmp_path):
    for args, needle in ((["--opt", "nope"], "unknown optimizer"),
                         (["--task-set", "nope"], "unknown task"),
                         (["--augment", "sideways"], "is not one of"),
                         (["--meta-objective", "final"], "--meta-objective 'final' is not one of"),
                         (["--resume", "--out", str(tmp_path / "none.npz")], "does not exist")):
        r = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *args],
                           capture_output=True, text=True, cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], r.stderr


def test_meta_objective_reaches_every_pes_estimate(tmp_path, monkeypatch):
    """--meta-objective log: the PES estimate is traced with pes.Config.objective "log" (its
    math is checked against autodiff in test_pes), and the run logs a meta-loss in [0, 1]."""
    seen, real = [], pes.gradient
    monkeypatch.setattr(pes, "gradient", lambda p, c, *a: (seen.append(c.objective), real(p, c, *a))[1])
    cfg = tiny_cfg(tmp_path, meta_steps=1, meta_objective="log")
    train.meta_train(cfg, log=quiet)
    assert seen == ["log"]                                # traced once
    rows = run_log.read_csv(run_log.csv_path(cfg["out"]), upto=1)
    assert len(rows) == 1 and 0 < float(rows[0][2]) < 1   # step,stage,meta_loss,...


def test_settings_block_is_overridable():
    cfg = train.resolve(train.parse_args(["--meta-lr", "0.5", "--task-set", "quadratic"]))
    assert cfg["meta_lr"] == 0.5 and cfg["task_set"] == "quadratic"
    assert cfg["out"] == os.path.join("runs", "small_fc_lopt", "small_fc_lopt.npz")


def test_celo_stage2_starts_once_from_the_fit_then_trains_only_the_scheduler(tmp_path,
                                                                                 monkeypatch):
    """Stage 2's start (the fitted scheduler) runs once per run: at the end of stage 1 even when
    stage 2 has 0 meta-steps (the default recipe), never again on --resume nor on --init from a
    stripped checkpoint that had it; stage 2's PES then moves the scheduler alone."""
    monkeypatch.setattr(celo, "FIT_ITERS", 3)      # stage 2's start: a short fit of the scheduler
    monkeypatch.setattr(celo, "FIT_LENGTH", 60)
    kw = dict(opt="celo", meta_lr=1e-2, final_lr=1e-2, stage1_steps=2)
    logs = []
    starts = lambda: [m for m in logs if "starts from with_fitted_scheduler" in m]
    theta1, _ = train.meta_train(tiny_cfg(tmp_path / "s", meta_steps=2, **kw), log=logs.append)
    assert len(starts()) == 1 and "stage 2/2" in starts()[0]      # stage 2 of 0 meta-steps
    theta2, _ = train.meta_train(tiny_cfg(tmp_path / "s", meta_steps=4, resume=True, **kw),
                                 log=logs.append)
    train.meta_train(tiny_cfg(tmp_path / "s", meta_steps=5, resume=True, **kw), log=logs.append)
    checkpoint.strip_checkpoint(str(tmp_path / "s" / "run.npz"), str(tmp_path / "stripped.npz"))
    train.meta_train(tiny_cfg(tmp_path / "i", meta_steps=6, init=str(tmp_path / "stripped.npz"),
                              **kw), log=logs.append)
    assert len(starts()) == 1
    init = registry.recipe("celo").build(None).init_meta_params(jax.random.fold_in(jax.random.PRNGKey(0), 10 ** 6))
    changed = lambda a, b: any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert changed(init["rule"], theta1["rule"]) and changed(init["scheduler"], theta1["scheduler"])
    assert not changed(theta1["rule"], theta2["rule"]) and changed(theta1["scheduler"], theta2["scheduler"])


def test_celo_meta_trains_without_the_floor_and_is_used_with_it():
    """Meta-training builds Celo with min_scale 0 (the reference step: τ-augmentation rescales
    weights by up to 1e3); make_optax, evaluation and users get the floor."""
    r = registry.recipe("celo")
    assert all(dict(s.train_kwargs) == {"min_scale": 0.0} for s in r.stages)
    assert "min_scale" not in dict(r.stages[-1].build_kwargs)
    assert celo.MIN_PARAM_SCALE > 0


def test_augmented_inner_loss_is_the_plain_loss_at_tau_w():
    """Celo Eqs. (7)–(10): the optimizer holds w = θ0/τ; the loss it sees is L(τ·w)."""
    task = tasks.get_task("teacher_student")
    lopt = small_fc_lopt.learned_optimizer()
    theta = lopt.init_meta_params(jax.random.PRNGKey(0))
    prob = registry.make_problem(task, lopt, "global")
    key = jax.random.PRNGKey(3)
    inner = prob.init_inner(theta, {}, task.data, key, 100)
    tau = jax.tree.leaves(inner.tau)[0]
    assert not np.isclose(float(tau), 1.0)
    batch = task.sample_batch(task.data, jax.random.PRNGKey(5))
    _, loss = prob.step_inner(theta, {}, task.data, inner, jax.random.PRNGKey(5))
    plain = task.loss(jax.tree.map(lambda w: tau * w, inner.params), batch)
    np.testing.assert_allclose(loss, plain, rtol=1e-5)
    np.testing.assert_allclose(plain, task.loss(task.init(jax.random.split(key)[0]), batch), rtol=1e-4)


# ----------------------------------------------------------------------------- the front door

TINY_ARGS = ["--task-set", "teacher_student", "--pairs-per-task", "2", "--truncation", "5",
             "--min-horizon", "10", "--max-horizon", "20", "--eval-steps", "0",
             "--warmup-steps", "2", "--save-every-s", "1e9"]


def snapshot(folder):
    """{file: bytes} of a folder, to tell whether anything in it changed."""
    return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))}


def test_a_run_writes_under_runs_and_never_touches_checkpoints(tmp_path, monkeypatch, capsys):
    shipped = tmp_path / "checkpoints"
    shipped.mkdir()
    for name in ("small_fc_lopt.npz", "small_fc_lopt.csv"):
        (shipped / name).write_bytes(open(os.path.join(ROOT, "checkpoints", name), "rb").read())
    before, repo_before = snapshot(shipped), sorted(os.listdir(os.path.join(ROOT, "checkpoints")))
    monkeypatch.chdir(tmp_path)
    for _ in range(2):      # the second run sets the first aside, inside runs/
        assert train.main(["--opt", "small_fc_lopt", "--meta-steps", "2", *TINY_ARGS]) == 0
    assert snapshot(shipped) == before
    assert sorted(os.listdir(os.path.join(ROOT, "checkpoints"))) == repo_before
    run = os.path.join("runs", "small_fc_lopt", "small_fc_lopt")
    out = capsys.readouterr().out
    assert f"wrote {run}.npz, {run}.csv, {run}_meta_loss.png" in out, out
    files = os.listdir(tmp_path / "runs" / "small_fc_lopt")
    assert {"small_fc_lopt.npz", "small_fc_lopt.csv", "small_fc_lopt_meta_loss.png"} <= set(files)
    assert len([f for f in files if f.endswith(".npz")]) == 2, files
    # evaluate.py's default θ stays the shipped one, not the run's
    assert registry.shipped_checkpoint("small_fc_lopt") == os.path.join("checkpoints",
                                                                     "small_fc_lopt.npz")
    assert registry.shipped_checkpoint("velo") == os.path.join("checkpoints", "velo_small.npz")
    assert train.resolve({"opt": "velo"})["out"] == os.path.join("runs", "velo", "velo.npz")


def test_help_lists_every_setting_its_default_and_the_optimizers(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")                     # one line per flag
    text = train.make_parser().format_help()
    lines = {}                                                # flag → its entry, joined
    for line in text.split("options:\n")[1].split("\n\n")[0].splitlines():
        if line.startswith("  -"):
            flag = line.split()[0]
        lines[flag] = f"{lines.get(flag, '')} {line.strip()}".strip()
    for k, v in train.SETTINGS.items():
        line = lines["--" + k.replace("_", "-")]
        shown = f'"{v}"' if isinstance(v, str) else str(v)
        assert line.endswith(f"(default: {shown})"), line
    # the meaning is the settings block's comment (hand-copied here from train.py)
    assert "AdamW peak learning rate (μLO recipe) (default: 0.003)" in lines["--meta-lr"]
    assert "continue the run saved at --out" in lines["--resume"]
    assert all(name in text for name in registry.OPTIMIZERS) and "--strip" in lines


def test_bad_flags_are_one_line_and_exit_2(tmp_path):
    for args, expected in ((["--meta-lr", "abc"], "error: --meta-lr expects a float, got 'abc'"),
                           (["--no-such-flag"], "error: unknown argument(s) --no-such-flag")):
        r = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *args],
                           capture_output=True, text=True, cwd=tmp_path)
        assert r.returncode == 2 and r.stdout == "", r
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(expected), r.stderr


def test_meta_loss_plot_marks_stage_boundaries(tmp_path):
    rows = [[s, "rule" if s < 3 else "scheduler", "0.5", 0, "1", "0"] for s in range(5)]
    assert run_log.stage_starts(rows) == [(0, "rule"), (3, "scheduler")]   # a line at step 3
    assert run_log.stage_starts(rows[:3]) == [(0, "rule")]                 # one stage: no line
    run_log.plot_meta_loss(rows, str(tmp_path / "p.png"))
    assert os.path.getsize(tmp_path / "p.png") > 0


def test_eta_excludes_the_compiling_first_step():
    """First step of a stage: 100 s (compiling), then 2 s per step; 10 steps in all."""
    times = iter([100.0, 102.0, 104.0])
    progress = run_log.Progress(10, clock=lambda: next(times))
    progress.tty = False
    for step in (1, 2, 3):
        progress.update(step, 0.5, 1.0)
    assert progress.eta(3, 104.0) == 2.0 * 7                 # 2 s per step × 7 steps left


def test_set_aside_names_a_run_by_its_own_time(tmp_path):
    path = str(tmp_path / "run.npz")
    checkpoint.save_checkpoint(path, "x", {"a": jnp.ones(1)}, meta={"saved_at": "20200102-030405"})
    os.utime(path, (1e9, 1e9))                                # a fresh clone's mtime: ignored
    assert run_log.set_aside(path, log=quiet).endswith("run.20200102-030405.npz")
    checkpoint.save_checkpoint(path, "x", {"a": jnp.ones(1)}, meta={"saved_at": "20200102-030405"})
    assert run_log.set_aside(path, log=quiet).endswith("run.20200102-030405-1.npz")  # none lost
    checkpoint.save_checkpoint(path, "x", {"a": jnp.ones(1)})  # an older file: its mtime
    os.utime(path, (1e9, 1e9))
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(1e9))
    assert run_log.set_aside(path, log=quiet).endswith(f"run.{stamp}.npz")


def test_init_continues_a_full_checkpoint_and_restarts_from_a_stripped_one(tmp_path,
                                                                          monkeypatch):
    theta_a, _ = train.meta_train(tiny_cfg(tmp_path / "a", meta_steps=6), log=quiet)
    b = tiny_cfg(tmp_path / "b", meta_steps=3)
    train.meta_train(b, log=quiet)
    b_files = snapshot(tmp_path / "b")
    c = tiny_cfg(tmp_path / "c", meta_steps=6, init=b["out"])
    made, real = [], train.Trainer.__init__
    monkeypatch.setattr(train.Trainer, "__init__",
                        lambda self, *a, **k: (real(self, *a, **k), made.append(self))[0])
    theta_c, done = train.meta_train(c, log=quiet)
    assert done and snapshot(tmp_path / "b") == b_files          # the source is only read
    assert made[0].step._cache_size() == 1       # restored state: no second compile (ETA)
    for x, y in zip(jax.tree.leaves(theta_a), jax.tree.leaves(theta_c)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    rows = open(os.path.splitext(c["out"])[0] + ".csv").read().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(6))   # b's history, then c's
    assert checkpoint.read_checkpoint(c["out"])[4]["init"] == b["out"]
    # θ only: fresh AdamW / PES from that θ, at the step it was trained to (meta_steps_done 3)
    stripped = str(tmp_path / "stripped.npz")
    checkpoint.strip_checkpoint(b["out"], stripped)
    d = tiny_cfg(tmp_path / "d", meta_steps=4, init=stripped)
    theta_d, _ = train.meta_train(d, log=quiet)
    _, _, _, state, _ = checkpoint.read_checkpoint(d["out"])
    assert int(state["step"]) == 4 and int(state["opt"]["0"]) == 1   # one AdamW step, from 0
    assert not all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(theta_c),
                                                         jax.tree.leaves(theta_d)))
    with pytest.raises(train.ConfigError, match="already"):
        train.meta_train(tiny_cfg(tmp_path / "e", meta_steps=3, init=b["out"]), log=quiet)


def test_recipe_settings_must_name_a_setting(monkeypatch):
    """Recipes name train.py's settings by string (mup.TRAIN_SETTINGS, local_sgd.TRAIN_SETTINGS):
    every registered one is valid, and a typo is one ConfigError line that names it."""
    train.check_recipes()                      # the registry as shipped
    typo = registry.Recipe(lambda task: None, settings=(("meta_lr", 1e-3), ("meta_rl", 1e-3)))
    with pytest.raises(train.ConfigError, match="'typo' sets unknown setting.*meta_rl") as e:
        train.check_recipes({"typo": typo})
    assert "\n" not in str(e.value)
    monkeypatch.setitem(registry.OPTIMIZERS, "typo", typo)
    with pytest.raises(train.ConfigError, match="meta_rl"):
        train.resolve({"opt": "small_fc_lopt"})
    assert train.main(["--opt", "typo", "--meta-steps", "1"]) == 2


def test_the_documented_celo_recipe_is_the_registry_s():
    """docs/celo.md's recipe table against train.resolve (not a copy of its numbers)."""
    text = open(os.path.join(ROOT, "docs", "celo.md")).read()
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+?) \|", text, flags=re.M)
    assert len(rows) >= 15
    cfg = train.resolve({"opt": "celo"})
    for key, value in rows:
        assert str(cfg[key]) == value, (key, value, cfg[key])


def test_grad_clip_is_a_global_norm_clip_and_zero_turns_it_off():
    """Two PES estimates of norms 173 and 1.7: with grad_clip 1 AdamW sees both at norm 1;
    with grad_clip 0 it sees them as they are (optax.adamw with the recipe's settings)."""
    gs = [{"w": jnp.full((3,), 100.0)}, {"w": jnp.array([1.0, -1.0, 1.0])}]
    params = {"w": jnp.zeros(3)}

    def run(tx, grads):
        state, out = tx.init(params), []
        for g in grads:
            u, state = tx.update(g, state, params)
            out.append(u["w"])
        return out

    ref = optax.adamw(3e-4, weight_decay=1e-4)
    unit = [jax.tree.map(lambda x, g=g: x / optax.tree.norm(g), g) for g in gs]
    for clip, seen in ((1.0, unit), (0.0, gs)):
        tx = train.meta_optimizer(train.resolve({"opt": "celo", "grad_clip": clip}))
        for a, b in zip(run(tx, gs), run(ref, seen)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)


def test_task_sets_celo_family_and_both_with_restricted_kinds():
    """task_set "celo+family" = Celo's 8×8 group, then one group per family structure;
    family_kinds restricts the structures drawn; an unknown kind is one ConfigError line."""
    import task_families
    mix = dict(opt="celo", task_set="celo+family", num_family_tasks=3,
               family_kinds="teacher_student,image_autoencoder")
    groups = train.meta_tasks(train.resolve(mix), "celo")
    celo = train.meta_tasks(train.resolve({"opt": "celo"}), "celo")
    assert [t.name for t in groups[0]] == [t.name for t in celo[0]] and len(groups) == 4
    drawn = task_families.sample_task_family(0, 3, kinds=["teacher_student", "image_autoencoder"])
    assert [g[0].name for g in groups[1:]] == [t.name for t in drawn]
    assert all(t.name.startswith(("teacher_student", "ae_")) for t in drawn)
    family = train.meta_tasks(train.resolve({**mix, "task_set": "family"}), "celo")
    assert [g[0].name for g in family] == [t.name for t in drawn]
    with pytest.raises(train.ConfigError, match="--family-kinds: unknown kind 'cnn'"):
        train.resolve({"opt": "celo", "family_kinds": "cnn"})
    # the held-out comparison at the end: a bad name fails before meta-training, "" skips it
    with pytest.raises(train.ConfigError, match="--eval-tasks: unknown task 'tset'"):
        train.resolve({"opt": "celo", "eval_tasks": "tset"})
    assert train.resolve({"opt": "celo", "eval_tasks": ""})["eval_tasks"] == ""
