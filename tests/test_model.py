"""The model's structure, configuration and modes (parity lives in test_parity.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from asanet_jax.models import VARIANTS, ASANet, count_params, default_model_config, resolve

MICRO = dict(depths=(1, 1, 2, 1), channels=(16, 32, 64, 128), decoder_channels=32, aux_channels=16)


def abstract(**overrides):
    cfg = default_model_config()
    cfg.update(overrides)
    return nnx.eval_shape(lambda: ASANet(cfg, rngs=nnx.Rngs(0)))


def test_tiny_has_the_official_parameter_count():
    assert count_params(abstract()) == 82_904_764


def test_micro_has_the_fixture_parameter_count():
    # meta.json of the official fixture: 1,230,652 parameters.
    assert count_params(abstract(**MICRO)) == 1_230_652


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_builds(variant):
    model = abstract(backbone=variant)
    depths, channels = VARIANTS[variant]
    assert len(model.optical.stages[2]) == depths[2]
    assert model.sar.norms[3].scale.shape == (channels[3],)


def test_custom_depths_and_channels_build_and_run():
    model = ASANet(
        dict(
            depths=(1, 2, 1),
            channels=(8, 16, 32),
            decoder_channels=8,
            aux_channels=4,
            aux_in_index=1,
        ),
        rngs=nnx.Rngs(0),
    )
    model.eval()
    # Compiled: called eagerly, the model compiles each operation on its own (twice the time).
    out = nnx.jit(lambda m, a, b: m(a, b))(
        model, jnp.ones((1, 40, 48, 3)), jnp.ones((1, 40, 48, 3))
    )
    assert out["logits"].shape == (1, 40, 48, 6)
    assert [f.shape[1:3] for f in out["features"]] == [(10, 12), (5, 6), (2, 3)]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"backbone": "gigantic"}, "config.model.backbone='gigantic'"),
        ({"depths": (1, 1)}, "depths and channels to be set together"),
        ({"modalities": "optical+nir"}, "config.model.modalities"),
        ({"fusion": "concat"}, "config.model.fusion='concat'"),
        ({"modalities": "optical"}, "single-stream model"),
        ({"dtype": "float16"}, "config.model.dtype"),
        ({"dropout": 1.5}, "config.model.dropout"),
        ({"aux_in_index": 4}, "config.model.aux_in_index"),
        ({"num_clases": 6}, "unknown fields ['num_clases']"),
    ],
)
def test_bad_config_names_the_field(overrides, message):
    cfg = default_model_config().to_dict() | overrides
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        resolve(cfg)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(sfm=False),
        dict(fusion="sum"),
        dict(sfm=False, fusion="sum"),
        dict(aux_channels=0),
        dict(sar_channels=2),
        dict(modalities="optical", sfm=False, fusion="none"),
        dict(modalities="sar", sfm=False, fusion="none", sar_channels=1),
    ],
)
def test_ablations_and_baselines_run(overrides):
    cfg = dict(MICRO) | overrides
    model = ASANet(cfg, rngs=nnx.Rngs(0))
    model.eval()
    config = model.config
    optical = (
        jnp.ones((2, 64, 96, config.optical_channels)) if "optical" in config.streams else None
    )
    sar = jnp.ones((2, 64, 96, config.sar_channels)) if "sar" in config.streams else None
    out = model(optical, sar)
    assert out["logits"].shape == (2, 64, 96, 6)
    assert out["decode_logits"].shape == (2, 16, 24, 6)
    assert ("aux_logits" in out) == bool(config.aux_channels)
    assert (model.sfms is not None) == config.sfm
    assert np.isfinite(np.asarray(out["logits"])).all()


def test_single_stream_norm_does_not_replace_the_stream():
    """mmpretrain's backbone appends norm(x) but carries x on, unlike ASANet's streams."""
    model = ASANet(dict(MICRO, modalities="optical", sfm=False, fusion="none"), rngs=nnx.Rngs(0))
    model.eval()
    stream = model.optical
    x = jax.random.normal(jax.random.key(0), (1, 64, 64, 3))
    feats = stream(x)
    y = stream.run_stage(0, x)
    np.testing.assert_allclose(feats[1], stream.norms[1](stream.run_stage(1, y)), rtol=1e-5)


def test_input_errors_are_clear():
    model = ASANet(MICRO, rngs=nnx.Rngs(0))
    ok = jnp.ones((1, 64, 64, 3))
    with pytest.raises(ValueError, match="needs the sar input"):
        model(ok, None)
    with pytest.raises(ValueError, match=r"expected NHWC \(B, H, W, 3\)"):
        model(ok, jnp.ones((1, 3, 64, 64)))
    with pytest.raises(ValueError, match="at least 32"):
        model(jnp.ones((1, 16, 64, 3)), jnp.ones((1, 16, 64, 3)))
    with pytest.raises(ValueError, match="differ in batch or size"):
        model(ok, jnp.ones((1, 64, 96, 3)))


def test_one_image_per_batch_trains_without_error():
    """PyTorch's BatchNorm raises on the CFM's 1x1 maps with one image; ours uses running stats."""
    model = ASANet(MICRO, rngs=nnx.Rngs(0))
    model.train()
    bn = model.fusions[0].mlp1.fc1.bn
    before = np.asarray(bn.mean.get_value())
    # Compiled (a step's way; the statistics come back into `model`), not op by op.
    out = nnx.jit(lambda m, a, b: m(a, b))(
        model, jnp.ones((1, 64, 64, 3)), jnp.zeros((1, 64, 64, 3))
    )
    assert np.isfinite(np.asarray(out["logits"])).all()
    np.testing.assert_array_equal(np.asarray(bn.mean.get_value()), before)
    # Full-resolution BatchNorms still learn from the single image's pixels.
    assert int(model.decode_head.bottleneck.bn.num_batches_tracked.get_value()) == 1


def test_batchnorm_matches_torch_in_training():
    import torch

    from asanet_jax.models.layers import BatchNorm

    x = np.random.default_rng(0).normal(2.0, 3.0, size=(4, 5, 6, 8)).astype(np.float32)
    ours = BatchNorm(8)
    ref = torch.nn.BatchNorm2d(8)
    ref.train()
    y_ref = ref(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(ours(x)), y_ref, atol=1e-5)
    np.testing.assert_allclose(ours.mean.get_value(), ref.running_mean.numpy(), rtol=1e-5)
    # Running variance uses the unbiased estimate, as PyTorch does.
    np.testing.assert_allclose(ours.var.get_value(), ref.running_var.numpy(), rtol=1e-5)


def test_jit_matches_eager():
    model = ASANet(MICRO, rngs=nnx.Rngs(0))
    model.eval()
    x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))

    @nnx.jit
    def forward(m, a, b):
        return m(a, b)["logits"]

    np.testing.assert_allclose(forward(model, x, -x), model(x, -x)["logits"], atol=1e-5)


@pytest.mark.parametrize("mode", ["cpu", "xla", "auto"])
def test_channel_mean_value_and_gradient_equal_the_plain_mean(mode):
    """LayerNorm's channel mean (under 'cpu' a product with a ones vector, with its own
    backward) against jnp.mean and its autodiff gradient."""
    from asanet_jax.models.layers import channel_mean

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(3.0, 2.0, size=(2, 5, 7, 96)), jnp.float32)
    probe = jnp.asarray(rng.normal(size=(2, 5, 7, 1)), jnp.float32)
    ours = jax.jit(channel_mean, static_argnums=1)(x, mode)
    ref = x.mean(-1, keepdims=True)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)
    grad = jax.jit(jax.grad(lambda x: jnp.sum(channel_mean(x, mode) * probe)))(x)
    grad_ref = jax.grad(lambda x: jnp.sum(x.mean(-1, keepdims=True) * probe))(x)
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-6, atol=1e-9)


def test_building_under_a_trace_never_walks_the_trace_for_an_error_message(monkeypatch):
    """Each nnx.Rngs draw probes its counter's ``sharding``; on a traced value jax built
    that AttributeError's message from every equation traced so far, which made building
    a model under a trace quadratic in its size (asanet_jax/models/tracing.py)."""
    from jax._src.interpreters import partial_eval

    walks = []
    find_progenitors = partial_eval.JaxprStackFrame.find_progenitors

    def counted(frame, tracer):
        walks.append(tracer)
        return find_progenitors(frame, tracer)

    monkeypatch.setattr(partial_eval.JaxprStackFrame, "find_progenitors", counted)
    model = abstract(**MICRO)
    assert count_params(model) == 1_230_652 and walks == []

    def probe(x):
        assert not hasattr(x, "sharding")
        with pytest.raises(AttributeError, match="'sharding' attribute is not available on"):
            x.sharding  # noqa: B018
        return x

    jax.jit(probe)(jnp.ones(3))
    assert walks == []
