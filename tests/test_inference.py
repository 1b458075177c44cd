"""Export, the one-step pipeline, tiling, restore/export/publish commands (tiny preset, CPU)."""

import json

import numpy as np
import pytest
import torch
from conftest import exported_student, move_lora
from PIL import Image

from varestorer.cli import main
from varestorer.data.samples import sample_image
from varestorer.distill.model import VARestorerModel
from varestorer.distill.recipe import load_recipe
from varestorer.errors import ConfigError
from varestorer.export import CONFIG_FILE, MERGED_FILE
from varestorer.inference import VARestorerPipeline
from varestorer.inference.pipeline import METHODS, VARestorerPipelineOutput
from varestorer.inference.tiling import restore_tiled, tile_starts


def _batch(n=2, size=64):
    from varestorer.data.samples import SampleImages
    from varestorer.distill.dataloader import collate

    data = SampleImages(size, random_crop=False)
    return collate([data[i] for i in range(n)])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny student whose LoRA and encoder have moved away from the base, and its export."""
    root = tmp_path_factory.mktemp("trained")
    torch.manual_seed(0)
    model = VARestorerModel.from_recipe(load_recipe("tiny", [f"train.output_dir={root}", "train.report_to=none"]))
    move_lora(model, 0.05)
    with torch.no_grad():
        for p in model.lq_encoder.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    model.eval()
    model.save_export(root / "export")
    return model, root / "export"


@pytest.fixture(scope="module")
def trained_varsr(tmp_path_factory):
    """A tiny multi-step VARSR-style model (mode varsr) with a LoRA away from zero, exported."""
    return exported_student(tmp_path_factory.mktemp("varsr"), "mode=varsr", "student.attention=causal")[1]


def _student_images(model, batch):
    with torch.no_grad():
        x_hq, x_lq, seeds = model.degrade(batch)
        text = model._text(batch["caption"], seeds)
        lq_tokens = model.lq_tokens(x_lq)
        logits = model.student_logits(text, lq_tokens)
        return (x_lq + 1) / 2, logits, (model.decode_student(logits, lq_tokens) + 1) / 2


def test_exported_pipeline_equals_the_in_training_student(trained):
    model, export = trained
    batch = _batch()
    lq, logits, reference = _student_images(model, batch)
    # unmerged LoRA: the very same computation, bit for bit
    pipe = VARestorerPipeline.from_pretrained(export, merge_lora=False)
    out = pipe(list(lq), prompt=batch["caption"], upscale=1, output_type="pt", color_fix="none").images
    for o, r in zip(out, reference):
        assert torch.equal(o, r)
    # merged LoRA (the default): the weights are summed once, logits agree to float rounding
    merged = VARestorerPipeline.from_pretrained(export)
    torch.testing.assert_close(merged.student_logits(lq, batch["caption"]), logits, rtol=0, atol=1e-5)
    # the model moved: its output is not the base model's
    assert not torch.equal(model.lq_encoder.conv_in.conv.weight, model.vae.encoder.conv_in.conv.weight)


def test_a_student_that_keeps_the_lq_first_scale_restores_with_it_in_training_and_in_the_pipeline(tmp_path):
    from varestorer.tokenizer import MultiScaleBSQ

    model, _ = exported_student(tmp_path, "student.keep_lq_scales=1")
    batch = _batch()
    lq, logits, reference = _student_images(model, batch)
    with torch.no_grad():
        bits = MultiScaleBSQ.split_sequence((logits.softmax(-1)[..., 1] > 0.5).float(), model.schedule)
        lq_bits = model.lq_tokens(lq * 2 - 1).bits[0].float()
        assert not torch.equal(bits[0], lq_bits)  # the student's own 1x1 scale is not what is used
        expected = (model.vae.decode_bits([lq_bits] + bits[1:]) + 1) / 2
    torch.testing.assert_close(reference, expected, rtol=0, atol=1e-5)  # same bits; the memory layout differs
    pipe = VARestorerPipeline.from_pretrained(tmp_path / "export", merge_lora=False)
    assert pipe.config.keep_lq_scales == 1
    out = pipe(list(lq), prompt=batch["caption"], upscale=1, output_type="pt", color_fix="none").images
    for o, r in zip(out, reference):
        assert torch.equal(o, r)


def test_peft_loads_the_exported_adapter_on_the_base(trained):
    from peft import PeftModel

    from varestorer.transformer.loading import load_transformer

    model, export = trained
    assert {"adapter_model.safetensors", "adapter_config.json", "encoder.safetensors", CONFIG_FILE} <= {
        p.name for p in export.iterdir()
    }
    assert not list(export.glob("*.bin")) and not list(export.glob("*.pt*"))  # no pickles
    base = load_transformer("tiny", export / "base_transformer.safetensors")
    peft_model = PeftModel.from_pretrained(base, str(export))
    trained_lora = {"base_model.model." + k: v for k, v in model.transformer.state_dict().items() if "lora_" in k}
    loaded = {k: v for k, v in peft_model.state_dict().items() if "lora_" in k}
    assert trained_lora.keys() == loaded.keys() and trained_lora
    assert all(torch.equal(trained_lora[k], loaded[k]) for k in trained_lora)
    config = json.loads((export / CONFIG_FILE).read_text())
    assert (
        config["base_preset"] == "tiny"
        and config["resolution"] == 64
        and config["scale_schedule"] == [[1, 1], [2, 2], [4, 4], [6, 6], [8, 8]]
    )
    assert config["recipe"]["name"] == "tiny" and config["attention"] == "full"


def test_an_adapter_written_by_peft_itself_loads_in_place_with_the_same_output(trained, tmp_path):
    from peft import get_peft_model

    from varestorer.transformer.loading import load_transformer
    from varestorer.transformer.lora import is_adapted, load_adapter, lora_config

    model, export = trained
    torch.manual_seed(3)
    wrapped = get_peft_model(
        load_transformer("tiny", export / "base_transformer.safetensors"), lora_config(rank=4, init=False)
    )  # lora_B random: the adapter changes the output
    wrapped.save_pretrained(str(tmp_path / "peft"))
    inner = load_transformer("tiny", export / "base_transformer.safetensors")
    assert load_adapter(inner, tmp_path / "peft") is inner and is_adapted(inner)
    with torch.no_grad():
        text = model.text_encoder(["a red door"], device="cpu")
        inputs = model.lq_tokens(torch.rand(1, 3, 64, 64) * 2 - 1).lq_input_sequence("pyramid")
        assert torch.equal(
            inner(text, inputs, model.schedule, attention="full"),
            wrapped(text, inputs, model.schedule, attention="full"),
        )
    (tmp_path / "peft" / "adapter_config.json").write_text(
        (tmp_path / "peft" / "adapter_config.json").read_text().replace('"r": 4', '"r": 8')
    )
    with pytest.raises(RuntimeError, match="size mismatch"):  # the pipeline turns it into a CheckpointError
        load_adapter(load_transformer("tiny", export / "base_transformer.safetensors"), tmp_path / "peft")


def test_save_pretrained_round_trip(trained, tmp_path):
    _, export = trained
    pipe = VARestorerPipeline.from_pretrained(export, merge_lora=False)
    again = VARestorerPipeline.from_pretrained(pipe.save_pretrained(tmp_path / "copy"), merge_lora=False)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(pipe.student_logits(x, ["a cat"]), again.student_logits(x, ["a cat"]))


@pytest.mark.parametrize("weights", ["linear", "gaussian"])
def test_tile_blending_weights_sum_to_one(weights):
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 150, 230, generator=g)
    # an identity restorer gives back the image exactly: the blending weights sum to one everywhere
    torch.testing.assert_close(
        restore_tiled(image, lambda t: t, tile=64, overlap=16, weights=weights), image, rtol=0, atol=1e-6
    )
    # a constant image through a per-tile-constant restorer stays constant: no seams
    flat = torch.full((1, 3, 150, 230), 0.3)
    out = restore_tiled(flat, lambda t: t * 0.5 + 0.25, tile=64, overlap=16, weights=weights)
    assert (out - 0.4).abs().max() < 1e-6


def test_the_releases_gaussian_tiles_meet_without_a_step_but_less_smoothly_than_the_ramp():
    """Tiles that disagree by 0.1, 64 px tiles with 16 px overlap (the release's 512/128 ratio):
    measured, the largest step between neighbouring pixels is 0.006 with the linear ramp, 0.028 with
    the release's Gaussian weights (sigma 0.1 tile concentrates each tile's weight at its centre),
    and the full 0.1 without blending."""

    def jump(weights):
        count = []

        def disagree(x):
            offsets = torch.tensor([0.1 * ((len(count) + i) % 2) for i in range(len(x))])
            count.extend(range(len(x)))
            return torch.full_like(x, 0.5) + offsets[:, None, None, None]

        out = restore_tiled(torch.full((1, 3, 200, 280), 0.5), disagree, 64, 16, weights=weights)[0]
        return _largest_jump(out)

    linear, gaussian = jump("linear"), jump("gaussian")
    assert linear < 0.1 / 8 and gaussian < 0.1 / 3
    assert gaussian > 2 * linear


def _offset_per_tile(pipe, monkeypatch, step=0.1):
    """Make the one-step restorer give each tile (in call order) a flat 0.5, +step on every other
    tile: neighbouring tiles then disagree by ``step`` everywhere they overlap."""
    count = []

    def fake(x, prompts):
        offsets = torch.tensor([step * ((len(count) + i) % 2) for i in range(len(x))])
        count.extend(range(len(x)))
        return torch.full_like(x, 0.5) + offsets[:, None, None, None]

    monkeypatch.setattr(pipe, "restore_onestep", fake)


def _largest_jump(image):
    return max((image[:, 1:] - image[:, :-1]).abs().max(), (image[:, :, 1:] - image[:, :, :-1]).abs().max())


def test_tiles_that_disagree_are_cross_faded_without_seams(trained, monkeypatch):
    """Tiles whose restorations differ by 0.1 (as two passes of a generative model do) meet in a
    ramp, never a step: between neighbouring pixels the output moves by ~0.1 / overlap. Without
    overlap or without blending the full 0.1 step shows at every tile border."""
    _, export = trained
    pipe = VARestorerPipeline.from_pretrained(export)
    _offset_per_tile(pipe, monkeypatch)
    flat = torch.full((3, 50, 70), 0.5)  # 200 x 280 out: 4 x 5 tiles of 64
    out = pipe([flat], prompt="", upscale=4, mode="tile", tile_overlap=16, color_fix="none", output_type="pt").images[0]
    assert out.shape == (3, 200, 280)
    assert out.min() < 0.51 and out.max() > 0.59  # both offsets are there...
    assert _largest_jump(out) < 0.1 / 8  # ...and meet smoothly (a 16 px ramp: ~0.1 / 17 per pixel)
    hard = pipe([flat], prompt="", upscale=4, mode="tile", tile_overlap=0, color_fix="none", output_type="pt").images[0]
    assert _largest_jump(hard) > 0.09  # what a seam looks like


def test_a_tiles_output_does_not_depend_on_how_many_images_or_tiles_share_its_forward_pass(trained):
    """Tiles are restored one per forward pass by default (the release's way): the same tiled
    output, Gumbel draws included, whatever ``batch_size``, and each tile is what restoring it alone
    gives. (With several tiles a pass, a batched restorer's float rounding flips LQ bits, and the
    draws go to other tiles: ``tile_batch_size`` trades that for speed.)"""
    _, export = trained
    pipe = VARestorerPipeline.from_pretrained(export)
    image = sample_image("coffee")[:, :60, :80]  # 240 x 320 out: 5 x 7 tiles of 64 with 16 overlap
    calls, outputs = [], []
    restore = pipe.restore_onestep

    def recording(x, prompts, **kw):
        calls.append(x.clone())
        outputs.append(restore(x, prompts, **kw))
        return outputs[-1]

    pipe.restore_onestep = recording

    def run(**kw):
        g = torch.Generator().manual_seed(3)
        return pipe([image], prompt="", upscale=4, mode="tile", decode="gumbel", generator=g, output_type="pt", **kw)

    one = run(batch_size=1).images[0]
    n = len(tile_starts(240, 64, 16)) * len(tile_starts(320, 64, 16))
    assert all(len(c) == 1 for c in calls) and len(calls) == n == 35
    # the first tile restored on its own, from the same generator state: what the tiled pass gave it
    alone = restore(calls[0], [""], decode="gumbel", generator=torch.Generator().manual_seed(3))
    assert torch.equal(alone, outputs[0])
    calls.clear()
    assert torch.equal(run(batch_size=4).images[0], one)
    calls.clear()
    run(batch_size=1, tile_batch_size=4)
    assert [len(c) for c in calls] == [4] * (n // 4) + [n % 4]


def test_odd_inputs_work_or_fail_clearly(trained, tmp_path):
    _, export = trained
    pipe = VARestorerPipeline.from_pretrained(export)
    gray = Image.fromarray(np.full((20, 30), 128, np.uint8), "L")
    rgba = Image.fromarray(np.dstack([np.full((24, 24, 3), 200, np.uint8), np.full((24, 24), 100, np.uint8)]), "RGBA")
    deep = np.full((16, 16, 3), 40000, np.uint16)
    tiny_image = np.zeros((1, 1, 3), np.uint8)
    path16 = tmp_path / "deep.png"
    Image.fromarray(np.full((12, 12), 30000, np.uint16)).save(path16)  # a 16-bit grayscale PNG
    out = pipe([gray, rgba, deep, tiny_image, path16], prompt="", output_type="pil").images
    assert [im.size for im in out] == [(120, 80), (96, 96), (64, 64), (4, 4), (48, 48)]
    assert all(im.mode == "RGB" for im in out)
    with pytest.raises(ConfigError, match="lower --upscale"):
        pipe([torch.zeros(3, 4000, 4000)], prompt="")  # 16000 x 16000: refused before any work
    with pytest.raises(ConfigError, match="cannot restore"):
        bad = tmp_path / "bad.png"
        bad.write_bytes(b"not a png")
        pipe([bad])
    with pytest.raises(ConfigError, match="unknown method"):
        pipe([gray], method="magic")
    with pytest.raises(ConfigError, match="2 prompts for 1 images"):
        pipe([gray], prompt=["a", "b"])


def test_the_call_follows_diffusers_conventions(trained):
    _, export = trained
    pipe = VARestorerPipeline.from_pretrained(export)
    x = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    out = pipe(image=x, prompt="a cat", output_type="pt")
    assert isinstance(out, VARestorerPipelineOutput) and out.prompts == ["a cat"]
    images, prompts = pipe(x, "a cat", output_type="pt", return_dict=False)
    assert torch.equal(images[0], out.images[0]) and prompts == ["a cat"]
    assert isinstance(pipe(x, "").images[0], Image.Image) and pipe(x, "", output_type="np").images[0].dtype == np.uint8
    with pytest.raises(ConfigError, match="pass the image"):
        pipe(prompt="a cat")
    with pytest.raises(ConfigError, match="now called zeroshot"):
        pipe(x, "", method="teacher")
    with pytest.raises(ConfigError, match="takes no settings"):
        pipe(x, "", method="onestep", cfg=3)


@pytest.mark.parametrize("method", ["onestep", "zeroshot"])
def test_a_half_precision_pipeline_holds_its_weights_in_that_precision(trained, method):
    """to(dtype=bfloat16) holds the transformer's blocks and the text encoder in bfloat16 (as Infinity
    runs the 2B model and T5); the rest stays float32; the restoration stays close to float32's."""
    _, export = trained
    full, half = VARestorerPipeline.from_pretrained(export), VARestorerPipeline.from_pretrained(export)
    half.to("cpu", torch.bfloat16)
    blocks = {
        id(p) for n, p in half.transformer.named_parameters() if n.startswith("block_chunks.") and "_norm." not in n
    }
    assert {p.dtype for p in half.text_encoder.parameters()} == {torch.bfloat16}
    for n, p in [*half.transformer.named_parameters(), *half.vae.named_parameters(), *half.encoder.named_parameters()]:
        assert p.dtype == (torch.bfloat16 if id(p) in blocks else torch.float32), n
    assert 0.5 < len(blocks) / len(list(half.transformer.parameters()))
    lq = [torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)]

    def run(pipe):
        return pipe(lq, "a cat", method=method, generator=torch.Generator().manual_seed(0), output_type="pt").images

    for a, b in zip(run(full), run(half)):
        assert b.dtype == torch.float32 and (a - b).abs().mean() < 0.1
    with pytest.raises(ConfigError, match="not supported"):
        half.to(dtype=torch.int8)


def test_in_bfloat16_the_decoder_runs_in_bfloat16_channels_last_and_the_lq_encoder_in_float32(trained):
    """As the released VARestorer runs them: its sampler decodes inside bf16 autocast, its VAE encodes
    with encoder_dtype fp32 (the LQ bits are the model's input)."""
    pipe = VARestorerPipeline.from_pretrained(trained[1]).to("cpu", torch.bfloat16)
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen.setdefault(name, output.dtype)

        return hook

    for name, model in (("decoder", pipe.vae.decoder), ("encoder", pipe.encoder)):
        next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)).register_forward_hook(record(name))
    pipe(torch.rand(3, 16, 16), "a cat", output_type="pt")
    assert seen == {"decoder": torch.bfloat16, "encoder": torch.float32}
    convs = [m.weight for m in pipe.vae.decoder.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    pipe.to(dtype=torch.float32)
    assert all(w.is_contiguous() for w in convs)


def test_the_methods_table_is_what_the_pipeline_the_command_line_and_the_app_offer(trained):
    from varestorer.app import METHOD_LABELS
    from varestorer.cli.options import METHOD_CHOICES
    from varestorer.evaluation.report import METHOD_NOTES
    from varestorer.methods import METHODS as TABLE

    assert METHODS == METHOD_CHOICES == tuple(TABLE) == tuple(METHOD_NOTES)
    assert list(METHOD_LABELS) == [m for m in TABLE if m != "multistep"]  # it ignores the upload
    pipe = VARestorerPipeline.from_pretrained(trained[1])
    x = torch.rand(3, 16, 16)
    for name in ("onestep", "zeroshot", "bicubic"):
        with pytest.raises(ConfigError, match=f"method {name} takes no settings \\['bogus'\\]"):
            pipe(x, "", method=name, bogus=1)
    pipe(x, "", method="zeroshot", num_given=1, cfg=1.0, top_k=0)  # every setting its row names is taken
    with pytest.warns(DeprecationWarning, match="enable_stage1"):  # the stage-1 model's switch, renamed
        assert pipe.set_restorer(False) is pipe and not pipe.stage1_enabled


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_and_is_seeded(trained, trained_varsr, method):
    from varestorer.cli.options import METHOD_CHOICES

    assert METHOD_CHOICES == METHODS  # the CLI offers every method
    pipe = VARestorerPipeline.from_pretrained(trained_varsr if method == "varsr" else trained[1])
    if method == "restorer":  # the stage-1 restorer of a model that has one (an imported release)
        from varestorer.restorer import SwinIR
        from varestorer.restorer.swinir import TINY_CONFIG

        pipe.stage1 = SwinIR(**TINY_CONFIG).eval()
    lq = [torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)]

    def run(seed):
        return pipe(lq, "a cat", method=method, generator=torch.Generator().manual_seed(seed), output_type="pt").images

    a, b, c = run(0), run(0), run(1)
    assert [im.shape for im in a] == [(3, 64, 64)] * 2
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    if method in ("zeroshot", "multistep", "varsr"):  # drawn at random: another seed, another image
        assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_the_guidance_step_brings_the_restoration_closer_to_the_measurement(trained):
    """What the training-free method is for: ||A(x_hat) - A(x_up)||^2 falls with the default alpha = 1
    against the same greedy sampling without the step (alpha = 0)."""
    import torch.nn.functional as F

    from varestorer.inference.guidance import measure

    _, export = trained
    pipe = VARestorerPipeline.from_pretrained(export)
    errors = {}
    for alpha in (0.0, 1.0):
        total = 0.0
        for seed in range(2):
            x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
            x = F.interpolate(x, size=(64, 64), mode="bicubic", align_corners=False).clamp(0, 1)
            y = pipe.restore_guided(x, ["a cat", "a dog"], gamma=3, alpha=alpha)
            total += (measure(y, 4) - measure(x, 4)).pow(2).sum().item()
        errors[alpha] = total
    assert errors[1.0] < 0.9 * errors[0.0], errors


def test_the_varsr_method_samples_with_the_lq_prefix_and_only_from_a_varsr_model(trained, trained_varsr, monkeypatch):
    import varestorer.inference.pipeline as pipeline_module
    import varestorer.transformer.sampling as sampling

    pipe = VARestorerPipeline.from_pretrained(trained_varsr)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    seen = []
    real = sampling.sample
    monkeypatch.setattr(pipeline_module, "sample", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    pipe.restore_varsr(x, ["a cat"])
    expected = pipe.vae.quantizer(pipe.encoder(x * 2 - 1), pipe.schedule).prefix_sequence()
    assert torch.equal(seen[0]["prefix"], expected) and seen[0]["cfg"] == 4.0
    with pytest.raises(ConfigError, match="--method varsr"):
        pipe(x[0], "", method="onestep")
    with pytest.raises(ConfigError, match="mode 'varsr'"):
        VARestorerPipeline.from_pretrained(trained[1])(x[0], "", method="varsr")


def test_guided_injects_the_lq_tokens_below_gamma_and_only_the_gradient_step_changes_the_rest(trained, monkeypatch):
    import varestorer.inference.pipeline as pipeline_module
    import varestorer.transformer.sampling as sampling
    from varestorer.inference.guidance import default_gamma

    _, export = trained
    pipe = VARestorerPipeline.from_pretrained(export)
    K = len(pipe.schedule)
    assert K == 5 and default_gamma(K) == 4 and default_gamma(10) == 8 and default_gamma(13) == 10
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    outs = []
    real = sampling.sample
    monkeypatch.setattr(pipeline_module, "sample", lambda *a, **kw: outs.append(real(*a, **kw)) or outs[-1])
    guided = pipe.restore_guided(x, ["a cat"], gamma=3, alpha=50.0)
    lq_bits = pipe.vae.tokenize(x * 2 - 1, pipe.schedule).bits
    assert all(torch.equal(outs[0].bits[k], lq_bits[k]) for k in range(2))  # scales 1, 2 (gamma 3): injected
    unguided = pipe.restore_guided(x, ["a cat"], gamma=3, alpha=0.0)
    greedy = pipe.sample_base(x, ["a cat"], num_given=2, greedy=True)  # the same without the guidance step
    assert torch.equal(unguided, greedy) and not torch.equal(guided, unguided)
    flipped = [(outs[0].bits[k] != outs[1].bits[k]).float().mean().item() for k in range(2, K)]
    assert max(flipped) > 0  # the step changed bits above gamma
    with pytest.raises(ConfigError, match="gamma=9"):
        pipe.restore_guided(x, ["a"], gamma=9)


def test_zeroshot_is_seeded_and_leaves_the_lora_in_place(trained):
    _, export = trained
    pipe = VARestorerPipeline.from_pretrained(export)
    lq = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    a = pipe([lq], prompt="a cat", method="zeroshot", num_given=2, seed=3, output_type="pt").images[0]
    b = pipe([lq], prompt="a cat", method="zeroshot", num_given=2, seed=3, output_type="pt").images[0]
    assert a.shape == (3, 64, 64) and torch.equal(a, b)  # seeded sampling
    bicubic = pipe([lq], method="bicubic", output_type="pt").images[0]
    assert bicubic.shape == (3, 64, 64)
    # after the teacher (adapters off) the one-step path still has its LoRA
    first = pipe.student_logits(lq[None].expand(1, 3, 16, 16).repeat(1, 1, 4, 4), ["x"])
    pipe([lq], prompt="a", method="zeroshot", num_given=5)
    torch.testing.assert_close(pipe.student_logits(lq[None].repeat(1, 1, 4, 4), ["x"]), first, rtol=0, atol=1e-5)


class FakeCaptioner:
    """Captions each image by its mean brightness and remembers what it was shown."""

    def __init__(self):
        self.seen = []

    def __call__(self, images):
        self.seen += [np.asarray(im) for im in images]
        return [f"brightness {np.asarray(im).mean():.1f}" for im in images]


def test_without_a_prompt_the_caption_is_of_the_models_own_first_restoration(trained):
    """The student was trained on captions of clean HQ crops, and the paper captions a coarse
    restoration: the captioner looks at the one-pass restoration with an empty prompt, and the
    image is then restored with that caption."""
    _, export = trained
    pipe = VARestorerPipeline.from_pretrained(export)
    lq = [torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    blip = FakeCaptioner()
    result = pipe.set_captioner(blip)(lq, output_type="pt")
    first = pipe(lq, prompt="", color_fix="none", output_type="np").images  # the first pass, as the captioner saw it
    assert all(np.array_equal(a, b) for a, b in zip(blip.seen, first))
    captions = [f"brightness {im.mean():.1f}" for im in first]
    out = result.images
    assert result.prompts == captions  # the output says what each image was restored with
    again = pipe(lq, prompt=captions, output_type="pt").images
    assert all(torch.equal(a, b) for a, b in zip(out, again))
    # caption_from="input": the LQ image itself
    blip = FakeCaptioner()
    pipe.set_captioner(blip, caption_from="input")(lq[:1])
    assert np.array_equal(blip.seen[0], (lq[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    with pytest.raises(ConfigError, match="caption_from"):
        pipe.set_captioner(blip, caption_from="hq")


def test_no_prompt_and_no_captioner_warns_once(trained, caplog):
    _, export = trained
    pipe = VARestorerPipeline.from_pretrained(export)
    x = torch.rand(3, 16, 16)
    pipe([x], prompt="")  # the paper's "w/o prompt", on purpose: no warning
    assert "no prompt was given" not in caplog.text
    silent = pipe([x], prompt="", output_type="pt").images[0]
    unprompted = pipe([x], output_type="pt").images[0]
    pipe([x, x])
    assert caplog.text.count("no prompt was given") == 1 and "set_captioner" in caplog.text
    assert torch.equal(silent, unprompted)  # empty prompts, as it says


def test_teacher_method_samples_with_the_presets_settings(trained, monkeypatch):
    import varestorer.inference.pipeline as pipeline_module
    import varestorer.transformer.sampling as sampling

    _, export = trained
    pipe = VARestorerPipeline.from_pretrained(export)
    seen = []
    real = sampling.sample
    monkeypatch.setattr(pipeline_module, "sample", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    x = torch.rand(3, 16, 16)
    pipe([x], prompt="a", method="zeroshot", num_given=3)
    pipe([x], prompt="a", method="zeroshot", num_given=3, cfg=1.5, top_p=0.0)
    got = [{k: kw[k] for k in ("cfg", "tau", "top_k", "top_p")} for kw in seen]
    assert got == [dict(cfg=4.0, tau=0.5, top_k=900, top_p=0.97), dict(cfg=1.5, tau=0.5, top_k=900, top_p=0.0)]


def test_restore_command(trained, tmp_path, capsys):
    _, export = trained
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(np.full((16, 20, 3), 90, np.uint8)).save(src / "a.jpg")
    Image.fromarray(np.full((10, 10), 200, np.uint8), "L").save(src / "sub" / "b.png")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "out"
    args = ["restore", str(src), "-o", str(out), "--model", str(export), "--caption", "none", "--compare"]
    assert main(args) == 0
    assert Image.open(out / "a.png").size == (80, 64)
    assert Image.open(out / "sub" / "b.png").size == (40, 40)
    assert (out / "a_compare.png").is_file()
    assert "broken.png" in (out / "skipped.tsv").read_text()
    before = (out / "a.png").stat().st_mtime_ns
    assert main(args) == 0  # outputs that exist are kept
    assert (out / "a.png").stat().st_mtime_ns == before
    assert "kept 2 existing" in capsys.readouterr().out
    # never over an input
    Image.fromarray(np.full((8, 8, 3), 9, np.uint8)).save(tmp_path / "c.png")
    assert main(["restore", str(tmp_path / "c.png"), "-o", str(tmp_path), "--method", "bicubic"]) == 2
    assert "write over the input" in capsys.readouterr().err
    # bicubic needs no model; the others do
    assert main(["restore", str(src / "a.jpg"), "-o", str(tmp_path / "bic"), "--method", "bicubic"]) == 0
    assert Image.open(tmp_path / "bic" / "a.png").size == (80, 64)
    assert main(["restore", str(src / "a.jpg"), "-o", str(tmp_path / "x")]) == 2
    assert "needs --model" in capsys.readouterr().err
    # --no-prompt: the paper's "w/o prompt" (an empty text, no captioner, no warning)
    assert main(["restore", str(src / "a.jpg"), "-o", str(tmp_path / "np"), "--model", str(export), "--no-prompt"]) == 0
    pipe = VARestorerPipeline.from_pretrained(export)
    expected = pipe([src / "a.jpg"], prompt="", output_type="np").images[0]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "np" / "a.png")), expected)
    # an output too large is refused per image, before any work, and listed
    assert (
        main(["restore", str(src / "a.jpg"), "-o", str(tmp_path / "big"), "--method", "bicubic", "--upscale", "1000"])
        == 1
    )
    assert "lower --upscale" in (tmp_path / "big" / "skipped.tsv").read_text()


def test_export_command_and_publish_dry_run(tmp_path, capsys):
    from huggingface_hub import ModelCard

    from varestorer.distill.trainer import train
    from varestorer.export.hub import validate_card

    run = tmp_path / "run"
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    train(
        load_recipe(
            "tiny",
            [f"train.output_dir={run}", "train.report_to=none", "train.max_steps=1", "train.validation_steps=100"],
        )
    )
    out = tmp_path / "exported"
    assert (
        main(
            [
                "export",
                str(run / "checkpoint-1"),
                str(out),
                "--merge",
                "--samples",
                "2",
                "--repo-id",
                "someone/varestorer-tiny",
            ]
        )
        == 0
    )
    names = {p.name for p in out.iterdir()}
    assert {"adapter_model.safetensors", "encoder.safetensors", CONFIG_FILE, MERGED_FILE, "README.md"} <= names
    assert len(list((out / "samples").glob("*.png"))) == 2
    card = ModelCard.load(out / "README.md")
    assert validate_card(str(card)) == []
    assert card.data.base_model and card.data.pipeline_tag == "image-to-image" and card.data.library_name
    assert "samples/" in card.text and "someone/varestorer-tiny" in card.text
    # the merged file alone restores like base + adapter
    merged = VARestorerPipeline.from_pretrained(out)
    adapter = VARestorerPipeline.from_pretrained(out, base=out / "base_transformer.safetensors", merge_lora=False)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(merged.student_logits(x, ["a"]), adapter.student_logits(x, ["a"]), rtol=0, atol=1e-5)
    # a non-empty target is refused
    assert main(["export", str(run), str(out)]) == 2
    capsys.readouterr()
    assert main(["publish", str(out), "--repo-id", "someone/varestorer-tiny", "--dry-run", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert "README.md" in result["files"] and "adapter_model.safetensors" in result["files"]
    assert "samples/astronaut.png" in result["files"]
    assert result["card_metadata"]["license"] and result["card_metadata"]["base_model"]
    assert main(["publish", str(out), "--repo-id", "not-a-repo-id", "--dry-run"]) == 2
    assert main(["publish", str(tmp_path / "nothing"), "--repo-id", "a/b", "--dry-run"]) == 2


def test_missing_base_says_how_to_point_at_it(trained, tmp_path):
    import shutil

    from varestorer.errors import CheckpointError

    _, export = trained
    copy = tmp_path / "no-base"
    shutil.copytree(export, copy)
    (copy / "base_transformer.safetensors").unlink()
    with pytest.raises((CheckpointError, ValueError), match="--base"):
        VARestorerPipeline.from_pretrained(copy)
    with pytest.raises(ConfigError, match="not a VARestorer export"):
        VARestorerPipeline.from_pretrained(tmp_path)


def test_latency_benchmark_times_every_method_on_the_same_weights(capsys):
    assert main(["bench", "latency", "--json", "--repeats", "1", "--warmup", "0"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert list(r["methods"]) == ["onestep", "zeroshot", "multistep", "guided", "varsr"]
    assert r["methods"]["onestep"]["x_onestep"] == 1.0 and all(m["sec_per_image"] > 0 for m in r["methods"].values())
    assert r["scales"] == 5 and r["sampler"]["cfg"] == 4.0
    assert main(["bench", "latency", "--methods", "onestep,magic"]) == 2
    assert "choose among" in capsys.readouterr().err


def test_evaluate_restores_with_each_method_at_the_ground_truth_size_and_scores_it(trained, tmp_path):
    import csv

    _, export = trained
    for sub in ("HR", "LR"):
        (tmp_path / sub).mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        hr = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
        hr.save(tmp_path / "HR" / f"img{i}_HR.png")
        hr.resize((16, 16), Image.BICUBIC).save(tmp_path / "LR" / f"img{i}_LR4.png")
    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(export),
                "--method",
                "onestep",
                "--method",
                "zeroshot",
                "--method",
                "bicubic",
                "--lq",
                str(tmp_path / "LR"),
                "--gt",
                str(tmp_path / "HR"),
                "--no-prompt",
                "--metrics",
                "psnr,ssim",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["method"] for r in rows] == ["onestep", "zeroshot", "bicubic"]
    assert all(float(r["sec_per_image"]) > 0 and r["images"] == "2" for r in rows)
    restored = np.asarray(Image.open(out / "onestep" / "img0_HR.png"))
    pipe = VARestorerPipeline.from_pretrained(export)
    lq = [tmp_path / "LR" / f"img{i}_LR4.png" for i in range(2)]
    expected = pipe(lq, prompt="", output_type="np").images[0]  # one batch, as evaluate's --batch-size 4 makes it
    assert restored.shape == (64, 64, 3) and np.array_equal(restored, expected)  # the pipeline's own output
    # --record: the onestep row goes into the model folder, where the model card finds it
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(export),
                "--lq",
                str(tmp_path / "LR"),
                "--gt",
                str(tmp_path / "HR"),
                "--no-prompt",
                "--metrics",
                "psnr,ssim",
                "--out",
                str(out),
                "--record",
                "toy-set",
            ]
        )
        == 0
    )
    from varestorer.export.hub import render_card

    recorded = json.loads((export / "evaluation.json").read_text())["toy-set"]
    assert recorded["psnr"] == pytest.approx(float(rows[0]["psnr"])) and "sec_per_image" in recorded
    assert "| toy-set |" in str(render_card(export).content)
    (export / "evaluation.json").unlink()  # the module's other tests share this export


def test_a_student_trained_without_captions_restores_the_same_with_or_without_one(tmp_path):
    """data.use_captions=false (recipes/small.yaml): the student restores from the image alone, so
    `restore --caption none` (what a user without captions gets) equals a captioned restoration."""
    _, export = exported_student(tmp_path, "data.use_captions=false")
    pipe = VARestorerPipeline.from_pretrained(export)
    x = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    captioned = pipe([x], prompt="a photo of a red cup", output_type="pt").images[0]
    assert torch.equal(pipe([x], prompt=None, output_type="pt").images[0], captioned)
    assert torch.equal(pipe([x], prompt="", output_type="pt").images[0], captioned)


def test_available_methods_are_those_the_model_can_run_and_others_are_refused_before_any_work(trained):
    _, export = trained
    pipe = VARestorerPipeline.from_pretrained(export)
    assert pipe.available_methods() == ["onestep", "bicubic", "zeroshot", "multistep", "guided"]
    for method, says in (("varsr", "needs a model trained in mode 'varsr'"), ("restorer", "this model has none")):
        with pytest.raises(ConfigError, match=says):
            pipe.restore_fn(method)
