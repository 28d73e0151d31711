"""Task tests (tasks.py, its layers in layers.py, the task families in task_families.py): every
registered task trains under jit, data is a jit argument, stacking and vmapping over datasets,
known parameter counts and formulas, the task family, and Celo §3 task augmentation checked
against the chain rule and finite differences."""

import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402
import layers  # noqa: E402
import task_families  # noqa: E402
import tasks  # noqa: E402

ADAM_LR = 1e-2     # brief: a few steps of optax.adam at 1e-2 must lower the loss on one batch
ADAM_STEPS = 20
TRUNCNORM_STD = 0.8796  # std of a standard normal truncated to ±2σ


def one_line(e: BaseException) -> str:
    msg = str(e)
    assert "\n" not in msg and msg
    return msg


@pytest.fixture(autouse=True, scope="module")
def fast_compiles():
    """Skip most XLA optimizations while these tests run: the maths is the same and compiling
    is about twice as fast on a small shared CPU."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


def fit_one_batch(task: tasks.Task):
    """init → batch → ADAM_STEPS of Adam on that batch, all in ONE compiled program.

    Returns the initial params, the loss before each of ADAM_STEPS + 1 evaluations (so
    losses[0] is the loss at init and losses[-1] the loss after ADAM_STEPS updates), the
    gradient at init, and whether every gradient along the way was finite.
    """
    opt = optax.adam(ADAM_LR)

    @jax.jit
    def run(data, key):
        k_init, k_batch = jax.random.split(key)
        params = task.init(k_init)
        batch = task.sample_batch(data, k_batch)

        def step(carry, _):
            p, s = carry
            loss, g = jax.value_and_grad(task.loss)(p, batch)
            finite = jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(g)]))
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), (loss, finite, g)

        _, (losses, finite, grads) = jax.lax.scan(step, (params, opt.init(params)), None,
                                                  ADAM_STEPS + 1)
        return params, losses, jax.tree.map(lambda g: g[0], grads), finite

    return run(task.data, jax.random.PRNGKey(0))


@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_registered_task_trains(name):
    task = tasks.get_task(name)
    assert task.name == name and task.multipliers is None
    params, losses, grads, finite = fit_one_batch(task)
    assert isinstance(params, dict) and all(isinstance(k, str) for k in params)
    assert all(v.dtype == jnp.float32 for v in params.values())
    loss0, final = float(losses[0]), float(losses[-1])
    assert losses.dtype == jnp.float32 and bool(jnp.isfinite(losses).all())
    assert 0.0 <= loss0 < task.loss_cap  # the cap sits above the loss at init
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert bool(finite.all())
    assert any(float(jnp.abs(g).max()) > 0 for g in grads.values())
    assert final < 0.95 * loss0, (loss0, final)


def test_unknown_task_lists_names():
    with pytest.raises(tasks.UnknownNameError) as e:
        tasks.get_task("celo")
    msg = one_line(e.value)
    assert msg.startswith("unknown task 'celo'") and "celo_fmnist_8x8" in msg


def test_celo_task_structure():
    task = tasks.get_task("celo_fmnist_8x8")  # Celo App. A.4: MLP 64 → 32 → 10, batch 64
    params, batch = jax.jit(lambda k, d: (task.init(k), task.sample_batch(d, k)))(
        jax.random.PRNGKey(1), task.data)
    assert {k: v.shape for k, v in params.items()} == {
        "l0/w": (64, 32), "l0/b": (32,), "l1/w": (32, 10), "l1/b": (10,)}
    assert task.loss_cap == pytest.approx(1.5 * math.log(10))
    # haiku Linear init: truncated normal ±2σ, σ = 1/sqrt(fan_in); zero biases
    assert float(jnp.std(params["l0/w"])) == pytest.approx(TRUNCNORM_STD / 8, rel=0.06)
    assert float(jnp.abs(params["l0/w"]).max()) <= 2 / 8
    assert not params["l0/b"].any() and not params["l1/b"].any()
    assert batch["x"].shape == (64, 8, 8, 1) and batch["x"].dtype == jnp.float32
    assert 0.0 <= float(batch["x"].min()) and float(batch["x"].max()) <= 1.0
    assert batch["y"].dtype == jnp.int32 and int(batch["y"].max()) <= 9


def test_sample_batch_takes_data_as_argument():
    task = tasks.get_task("celo_fmnist_8x8")
    traces = []

    def f(data, key):
        traces.append(1)
        return task.sample_batch(data, key)

    jf = jax.jit(f)
    b1, b2 = jf(task.data, jax.random.PRNGKey(0)), jf(task.data, jax.random.PRNGKey(1))
    assert len(traces) == 1  # compiled once, reused for a new key
    assert not np.array_equal(b1["y"], b2["y"])
    consts = jax.make_jaxpr(f)(task.data, jax.random.PRNGKey(0)).consts
    assert sum(np.size(c) for c in consts) < 1000  # the dataset is not baked in as a constant


def test_parameter_counts():
    counts = {  # hand-computed: Σ fan_in·fan_out + fan_out per layer
        "fmnist16_mlp_128x128": 256 * 128 + 128 + 128 * 128 + 128 + 128 * 10 + 10,
        "fmnist16_mlp_128x128x128_ln": (256 * 128 + 128 + 2 * (128 * 128 + 128) + 1290
                                        + 3 * 2 * 128),
        "fmnist16_conv_16x32": (3 * 3 * 1 * 16 + 16) + (3 * 3 * 16 * 32 + 32) + (32 * 10 + 10),
        "fmnist16_ae_128x32x128": (256 * 128 + 128 + 128 * 32 + 32 + 32 * 128 + 128
                                   + 128 * 256 + 256),
        "devil_byte_lm": (256 * 32 + 16 * 32 + 4 * 32 + (32 * 96 + 96) + (32 * 32 + 32)
                          + (32 * 64 + 64) + (64 * 32 + 32) + 2 * 32 + 32 * 256 + 256),
    }
    for name, expected in counts.items():
        task = tasks.get_task(name)
        shapes = jax.eval_shape(task.init, jax.random.PRNGKey(0))
        assert sum(math.prod(s.shape) for s in shapes.values()) == expected, name


def test_conv_output_matches_manual_convolution():
    task = tasks.image_conv("fashion_mnist_8x8", channels=(2,), kernel=3, batch_size=2)
    params = task.init(jax.random.PRNGKey(0))
    x = np.random.default_rng(0).random((2, 8, 8, 1)).astype(np.float32)
    y = np.array([1, 7])
    # numpy oracle: stride 2 with TF/haiku 'SAME' padding: 4×4 outputs; the one padding row and
    # column needed go at the end, so output (i, j) sees input rows 2i … 2i+2
    w, b = np.asarray(params["conv0/w"]), np.asarray(params["conv0/b"])
    xp = np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    h = np.zeros((2, 4, 4, 2))
    for i in range(4):
        for j in range(4):
            patch = xp[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3, :]
            h[:, i, j] = np.einsum("nhwc,hwco->no", patch, w) + b
    logits = np.maximum(h, 0).mean((1, 2)) @ np.asarray(params["head/w"]) + np.asarray(
        params["head/b"])
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -logp[np.arange(2), y].mean()
    got = task.loss(params, {"x": jnp.asarray(x), "y": jnp.asarray(y)})
    assert float(got) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("size, kernel, stride", [(8, 3, 2), (8, 3, 1), (7, 3, 2), (5, 2, 2)])
def test_conv2d_same_matches_lax_conv(size, kernel, stride):
    kx, kw = jax.random.split(jax.random.PRNGKey(size + kernel + stride))
    x = jax.random.normal(kx, (2, size, size, 3))
    w = jax.random.normal(kw, (kernel, kernel, 3, 4))
    expected = jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(layers.conv2d_same(x, w, stride), expected, rtol=1e-5, atol=1e-5)


def test_autoencoder_loss_formula():
    task = tasks.image_autoencoder("fashion_mnist_8x8", hidden=(4,), batch_size=3)
    params = jax.tree.map(jnp.zeros_like, task.init(jax.random.PRNGKey(0)))
    x = jnp.full((3, 8, 8, 1), 0.25)
    # zero weights → sigmoid(0) = 0.5 everywhere → loss = (0.25 − 0.5)² = 0.0625
    assert float(task.loss(params, {"x": x})) == pytest.approx(0.0625)
    assert task.loss_cap == tasks.AE_LOSS_CAP


def test_byte_lm_windows_and_causality():
    task = tasks.byte_lm(context=8, embed=16, hidden=32, layers=2, heads=4, batch_size=4)

    @jax.jit
    def run(data, key):
        batch = task.sample_batch(data, key)
        params = task.init(key)
        changed = batch["x"].at[:, 5].set((batch["x"][:, 5] + 1) % 256)  # edit position 5
        return (batch, layers.transformer_logits(params, batch["x"], 2, 4),
                layers.transformer_logits(params, changed, 2, 4))

    batch, a, b = run(task.data, jax.random.PRNGKey(3))
    assert batch["x"].shape == (4, 8) and batch["y"].shape == (4, 8)
    np.testing.assert_array_equal(batch["x"][:, 1:], batch["y"][:, :-1])
    assert bytes(np.asarray(batch["x"][0]).astype(np.uint8)).isascii()
    np.testing.assert_allclose(a[:, :5], b[:, :5], rtol=1e-5, atol=1e-5)  # past is unaffected
    assert float(jnp.abs(a[:, 5:] - b[:, 5:]).max()) > 1e-3                  # future is affected
    assert task.loss_cap == pytest.approx(1.5 * math.log(256))


def test_teacher_student_targets_have_unit_variance():
    task = tasks.teacher_student(in_dim=8, hidden=(16,), out_dim=3, batch_size=8192,
                                 teacher_seed=3)
    for noise in (0.0, 0.5):  # the noise level is data, so one compiled sampler serves both
        data = {**task.data, "noise": jnp.asarray(noise, jnp.float32)}
        y = task.sample_batch(data, jax.random.PRNGKey(0))["y"]
        np.testing.assert_allclose(jnp.var(y, axis=0), 1 + noise ** 2, rtol=0.1)
    assert task.loss_cap == pytest.approx(1.5)
    assert tasks.teacher_student(noise=0.5).loss_cap == pytest.approx(1.5 * 1.25)
    a = tasks.teacher_student(teacher_seed=1).data["teacher/w0"]
    b = tasks.teacher_student(teacher_seed=2).data["teacher/w0"]
    assert not np.allclose(a, b)


def test_quadratic_gradient_formula():
    task = tasks.quadratic(dim=5, condition=1e3, noise=0.3, seed=4)
    h = np.asarray(task.data["h"])
    np.testing.assert_allclose(h, [1, 1e3 ** -0.25, 1e3 ** -0.5, 1e3 ** -0.75, 1e-3], rtol=1e-6)
    params = task.init(jax.random.PRNGKey(0))
    batch = task.sample_batch(task.data, jax.random.PRNGKey(1))
    grad = jax.grad(task.loss)(params, batch)["w"]
    np.testing.assert_allclose(grad, h * (params["w"] - batch["target"]) / 5, rtol=1e-6)


# ---- the held-out problems a general-purpose optimizer must handle (suite.TEST) -----------
NEW_TASKS = {  # tiny versions of the new builders and options (suite.TEST / VALIDATION)
    "linreg_zero": lambda: tasks.linear_regression(in_dim=8, out_dim=2, batch_size=32),
    "logreg_zero": lambda: tasks.logistic_regression("fashion_mnist_8x8", batch_size=32),
    "logreg_zero_5class": lambda: tasks.logistic_regression("fashion_mnist_8x8_5class",
                                                            batch_size=32),
    "deep_relu_mlp": lambda: tasks.image_mlp("fashion_mnist_8x8", hidden=(16,) * 6,
                                             activation="relu", batch_size=32),
    "teacher_w128": lambda: tasks.teacher_student(in_dim=8, hidden=(16,), out_dim=2,
                                                  batch_size=32, teacher_width=128),
    "bytelm_reversed": lambda: tasks.byte_lm(context=8, embed=8, hidden=16, layers=1, heads=2,
                                             batch_size=8, reverse=True),
}


@pytest.mark.parametrize("name", sorted(NEW_TASKS))
def test_new_task_trains_with_adam_on_fresh_batches(name):
    """40 steps of optax.adam(1e-2), a fresh batch each step: the mean loss of the last 10 steps
    is below 0.9 × the loss at init, and it starts below the cap."""
    task = NEW_TASKS[name]()
    opt = optax.adam(ADAM_LR)

    @jax.jit
    def run(data, key):
        k_init, k_data = jax.random.split(key)
        params = task.init(k_init)

        def step(carry, t):
            p, s = carry
            loss, g = jax.value_and_grad(task.loss)(p, task.sample_batch(
                data, jax.random.fold_in(k_data, t)))
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), loss

        return jax.lax.scan(step, (params, opt.init(params)), jnp.arange(40))[1]

    losses = np.asarray(run(task.data, jax.random.PRNGKey(0)))
    assert np.isfinite(losses).all() and 0.0 < losses[0] < task.loss_cap
    assert losses[-10:].mean() < 0.9 * losses[0], losses


def test_linear_and_logistic_regression_start_at_zero():
    lin = tasks.linear_regression(in_dim=8, out_dim=2, batch_size=4096, noise=0.1, seed=3)
    log = tasks.logistic_regression("fashion_mnist_8x8_5class", batch_size=64)
    for task in (lin, log):
        for seed in (0, 1):   # every key gives the same, all-zero start
            params = task.init(jax.random.PRNGKey(seed))
            assert set(params) == {"l0/w", "l0/b"} and not any(v.any() for v in params.values())
    assert log.init(jax.random.PRNGKey(0))["l0/w"].shape == (64, 5)
    # at zero every class has probability 1/C: the loss is exactly ln 5
    batch = log.sample_batch(log.data, jax.random.PRNGKey(2))
    assert float(log.loss(log.init(jax.random.PRNGKey(0)), batch)) == pytest.approx(math.log(5))
    assert log.loss_cap == pytest.approx(1.5 * math.log(5))
    # linear regression: loss at 0 = mean y² (numpy oracle); at (w*, b*) it is about noise²
    w, b = np.asarray(lin.data["w"]), np.asarray(lin.data["b"])
    np.testing.assert_allclose(np.linalg.norm(w, axis=0), 1.0, rtol=1e-6)  # unit-variance x·w*
    batch = lin.sample_batch(lin.data, jax.random.PRNGKey(4))
    zero = lin.init(jax.random.PRNGKey(0))
    assert float(lin.loss(zero, batch)) == pytest.approx(
        float(np.mean(np.asarray(batch["y"]) ** 2)), rel=1e-5)
    best = {"l0/w": jnp.asarray(w), "l0/b": jnp.asarray(b)}
    assert float(lin.loss(best, batch)) == pytest.approx(0.1 ** 2, rel=0.1)
    assert lin.loss_cap == pytest.approx(1.5 * (1.0 + np.mean(b ** 2) + 0.1 ** 2), rel=1e-6)


def test_deep_relu_mlp_has_zero_biases_and_random_weights():
    """The dense init (haiku Linear) already starts biases at zero: the deep ReLU task of
    suite.TEST needs no zero_init option. 6 hidden layers + the output layer."""
    task = tasks.image_mlp("fashion_mnist_16x16", hidden=(64,) * 6, activation="relu")
    params = task.init(jax.random.PRNGKey(0))
    assert sorted(params) == sorted(f"l{i}/{t}" for i in range(7) for t in "wb")
    assert sum(v.size for v in params.values()) == (256 * 64 + 64 + 5 * (64 * 64 + 64)
                                                    + 64 * 10 + 10)
    for i in range(7):
        assert not params[f"l{i}/b"].any()
        assert float(jnp.std(params[f"l{i}/w"])) > 0.5 * TRUNCNORM_STD / math.sqrt(
            params[f"l{i}/w"].shape[0])


def test_reversed_text_and_teacher_width_options():
    fwd = tasks.byte_lm(context=8, embed=8, hidden=16, heads=2)
    rev = tasks.byte_lm(context=8, embed=8, hidden=16, heads=2, reverse=True)
    np.testing.assert_array_equal(rev.data["tokens"], np.asarray(fwd.data["tokens"])[::-1])
    assert rev.name != fwd.name and "reversed" in rev.name
    wide = tasks.teacher_student(in_dim=8, out_dim=3, batch_size=8192, teacher_width=128)
    assert wide.data["teacher/w0"].shape == (8, 128) and wide.data["teacher/w1"].shape == (128, 3)
    y = wide.sample_batch(wide.data, jax.random.PRNGKey(0))["y"]
    np.testing.assert_allclose(jnp.var(y, axis=0), 1.0, rtol=0.1)   # still unit variance
    assert tasks.teacher_student().name == tasks.teacher_student(teacher_width=32).name
    assert "_tw128_" in wide.name


def test_activations_match_formulas():
    x = jnp.array([-1.0, 0.0, 1.0])
    expected = {"relu": [0, 0, 1], "tanh": np.tanh([-1, 0, 1]), "sigmoid": [0.2689414, 0.5,
                0.7310586], "elu": [math.exp(-1) - 1, 0, 1], "gelu": [-0.158808, 0, 0.841192],
                "silu": [-0.2689414, 0, 0.7310586]}
    assert set(expected) == set(layers.ACTIVATIONS)
    for name, values in expected.items():
        np.testing.assert_allclose(layers.ACTIVATIONS[name](x), values, rtol=1e-5, atol=1e-6)
        task = tasks.image_mlp(activation=name)
        params = jax.eval_shape(task.init, jax.random.PRNGKey(0))
        batch = jax.eval_shape(task.sample_batch, task.data, jax.random.PRNGKey(0))
        assert jax.eval_shape(task.loss, params, batch).shape == ()


@pytest.mark.parametrize("build, error, text", [
    (lambda: tasks.image_mlp(hidden=()), tasks.InvalidOptionError, "hidden"),
    (lambda: tasks.image_mlp(hidden=(32, 0)), tasks.InvalidOptionError, "hidden entry"),
    (lambda: tasks.image_mlp(activation="swish"), tasks.UnknownNameError, "relu"),
    (lambda: tasks.image_mlp(batch_size=0), tasks.InvalidOptionError, "batch_size"),
    (lambda: tasks.image_mlp(dataset="imagenet"), tasks.UnknownNameError, "fashion_mnist_8x8"),
    (lambda: tasks.image_conv(kernel=2.5), tasks.InvalidOptionError, "kernel"),
    (lambda: tasks.byte_lm(embed=30, heads=4), tasks.InvalidOptionError, "divisible"),
    (lambda: tasks.byte_lm(split="validation"), tasks.UnknownNameError, "split"),
    (lambda: tasks.quadratic(condition=0.5), tasks.InvalidOptionError, "condition"),
    (lambda: tasks.teacher_student(noise=-1), tasks.InvalidOptionError, "noise"),
    (lambda: tasks.teacher_student(teacher_width=0), tasks.InvalidOptionError, "teacher_width"),
    (lambda: tasks.byte_lm(reverse="yes"), tasks.InvalidOptionError, "reverse"),
    (lambda: tasks.linear_regression(in_dim=0), tasks.InvalidOptionError, "in_dim"),
    (lambda: tasks.linear_regression(noise=-0.1), tasks.InvalidOptionError, "noise"),
    (lambda: tasks.logistic_regression(dataset="imagenet"), tasks.UnknownNameError,
     "fashion_mnist_8x8"),
    (lambda: tasks.logistic_regression(batch_size=0), tasks.InvalidOptionError, "batch_size"),
])
def test_builder_options_are_validated(build, error, text):
    with pytest.raises(error) as e:
        build()
    assert text in one_line(e.value)


# ---- stacking and vmapping over datasets ------------------------------------------------
def test_stack_data_vmaps_over_datasets():
    a = tasks.image_mlp("fashion_mnist_8x8")
    b = tasks.image_mlp("fashion_mnist_8x8_inverted")
    small = {"x": a.data["x"][:100], "y": a.data["y"][:100], "n": jnp.asarray(100, jnp.int32)}
    stacked = tasks.stack_data([a.data, b.data, small])
    assert stacked["x"].shape == (3, 60000, 8, 8, 1) and stacked["x"].dtype == jnp.uint8
    np.testing.assert_array_equal(stacked["n"], [60000, 60000, 100])
    k0, k2 = jax.random.split(jax.random.PRNGKey(0))
    keys = jnp.stack([k0, k0, k2])  # members 0 and 1 draw the same rows

    def loss_and_batch(key, data):
        batch = a.sample_batch(data, key)
        return a.loss(a.init(key), batch), batch

    got, batch = jax.jit(jax.vmap(loss_and_batch))(keys, stacked)
    one = jax.jit(loss_and_batch)
    for i, data in enumerate([a.data, b.data]):  # unstacked, one at a time
        loss_i, batch_i = one(keys[i], data)
        np.testing.assert_array_equal(batch["x"][i], batch_i["x"])
        assert float(got[i]) == pytest.approx(float(loss_i), rel=1e-5)
    np.testing.assert_allclose(batch["x"][1], 1.0 - batch["x"][0], atol=1e-6)  # inverted


def test_stack_data_never_samples_padding():
    real = {"x": jnp.full((3, 2, 2, 1), 255, jnp.uint8), "y": jnp.zeros(3, jnp.int32),
            "n": jnp.asarray(3, jnp.int32)}
    longer = {"x": jnp.full((50, 2, 2, 1), 7, jnp.uint8), "y": jnp.ones(50, jnp.int32),
              "n": jnp.asarray(50, jnp.int32)}
    stacked = tasks.stack_data([real, longer])
    assert stacked["x"].shape == (2, 50, 2, 2, 1)
    sample = jax.vmap(tasks._image_sampler(512))
    batch = sample(stacked, jax.random.split(jax.random.PRNGKey(0), 2))
    assert bool((batch["x"][0] == 1.0).all())  # rows 3 … 49 of member 0 are zero padding


def test_stack_data_rejects_mismatched_structures():
    a = {"x": jnp.zeros((4, 2)), "n": jnp.asarray(4)}
    with pytest.raises(tasks.InvalidOptionError, match="structures"):
        tasks.stack_data([a, {"x": jnp.zeros((4, 2))}])
    with pytest.raises(tasks.InvalidOptionError, match="beyond the row axis"):
        tasks.stack_data([a, {"x": jnp.zeros((4, 3)), "n": jnp.asarray(4)}])
    with pytest.raises(tasks.InvalidOptionError, match="at least one"):
        tasks.stack_data([])


def test_celo_meta_training_tasks(tmp_path, monkeypatch):
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path))  # empty cache: only the embedded data
    default = task_families.celo_meta_training_tasks()
    assert [t.name for t in default] == ["celo_fashion_mnist_8x8"]
    two = task_families.celo_meta_training_tasks(["fashion_mnist_8x8",
                                                  "fashion_mnist_8x8_inverted"])
    shapes = [jax.eval_shape(t.init, jax.random.PRNGKey(0)) for t in two]
    assert shapes[0] == shapes[1] and two[0].loss_cap == two[1].loss_cap
    assert tasks.stack_data([t.data for t in two])["x"].shape[0] == 2
    for bad in ("fashion_mnist_16x16", "fashion_mnist_8x8_5class"):
        with pytest.raises(tasks.UnknownNameError, match="mnist_8x8"):
            task_families.celo_meta_training_tasks([bad])


# ---- task family ---------------------------------------------------------------------------------
def test_sample_task_family_is_deterministic_and_diverse():
    names = [t.name for t in task_families.sample_task_family(0, 30)]
    assert names == [t.name for t in task_families.sample_task_family(0, 30)]
    assert names != [t.name for t in task_families.sample_task_family(1, 30)]
    kinds = {n.split("_")[0] for n in names}
    assert {"mlp", "conv", "teacher"} <= kinds and len(kinds) >= 4
    # static shapes, scalar loss (no compile)
    for task in task_families.sample_task_family(0, 30)[:12]:
        params = jax.eval_shape(task.init, jax.random.PRNGKey(0))
        batch = jax.eval_shape(task.sample_batch, task.data, jax.random.PRNGKey(0))
        assert jax.eval_shape(task.loss, params, batch).shape == ()
        assert task.loss_cap > 0


def test_sample_task_family_options():
    only = task_families.sample_task_family(5, 6, kinds=["teacher_student"])
    assert all(t.name.startswith("teacher_student") for t in only)
    mlps = task_families.sample_task_family(5, 6, kinds=["image_mlp"],
                                            datasets=["fashion_mnist_16x16"])
    assert all("fashion_mnist_16x16" in t.name for t in mlps)
    with pytest.raises(tasks.UnknownNameError, match="image_mlp"):
        task_families.sample_task_family(0, 2, kinds=["rnn"])


def test_small_training_set_memorization_task():
    full = tasks.image_mlp("fashion_mnist_8x8", hidden=(16,))
    task = tasks.image_mlp("fashion_mnist_8x8", hidden=(16,), subset=200, label_noise=0.5)
    assert int(task.data["n"]) == 200 and task.data["x"].shape[0] == 200
    np.testing.assert_array_equal(task.data["x"], full.data["x"][:200])
    relabelled = np.asarray(task.data["y"]) != np.asarray(full.data["y"][:200])
    assert 60 <= relabelled.sum() <= 100      # 100 rows drawn anew, ~1/10 keep their class
    again = tasks.image_mlp("fashion_mnist_8x8", hidden=(16,), subset=200, label_noise=0.5)
    np.testing.assert_array_equal(again.data["y"], task.data["y"])   # a fixed problem
    rows = jax.vmap(lambda k: task.sample_batch(task.data, k)["x"])(
        jax.random.split(jax.random.PRNGKey(0), 50))
    assert len(np.unique(np.asarray(rows).reshape(-1, 64), axis=0)) <= 200  # only the subset
    clean = tasks.image_mlp("fashion_mnist_8x8", hidden=(16,), subset=200)
    np.testing.assert_array_equal(clean.data["y"], full.data["y"][:200])
    assert task.name.endswith("_sub200_noise0.5") and clean.name != full.name
    for bad in (dict(label_noise=0.2), dict(subset=200, label_noise=1.5),
                dict(subset=10 ** 9), dict(subset=-1)):
        with pytest.raises(tasks.InvalidOptionError):
            tasks.image_mlp("fashion_mnist_8x8", **bad)


def test_memorization_family_member_trains():
    """A new task-family member builds, trains a few steps with Adam and lowers its loss."""
    task, = task_families.sample_task_family(0, 1, kinds=["memorization"])
    assert "_sub" in task.name and int(task.data["n"]) in task_families.FAMILY_MEMORIZATION[
        "subset"]
    tx = optax.adam(3e-3)

    @jax.jit
    def run(params):
        def body(carry, t):
            p, s = carry
            loss, g = jax.value_and_grad(task.loss)(
                p, task.sample_batch(task.data, jax.random.PRNGKey(t)))
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), loss
        return jax.lax.scan(body, (params, tx.init(params)), jnp.arange(200))[1]
    losses = np.asarray(run(task.init(jax.random.PRNGKey(0))))
    assert losses[-20:].mean() < 0.8 * losses[:5].mean()


# ---- task augmentation (Celo §3 Eqs. (7)–(10)) ------------------------------------------------
PARAMS = {"a/w": jnp.ones((3, 4)), "a/b": jnp.ones((4,)), "c/w": jnp.ones((5, 2))}


def test_sample_tau_modes():
    key = jax.random.PRNGKey(0)
    draw = jax.jit(tasks.sample_tau, static_argnames="mode")
    g = draw(key, PARAMS, mode="global")
    assert all(v.shape == () for v in g.values()) and len({float(v) for v in g.values()}) == 1
    t = draw(key, PARAMS, mode="tensor")
    assert all(v.shape == () for v in t.values()) and len({float(v) for v in t.values()}) == 3
    p = draw(key, PARAMS, mode="parameter")
    assert {k: v.shape for k, v in p.items()} == {k: v.shape for k, v in PARAMS.items()}
    assert len(np.unique(np.asarray(p["a/w"]))) == 12
    for tau in (g, t, p):
        assert jax.tree.structure(tau) == jax.tree.structure(PARAMS)
        assert all(v.dtype == jnp.float32 for v in tau.values())
    with pytest.raises(tasks.UnknownNameError, match="global"):
        tasks.sample_tau(key, PARAMS, "layer")
    with pytest.raises(tasks.InvalidOptionError):
        tasks.sample_tau(key, PARAMS, low=0.0)


def test_tau_is_log_uniform_on_range():
    tau = tasks.sample_tau(jax.random.PRNGKey(1), {"w": jnp.zeros(20000)}, "parameter")["w"]
    assert float(tau.min()) >= tasks.TAU_LOW and float(tau.max()) <= tasks.TAU_HIGH
    u = np.sort((np.log10(np.asarray(tau)) + 3) / 6)  # uniform on [0, 1] if log-uniform
    ks = np.abs(u - np.arange(1, len(u) + 1) / len(u)).max()
    assert ks < 0.015  # Kolmogorov–Smirnov; the critical value at p = 0.001 is 0.0138
    keys = jax.random.split(jax.random.PRNGKey(2), 50)
    taus = jax.jit(jax.vmap(lambda k: tasks.sample_tau(k, PARAMS)["a/w"]))(keys)
    assert float(taus.min()) < 1e-1 and float(taus.max()) > 1e1  # global τ spans decades too


@pytest.fixture(scope="module")
def mlp_problem():
    task = tasks.get_task("teacher_student")
    params, batch = jax.jit(lambda k, d: (task.init(k), task.sample_batch(d, k)))(
        jax.random.PRNGKey(0), task.data)
    return task, params, batch


@pytest.mark.parametrize("mode", tasks.AUGMENT_MODES)
def test_augmented_loss_and_gradient(mode, mlp_problem):
    task, params, batch = mlp_problem

    @jax.jit
    def quantities(params, batch, key):
        tau = tasks.sample_tau(key, params, mode, low=0.1, high=10.0)
        aug = tasks.augment_loss(task.loss, tau)
        w0 = tasks.augment_init(params, tau)                               # Celo Eq. (8)
        w = jax.tree.map(lambda p: p + 0.1, w0)
        return dict(
            loss=task.loss(params, batch), aug_at_init=aug(w0, batch), tau=tau,
            g=jax.grad(aug)(w, batch),                                     # Celo Eq. (10)
            inner=jax.grad(task.loss)(tasks.reparametrize(w, tau), batch),  # (∇L)(τ·w)
            explicit=jax.grad(lambda v: task.loss(jax.tree.map(jnp.multiply, tau, v), batch))(w))

    q = quantities(params, batch, jax.random.PRNGKey(2))
    # the function is unchanged at initialization: L(τ·θ0/τ) = L(θ0)
    assert float(q["aug_at_init"]) == pytest.approx(float(q["loss"]), rel=1e-5)
    g, inner, explicit, tau = q["g"], q["inner"], q["explicit"], q["tau"]
    for k in g:
        np.testing.assert_allclose(g[k], tau[k] * inner[k], rtol=1e-5, atol=1e-7)  # chain rule
        np.testing.assert_allclose(g[k], explicit[k], rtol=1e-5, atol=1e-7)


def test_augmented_gradient_matches_finite_difference():
    task = tasks.quadratic(dim=6, condition=10.0)
    params = task.init(jax.random.PRNGKey(0))
    batch = task.sample_batch(task.data, jax.random.PRNGKey(1))
    tau = {"w": jnp.array([0.01, 0.1, 1.0, 3.0, 10.0, 30.0])}
    aug = tasks.augment_loss(task.loss, tau)
    w = tasks.augment_init(params, tau)
    g = np.asarray(jax.grad(aug)(w, batch)["w"])
    w_np, tau_np = np.asarray(w["w"], np.float64), np.asarray(tau["w"], np.float64)
    h, t = np.asarray(batch["h"], np.float64), np.asarray(batch["target"], np.float64)

    def loss64(v):  # the same loss in float64 numpy, as an independent oracle
        return np.mean(0.5 * h * (tau_np * v - t) ** 2)

    eps = 1e-6
    for i in range(6):
        e = np.zeros(6)
        e[i] = eps
        fd = (loss64(w_np + e) - loss64(w_np - e)) / (2 * eps)
        assert g[i] == pytest.approx(fd, rel=1e-3, abs=1e-7)


def test_augmentation_under_jit_with_tau_as_argument():
    task = tasks.get_task("quadratic")
    params = task.init(jax.random.PRNGKey(0))
    batch = task.sample_batch(task.data, jax.random.PRNGKey(1))

    @jax.jit
    def f(w, tau):
        return jax.value_and_grad(tasks.augment_loss(task.loss, tau))(w, batch)

    t1 = tasks.sample_tau(jax.random.PRNGKey(3), params)
    t2 = tasks.sample_tau(jax.random.PRNGKey(4), params)
    (l1, g1), (l2, g2) = f(tasks.augment_init(params, t1), t1), f(tasks.augment_init(params, t2),
                                                                  t2)
    assert float(l1) == pytest.approx(float(l2), rel=1e-5)  # same loss at init …
    ratio = float(g1["w"][0] / g2["w"][0])
    assert ratio == pytest.approx(float(t1["w"] / t2["w"]), rel=1e-4)  # … gradients scale with τ
