"""The Real-ESRGAN degradation pipeline: determinism per (seed, image), agreement with basicsr's
own per-image calls, sizes and ranges, preset validation, preset statistics, CLI."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from varestorer.data.samples import sample_image
from varestorer.degradations import DegradationPipeline, load_preset, ops, preset_names
from varestorer.errors import ConfigError

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket"]


def photos(size, names=PHOTOS, width=None):
    out = []
    for n in names:
        im = sample_image(n)[None]
        out.append(F.interpolate(im, size=(size, width or size), mode="area")[0])
    return torch.stack(out)


@pytest.fixture(scope="module")
def hq96():
    return photos(96)


@pytest.fixture(scope="module")
def x4():
    return DegradationPipeline.from_preset("realesrgan-x4")


# ------------------------------------------------------------------------------------ determinism
def test_same_seed_same_lq_whatever_the_batch(hq96, x4):
    seeds = [11, 12, 13, 14]
    a = x4(hq96, seeds)
    b = x4(hq96, seeds)
    assert torch.equal(a.lq, b.lq) and torch.equal(a.lq_up, b.lq_up)
    # one sample alone, or in a batch of different composition and order: the same LQ
    alone = x4(hq96[2:3], [13])
    assert torch.equal(alone.lq[0], a.lq[2])
    rev = x4(hq96.flip(0), seeds[::-1])
    assert torch.equal(rev.lq.flip(0), a.lq)
    mixed = x4(torch.stack([hq96[1], hq96[0], hq96[2]]), [99, 11, 5])
    assert torch.equal(mixed.lq[1], a.lq[0])
    # whatever the global RNGs did before
    torch.manual_seed(1234)
    np.random.seed(4321)
    assert torch.equal(x4(hq96, seeds).lq, a.lq)
    # another seed, another LQ
    assert not torch.equal(x4(hq96, [21, 22, 23, 24]).lq, a.lq)


def test_global_rng_state_untouched(hq96, x4):
    import random

    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    x4(hq96[:2], [1, 2])
    r, n, t = random.random(), np.random.rand(), torch.rand(())
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    assert (r, n, t) == (random.random(), np.random.rand(), torch.rand(()))


def test_batched_equals_sequential_basicsr_reference(hq96):
    """The batched pipeline gives what basicsr's own calls give, one image at a time."""
    from varestorer.degradations.reference import ReferenceDegrader

    for preset in ("realesrgan-x4", "heavy"):
        pipe, ref = DegradationPipeline.from_preset(preset), ReferenceDegrader(preset)
        seeds = [100, 101, 102, 103, 104, 105, 106, 107]
        hq = torch.cat([hq96, hq96.flip(-1)])
        out = pipe(hq, seeds)
        kinds = set()
        for i, s in enumerate(seeds):
            lq, gt = ref(hq[i], s)
            diff = (lq[0] - out.lq[i]).abs()
            assert (diff > 1.5 / 255).float().mean() < 1e-3, (preset, s, diff.max())
            assert torch.allclose(gt[0], out.gt[i], atol=1e-4)
            p = out.params[i]
            kinds |= {p.noise1.kind, p.noise2.kind, p.sinc_first, p.blur2}
        assert kinds >= {"gaussian", "poisson", True, False}  # both branches of each step were exercised


# -------------------------------------------------------------------------------- sizes and ranges
@pytest.mark.parametrize("h,w", [(64, 64), (96, 128)])
def test_output_sizes_and_ranges(h, w, x4):
    hq = photos(h, PHOTOS[:3], width=w)
    out = x4(hq, torch.tensor([1, 2, 3]))
    assert out.lq.shape == (3, 3, h // 4, w // 4)
    assert out.lq_up.shape == out.gt.shape == (3, 3, h, w)
    for t in (out.lq, out.lq_up, out.gt):
        assert t.dtype == torch.float32 and t.min() >= 0 and t.max() <= 1
    levels = out.lq * 255
    assert torch.equal(levels, levels.round())  # 8-bit LQ, like a saved image
    assert len(out.params) == 3
    # lq_up is the LQ resized back with the preset's mode
    up = F.interpolate(out.lq, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)
    assert torch.allclose(out.lq_up, up)
    # the target is the HQ itself (paper Eq. 5), unless Real-ESRGAN's USM-sharpened GT is asked for
    assert torch.equal(out.gt, hq)
    sharpened = DegradationPipeline.from_preset("realesrgan-x4", usm_sharpen_gt=True)(hq, torch.tensor([1, 2, 3])).gt
    assert not torch.allclose(sharpened, hq) and (sharpened - hq).abs().max() < 0.5


def test_scale_override_and_plain_gt(hq96):
    pipe = DegradationPipeline.from_preset("light", scale=2, usm_sharpen_gt=False)
    out = pipe(hq96[:2], [0, 1])
    assert out.lq.shape == (2, 3, 48, 48)
    assert torch.equal(out.gt, hq96[:2])


def test_autocast_does_not_change_the_pipeline(hq96, x4):
    ref = x4(hq96[:2], [3, 4]).lq
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = x4(hq96[:2], [3, 4])
    assert out.lq.dtype == torch.float32 and torch.equal(out.lq, ref)


def test_pipeline_holds_no_trainable_parameters(x4):
    assert not isinstance(x4, torch.nn.Module)  # never part of a model's parameters or state_dict
    assert all(not p.requires_grad for p in x4.jpeger.parameters())
    # basicsr shares DiffJPEG's tables between instances; ours has its own
    from varestorer.compat import import_basicsr

    shared = import_basicsr("basicsr.utils.diffjpeg").y_table
    assert all(p is not shared for p in x4.jpeger.parameters())


# ------------------------------------------------------------------------------------- primitives
@pytest.mark.parametrize("mode", ["area", "bilinear", "bicubic"])
def test_ragged_resize_matches_interpolate(mode):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 40, 50, generator=g)
    sizes = [(40, 50), (31, 22), (17, 45)]
    for i, (h, w) in enumerate(sizes):
        x[i, :, h:], x[i, :, :, w:] = 0, 0
    scales = [0.37, 1.5, 1.0]
    out, new = ops.resize(x, sizes, [mode] * 3, scales=scales)
    for i, (h, w) in enumerate(sizes):
        ref = F.interpolate(x[i : i + 1, :, :h, :w], scale_factor=scales[i], mode=mode)
        assert new[i] == tuple(ref.shape[-2:])
        assert torch.allclose(out[i : i + 1, :, : new[i][0], : new[i][1]], ref, atol=1e-5)
        assert out[i, :, new[i][0] :].abs().sum() == 0 and out[i, :, :, new[i][1] :].abs().sum() == 0


def test_ragged_filter_matches_basicsr_filter2d():
    from varestorer.compat import import_basicsr

    filter2D = import_basicsr("basicsr.utils.img_process_util").filter2D
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 30, 40, generator=g)
    sizes = [(30, 40), (24, 13)]
    x[1, :, 24:], x[1, :, :, 13:] = 0, 0
    k = torch.rand(2, 21, 21, generator=g)
    k /= k.sum((1, 2), keepdim=True)
    out = ops.filter2d_ragged(x, sizes, k)
    for i, (h, w) in enumerate(sizes):
        ref = filter2D(x[i : i + 1, :, :h, :w], k[i : i + 1])
        assert torch.allclose(out[i, :, :h, :w], ref[0], atol=1e-5)


def test_separable_usm_matches_basicsr_usmsharp(hq96):
    from varestorer.compat import import_basicsr
    from varestorer.degradations.pipeline import make_usm_kernel

    usm = import_basicsr("basicsr.utils.img_process_util").USMSharp(radius=50)
    ref = usm(hq96[:2])
    out = ops.separable_usm(hq96[:2], make_usm_kernel(50), 0.5, 10)
    assert torch.allclose(out, ref, atol=1e-4)


# ---------------------------------------------------------------------------------------- presets
def test_shipped_presets_and_published_values():
    names = preset_names()
    assert {"realesrgan-x4", "light", "heavy"} <= set(names)
    for n in names:
        load_preset(n)
    c = load_preset("realesrgan-x4")
    assert c.scale == 4 and not c.usm_sharpen_gt  # the paper's target is x_HQ, not Real-ESRGAN's sharpened GT
    assert c.resize_prob == (0.2, 0.7, 0.1) and c.resize_range == (0.15, 1.5)
    assert c.noise_range == (1, 30) and c.poisson_scale_range == (0.05, 3) and c.gray_noise_prob == 0.4
    assert c.jpeg_range == (30, 95) and c.second_blur_prob == 0.8
    assert c.resize_prob2 == (0.3, 0.4, 0.3) and c.resize_range2 == (0.3, 1.2)
    assert c.noise_range2 == (1, 25) and c.poisson_scale_range2 == (0.05, 2.5) and c.jpeg_range2 == (30, 95)
    assert c.kernel_prob == (0.45, 0.25, 0.12, 0.03, 0.12, 0.03) and c.sinc_prob == 0.1
    assert c.blur_sigma == (0.2, 3) and c.blur_sigma2 == (0.2, 1.5) and c.final_sinc_prob == 0.8
    assert c.betag_range == (0.5, 4) and c.betap_range == (1, 2) and c.kernel_size_range == (7, 21)


def test_unknown_and_invalid_keys_are_errors(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("scale: 4\nnoise_ragne: [1, 30]\n")
    with pytest.raises(ConfigError) as e:
        load_preset(str(path))
    msg = str(e.value)
    assert "noise_ragne" in msg and "noise_range" in msg and "jpeg_range2" in msg  # names the valid keys
    bad = {
        "noise_range: [30, 1]": "noise_range",
        "resize_prob: [0.5, 0.5, 0.5]": "resize_prob",
        "kernel_list: [iso, gaussian]": "kernel_list",
        "kernel_list: [iso]\nkernel_prob: [0.5, 0.5]": "kernel_prob",
        "jpeg_range: [0, 120]": "jpeg_range",
        "sinc_prob: 1.5": "sinc_prob",
        "kernel_size_range: [8, 21]": "kernel_size_range",
        "resize_modes: [nearest]": "resize_modes",
        "scale: four": "scale",
        "usm_sharpen_gt: 1": "usm_sharpen_gt",
    }
    for text, key in bad.items():
        path.write_text(text + "\n")
        with pytest.raises(ConfigError, match=key):
            load_preset(str(path))
    with pytest.raises(ConfigError, match="realesrgan-x4"):
        load_preset("no-such-preset")
    with pytest.raises(ConfigError, match="valid keys"):
        DegradationPipeline.from_preset("light", noise_sigma=3)


def _stats(preset, hq, seeds, **overrides):
    pipe = DegradationPipeline.from_preset(preset, **overrides)
    return pipe(hq.repeat(len(seeds) // hq.shape[0], 1, 1, 1), seeds)


def _high_freq(x):
    lap = x[..., 1:-1, 1:-1] * 4 - x[..., :-2, 1:-1] - x[..., 2:, 1:-1] - x[..., 1:-1, :-2] - x[..., 1:-1, 2:]
    return lap.abs().mean().item()


def test_heavy_is_blurrier_and_noisier_than_light(hq96):
    seeds = list(range(12))
    presets = ("light", "realesrgan-x4", "heavy")
    # blur, measured without noise: high-frequency energy of the LQ relative to the clean downscale
    quiet = dict(
        noise_range=[0, 0],
        poisson_scale_range=[0, 0],
        noise_range2=[0, 0],
        poisson_scale_range2=[0, 0],
        jpeg_range=[95, 95],
        jpeg_range2=[95, 95],
        usm_sharpen_gt=False,
    )
    clean = _high_freq(F.interpolate(hq96, scale_factor=0.25, mode="area"))
    sharp = {p: _high_freq(_stats(p, hq96, seeds, **quiet).lq) / clean for p in presets}
    assert sharp["light"] > sharp["realesrgan-x4"] > sharp["heavy"], sharp
    assert sharp["light"] > 1.5 * sharp["heavy"], sharp
    # noise, measured on smooth colour ramps (blur and resizing leave them nearly unchanged),
    # with the JPEG quality fixed so that compression does not remove noise in one preset only
    h = hq96.shape[-1]
    yy, xx = torch.meshgrid(torch.linspace(0.2, 0.8, h), torch.linspace(0.2, 0.8, h), indexing="ij")
    ramp = torch.stack([xx, yy, (xx + yy) / 2])[None].repeat(4, 1, 1, 1)
    ref = F.interpolate(ramp, scale_factor=0.25, mode="area").repeat(len(seeds) // 4, 1, 1, 1)
    fixed = dict(jpeg_range=[95, 95], jpeg_range2=[95, 95], usm_sharpen_gt=False)
    noise = {p: (_stats(p, ramp, seeds, **fixed).lq - ref)[..., 2:-2, 2:-2].std().item() for p in presets}
    assert noise["heavy"] > 2 * noise["light"] and noise["realesrgan-x4"] > 2 * noise["light"], noise


# -------------------------------------------------------------------------------------------- CLI
def test_degrade_cli_writes_lq_hq_params_sheet(tmp_path, capsys):
    from PIL import Image

    from varestorer.cli import main

    src = tmp_path / "src" / "sub"
    src.mkdir(parents=True)
    for n in PHOTOS[:3]:
        Image.fromarray((sample_image(n).permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(src / f"{n}.png")
    (src / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    args = [
        "degrade",
        str(tmp_path / "src"),
        str(out),
        "--size",
        "64",
        "--resize",
        "--save-hq",
        "--seed",
        "7",
        "--batch",
        "2",
        "--sheet-samples",
        "2",
    ]
    assert main(args) == 0
    assert "wrote 3 LQ images" in capsys.readouterr().out
    lq = sorted((out / "lq").rglob("*.png"))
    assert len(lq) == 3 and Image.open(lq[0]).size == (16, 16)
    assert Image.open(out / "hq" / "sub" / "chelsea.png").size == (64, 64)
    rows = [json.loads(line) for line in (out / "params.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and {"seed", "jpeg1", "noise2"} <= set(rows[0])
    assert "broken.jpg" in (out / "skipped.tsv").read_text()
    sheet = Image.open(out / "sheet.png")
    assert sheet.size[0] > 4 * 64 and sheet.size[1] > 2 * 64  # HQ + 3 presets, 2 rows
    first = {p.name: p.read_bytes() for p in lq}
    # the LQ of an image depends on (seed, path) only: another batch size gives the same files
    assert main(args[:-4] + ["--batch", "3", "--no-sheet"]) == 0
    assert first == {p.name: p.read_bytes() for p in sorted((out / "lq").rglob("*.png"))}


def test_bench_degrade_cli(capsys):
    from varestorer.cli import main

    assert main(["bench", "degrade", "--size", "64", "--batch", "2", "--steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "batched" in out and "sequential" in out and "images/s" in out
    from varestorer.cli.bench import BENCHMARKS

    assert "degrade" in BENCHMARKS


# ------------------------------------------------------------------ DiffBIR's first order (the release's)
def test_the_diffbir_preset_draws_1000_parameter_sets_within_the_released_trainers_ranges():
    from varestorer.degradations.first_order import sample_first_order

    c = load_preset("diffbir")
    assert (c.pipeline, c.blur_kernel_size, c.kernel_list, c.kernel_prob) == (
        "first_order",
        41,
        ("iso", "aniso"),
        (0.5, 0.5),
    )
    draws = [sample_first_order(c, seed) for seed in range(1000)]
    kinds = [p.kernel_type for p in draws]
    assert 400 < kinds.count("iso") < 600 and kinds.count("iso") + kinds.count("aniso") == 1000
    for p in draws:
        assert 0.1 <= p.sigma_x <= 12 and 0.1 <= p.sigma_y <= 12
        if p.kernel_type == "iso":
            assert p.sigma_x == p.sigma_y and p.rotation == 0
        else:
            assert -np.pi <= p.rotation <= np.pi
        assert p.kernel.shape == (41, 41) and p.kernel.sum() == pytest.approx(1, abs=1e-5)
        assert 1 <= p.downsample <= 12
        assert p.noise.kind == "gaussian" and not p.noise.gray and 0 <= p.noise.level <= 15
        assert p.jpeg == int(p.jpeg) and 30 <= p.jpeg < 100  # int(uniform(30, 100)), as OpenCV takes it
    # the draws cover their ranges, not a corner of them
    assert max(p.downsample for p in draws) > 11 and min(p.downsample for p in draws) < 2
    assert max(p.noise.level for p in draws) > 14 and min(p.jpeg for p in draws) == 30
    assert max(p.sigma_x for p in draws) > 11.5 and min(p.sigma_x for p in draws) < 0.5


def test_a_diffbir_lq_is_at_the_hq_size_and_a_function_of_its_seed_alone(hq96):
    deg = DegradationPipeline.from_preset("diffbir")
    assert type(deg).__name__ == "FirstOrderPipeline"
    seeds = [3, 4, 5, 6]
    a = deg(hq96, seeds)
    assert a.lq.shape == hq96.shape and torch.equal(a.lq, a.lq_up) and torch.equal(a.gt, hq96)
    assert 0 <= a.lq.min() and a.lq.max() <= 1
    alone = deg(hq96[2:3], [5])
    torch.testing.assert_close(alone.lq[0], a.lq[2], rtol=0, atol=1e-6)
    assert not torch.equal(deg(hq96, [7, 8, 9, 10]).lq, a.lq)
    # what each sample's parameters say: the blur, then the LQ at int(H // factor) before it is resized back
    from varestorer.degradations.first_order import sample_first_order

    p = sample_first_order(deg.config, 5)
    small = (int(96 // p.downsample), int(96 // p.downsample))
    blurred = ops.filter2d(hq96[2:3], torch.from_numpy(p.kernel)[None])
    down = F.interpolate(blurred, size=small, mode="bilinear", align_corners=False)
    up = F.interpolate(down, size=(96, 96), mode="bilinear", align_corners=False)
    # noise and JPEG on top: close to the blurred, resampled photo, far from the photo itself
    assert (alone.lq - up).abs().mean() < (alone.lq - hq96[2:3]).abs().mean()


def test_the_batched_diffbir_pipeline_is_the_released_trainers_opencv_degradation_up_to_jpeg(hq96):
    """Without noise (NumPy's and torch's generators differ), the batched pipeline gives what the
    release's per-image OpenCV code gives from the same parameters: blur and resizes to 1e-5, the rest
    is DiffJPEG against libjpeg (their roundings and chroma upsampling differ)."""
    from varestorer.degradations.first_order import OpenCVFirstOrder

    deg = DegradationPipeline.from_preset("diffbir", noise_range=[0.0, 0.0])
    ref = OpenCVFirstOrder(deg.config)
    seeds = [0, 1, 2, 3]
    ours = deg(hq96, seeds).lq
    theirs = torch.stack([ref(hq96[i], s) for i, s in enumerate(seeds)])
    psnr = -10 * torch.log10(((ours - theirs) ** 2).mean((1, 2, 3)))
    assert psnr.min() > 28 and psnr.mean() > 31, psnr  # measured 29.9-36.1 dB at 96 px
    # quality 100 (DiffJPEG divides by zero there) is taken as 99: finite, nearly lossless
    lossless = DegradationPipeline.from_preset("diffbir", noise_range=[0.0, 0.0], jpeg_range=[100, 100])
    assert torch.isfinite(lossless(hq96, seeds).lq).all()
