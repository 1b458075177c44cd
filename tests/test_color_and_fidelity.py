"""Colour correction (``--color-fix``) and the one-step model's fidelity knob (``--lq-scales``)."""

import numpy as np
import pytest
import torch
from conftest import exported_student

from varestorer.errors import ConfigError
from varestorer.inference import VARestorerPipeline
from varestorer.inference.color import adain, color_fix, wavelet, wavelet_split


def _checker(size: int = 64) -> torch.Tensor:
    i = torch.arange(size)
    return ((i[:, None] + i[None, :]) % 2).float().expand(3, size, size)


def test_adain_gives_the_restoration_the_inputs_channel_means_and_deviations():
    g = torch.Generator().manual_seed(0)
    image, reference = torch.rand(1, 3, 32, 32, generator=g), torch.rand(1, 3, 16, 16, generator=g) * 0.5 + 0.2
    out = adain(image, reference)
    torch.testing.assert_close(out.mean((-2, -1)), reference.mean((-2, -1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std((-2, -1)), reference.std((-2, -1)), atol=1e-3, rtol=1e-3)


def test_wavelet_split_adds_up_to_the_image():
    x = torch.rand(1, 3, 40, 24, generator=torch.Generator().manual_seed(1))
    high, low = wavelet_split(x)
    torch.testing.assert_close(high + low, x)
    assert low.std() < x.std() / 4  # the low band is smooth


def test_wavelet_removes_a_tint_and_keeps_the_fine_detail():
    reference = torch.full((1, 3, 64, 64), 0.4)
    detail = 0.1 * (_checker()[None] - 0.5)
    tinted = reference + detail + torch.tensor([0.2, -0.1, 0.0])[None, :, None, None]
    out = wavelet(tinted, reference)
    torch.testing.assert_close(out, reference + detail, atol=2e-3, rtol=0)


def test_color_fix_none_is_the_image_itself_and_an_unknown_name_is_refused():
    x = torch.rand(3, 8, 8)
    assert color_fix(x, torch.zeros(3, 8, 8), "none") is x
    with pytest.raises(ConfigError, match="color_fix must be one of none, adain, wavelet"):
        color_fix(x, x, "histogram")


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    _, export = exported_student(tmp_path_factory.mktemp("student"))
    return VARestorerPipeline.from_pretrained(export)


def _restore(pipe, x, **kwargs):
    return pipe(x, prompt="", output_type="pt", **kwargs).images[0]


def test_the_pipelines_adain_output_has_the_upsampled_inputs_colour(pipe):
    x = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(2)) * 0.5
    out = _restore(pipe, x, color_fix="adain")
    reference = pipe.resize(x[None], tuple(out.shape[-2:]))[0]
    torch.testing.assert_close(out.mean((-2, -1)), reference.mean((-2, -1)), atol=0.02, rtol=0)
    assert not torch.equal(out, _restore(pipe, x))


def test_restore_takes_color_fix_and_lq_scales_from_the_command_line(tmp_path, pipe):
    from PIL import Image

    from varestorer.cli import main

    Image.new("RGB", (16, 16), (200, 30, 30)).save(tmp_path / "red.png")
    out = tmp_path / "out"
    args = ["restore", str(tmp_path / "red.png"), "-o", str(out), "--model", str(pipe.source), "--no-prompt"]
    assert main([*args, "--color-fix", "adain", "--lq-scales", "2"]) == 0
    restored = torch.tensor(np.asarray(Image.open(out / "red.png"))).float()
    expected = _restore(
        pipe,
        torch.tensor([200 / 255, 30 / 255, 30 / 255])[:, None, None].expand(3, 16, 16),
        color_fix="adain",
        lq_scales=2,
    )
    assert (restored.permute(2, 0, 1) / 255 - expected).abs().max() <= 1 / 255 + 1e-6


def test_every_scale_from_the_lq_tokens_decodes_the_lq_tokens(pipe):
    x = torch.rand(1, 3, pipe.resolution, pipe.resolution, generator=torch.Generator().manual_seed(3))
    K = len(pipe.schedule)
    tokens = pipe.lq_tokens(x)
    expected = (pipe.vae.decode_bits(tokens.bits).float() + 1) / 2
    torch.testing.assert_close(pipe.restore_onestep(x, [""], lq_scales=K), expected)


def test_lq_scales_left_out_is_the_models_own_and_each_value_changes_the_output(pipe):
    x = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(4))
    default = _restore(pipe, x)
    torch.testing.assert_close(_restore(pipe, x, lq_scales=pipe.config.keep_lq_scales), default)
    outs = [_restore(pipe, x, lq_scales=k) for k in range(len(pipe.schedule) + 1)]
    assert all(not torch.equal(a, b) for a, b in zip(outs, outs[1:]))


def test_lq_scales_out_of_range_or_for_a_sampling_method_is_refused(pipe):
    x = torch.rand(3, 16, 16)
    K = len(pipe.schedule)
    with pytest.raises(ConfigError, match=rf"lq_scales \(--lq-scales\) must be an integer in \[0, {K}\]"):
        _restore(pipe, x, lq_scales=K + 1)
    with pytest.raises(ConfigError, match="lq_scales applies to the one-step method, not zeroshot"):
        _restore(pipe, x, method="zeroshot", lq_scales=1)


def test_color_error_measures_a_tint_not_fine_detail():
    from varestorer.evaluation.metrics import color_error

    rng = np.random.RandomState(0)
    photo = rng.randint(40, 200, (64, 64, 3)).astype(np.uint8)
    tinted = np.clip(photo.astype(int) + [25, 0, -10], 0, 255).astype(np.uint8)
    flipped = photo[:, ::-1].copy()  # the same colours, the detail moved
    checker = (np.indices((64, 64)).sum(0) % 2 * 40 - 20)[..., None]
    detailed = np.clip(photo.astype(int) + checker, 0, 255).astype(np.uint8)  # zero-mean detail added
    assert color_error(photo, photo) == 0
    assert color_error(tinted, photo) > 5 * color_error(detailed, photo)
    assert color_error(detailed, photo) < 1.0
    assert color_error(flipped, photo) < color_error(tinted, photo)


def test_the_default_colour_fix_is_the_exports_own_and_none_for_the_baselines(pipe):
    x = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(5))
    assert pipe.config.color_fix == pipe.default_color_fix == "wavelet"  # a trained model's, from its recipe
    torch.testing.assert_close(_restore(pipe, x), _restore(pipe, x, color_fix="wavelet"))
    zeroshot = dict(method="zeroshot", num_given=1)  # a baseline stays as the paper defines it
    torch.testing.assert_close(_restore(pipe, x, **zeroshot), _restore(pipe, x, color_fix="none", **zeroshot))
    trained = pipe.config
    try:
        pipe.config = trained.replace(color_fix="adain")  # what the export says, whatever its origin
        assert pipe.default_color_fix == "adain"
        torch.testing.assert_close(_restore(pipe, x), _restore(pipe, x, color_fix="adain"))
    finally:
        pipe.config = trained
