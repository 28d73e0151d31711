"""mup.py: μP initializations and multipliers per layer type against μLO §4's table (and App. C's
zero output layer), μ and SP sharing every line but the scalings, μLO_M / μVeLO_M updates, the
registry's multi-width recipe, a trained μLO_M lowering a loss at an unseen width, and the μP
coordinate check (flat over width in μP, growing in SP)."""
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import checkpoint
import evaluate
import metrics
import mulo_experiments as mx
import mup
import small_fc_lopt
import registry
import tasks
import train
import velo

TRUNCNORM_STD = 0.8796   # std of a standard normal truncated to ±2σ
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True, scope="module")
def fast_compiles():
    """Skip most XLA optimizations here: the same maths, compiled about twice as fast."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


def grads_at_init(task, seed=0):
    params = task.init(jax.random.PRNGKey(seed))
    batch = task.sample_batch(task.data, jax.random.PRNGKey(seed + 1))
    loss, grads = jax.value_and_grad(task.loss)(params, batch)
    return params, batch, loss, grads


# ----------------------------------------------------------------------------- the table

def test_layer_kinds_and_multipliers_follow_the_papers_table():
    task = mup.width_task(128)                       # 64 → 128 → 128 → 128 → 10
    table = mup.task_layer_table(task)
    assert {n: i.kind for n, i in table.items()} == {
        "l0/w": "input", "l0/b": "bias", "l1/w": "hidden", "l1/b": "bias",
        "l2/w": "hidden", "l2/b": "bias", "l3/w": "output", "l3/b": "output_bias"}
    assert {n: i.fan_in for n, i in table.items() if n.endswith("/w")} == {
        "l0/w": 64, "l1/w": 128, "l2/w": 128, "l3/w": 128}
    # Eq. (3): hidden layers' updates × 1/fan_in, everything else × 1
    mu = mup.mu_task(task)
    assert {n: float(m) for n, m in mu.multipliers.items()} == {
        "l0/w": 1.0, "l0/b": 1.0, "l1/w": 1 / 128, "l1/b": 1.0, "l2/w": 1 / 128, "l2/b": 1.0,
        "l3/w": 1.0, "l3/b": 1.0}
    # Multipliers-μ: the output layer's affine output × 1/fan_in (weight and bias)
    assert mup.multiplier_table(table, mup.MU.forward) == {
        "l0/w": 1.0, "l0/b": 1.0, "l1/w": 1.0, "l1/b": 1.0, "l2/w": 1.0, "l2/b": 1.0,
        "l3/w": 1 / 128, "l3/b": 1 / 128}
    # SP: every multiplier 1, no table on the task; λ1 = 0.01 (μLO_M) vs 1e-3 (LO_M)
    assert set(mup.multiplier_table(table, mup.SP.forward).values()) == {1.0}
    assert set(mup.multiplier_table(table, mup.SP.update).values()) == {1.0}
    assert mup.sp_task(task).multipliers is None
    assert (mup.MU.step_mult, mup.SP.step_mult) == (0.01, 1e-3)
    # layer-norm gains and offsets are input-like: multiplier 1, kept as built
    ln = mup.layer_table({"l0/w": (64, 32), "l0/b": (32,), "l0/ln_scale": (32,),
                          "l0/ln_offset": (32,), "l1/w": (32, 10), "l1/b": (10,)})
    assert ln["l0/ln_scale"].kind == ln["l0/ln_offset"].kind == "norm"
    assert mup.MU.init_std["norm"] is mup.BUILT and mup.MU.update["norm"](32) == 1.0


def test_init_per_layer_type():
    """Initialization-μ: input/hidden N(0, 1/fan_in) (truncated ±2σ, as the μLO code), output
    weights 0 (App. C), biases N(0, 1); SP is exactly the builder's (haiku) init."""
    task = mup.width_task(256)
    params = mup.mu_task(task).init(jax.random.PRNGKey(3))
    for name, fan_in in (("l0/w", 64), ("l1/w", 256), ("l2/w", 256)):
        w = np.asarray(params[name])
        assert w.std() == pytest.approx(TRUNCNORM_STD / math.sqrt(fan_in), rel=0.05), name
        assert np.abs(w).max() <= 2.0 / math.sqrt(fan_in) + 1e-7
    assert not np.asarray(params["l3/w"]).any()
    biases = np.concatenate([np.asarray(params[f"l{i}/b"]) for i in range(4)])
    assert biases.size == 3 * 256 + 10
    assert biases.std() == pytest.approx(1.0, rel=0.08) and abs(biases.mean()) < 0.12
    assert np.abs(biases).max() > 2.5          # a plain normal, not truncated
    sp = mup.sp_task(task).init(jax.random.PRNGKey(3))
    built = task.init(jax.random.PRNGKey(3))
    for name in built:
        np.testing.assert_array_equal(sp[name], built[name])


def test_output_multiplier_in_the_forward_pass_against_a_hand_computation():
    task = mup.mu_task(mup.width_task(32))
    params = dict(task.init(jax.random.PRNGKey(0)))
    params["l3/w"] = jax.random.normal(jax.random.PRNGKey(1), (32, 10))   # make it matter
    batch = task.sample_batch(task.data, jax.random.PRNGKey(2))
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    h = np.asarray(batch["x"], np.float64).reshape(128, -1)
    for i in range(3):
        h = np.maximum(h @ p[f"l{i}/w"] + p[f"l{i}/b"], 0.0)
    logits = (h @ p["l3/w"] + p["l3/b"]) / 32                           # §4 Multipliers-μ
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    expected = -logp[np.arange(128), np.asarray(batch["y"])].mean()
    assert float(task.loss(params, batch)) == pytest.approx(expected, rel=1e-5)
    # the coordinate check's forward pass computes the same logits
    zs = mx.preactivations(params, batch["x"], 3, mup.multiplier_table(
        mup.task_layer_table(task), mup.MU.forward))
    np.testing.assert_allclose(np.asarray(zs[-1]), logits, rtol=1e-4, atol=1e-6)


def test_non_mlp_tasks_are_refused_with_one_line():
    with pytest.raises(mup.MuPError) as e:
        mup.mu_task(tasks.get_task("quadratic"))
    assert "\n" not in str(e.value) and "l0/w" in str(e.value)
    with pytest.raises(mup.MuPError, match="multiplier table"):
        mup.scale_updates({"a": jnp.ones(2)}, {"b": jnp.float32(1.0)})


# ----------------------------------------------------------------------------- the optimizers

def test_mu_and_sp_share_all_code_except_the_scalings():
    task = mup.width_task(32)
    sp = mup.sp_task(task)
    assert (sp.init, sp.loss, sp.sample_batch, sp.name) == (task.init, task.loss,
                                                           task.sample_batch, task.name)
    assert set(mup.MU.init_std) == set(mup.SP.init_std) == set(mup.MU.update) == set(mup.KINDS)
    mu_task = mup.mu_task(task)
    params, _, loss, grads = grads_at_init(mu_task)
    mu = mup.small_fc_lopt_m(mu_task.multipliers, mup.MU)
    plain = mup.small_fc_lopt_m(None, mup.SP._replace(step_mult=mup.MU.step_mult))
    base = small_fc_lopt.learned_optimizer(hidden=mup.LOPT_HIDDEN, step_mult=mup.MU.step_mult)
    theta = mu.init_meta_params(jax.random.PRNGKey(4))
    steps = jax.jit(lambda th, p, g, l: [lopt.step(th, lopt.init(th, p, 100), p, g, l)
                                         for lopt in (mu, plain, base)])   # one compile
    (u_mu, s_mu), (u_plain, s_plain), (u_base, s_base) = steps(theta, params, grads, loss)
    for name in params:   # Eq. (3): the only change is the final multiplication
        np.testing.assert_allclose(u_mu[name], u_plain[name] * mu_task.multipliers[name],
                                   rtol=1e-6, atol=0)
        np.testing.assert_array_equal(u_plain[name], u_base[name])
    for a, b in zip(jax.tree.leaves(s_mu), jax.tree.leaves(s_base)):
        np.testing.assert_array_equal(a, b)
    assert float(jnp.abs(u_mu["l1/w"]).max()) > 0


def test_mu_velo_drops_the_parameter_scale_and_applies_the_table():
    """App. C: μVeLO's update is VeLO's without sqrt(mean p² + 1e-9), times the multipliers, so
    the zero-initialized output layer moves at VeLO's λ1 scale instead of ~3e-5 of it."""
    mu_task = mup.mu_task(mup.width_task(16, depth=2))
    params, _, loss, grads = grads_at_init(mu_task)
    plain = velo.learned_optimizer("tiny", min_scale=0.0, anneal=False)
    mu = mup.velo_m(mu_task.multipliers, size="tiny")
    theta = plain.init_meta_params(jax.random.PRNGKey(0))
    steps = jax.jit(lambda th, p, g, l: [lopt.step(th, lopt.init(th, p, 100), p, g, l)[0]
                                         for lopt in (plain, mu)])
    u_plain, u_mu = steps(theta, params, grads, loss)
    for name, p in params.items():
        scale = np.sqrt(np.mean(np.square(np.asarray(p, np.float64))) + velo.PARAM_SCALE_EPS)
        np.testing.assert_allclose(u_mu[name], np.asarray(u_plain[name]) / scale
                                   * float(mu_task.multipliers[name]), rtol=2e-5, atol=1e-12)
    rms = lambda u: float(jnp.sqrt(jnp.mean(jnp.square(u))))
    assert rms(u_mu["l2/w"]) > 1e3 * rms(u_plain["l2/w"]) > 0     # zero-initialized output


def test_registry_recipes_meta_train_on_all_widths_at_once():
    for name in ("mu_small_fc_lopt", "sp_small_fc_lopt", "mu_velo"):
        assert name in registry.OPTIMIZERS
    cfg = train.resolve({"opt": "mu_small_fc_lopt"})
    assert cfg["task_set"].split(",") == [mup.task_name(w) for w in mup.META_WIDTHS]
    assert (cfg["pairs_per_task"], cfg["truncation"], cfg["sigma"]) == (8, 50, 0.01)
    assert (cfg["min_horizon"], cfg["max_horizon"], cfg["augment"]) == (100, 1000, "none")
    assert (cfg["meta_lr"], cfg["final_lr"], cfg["warmup_steps"]) == (3e-3, 1e-3, 100)
    assert cfg["decay_steps"] == cfg["meta_steps"]         # cosine reaches 1e-3 at the end
    assert train.resolve({"opt": "sp_small_fc_lopt"})["task_set"] == cfg["task_set"]
    assert train.resolve({"opt": "mu_velo"})["truncation"] == 20   # App. C (VeLO)
    mu_groups = train.meta_tasks(cfg, "mu_small_fc_lopt")           # one PES group per width
    assert [float(g[0].multipliers["l1/w"]) for g in mu_groups] == [1 / w for w in mup.META_WIDTHS]
    sp_groups = train.meta_tasks(cfg, "sp_small_fc_lopt")
    assert [g[0].multipliers for g in sp_groups] == [None] * len(mup.META_WIDTHS)
    assert [g[0].name for g in sp_groups] == [mup.task_name(w) for w in mup.META_WIDTHS]


def test_shipped_mu_lo_trains_a_wider_mlp_through_optax():
    """The shipped μLO_M lowers the loss of a width-256 MLP (4× its widest meta-training
    task) through registry.make_optax, compiled once for both calls."""
    name, theta = checkpoint.load_checkpoint(os.path.join(ROOT, "checkpoints",
                                                          "mu_small_fc_lopt.npz"))
    assert name == "mu_small_fc_lopt"
    task = registry.prepare_task(name, mup.width_task(256))
    tx = registry.make_optax(name, theta, task, 100)

    @jax.jit
    def run(params, key):
        def body(carry, t):
            params, state = carry
            batch = task.sample_batch(task.data, jax.random.fold_in(key, t))
            loss, g = jax.value_and_grad(task.loss)(params, batch)
            u, state = tx.update(g, state, params, value=loss)
            return (optax.apply_updates(params, u), state), loss
        return jax.lax.scan(body, (params, tx.init(params)), jnp.arange(100))[1]

    params = task.init(jax.random.PRNGKey(0))
    losses = np.asarray(run(params, jax.random.PRNGKey(1)))
    run(params, jax.random.PRNGKey(2))
    assert run._cache_size() == 1
    assert np.isfinite(losses).all()
    assert losses[-10:].mean() < 0.6 * losses[:3].mean(), losses[[0, 1, 2, -3, -2, -1]]


# ----------------------------------------------------------------------------- coordinate check

def adafactor_theta():
    """θ that makes small_fc_lopt the per-tensor normalized Adafactor direction: d = feature 10
    (fac_g, decay 0.9, as google/learned_optimization) through relu(x) − relu(−x), m = 0; a known,
    gradient-aligned update rule to check the μP scalings with, independent of meta-training."""
    theta = small_fc_lopt.init_meta_params(jax.random.PRNGKey(0), hidden=mup.LOPT_HIDDEN)
    mlp = jax.tree.map(jnp.zeros_like, theta["mlp"])
    mlp["w0"] = mlp["w0"].at[10, 0].set(1.0).at[10, 1].set(-1.0)
    mlp["w1"] = mlp["w1"].at[0, 0].set(1.0).at[1, 1].set(1.0)
    mlp["w2"] = mlp["w2"].at[0, 0].set(1.0).at[1, 0].set(-1.0)
    return {**theta, "mlp": mlp}


def test_coordinate_check_is_flat_in_mup_and_grows_in_sp():
    """Yang et al. 2021's coord check, μLO Fig. 2: RMS of Δz (each layer's pre-activation change
    on a fixed probe batch) after 5 steps, over widths 32–512 of a depth-2 MLP. μP: |slope of log Δz vs log
    width| < COORD_TOLERANCE for every layer; SP: hidden layers and logits grow ∝ width^~1."""
    theta = adafactor_theta()
    widths = (32, 128, 512)
    slopes = {}
    for scalings in (mup.MU, mup.SP):
        make_tx = lambda mult, s=scalings: mup.small_fc_lopt_m(mult, s).optimizer(theta, 100)
        dz = [mx.coord_sizes(mup.width_task(w, depth=2), scalings, make_tx, 5, 2)[0][-1]
              for w in widths]
        assert np.isfinite(dz).all() and (np.asarray(dz) > 0).all()
        slopes[scalings.name] = mx.slopes(widths, np.stack(dz))
    assert np.abs(slopes["mu"]).max() < mx.COORD_TOLERANCE, slopes
    assert slopes["sp"][1:].min() > 0.4 and slopes["sp"][-1] > 0.8, slopes   # z2, logits
    assert abs(slopes["sp"][0]) < mx.COORD_TOLERANCE     # the input layer's fan_in is fixed


def test_step_experiment_at_factor_one_is_the_registry_optimizer(tmp_path):
    """mulo_experiments.py step: f = 1 reproduces the registry's μLO_M run, f scales the first
    update exactly (λ1 multiplies the whole step), and the JSON and plot are written."""
    q = dict(seeds=1, steps=20, step_widths=(16,), step_factors=(1.0, 2.0))
    mx.step_experiment(q, tmp_path, lambda msg: None)
    out = json.loads((tmp_path / "step.json").read_text())["results"]
    assert set(out) == {"mu_small_fc_lopt", "sp_small_fc_lopt"}
    row = out["mu_small_fc_lopt"]["16"]
    assert row["best_factor"] in (1.0, 2.0) and (tmp_path / "step.png").stat().st_size > 0
    name, theta = checkpoint.load_checkpoint(os.path.join(ROOT, "checkpoints",
                                                          "mu_small_fc_lopt.npz"))
    task = registry.prepare_task(name, mup.width_task(16))
    losses = evaluate.opt_curves(name, task, 20, [0], theta)[0]
    assert row["1.0"]["finals"][0] == pytest.approx(float(metrics.final_training_loss(losses)[0]),
                                                   rel=1e-5)
    params, _, _, grads = grads_at_init(task)
    first = {}
    for f in (1.0, 2.0):
        lo = mup.small_fc_lopt_m(task.multipliers, mup.MU._replace(step_mult=mup.MU.step_mult * f))
        tx = lo.optimizer(theta, 20)
        first[f] = tx.update(grads, tx.init(params), params)[0]
    for a, b in zip(jax.tree.leaves(first[1.0]), jax.tree.leaves(first[2.0])):
        np.testing.assert_allclose(np.asarray(b), 2.0 * np.asarray(a), rtol=1e-5, atol=1e-12)
