"""evaluate.py and what it scores with: the training engine (engine.py) against a plain optax
loop, the baseline cache (baselines.py), the held-out VALIDATION and TEST suites (suite.py), the
CLI and its errors (the statistics: tests/test_metrics.py)."""
import inspect
import json
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import baselines
import checkpoint
import data as data_lib
import engine
import evaluate as ev
import metrics
import registry
import small_fc_lopt as sfl
import suite
import task_families
import tasks

TINY = tasks.quadratic(dim=4, condition=10.0, noise=0.1)   # compiles in about a second
T = 20                                                      # its steps in every test
SMALL_MLP = tasks.teacher_student(in_dim=4, hidden=(8,), out_dim=2, batch_size=8)  # 2-D weights


@pytest.fixture(autouse=True)
def nothing_under_runs(monkeypatch, tmp_path):
    monkeypatch.setattr(ev, "COMPILE_CACHE_DIR", None)  # no persistent XLA cache in tests
    monkeypatch.setattr(ev, "CACHE_DIR", tmp_path / "baselines")


# ----------------------------------------------------------------------------- engine

def python_loop_losses(task, lr, steps, seed, make_tx=optax.adam):
    """Oracle: the same run as a Python loop over steps of a plain make_tx(lr) update (optax.adam
    by default); lr is an argument of the jitted step, so other lrs do not recompile it."""
    @jax.jit
    def step(params, state, t, lr):
        batch = task.sample_batch(task.data, jax.random.fold_in(k_data, t))
        loss, grads = jax.value_and_grad(task.loss)(params, batch)
        updates, state = make_tx(lr).update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    k_init, k_data = jax.random.split(jax.random.key(seed))
    params = task.init(k_init)
    state, out = make_tx(lr).init(params), []
    for t in range(steps):
        params, state, loss = step(params, state, t, jnp.float32(lr))
        out.append(float(loss))
    return np.array(out)


def test_vmapped_scan_matches_python_loop_and_compiles_once():
    tuned = baselines.tune_baseline(TINY, "adam", T, [0, 3], cache_dir=None)
    assert tuned.losses.shape == (len(baselines.ADAM_LRS), 2, T)
    for k in (1, 5):
        for n, seed in enumerate((0, 3)):
            ref = python_loop_losses(TINY, baselines.ADAM_LRS[k], T, seed)
            np.testing.assert_allclose(tuned.losses[k, n], ref, rtol=2e-5, atol=1e-7)
    # the best lr is the one with the lowest mean final loss
    finals = metrics.final_loss(metrics.ema(tuned.losses)).mean(-1)
    assert tuned.best == int(np.argmin(finals))
    # a second sweep (other seeds) reuses the compiled function: no recompilation
    runner = engine._RUNNERS[("baseline", "adam", TINY.init, TINY.loss, TINY.sample_batch, T)]
    compiled = runner._cache_size()
    baselines.tune_baseline(TINY, "adam", T, [5, 6], cache_dir=None)
    assert runner._cache_size() == compiled


def test_baseline_cache_reuses_seeds(tmp_path, monkeypatch):
    calls = []
    real = engine.run_curves

    def counting(task, make_tx, hparams, steps, seeds, **kw):
        calls.append(list(seeds))
        return real(task, make_tx, hparams, steps, seeds, **kw)

    monkeypatch.setattr(baselines, "run_curves", counting)
    a = baselines.tune_baseline(TINY, "adam", T, [0, 1], cache_dir=tmp_path)
    b = baselines.tune_baseline(TINY, "adam", T, [1, 0, 2], cache_dir=tmp_path)
    assert calls == [[0, 1], [2]]                       # only the missing seed is trained
    np.testing.assert_array_equal(b.losses[:, :2], a.losses[:, ::-1])
    path, = tmp_path.glob("adam/*.npz")
    key = lambda task=TINY, name="adam", lrs=baselines.ADAM_LRS, steps=T: baselines._cache_path(
        tmp_path, task, name, lrs, steps)
    assert key() == path                                # keyed by task, baseline, grid, steps
    assert len({key(), key(steps=T + 1), key(name="adamw"), key(lrs=baselines.ADAM_LRS[1:]),
                key(task=TINY._replace(name="renamed")),
                key(task=tasks.quadratic(dim=4, condition=10.0, noise=0.2))}) == 6
    path.write_bytes(b"not a zip")                      # corrupt: warned about and recomputed
    baselines.tune_baseline(TINY, "adam", T, [0], cache_dir=tmp_path)
    assert calls[-1] == [0]
    with pytest.raises(ev.EvaluateError, match="unknown baseline 'nope'; valid: adam"):
        baselines.tune_baseline(TINY, "nope", T, [0], cache_dir=tmp_path)


# ----------------------------------------------------------------------------- API

def test_evaluate_optax_transformation_on_any_task():
    """optax.adam at tuned Adam's own lr reproduces tuned Adam exactly (same seeds, batches)."""
    adam = baselines.tune_baseline(TINY, "adam", T, [0, 1, 2], cache_dir=None)
    lr = float(adam.lrs[adam.best])
    entry = ev.evaluate_task(TINY, optax.adam(lr), steps=T, seeds=3, cache_dir=None)
    assert entry["final_loss"]["opt"] == pytest.approx(entry["final_loss"]["adam"], rel=1e-5)
    assert entry["adam_lr"] == pytest.approx(lr)


def test_muon_baseline_tuned_cached_and_matches_optax_loop(tmp_path):
    """muon = optax.contrib.muon(lr) tuned over ADAM_LRS: its best curve is a hand-run muon loop
    at the chosen lr; cached like the others; usable as an opt and in baselines=."""
    tuned = baselines.tune_baseline(SMALL_MLP, "muon", T, [0], cache_dir=tmp_path)
    assert tuned.losses.shape == (len(baselines.ADAM_LRS), 1, T)
    assert tuned.best == int(np.argmin(metrics.final_training_loss(tuned.losses).mean(-1)))
    lr = float(tuned.lrs[tuned.best])
    assert lr in np.float32(baselines.ADAM_LRS)
    ref = python_loop_losses(SMALL_MLP, lr, T, 0, optax.contrib.muon)
    np.testing.assert_allclose(tuned.best_losses[0], ref, rtol=2e-5, atol=1e-7)
    adam = python_loop_losses(SMALL_MLP, lr, T, 0)          # the oracle can tell muon from adam
    assert np.abs(adam - ref).max() > 1e-3
    assert len(list((tmp_path / "muon").glob("*.npz"))) == 1
    res = ev.evaluate("muon", [SMALL_MLP], T, 1, cache_dir=tmp_path, reps=50).result
    entry = res["tasks"][SMALL_MLP.name]
    assert entry["opt_lr"] == pytest.approx(lr)
    assert entry["final_loss"]["opt"] == pytest.approx(float(metrics.final_training_loss(ref)),
                                                       rel=1e-5)
    both = ev.evaluate("adam", [SMALL_MLP], T, 1, cache_dir=tmp_path, baselines=("muon",),
                       reps=50).result
    assert set(both["baselines"]) == {"muon"}


def test_cosine_baselines_decay_the_tuned_lr_to_zero_over_the_run():
    """adamw_cosine / muon_cosine: the base optimizer at lr·½(1 + cos(πt/T)), Celo2's default
    schedule: the best curve is a hand-run optax loop with optax's own cosine decay to 0 over T
    steps, and differs from the constant-lr baseline at the same lr."""
    for base, make in (("adamw", lambda s: optax.adamw(s, weight_decay=baselines.ADAMW_WEIGHT_DECAY)),
                       ("muon", optax.contrib.muon)):
        tuned = baselines.tune_baseline(SMALL_MLP, base + "_cosine", T, [0], cache_dir=None)
        lr = float(tuned.lrs[tuned.best])
        cos = lambda lr: make(optax.cosine_decay_schedule(lr, T))
        ref = python_loop_losses(SMALL_MLP, lr, T, 0, cos)
        np.testing.assert_allclose(tuned.best_losses[0], ref, rtol=2e-5, atol=1e-7)
        flat = python_loop_losses(SMALL_MLP, lr, T, 0, make)
        assert np.abs(flat - ref)[T // 2:].max() > 1e-4
    with pytest.raises(ev.EvaluateError, match="unknown baseline 'sgdm_cosine'"):
        baselines.tune_baseline(SMALL_MLP, "sgdm_cosine", T, [0], cache_dir=None)


@pytest.mark.skipif("celo2" not in getattr(registry, "OPTIMIZERS", {}),
                    reason="celo2 not registered")
def test_tune_lr_picks_the_grid_lr_with_the_lowest_final_loss():
    """evaluate(celo2, tune_lr=True): one vmapped sweep over ADAM_LRS; the chosen lr's curve is a
    hand-run celo2.optimizer(θ, lr, T) loop, and its final loss is below its grid neighbour's."""
    import celo2
    theta = celo2.init_meta_params(jax.random.PRNGKey(0), True)
    res = ev.evaluate("celo2", [SMALL_MLP], T, 1, theta=theta, cache_dir=None, reps=50,
                      tune_lr=True)
    entry = res.result["tasks"][SMALL_MLP.name]
    assert res.result["tune_lr"] == pytest.approx(list(baselines.ADAM_LRS))
    lr = entry["opt_lr"]
    assert lr in np.float32(baselines.ADAM_LRS)
    make = lambda lr: celo2.optimizer(theta, lr, T, harness=True)
    chosen = python_loop_losses(SMALL_MLP, lr, T, 0, make)
    np.testing.assert_allclose(res.curves[SMALL_MLP.name]["opt"][0], chosen, rtol=1e-4, atol=1e-6)
    i = list(np.float32(baselines.ADAM_LRS)).index(np.float32(lr))
    neighbour = baselines.ADAM_LRS[i - 1 if i > 0 else 1]            # the closest competitor
    by_hand = python_loop_losses(SMALL_MLP, neighbour, T, 0, make)
    assert metrics.final_training_loss(chosen) < metrics.final_training_loss(by_hand)
    assert entry["final_loss"]["opt"] == pytest.approx(float(metrics.final_training_loss(chosen)),
                                                       rel=1e-4)
    assert "opt lr" in ev.format_table(res.result)


class EtaState(NamedTuple):
    """An optimizer state exposing η, like Celo's State.eta."""
    count: jax.Array
    eta: jax.Array


def scheduled_sgd(task, num_steps):
    """SGD with η_t = 0.1·(1 − t/T), η exposed in the state (a stand-in learned schedule)."""
    def init(params):
        return EtaState(jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32))

    def update(grads, state, params=None, **extra):
        eta = 0.1 * (1.0 - state.count / num_steps)
        return (jax.tree.map(lambda g: -eta * g, grads),
                EtaState(state.count + 1, jnp.asarray(eta, jnp.float32)))
    return optax.GradientTransformationExtraArgs(init, update)


def test_schedule_recorded_and_plots_written(tmp_path):
    res = ev.evaluate(scheduled_sgd, [TINY], steps=T, seeds=2, cache_dir=None, reps=100)
    eta = res.curves[TINY.name]["eta"]
    np.testing.assert_allclose(eta[1], 0.1 * (1.0 - np.arange(T) / T), rtol=1e-6)
    written = ev.write_plots(res, tmp_path)
    assert {p.name for p in written} == {"curves.png", "aggregate.png", "schedule.png"}
    assert all(p.stat().st_size > 1000 for p in written)


@pytest.fixture
def fake_registry(monkeypatch):
    """registry.py's pinned API, with small_fc_lopt, until the engine lands."""
    monkeypatch.setattr(registry, "OPTIMIZERS", {"small_fc_lopt": None, "celo": None},
                        raising=False)
    monkeypatch.setattr(registry, "make_optax",
                        lambda name, theta, task, num_steps: sfl.optimizer(theta, num_steps),
                        raising=False)

    def prepare_task(name, task):
        if task.name == "skip_me":
            raise tasks.InvalidOptionError(f"{name} cannot train {task.name}")
        return task
    monkeypatch.setattr(registry, "prepare_task", prepare_task, raising=False)


def test_learned_optimizer_checkpoint_and_compare(tmp_path, fake_registry):
    theta = sfl.init_meta_params(jax.random.key(0))
    path = tmp_path / "sfl.npz"
    checkpoint.save_checkpoint(str(path), "small_fc_lopt", theta)
    entry = ev.evaluate_task(TINY, "small_fc_lopt", steps=T, seeds=2, checkpoint=path,
                             cache_dir=None)
    direct = ev.evaluate_task(TINY, "small_fc_lopt", steps=T, seeds=2, theta=theta,
                              cache_dir=None)            # θ is an argument: no recompilation
    assert entry["seeds"]["final_loss"] == direct["seeds"]["final_loss"]
    moved = jax.tree.map(lambda x: x + 0.5, theta)        # another θ changes the run
    assert ev.evaluate_task(TINY, "small_fc_lopt", steps=T, seeds=2, theta=moved,
                            cache_dir=None)["seeds"]["final_loss"] != entry["seeds"]["final_loss"]
    # a task the optimizer cannot train (prepare_task raises) is skipped and reported
    both = ev.evaluate("small_fc_lopt", [TINY, TINY._replace(name="skip_me")], T, 2, theta=theta,
                       cache_dir=None, reps=100).result
    assert list(both["tasks"]) == [TINY.name]
    assert both["skipped"] == {"skip_me": "small_fc_lopt cannot train skip_me"}
    assert re.search(r"\nskip_me +skipped: small_fc_lopt cannot train skip_me",
                     ev.format_table(both))
    with pytest.raises(ev.EvaluateError, match="applies to none of the tasks"):
        ev.evaluate("small_fc_lopt", [TINY._replace(name="skip_me")], T, 2, theta=theta)
    out = ev.compare("small_fc_lopt", theta, ["quadratic_d256_k1e4"], steps=T, seeds=2)
    assert set(out) >= {"opt", "tasks", "aggregate"} and "quadratic_d256_k1e4" in out["tasks"]
    assert "quadratic_d256_k1e4" in ev.format_table(out)


# ----------------------------------------------------------------------------- the suite

def builder_defaults(builder):
    return {k: p.default for k, p in inspect.signature(getattr(tasks, builder)).parameters.items()}


def in_meta_training_family(entry):
    """Could task_families.sample_task_family (or celo_meta_training_tasks) draw this structure?"""
    k = {**builder_defaults(entry.builder), **entry.kwargs}
    uniform = lambda h: len(set(h)) == 1
    if entry.builder == "image_mlp":
        mem = task_families.FAMILY_MEMORIZATION
        small_data = (k["subset"] in mem["subset"] and k["label_noise"] in mem["label_noise"]
                      and len(k["hidden"]) in mem["depth"] and not k["layernorm"])
        full_data = k["subset"] == 0 and len(k["hidden"]) in task_families.FAMILY_DEPTHS
        return (k["dataset"] in task_families.FAMILY_DATASETS and uniform(k["hidden"])
                and k["hidden"][0] in task_families.FAMILY_WIDTHS and (small_data or full_data)
                and k["activation"] in task_families.FAMILY_ACTIVATIONS
                and k["batch_size"] in task_families.FAMILY_BATCH_SIZES)
    if entry.builder == "image_conv":
        return (k["dataset"] in task_families.FAMILY_DATASETS and k["kernel"] == 3
                and tuple(k["channels"]) in task_families.FAMILY_CONV_CHANNELS
                and k["activation"] in task_families.FAMILY_ACTIVATIONS
                and k["batch_size"] in task_families.FAMILY_BATCH_SIZES)
    if entry.builder == "image_autoencoder":
        return (k["dataset"] in task_families.FAMILY_DATASETS and tuple(k["hidden"]) in
                task_families.FAMILY_AE_HIDDEN and k["activation"] == "relu"
                and k["batch_size"] in task_families.FAMILY_BATCH_SIZES)
    if entry.builder == "teacher_student":
        f = task_families.FAMILY_TS
        return (k["in_dim"] in f["in_dim"] and uniform(k["hidden"]) and k["hidden"][0] in
                f["width"] and len(k["hidden"]) in f["depth"] and k["out_dim"] in f["out_dim"]
                and k["batch_size"] in task_families.FAMILY_BATCH_SIZES and k["noise"] == 0.0
                and k["activation"] in task_families.FAMILY_ACTIVATIONS)
    if entry.builder == "byte_lm":
        f = task_families.FAMILY_LM
        return (k["context"] in f["context"] and k["embed"] in f["embed"]
                and k["hidden"] == 2 * k["embed"] and k["layers"] in f["layers"]
                and k["heads"] == 2 and k["batch_size"] in f["batch_size"]
                and k["activation"] == "gelu")
    return entry.builder in task_families.FAMILY_KIND_PROBS


def test_suite_is_held_out_and_builds():
    assert len(suite.TEST) >= 12 and set(suite.QUICK) <= set(suite.TEST)
    assert max(e.horizon for e in suite.TEST.values()) >= 3
    kinds = {e.builder for e in suite.TEST.values()}
    assert kinds >= {"image_mlp", "image_conv", "image_autoencoder", "byte_lm",
                     "teacher_student", "linear_regression", "logistic_regression"}
    assert 6 <= len(suite.VALIDATION) <= 10
    assert max(e.horizon for e in suite.VALIDATION.values()) >= 3   # a long run in each suite
    # the check itself can fail: the meta-training task and a family member are detected
    assert in_meta_training_family(suite.SuiteTask("image_mlp", dict(hidden=(32,)), 1, ""))
    assert in_meta_training_family(suite.SuiteTask("byte_lm", {}, 1, ""))
    assert in_meta_training_family(suite.SuiteTask(
        "image_mlp", dict(dataset="fashion_mnist_8x8_5class", hidden=(64,), subset=512,
                          label_noise=0.2), 1, ""))
    assert suite.HELD_OUT == {**suite.VALIDATION, **suite.TEST}
    for name, entry in suite.HELD_OUT.items():
        assert not in_meta_training_family(entry), name
        task, horizon = suite.suite_task(name)
        assert task.name == name and horizon == entry.horizon
        key = jax.random.key(0)
        loss = jax.eval_shape(task.loss, jax.eval_shape(task.init, key),
                              jax.eval_shape(task.sample_batch, task.data, key))
        assert loss.shape == () and loss.dtype == jnp.float32
    assert suite.resolve_tasks("quick,fmnist8_mlp_w1024,quick") == list(suite.QUICK) + [
        "fmnist8_mlp_w1024"]
    assert suite.resolve_tasks("all") == suite.resolve_tasks("test") == list(suite.TEST)
    assert suite.resolve_tasks("validation") == list(suite.VALIDATION)
    test, val = suite.resolve_tasks("test"), suite.resolve_tasks("validation")
    assert {"fmnist8_mlp_w1024", "devil_lm_2l_4h", "quadratic_d256_k1e4", "linreg_d32_zero",
            "fmnist8_logreg_zero", "fmnist16_mlp_6x64_relu"} <= set(test)
    assert {"devil_reversed_lm_ctx24", "teacher_student_tw128", "quadratic_d64_k1e3"} <= set(val)
    assert not set(test) & set(val)
    assert suite.resolve_tasks("validation,test") == val + test


def test_validation_and_test_share_no_dataset_architecture_pair():
    sig = suite.task_signature
    # hand-checked: the builder's defaults fill what the options leave out
    assert sig(suite.TEST["devil_lm_2l_4h"]) == ("devil", "transformer")
    assert sig(suite.TEST["teacher_student_deep"]) == ("synthetic_teacher_16x32x4", "mlp")
    assert sig(suite.VALIDATION["teacher_student_tw128"]) == ("synthetic_teacher_24x128x2", "mlp")
    assert sig(suite.VALIDATION["devil_reversed_lm_ctx24"]) == ("devil_reversed", "transformer")
    assert sig(suite.TEST["fmnist8_logreg_zero"]) == ("fashion_mnist_8x8", "linear")
    assert sig(suite.SuiteTask("image_conv", {}, 1, "")) == ("fashion_mnist_16x16", "conv")
    # the check can fail: another seed, noise or student of a TEST problem is the same pair
    twin = suite.SuiteTask("quadratic", dict(dim=256, condition=1e4, noise=0.5, seed=7), 1, "")
    assert sig(twin) == sig(suite.TEST["quadratic_d256_k1e4"])
    student = suite.SuiteTask("teacher_student", dict(in_dim=64, out_dim=8, hidden=(16,)), 1, "")
    assert sig(student) == sig(suite.TEST["teacher_student_wide"])
    val = {sig(e) for e in suite.VALIDATION.values()}
    test = {sig(e) for e in suite.TEST.values()}
    assert not val & test, val & test
    # VALIDATION still covers the kinds of problem TEST has
    assert {arch for _, arch in val} == {arch for _, arch in test} == {
        "mlp", "conv", "autoencoder", "transformer", "quadratic", "linear"}
    for data, _ in val | test:   # every signature names a real dataset or generator
        assert data in data_lib.DATASETS or data.startswith(("devil", "synthetic_")), data


# ----------------------------------------------------------------------------- CLI



def run_cli(capsys, *args):
    code = ev.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_quick_end_to_end_json_schema(tmp_path, capsys):
    path = tmp_path / "r.json"
    code, out, _ = run_cli(capsys, "--opt", "adam", "--tasks", "quick", "--steps", "15",
                           "--seeds", "3", "--json", str(path), "--cache", str(tmp_path / "c"))
    assert code == 0
    r = json.loads(path.read_text())
    assert r["opt"] == "adam" and list(r["tasks"]) == list(suite.QUICK)
    for name, t in r["tasks"].items():
        assert set(t["final_loss"]) == {"opt", "adam"} and name in out
        assert isinstance(t["score"], float) and isinstance(t["speedup"], float)
        assert t["steps"] == 15 * suite.TEST[name].horizon
        assert len(t["seeds"]["score"]) == 3
    for key in ("score", "speedup"):
        agg = r["aggregate"][key]
        assert set(agg) == {"iqm", "median", "mean", "optimality_gap", "ci95"}
        assert set(agg["ci95"]) == set(metrics.METRICS) and all(len(v) == 2 for v in
                                                              agg["ci95"].values())
    assert "iqm" in out and "optimality_gap" in out


def test_fixed_adam_lr_is_untuned_adam(tmp_path):
    """adam_lrs=(lr,) scores against Adam at that lr: the reference equals a tuned sweep's row."""
    tuned = ev.evaluate("adam", [TINY], steps=T, seeds=2, cache_dir=None, reps=50)
    fixed = ev.evaluate("adam", [TINY], steps=T, seeds=2, cache_dir=None, reps=50,
                        adam_lrs=(1e-3,))
    entry = fixed.result["tasks"][TINY.name]
    assert entry["adam_lr"] == pytest.approx(1e-3) and fixed.result["adam_lrs"] == [1e-3]
    # the opt here is tuned Adam, whose grid contains 1e-3: it is at least as good as the fixed
    assert entry["final_loss"]["opt"] <= entry["final_loss"]["adam"] * (1 + 1e-6)
    same = tuned.result["tasks"][TINY.name]["final_loss"]                    # tuned vs itself
    assert same["opt"] == pytest.approx(same["adam"], rel=1e-6)
    sweep = baselines.tune_baseline(TINY, "adam", T, [0, 1], None)
    row = list(np.round(sweep.lrs, 8)).index(np.float32(1e-3).round(8))
    np.testing.assert_allclose(fixed.curves[TINY.name]["adam"], sweep.losses[row], rtol=1e-5)
    assert "untuned" in ev.format_table(fixed.result)
    assert "tuned Adam" in ev.format_table(tuned.result)


@pytest.mark.parametrize("args, needle", [
    (("--opt", "nope"), "unknown optimizer 'nope'; valid: adam, adamw, sgdm"),
    (("--opt", "adam", "--tasks", "quick,nope"), "unknown task 'nope'; valid: all, quick, "),
    (("--opt", "adam", "--checkpoint", "x.npz"), "adam is a tuned baseline"),
    (("--opt", "adam", "--steps", "0"), "--seeds and --steps must be >= 1"),
    (("--opt", "celo", "--checkpoint", "missing.npz"), "does not exist"),
    (("--opt", "celo", "--tune-lr"), "--tune-lr applies to learned optimizers that take a "
                                     "learning rate (celo2, celo2_base), not 'celo'"),
    (("--opt", "muon", "--tune-lr"), "(baselines are always tuned)"),
])
def test_cli_bad_input_one_line_error(capsys, fake_registry, args, needle):
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err


@pytest.mark.skipif("local_sgd_lopt" not in getattr(registry, "OPTIMIZERS", {}),
                    reason="local_sgd_lopt not registered")
def test_cli_refuses_server_updates_with_one_line(capsys):
    """local-SGD server updates (Recipe.per_step False) are not per-step optimizers."""
    code, out, err = run_cli(capsys, "--opt", "local_sgd_lopt", "--tasks", "quick")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "local_sgd_experiments.py" in err


def test_cli_checkpoint_of_another_optimizer(tmp_path, capsys, fake_registry):
    celo_ckpt = ev.ROOT / "checkpoints" / "celo_paper.npz"   # holds "celo"
    code, _, err = run_cli(capsys, "--opt", "small_fc_lopt", "--checkpoint", str(celo_ckpt))
    assert code == 2 and err.count("\n") == 1
    assert "'celo'" in err and "'small_fc_lopt'" in err
    corrupt = tmp_path / "bad.npz"
    corrupt.write_bytes(b"garbage")
    code, _, err = run_cli(capsys, "--opt", "celo", "--checkpoint", str(corrupt))
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1


@pytest.mark.skipif("celo" not in getattr(registry, "OPTIMIZERS", {}), reason="celo not registered")
def test_real_celo_from_shipped_checkpoint_records_its_schedule():
    """train.py's registry and the shipped Celo θ: η_t is recorded; η_0 (before any loss
    history) is the same on every seed, as Celo's scheduler sees only progress and loss EMAs."""
    res = ev.evaluate("celo", [TINY], steps=T, seeds=2, cache_dir=None, reps=100)
    eta = res.curves[TINY.name]["eta"]
    assert eta.shape == (2, T) and np.all(np.isfinite(eta)) and np.all(eta > 0)
    np.testing.assert_allclose(eta[0, 0], eta[1, 0], rtol=1e-6)
    assert np.std(eta[0]) > 0                                # a schedule, not a constant


def test_every_held_out_task_has_a_family_and_family_scores_are_medians():
    families = {suite.family(n) for n in suite.HELD_OUT}
    assert {"MLP classifier", "conv net", "language model", "autoencoder", "regression",
            "long horizon"} <= families
    assert suite.family("fmnist8_mlp_96x48_long") == "long horizon"
    fake = {"tasks": {"fmnist8_mlp_w1024": {"score": 1.0}, "fmnist8_mlp_5x64_ln": {"score": 2.0},
                      "fmnist8_mlp_w512_bs16": {"score": 4.0}, "devil_lm_2l_4h": {"score": 0.5},
                      "not_a_suite_task": {"score": 9.0}}}
    fams = suite.family_scores(fake)
    assert fams == {"MLP classifier": {"tasks": 3, "median": 2.0, "min": 1.0, "max": 4.0},
                    "language model": {"tasks": 1, "median": 0.5, "min": 0.5, "max": 0.5}}


def test_the_long_validation_task_trains_with_adam():
    """The newest suite member builds, and a few Adam steps lower its loss."""
    task, horizon = suite.suite_task("fmnist8inv_mlp_64x32_long")
    assert horizon == suite.LONG_HORIZON
    assert suite.family("fmnist8inv_mlp_64x32_long") == "long horizon"
    losses, _ = engine.run_curves(task, lambda _: baselines.baseline_tx("adam", 1e-2), None, 40,
                                  [0])
    assert losses[0, -5:].mean() < 0.8 * losses[0, :5].mean()
