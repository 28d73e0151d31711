"""VeLO against learned_optimization's HyperV2 (tests/data/velo_tiny.npz), plus its invariants."""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import accumulators as acc
import features
import velo
from conftest import rel_col_err
import lopt
from lopt import apply_mlp, count_params

NAMES = ("bias", "kernel3d", "scale", "weight")
MIXED_LEAVES = ("b0", "w1", "b1", "w2", "b2")


def tree(o, prefix):
    return {n: jnp.asarray(o[f"{prefix}/{n}"]) for n in NAMES}


def rel_array_err(ours, ref):
    """|ours − ref| / RMS of the whole reference array (absolute where the reference is 0)."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    scale = np.sqrt(np.mean(ref ** 2))
    return float(np.max(np.abs(ours - ref)) / (scale if scale > 0 else 1.0))


def _accumulate(states, grads):
    return {n: acc.update_tensor(states[n], grads[n], acc.MOMENTUM_DECAYS, acc.RMS_DECAYS,
                                 acc.ADAFACTOR_DECAYS) for n in NAMES}


# ----------------------------------------------------------------------------- oracle parity

def test_theta_mapping_and_counts(velo_oracle):
    o = velo_oracle
    assert list(o["tensor_order"]) == list(NAMES)
    ref_count = sum(o[k].size for k in o.files if k.startswith("theta/"))
    assert ref_count == 1985 == velo.reference_param_count(8, 4)  # oracle README
    theta = velo.theta_from_reference(o)
    assert count_params(theta) == 1985 - velo.dead_param_count(8, 4) == 1717
    assert velo.sizes_of(theta) == (8, 4)
    # w0 rows follow the input blocks in numeric order (block 10 = col; string order puts it 3rd)
    starts = np.cumsum([0] + list(o["mlp_block_widths"]))
    for i in (2, 3, 10, 13):
        np.testing.assert_array_equal(theta["bank"]["w0"][:, starts[i]:starts[i + 1]],
                                      o[f"theta/ff_mod_stack/~/w0__{i}"])


def test_lstm_features_match_reference(velo_oracle):
    """The 30 LSTM inputs from the reference's own previous-step params and accumulators."""
    o = velo_oracle
    num_steps = int(o["num_steps"])

    @jax.jit
    def rows(t, loss_feats, params, m, rms):
        return jnp.stack([features.velo_lstm_features(t, num_steps, loss_feats, params[n], m[n],
                                                      rms[n]) for n in NAMES])

    loss_state = acc.init_loss_ema(num_steps)
    params = tree(o, "init/params")
    m = {n: jnp.zeros(params[n].shape + (3,)) for n in NAMES}
    rms = {n: jnp.zeros(params[n].shape + (1,)) for n in NAMES}
    for k in range(6):
        loss_state, _ = acc.update_loss_ema(loss_state, jnp.float32(o[f"step{k}/loss"]))
        x = rows(k, features.loss_features(loss_state), params, m, rms)
        np.testing.assert_allclose(x, o[f"step{k}/lstm_in"], atol=1e-4, rtol=0, err_msg=str(k))
        params, m, rms = (tree(o, f"step{k}/{f}") for f in ("params", "state/m", "state/rms"))


@jax.jit
def _probe(theta, state, params, grads, loss):
    """Every intermediate of one update, from the public pieces of velo.py, and the step itself
    (one compilation for all six updates)."""
    loss_state, clipped = acc.update_loss_ema(state.loss, loss)
    x = velo.lstm_inputs(state, params, loss_state)
    controls, lr_mult, h, c = velo.lstm_forward(theta, x, state.lstm_h, state.lstm_c)
    mixed = velo.mix_bank(theta["bank"], controls)
    grads_clipped = {n: jnp.clip(grads[n], -1000.0, 1000.0) for n in NAMES}
    accs = _accumulate(state.acc, grads_clipped)
    mlp_in, mlp_out = {}, {}
    for i, n in enumerate(NAMES):
        args = (params[n], grads_clipped[n], accs[n])
        mlp_in[n] = features.normalize_columns(features.velo_features(*args))
        d, m = velo.mlp_outputs(jax.tree.map(lambda w: w[i], mixed), *args)
        mlp_out[n] = jnp.stack([d, m], -1)
    found = dict(loss_clipped=clipped, lstm_in=x, controls=controls, lr_mult=lr_mult,
                 lstm_h=h, lstm_c=c, mixed=mixed, mlp_in=mlp_in, mlp_out=mlp_out)
    return found, velo.step(theta, state, params, grads, loss, min_scale=0.0, anneal=False)


def test_six_updates_match_reference(velo_oracle):
    """Chain all six updates from the inputs alone (never re-synced to the stored values) and
    compare every intermediate at the oracle README's tolerances."""
    o = velo_oracle
    theta = velo.theta_from_reference(o)
    params = tree(o, "init/params")
    state = velo.init(theta, params, int(o["num_steps"]))
    np.testing.assert_allclose(state.lstm_h, o["init/lstm_h"], atol=1e-7)
    np.testing.assert_allclose(state.lstm_c, o["init/lstm_c"], atol=1e-7)
    np.testing.assert_allclose(state.loss.decays, o["init/loss_buffer/decays"], rtol=1e-6)
    starts = np.cumsum([0] + list(o["mlp_block_widths"]))
    worst = {}

    def check(name, err, tol):
        worst[name] = max(worst.get(name, 0.0), err)
        assert err < tol, (k, name, err)

    abs_err = lambda ours, ref: float(np.max(np.abs(np.asarray(ours) - ref)))
    for k in range(6):
        grads, loss = tree(o, f"step{k}/grads"), jnp.float32(o[f"step{k}/loss"])
        found, (updates, state) = _probe(theta, state, params, grads, loss)
        # the per-tensor LSTM, fed from the state before this update
        check("loss_clipped", abs_err(found["loss_clipped"], o[f"step{k}/loss_clipped"]), 1e-5)
        check("lstm_in", abs_err(found["lstm_in"], o[f"step{k}/lstm_in"]), 1e-4)
        for name in ("controls", "lr_mult", "lstm_h", "lstm_c"):
            check(name, abs_err(found[name], o[f"step{k}/{name}"]), 1e-5)
        for i, n in enumerate(NAMES):
            # the bank mixed per tensor (the reference's unused third output is not in our θ)
            ref, mixed = f"step{k}/mixed_ff/{n}", jax.tree.map(lambda w: w[i], found["mixed"])
            for b in range(14):
                check("mixed_ff", rel_array_err(mixed["w0"][starts[b]:starts[b + 1]],
                                                o[f"{ref}/w0__{b}"]), 1e-4)
            for leaf in MIXED_LEAVES:
                ours = mixed[leaf]                                 # w2, b2: first two columns
                check("mixed_ff", rel_array_err(ours, o[f"{ref}/{leaf}"][..., :ours.shape[-1]]),
                      1e-4)
            # per-parameter features and MLP outputs (d, m)
            check("mlp_in", rel_col_err(found["mlp_in"][n], o[f"step{k}/mlp_in/{n}"]), 1e-4)
            ref_out = o[f"step{k}/mlp_out/{n}"][..., :2]
            check("mlp_out", rel_col_err(found["mlp_out"][n].reshape(ref_out.shape), ref_out),
                  1e-4)
        # the whole step: params, accumulators, carried LSTM state and loss buffer
        params = optax.apply_updates(params, updates)
        for n in NAMES:
            check("params", abs_err(params[n], o[f"step{k}/params/{n}"]), 1e-6)
            s = state.acc[n]
            check("state", rel_col_err(s.m, o[f"step{k}/state/m/{n}"]), 1e-4)
            check("state", rel_col_err(s.rms, o[f"step{k}/state/rms/{n}"]), 1e-4)
            for field in ("v_row", "v_col", "v_diag"):
                ref, ours = o[f"step{k}/state/{field}/{n}"], getattr(s.fac, field)
                if ref.shape[0] == 0:
                    assert ours is None
                else:
                    check("state", rel_col_err(ours, ref), 1e-4)
        check("lstm_h", abs_err(state.lstm_h, o[f"step{k}/lstm_h"]), 1e-5)
        check("lstm_c", abs_err(state.lstm_c, o[f"step{k}/lstm_c"]), 1e-5)
        for field in ("means", "running_min"):
            check("loss_buffer", abs_err(getattr(state.loss, field),
                                         o[f"step{k}/state/loss_buffer/{field}"]), 1e-5)
        assert int(state.loss.count) == int(o[f"step{k}/state/loss_buffer/iteration"])
        assert int(state.step) == k + 1
    print("worst errors:", {name: f"{err:.1e}" for name, err in worst.items()})


# ----------------------------------------------------------------------------- structure

def test_paper_size_parameter_count():
    """Released VeLO: 2,320,385 reference meta-parameters (google/learned_optimization), of which
    15,872 (the overwritten first mix layer) and 256·5 (the bank's unused third output) are dead."""
    assert velo.reference_param_count(512, 256) == 2_320_385
    assert velo.dead_param_count(512, 256) == 15_872 + 1_280
    shapes = jax.eval_shape(lambda k: velo.init_meta_params(k, 512, 256), jax.random.PRNGKey(0))
    assert count_params(shapes) == 2_320_385 - 17_152 == 2_303_233
    for size, (h, k) in velo.SIZES.items():
        init_meta_params = velo.learned_optimizer(size).init_meta_params
        shapes = jax.eval_shape(init_meta_params, jax.random.PRNGKey(0))
        assert count_params(shapes) == velo.reference_param_count(h, k) - \
            velo.dead_param_count(h, k)
        assert velo.sizes_of(shapes) == (h, k)


def test_bank_mixing_is_an_explicit_weighted_sum():
    rng = np.random.RandomState(0)
    bank = {name: jnp.asarray(rng.normal(size=(5,) + shape), jnp.float32)
            for name, shape in (("w0", (30, 4)), ("b0", (4,)), ("w1", (4, 4)), ("b2", (2,)))}
    controls = rng.normal(size=(3, 5)).astype(np.float32)
    mixed = jax.jit(velo.mix_bank)(bank, jnp.asarray(controls))
    for name, w in bank.items():
        w = np.asarray(w, np.float64)
        for t in range(3):
            expect = sum(controls[t, k] * w[k] for k in range(5)) * 100.0 / 5
            np.testing.assert_allclose(mixed[name][t], expect, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("meta_init", sorted(features.VELO_INIT_DIRECTIONS))
def test_directed_init_starts_as_relative_step(meta_init):
    """meta_init="adam" (ours): every bank member's d reads only Adam's direction, so each
    tensor's mixed MLP gives d = c_t · n(m_0.9·rsqrt(v)) with c_t near 10 (the bank's mean, up
    to the shrunk h-dependent terms), and lr_mult starts near 1; "adafactor" the same with
    Adafactor's momentum, "blend" (the default) with Σ w_i·n(x_i). "random" is haiku's."""
    assert velo.META_INIT == "blend"
    column = features.VELO_INIT_DIRECTIONS[meta_init]
    theta = jax.jit(partial(velo.init_meta_params, meta_init=meta_init))(jax.random.PRNGKey(0))
    params, grads = _problem()
    state = velo.init(theta, params, 100)
    x = velo.lstm_inputs(state, params, velo.acc.update_loss_ema(state.loss, 1.0)[0])
    controls, lr_mult, _, _ = velo.lstm_forward(theta, x, state.lstm_h, state.lstm_c)
    np.testing.assert_allclose(lr_mult, 1.0, atol=0.1)
    mixed = velo.mix_bank(theta["bank"], controls)
    leaves, treedef = jax.tree.flatten(params)
    accs = treedef.flatten_up_to(state.acc)
    for i, (p, g, s) in enumerate(zip(leaves, treedef.flatten_up_to(grads), accs)):
        s = velo.acc.update_tensor(s, g, velo.acc.MOMENTUM_DECAYS, velo.acc.RMS_DECAYS,
                                   velo.acc.ADAFACTOR_DECAYS)
        d, _ = velo.mlp_outputs(jax.tree.map(lambda w: w[i], mixed), p, g, s)
        x = np.asarray(features.velo_features(p, g, s), np.float64)
        mix = column if isinstance(column, dict) else {column: 1.0}
        n7 = sum(w * x[..., i] / np.sqrt(1e-5 + np.mean(x[..., i] ** 2)) for i, w in mix.items())
        c = float(np.sum(np.asarray(d) * n7) / np.sum(n7 ** 2))
        np.testing.assert_allclose(d, c * n7, rtol=1e-4, atol=1e-5 * abs(c))
        assert 5.0 < c < 20.0
    rand = velo.init_meta_params(jax.random.PRNGKey(0), meta_init="random")
    assert not np.any(rand["controls"]["b"]) and not np.any(rand["lr_mult"]["b"])
    with pytest.raises(ValueError, match="one of random, adam, adafactor, blend"):
        velo.init_meta_params(jax.random.PRNGKey(0), meta_init="sgd")


def test_lstm_inputs_invariant_to_permuting_entries():
    """Per-tensor features are statistics over the tensor: shuffling its entries (p, m and rms
    consistently) changes nothing."""
    rng = np.random.RandomState(0)
    p = rng.normal(size=(7, 5)).astype(np.float32) * 0.3
    m = rng.normal(size=(7, 5, 3)).astype(np.float32) * 0.01 + 0.002
    rms = np.abs(rng.normal(size=(7, 5, 1))).astype(np.float32) * 1e-4
    perm = np.random.RandomState(1).permutation(35)
    shuffle = lambda x: x.reshape((35,) + x.shape[2:])[perm].reshape(x.shape)
    tensor_features = jax.jit(features.tensor_features)
    a = tensor_features(p, m, rms)
    b = tensor_features(shuffle(p), shuffle(m), shuffle(rms))
    np.testing.assert_allclose(a, b, atol=1e-5)
    # shuffling m alone leaves its own statistics too; rescaling p changes s, so the features
    c = tensor_features(2 * p, m, rms)
    assert np.max(np.abs(np.asarray(c) - np.asarray(a))) > 0.1


def test_rank_one_hot_and_log_feature():
    np.testing.assert_array_equal(features.rank_onehot(()), [1, 0, 0, 0, 0])
    np.testing.assert_array_equal(features.rank_onehot((3, 1, 2)), [0, 0, 1, 0, 0])
    np.testing.assert_array_equal(features.rank_onehot((2,) * 5), [0, 0, 0, 0, 0])
    x = np.array([0.0, 1e-3, 0.5, 1e4])
    expect = 0.5 * np.clip(np.log(1e-8 + np.abs(10 * x)), -5, 5)
    np.testing.assert_allclose(features.clip_log_abs(jnp.asarray(x, jnp.float32)), expect,
                               rtol=1e-6)


def test_column_mlp_equals_plain_mlp():
    """The column-wise MLP (features.Columns, unrolled units) against the plain features →
    normalize → matmul MLP, on a 4-d tensor with a size-1 dim (factored dims d1 = 3, d0 = 2)."""
    rng = np.random.RandomState(5)
    shape = (2, 1, 6, 3)
    sizes = (30, 4, 4, 2)
    mlp = {}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):    # as large as after mixing
        mlp[f"w{i}"] = jnp.asarray(rng.normal(size=(a, b)) * 10 / np.sqrt(a), jnp.float32)
        mlp[f"b{i}"] = jnp.asarray(rng.normal(size=b), jnp.float32)
    p = jnp.asarray(rng.normal(size=shape), jnp.float32)
    gs = jnp.asarray(rng.normal(size=(3,) + shape) * 10.0 ** np.arange(-2, 1)[:, None, None, None,
                                                                              None], jnp.float32)

    @jax.jit
    def both(mlp, p, gs):
        s = acc.init_tensor(p)
        for g in gs:
            s = acc.update_tensor(s, g, acc.MOMENTUM_DECAYS, acc.RMS_DECAYS, acc.ADAFACTOR_DECAYS)
        x = features.velo_features(p, g, s)
        out = apply_mlp(mlp, x, features.column_scale(x))
        return velo.mlp_outputs(mlp, p, g, s), (out[..., 0], out[..., 1])

    (d, m), (d_ref, m_ref) = both(mlp, p, gs)
    for ours, ref in ((d, d_ref), (m, m_ref)):
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(ref))))


# ----------------------------------------------------------------------------- behaviour

TINY = velo.learned_optimizer("tiny")
tiny_theta = jax.jit(TINY.init_meta_params)


@jax.jit
def STEP(theta, state, params, grads, loss):   # one compilation for every test on _problem()
    return velo.step(theta, state, params, grads, loss)


def _problem():
    rng = np.random.RandomState(3)
    params = {"w": jnp.asarray(rng.normal(size=(7, 5)), jnp.float32), "b": jnp.zeros(5),
              "s": jnp.float32(1.0)}
    grads = {k: jnp.asarray(rng.normal(size=p.shape), jnp.float32) for k, p in params.items()}
    return params, grads


def test_gradients_clipped_at_1000():
    theta = tiny_theta(jax.random.PRNGKey(0))
    params, grads = _problem()
    big = jax.tree.map(lambda g: g * 5000.0, grads)                # most entries beyond ±1000
    state = velo.init(theta, params, 20)
    u_big, s_big = STEP(theta, state, params, big, jnp.float32(1.0))
    clipped = jax.tree.map(lambda g: jnp.clip(g, -1000.0, 1000.0), big)
    u_clip, s_clip = STEP(theta, state, params, clipped, jnp.float32(1.0))
    for a, b in zip(jax.tree.leaves((u_big, s_big)), jax.tree.leaves((u_clip, s_clip))):
        np.testing.assert_array_equal(a, b)
    assert float(jnp.max(jnp.abs(s_big.acc["w"].m[..., 0]))) <= 0.1 * 1000.0 + 1e-3


def test_optax_wrapper_agrees_with_raw_step():
    theta = tiny_theta(jax.random.PRNGKey(0))
    params, grads = _problem()
    grads = jax.tree.map(lambda g: 0.5 * g, grads)   # RMS inside lopt.GRAD_RMS_RANGE (c = 1)
    tx = velo.optimizer(theta, num_steps=100, grad_rms_range=None)   # sizes read from θ
    scaled = velo.optimizer(theta, num_steps=100)    # c = 1: the same steps to float rounding

    @jax.jit
    def both(opt_state, raw_state, scaled_state, params, loss):
        return (tx.update(grads, opt_state, params, value=loss),
                velo.step(theta, raw_state, params, grads, loss),
                scaled.update(grads, scaled_state, params, value=loss))

    opt_state, raw_state, scaled_state = (tx.init(params), velo.init(theta, params, 100),
                                          scaled.init(params))
    for t in range(3):
        (u1, opt_state), (u2, raw_state), (u3, scaled_state) = both(
            opt_state, raw_state, scaled_state, params, jnp.float32(2.0 - 0.3 * t))
        for a, b in zip(jax.tree.leaves((u1, opt_state)), jax.tree.leaves((u2, raw_state))):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(jax.tree.leaves(u3), jax.tree.leaves(u1)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)
        params = optax.apply_updates(params, u1)
    with pytest.raises(ValueError, match="reads the training loss"):
        tx.update(grads, opt_state, params)


def test_lstm_state_is_carried_and_starts_from_theta():
    theta = tiny_theta(jax.random.PRNGKey(0))
    theta["lstm_init"]["h"] = jnp.arange(8.0) / 10
    params, grads = _problem()
    state = velo.init(theta, params, 10)
    np.testing.assert_allclose(state.lstm_h, np.tile(np.arange(8.0) / 10, (3, 1)), rtol=1e-6)
    _, s1 = STEP(theta, state, params, grads, jnp.float32(1.0))
    _, s2 = STEP(theta, s1, params, grads, jnp.float32(1.0))
    assert not np.allclose(s1.lstm_h, state.lstm_h) and not np.allclose(s2.lstm_h, s1.lstm_h)


# ----------------------------------------------------------------------------- ours, in use

def test_floor_moves_a_zero_tensor_and_the_reference_does_not():
    """velo.MIN_PARAM_SCALE: a zero bias steps by λ1·d·0.1 (≥ 1e-5 here), not λ1·d·3e-5."""
    theta = tiny_theta(jax.random.PRNGKey(0))
    params, grads = _problem()
    state = velo.init(theta, params, 100)
    step = jax.jit(lambda ms: velo.step(theta, state, params, grads, jnp.float32(1.0),
                                        min_scale=ms, anneal=False)[0], static_argnums=0)
    floored, reference = step(velo.MIN_PARAM_SCALE), step(0.0)
    rms = lambda x: float(jnp.sqrt(jnp.mean(jnp.square(x))))
    assert rms(reference["b"]) < 1e-6 < 1e-5 < rms(floored["b"]) < 1e-1
    # the same direction, scaled by floor / sqrt(ε) instead of sqrt(ε)
    np.testing.assert_allclose(floored["b"], np.asarray(reference["b"]) * velo.MIN_PARAM_SCALE
                               / np.sqrt(velo.PARAM_SCALE_EPS), rtol=1e-4)
    # a tensor whose RMS is above the floor takes the reference step exactly
    np.testing.assert_array_equal(floored["w"], reference["w"])


def test_anneal_scales_the_step_by_the_cosine():
    """velo.ANNEAL: the update at step t is the un-annealed one × cosine_anneal(t, N)."""
    theta = tiny_theta(jax.random.PRNGKey(0))
    params, grads = _problem()
    n = 100
    for t in (0, 50, 99):
        state = velo.init(theta, params, n)._replace(step=jnp.int32(t))
        on, _ = velo.step(theta, state, params, grads, jnp.float32(1.0), anneal=True)
        off, _ = velo.step(theta, state, params, grads, jnp.float32(1.0), anneal=False)
        factor = float(lopt.cosine_anneal(t, n, *velo.ANNEAL))
        assert abs(factor - (velo.ANNEAL[1] + (velo.ANNEAL[0] - velo.ANNEAL[1])
                             * 0.5 * (1 + np.cos(np.pi * t / n)))) < 1e-6
        for k in params:
            np.testing.assert_allclose(on[k], factor * np.asarray(off[k]), rtol=1e-5, atol=1e-12)


def test_meta_training_runs_the_reference_step():
    """registry: `--opt velo` meta-trains without the floor and the anneal (as Celo's floor)."""
    import registry
    kw = dict(registry.OPTIMIZERS["velo"].stages[-1].train_kwargs)
    assert kw == {"min_scale": 0.0, "anneal": False}
