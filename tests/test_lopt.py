"""lopt.py: the fast per-parameter MLP equals the plain form the papers write."""
import jax, jax.numpy as jnp, numpy as np, pytest
import accumulators as acc, features, lopt


@pytest.mark.parametrize("groups,eps,hidden", [(features.VELO_GROUPS, 0.0, 4),
                                               (features.ADAFAC_GROUPS, 1e-6, 32)])
@pytest.mark.parametrize("shape", [(), (7,), (5, 3), (3, 9), (2, 3, 4)])
def test_fast_per_parameter_mlp_equals_the_plain_form(groups, eps, hidden, shape):
    """lopt.per_parameter_mlp (normalization folded into W0, features recomputed, planes) is
    lopt.per_parameter_mlp_plain (features → normalize → MLP) to float32 rounding."""
    rng = np.random.RandomState(len(shape) + hidden)
    p = jnp.asarray(rng.normal(size=shape), jnp.float32)
    s = acc.init_tensor(p)
    for _ in range(3):
        g = jnp.asarray(rng.normal(size=shape), jnp.float32)
        s = acc.update_tensor(s, g, acc.MOMENTUM_DECAYS, acc.RMS_DECAYS, acc.ADAFACTOR_DECAYS)
    n_in = features.stack(features.columns(p, g, s, groups, eps)).shape[-1]
    mlp = lopt.init_mlp(jax.random.PRNGKey(0), (n_in, hidden, hidden, 2))
    fast = lopt.per_parameter_mlp(mlp, p, g, s, groups, eps)
    plain = lopt.per_parameter_mlp_plain(mlp, p, g, s, groups, eps)
    assert len(fast) == len(plain) == 2
    for a, b in zip(fast, plain):
        np.testing.assert_allclose(np.asarray(a).reshape(-1), np.asarray(b).reshape(-1),
                                   rtol=2e-4, atol=2e-5)
