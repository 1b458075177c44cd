"""Bad values, through the real CLI: recipe fields out of range, YAML that expands without end, option
values out of range, crops and image sizes past what an image gives, evaluation pairs that cannot be
scored, and no network. Each is refused with one paragraph naming the value and the valid range
(exit code 2, no traceback), or bounded and said, in seconds."""

import dataclasses
import json
import socket
import time
import typing
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from varestorer.cli import main

try:
    from test_bad_input import assert_refused, run
except ImportError:  # moved to conftest
    from conftest import assert_refused, run


# ------------------------------------------------------------------------------------ recipes
def _laughs(leaf: str, levels: int = 9) -> str:
    """A "billion laughs": 10 values, then ``levels`` lists of 10 aliases of the one before (10^10)."""
    lines = ["  x0: &x0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"  x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * 10)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + f"\n  {leaf}: *x{levels}\n"


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("base: tiny\noptim:\n" + _laughs("lr"), "once its aliases (*name) are expanded"),
        ("base: tiny\nstudent:\n" + _laughs("lora_targets").replace("x0: &x0 [1", "x0: &x0 [a"), "aliases"),
        ("base: tiny\nstudent:\n  lora_targets: &t [*t]\n", "used inside its own anchor's value"),
        ("base: tiny\noptim:\n  lr: " + "[" * 500 + "]" * 500 + "\n", "more than 100 levels deep"),
    ],
)
def test_a_recipe_whose_yaml_expands_without_end_is_refused_within_a_second(tmp_path, capsys, text, fragment):
    recipe = tmp_path / "laughs.yaml"
    recipe.write_text(text)
    import varestorer.distill.recipe  # noqa: F401  (imported: the clock times the reading alone)

    start = time.perf_counter()
    code, err = run(capsys, "train", "--recipe", recipe, "--print-recipe")
    assert time.perf_counter() - start < 1.0
    assert_refused(code, err, "train", "laughs.yaml is refused as a recipe", fragment)


def test_an_override_whose_yaml_expands_without_end_is_refused(capsys):
    value = "[" + ", ".join(["&a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"] + ["*a"] * 9) + "]"
    value = f"[&b {value}, " + ", ".join(["*b"] * 2000) + "]"  # 2000 x 100 values
    code, err = run(capsys, "train", "--recipe", "tiny", f"student.lora_targets={value}", "--print-recipe")
    assert_refused(code, err, "train", "the override student.lora_targets=... is refused", "aliases")


def test_a_key_given_twice_in_a_recipe_is_refused_not_resolved_silently_to_the_last(tmp_path, capsys):
    recipe = tmp_path / "twice.yaml"
    recipe.write_text("base: tiny\noptim:\n  lr: 1.0e-4\n  weight_decay: 0.0\n  lr: 1.0e-6\n")
    code, err = run(capsys, "train", "--recipe", recipe, "--print-recipe")
    assert_refused(code, err, "train", "the key 'lr' appears twice in one mapping (lines 3 and 5)", "keep one")


def test_aliases_of_a_sane_size_and_base_recipes_keep_working(tmp_path, capsys):
    recipe = tmp_path / "ablation.yaml"
    recipe.write_text("base: tiny\nloss:\n  mse: &w 0.25\n  lpips: *w\noptim:\n  betas: [0.8, 0.99]\n")
    assert main(["train", "--recipe", str(recipe), "--print-recipe"]) == 0
    import yaml

    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["loss"]["mse"] == printed["loss"]["lpips"] == 0.25 and printed["optim"]["betas"] == [0.8, 0.99]
    assert printed["model"]["preset"] == "tiny"  # from the base


@pytest.mark.parametrize(
    "override, fragments",
    [
        ("optim.weight_decay=-0.1", ["optim.weight_decay must be >= 0 (got -0.1)"]),
        ("optim.betas=[0.9]", ["optim.betas must be two numbers in [0, 1) (got [0.9])"]),
        ("optim.betas=[0.9, 1.0]", ["optim.betas must be two numbers in [0, 1) (got [0.9, 1.0])"]),
        ("optim.betas=[-0.1, 0.9]", ["optim.betas must be two numbers in [0, 1)"]),
        ("optim.betas=[a, b]", ["optim.betas[0] must be float, got 'a'"]),
        ("optim.eps=0", ["optim.eps must be > 0 (got 0.0)"]),
        ("optim.lr_scheduler=cosine_annealing", ["optim.lr_scheduler='cosine_annealing' is not valid", "cosine"]),
        ("student.lora_rank=0", ["student.lora_rank must be >= 1 (got 0)"]),
        ("student.lora_alpha=0", ["student.lora_alpha must be > 0 (got 0)"]),
        ("student.lora_dropout=1", ["student.lora_dropout must be in [0, 1) (got 1.0)"]),
        ("student.lora_dropout=-0.5", ["student.lora_dropout must be in [0, 1)"]),
        ("student.lora_targets=[]", ["student.lora_targets must name one or more", "the list is empty", "sa.proj"]),
        ("student.lora_targets=[sa.projj]", ["'sa.projj' is not a layer of a block", "choose among sa.mat_qkv"]),
        ("data.num_workers=-1", ["data.num_workers must be >= 0 (got -1)"]),
        ("optim.lr=.nan", ["optim.lr must be a finite number, > 0 (got nan)"]),
        ("optim.lr=.inf", ["optim.lr must be a finite number, > 0 (got inf)"]),
        ("optim.lr=nan", ["optim.lr must be a finite number, > 0 (got nan)"]),
        ("optim.encoder_lr=-1e-5", ["optim.encoder_lr must be > 0 (got -1e-05)"]),
        ("loss.kl=-1", ["loss.kl must be >= 0 (got -1.0); 0 turns the term off"]),
        ("loss.lpips=.nan", ["loss.lpips must be a finite number, >= 0 (got nan)"]),
        ("loss.text_dropout=1.5", ["loss.text_dropout must be in [0, 1] (got 1.5)"]),
        ("optim.max_grad_norm=-1", ["optim.max_grad_norm must be >= 0 (got -1.0); 0: no gradient clipping"]),
        ("optim.lr_warmup_steps=-10", ["optim.lr_warmup_steps must be >= 0 (got -10)"]),
        ("train.seed=-1", ["train.seed must be in [0, 4294967295] (got -1)"]),
        ("train.num_validation_images=-1", ["train.num_validation_images must be >= 0 (got -1)"]),
        ("train.checkpoints_total_limit=0", ["train.checkpoints_total_limit must be >= 1 (got 0)", "null"]),
        ("tokenizer.inv_temperature=0", ["tokenizer.inv_temperature must be > 0 (got 0.0)"]),
        ("degradation.scale=0", ["degradation.scale must be >= 1 (got 0)"]),
        ("degradation.scale=65", ["degradation.scale=65 makes 64 px images 0 px LQ inputs", "at most 64"]),
        ("loss.lpips_net=squeeze9", ["loss.lpips_net='squeeze9' is not valid; choose one of vgg, alex, squeeze"]),
        ("train.output_dir=''", ["train.output_dir is empty"]),
        ("optim.lr=[", ["override 'optim.lr=[': the value is not valid YAML"]),
        ("student.gumbel_tau=0", ["student.gumbel_tau must be > 0 (got 0.0)", "the release's is 0.5"]),
        ("student.decode=sample", ["student.decode='sample' is not valid; choose one of argmax, gumbel"]),
        ("optim.lr_end=1.5", ["optim.lr_end must be in [0, 1] (got 1.5)"]),
    ],
)
def test_recipe_values_out_of_range_are_refused_naming_the_field_the_value_and_the_range(capsys, override, fragments):
    code, err = run(capsys, "train", "--recipe", "tiny", "--print-recipe", override)
    assert_refused(code, err, "train", *fragments)
    assert err.count("\n") == 1  # one paragraph


def test_a_distillation_with_every_loss_weight_zero_is_refused_saying_which_weights_train(capsys):
    args = ("train", "--recipe", "tiny", "--print-recipe", "loss.kl=0", "loss.lpips=0", "loss.mse=0")
    code, err = run(capsys, *args)
    assert_refused(code, err, "train", "mode=distill with every loss weight 0 trains nothing", "student_cross_entropy")


def test_every_numeric_recipe_field_has_a_valid_range():
    from varestorer.distill.recipe import RANGES, Recipe

    numeric = []
    for section in dataclasses.fields(Recipe):
        cls = typing.get_type_hints(Recipe)[section.name]
        if not dataclasses.is_dataclass(cls):
            continue
        for f in dataclasses.fields(cls):
            tp = typing.get_type_hints(cls)[f.name]
            if {int, float, list[float]} & {tp, *typing.get_args(tp)}:
                numeric.append(f"{section.name}.{f.name}")
    checked_by_the_schedule = {"model.resolution", "student.keep_lq_scales"}
    assert sorted(set(numeric) - checked_by_the_schedule) == sorted(RANGES)


def test_every_shipped_recipe_is_within_the_ranges():
    from varestorer.distill.recipe import load_recipe
    from varestorer.resources import resource_dir

    for path in sorted(resource_dir("recipes").glob("*.yaml")):
        load_recipe(str(path))


def test_the_lr_schedulers_a_recipe_may_name_are_the_ones_diffusers_builds_and_infinitys_lin0():
    from diffusers.optimization import SchedulerType

    from varestorer.distill.recipe import LR_SCHEDULERS

    assert set(LR_SCHEDULERS) == {s.value for s in SchedulerType} - {"piecewise_constant"} | {"lin0"}


def test_zero_validation_images_means_none_and_the_run_still_writes_final(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--recipe", "tiny", f"train.output_dir={out}", "train.report_to=none", "train.max_steps=1"]
    assert main([*argv, "train.num_validation_images=0"]) == 0
    assert (out / "final" / "adapter_model.safetensors").is_file()
    assert not (out / "validation").exists() or not list((out / "validation").iterdir())


# ------------------------------------------------------------------------------ option values
def _argparse_refusal(capsys, argv: list[str], *fragments: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"varestorer {argv[0]}"), err
    for f in fragments:
        assert f in err, err
    return err


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["restore", "x.png", "-o", "o", "--upscale", "nan"], ["argument --upscale: must be a number > 0, got 'nan'"]),
        (["restore", "x.png", "-o", "o", "--upscale", "inf"], ["must be a number > 0, got 'inf'"]),
        (["restore", "x.png", "-o", "o", "--upscale", "0"], ["must be a number > 0, got '0'"]),
        (["restore", "x.png", "-o", "o", "--upscale", "-1"], ["must be a number > 0, got '-1'"]),
        (["restore", "x.png", "-o", "o", "--tau", "0"], ["argument --tau: must be a number > 0, got '0'"]),
        (["restore", "x.png", "-o", "o", "--cfg", "nan"], ["argument --cfg: must be a finite number, got 'nan'"]),
        (["restore", "x.png", "-o", "o", "--top-p", "1.5"], ["argument --top-p: must be a number in [0, 1]"]),
        (["restore", "x.png", "-o", "o", "--top-k", "-1"], ["argument --top-k: must be an integer >= 0"]),
        (["restore", "x.png", "-o", "o", "--batch-size", "0"], ["argument --batch-size: must be an integer >= 1"]),
        (["restore", "x.png", "-o", "o", "--tile-overlap", "-8"], ["argument --tile-overlap: must be an integer >= 0"]),
        (["restore", "x.png", "-o", "o", "--seed", "-1"], ["argument --seed: must be an integer in [0, "]),
        (["restore", "x.png", "-o", "o", "--device", "bogus"], ["argument --device: 'bogus' is not a device"]),
        (["restore", "x.png", "-o", "o", "--device", "cpu:x"], ["argument --device: 'cpu:x' is not a device"]),
        (["degrade", "src", "out", "--size", "0"], ["argument --size: must be an integer >= 1, got '0'"]),
        (["degrade", "src", "out", "--size", "-4"], ["argument --size: must be an integer >= 1, got '-4'"]),
        (["degrade", "src", "out", "--batch", "0"], ["argument --batch: must be an integer >= 1"]),
        (["bench", "degrade", "--size", "0"], ["argument --size: must be an integer >= 1, got '0'"]),
        (["bench", "degrade", "--batch", "0"], ["argument --batch: must be an integer >= 1, got '0'"]),
        (["bench", "train", "--steps", "0"], ["argument --steps: must be an integer >= 1, got '0'"]),
        (["bench", "train", "--device", "bogus"], ["'bogus' is not a device; use cpu, cuda, cuda:N, mps or meta"]),
        (["bench", "latency", "--repeats", "0"], ["argument --repeats: must be an integer >= 1, got '0'"]),
        (["bench", "latency", "--batch", "0"], ["argument --batch: must be an integer >= 1, got '0'"]),
        (["evaluate", "--gt", "g", "--pred", "p", "--crop-border", "-1"], ["argument --crop-border: must be an"]),
        (["prepare", "src", "out", "--crops", "0"], ["argument --crops: must be an integer >= 1, got '0'"]),
        (["prepare", "src", "out", "--size", "4"], ["argument --size: must be an integer >= 8, got '4'"]),
        (["prepare", "src", "out", "--workers", "-1"], ["argument --workers: must be an integer in [0, 256]"]),
        (["demo", "--images", "0"], ["argument --images: must be an integer >= 1, got '0'"]),
        (["demo", "--steps", "0"], ["argument --steps: must be an integer >= 1, got '0'"]),
    ],
)
def test_option_values_out_of_range_get_one_line_naming_the_option_and_the_valid_range(capsys, argv, fragments):
    _argparse_refusal(capsys, argv, *fragments)


def test_device_cuda_without_a_gpu_is_refused_before_anything_runs(capsys):
    import torch

    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        _argparse_refusal(capsys, ["restore", "x.png", "-o", "o", "--device", f"cuda:{n}"], f"has {n} GPU(s)")
    else:
        _argparse_refusal(
            capsys, ["restore", "x.png", "-o", "o", "--device", "cuda"], "no CUDA GPU is usable here", "--device cpu"
        )


def test_demo_without_a_method_is_refused_before_training(tmp_path, capsys):
    code, err = run(capsys, "demo", "--recipe", "tiny", "--methods", ",", "--output-dir", tmp_path / "demo")
    assert_refused(code, err, "demo", "--methods: no method; choose from bicubic")
    assert not (tmp_path / "demo").exists()


# ------------------------------------------------------------------------------------ prepare
def test_prepare_takes_each_distinct_crop_once_and_says_why_it_took_fewer(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)).save(src / f"{i}.png")
    start = time.perf_counter()
    argv = ["prepare", src, out, "--size", "64", "--crops", "100000", "--caption", "none", "--workers", "0"]
    assert main(list(map(str, [*argv, "--no-progress"]))) == 0
    assert time.perf_counter() - start < 60
    printed = capsys.readouterr().out
    assert "wrote 867 images from 3 of 3 source files" in printed  # 3 x (80 - 64 + 1)^2
    assert "3 source files gave fewer than --crops 100000 crops" in printed
    assert "(W - 64 + 1) x (H - 64 + 1) distinct 64 px crops" in printed and "0.png: 80x80, 289 crops" in printed
    from datasets import load_from_disk

    rows = load_from_disk(str(out))
    boxes = [(p, tuple(c)) for p, c in zip(rows["path"], rows["crop"])]
    assert len(set(boxes)) == len(boxes) == 867


def test_prepare_streams_a_shard_in_batches_so_memory_holds_one_batch(tmp_path, monkeypatch):
    from varestorer.data import prepare

    written = []
    original = prepare.ShardWriter.write
    monkeypatch.setattr(prepare, "FLUSH_ROWS", 50)
    monkeypatch.setattr(
        prepare.ShardWriter, "write", lambda self, rows: (written.append(len(rows["image"])), original(self, rows))
    )
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(src / "a.png")
    report = prepare.prepare_dataset(src, tmp_path / "out", size=16, crops=120, caption="none", progress=False)
    assert report.images == 120 and written == [50, 50, 20]


def test_prepare_on_a_folder_without_images_is_refused_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    code, err = run(capsys, "prepare", tmp_path / "empty", tmp_path / "out", "--caption", "none")
    assert_refused(code, err, "prepare", "no images in", "looked for .jpg")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- image headers
def test_an_image_declaring_a_huge_size_is_skipped_from_its_header_without_decoding(tmp_path, capsys, monkeypatch):
    from PIL import ImageFile

    src = tmp_path / "in"
    src.mkdir()
    Image.new("1", (13000, 13000)).save(src / "huge.png")  # 169 Mpx in a few kB, under Pillow's own limit
    Image.new("RGB", (16, 16), (10, 20, 30)).save(src / "small.png")
    assert (src / "huge.png").stat().st_size < 50_000
    decoded = []
    original = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda im: (decoded.append(im.size), original(im))[1])
    out = tmp_path / "out"
    assert main(["restore", str(src), "-o", str(out), "--method", "bicubic"]) == 0
    assert (13000, 13000) not in decoded
    skipped = (out / "skipped.tsv").read_text()
    assert "huge.png\ttoo large: 13000x13000 declared by the file" in skipped and "lower --upscale" in skipped
    assert (out / "small.png").is_file()
    # evaluate reads it from its header too
    (tmp_path / "gt").mkdir()
    (src / "huge.png").rename(tmp_path / "gt" / "huge.png")
    code, err = run(capsys, "evaluate", "--gt", tmp_path / "gt", "--pred", tmp_path / "gt", "--out", tmp_path / "e")
    assert_refused(code, err, "evaluate", "cannot score", "huge.png: too large: 13000x13000 declared by the file")
    assert (13000, 13000) not in decoded


# -------------------------------------------------------------------------------- no network
def test_restore_without_network_fails_in_seconds_saying_caption_none_or_hf_hub_offline(tmp_path, capsys, monkeypatch):
    import huggingface_hub
    from conftest import exported_student

    from varestorer.data.captions import DEFAULT_BLIP

    if huggingface_hub.try_to_load_from_cache(DEFAULT_BLIP, "config.json") not in (
        None,
        huggingface_hub._CACHED_NO_EXIST,
    ):
        pytest.skip("BLIP is in this machine's cache: restore would caption with it")
    model = exported_student(tmp_path)[1]
    image = tmp_path / "lq.png"
    Image.new("RGB", (16, 16), (90, 120, 60)).save(image)

    def no_network(*args, **kwargs):
        raise OSError(101, "Network is unreachable (simulated)")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # as a user's shell: unset
    monkeypatch.setattr(socket, "create_connection", no_network)
    start = time.perf_counter()
    code, err = run(capsys, "restore", image, "-o", tmp_path / "out", "--model", model)
    assert time.perf_counter() - start < 60  # 215 s of retries before
    assert_refused(code, err, "restore", "not in the local Hugging Face cache", "Network is unreachable")
    assert "--caption none" in err and "HF_HUB_OFFLINE=1" in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.png"))


# --------------------------------------------------------------------------------- evaluate
@pytest.fixture
def pairs(tmp_path) -> Path:
    """``gt/a.png`` (64x48), ``pred/a.png`` (a noisy copy) and ``lq/a.png`` (16x12)."""
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    for name, im in {"gt": gt, "pred": np.clip(gt.astype(int) + 5, 0, 255).astype(np.uint8)}.items():
        (tmp_path / name).mkdir()
        Image.fromarray(im).save(tmp_path / name / "a.png")
    (tmp_path / "lq").mkdir()
    Image.fromarray(gt).resize((16, 12)).save(tmp_path / "lq" / "a.png")
    return tmp_path


def _evaluate(capsys, root: Path, *args) -> tuple[int, str]:
    return run(capsys, "evaluate", "--gt", root / "gt", "--out", root / "eval", "--metrics", "psnr,ssim", *args)


def test_evaluate_refuses_an_lq_of_another_shape_than_its_ground_truth(pairs, capsys):
    Image.new("RGB", (32, 12)).save(pairs / "lq" / "a.png")  # twice as wide: would be squashed
    code, err = _evaluate(capsys, pairs, "--lq", pairs / "lq", "--method", "bicubic")
    assert_refused(code, err, "evaluate", "a.png: the LQ image is 32x12 but its ground truth is 64x48, another shape")
    assert "squashed" in err and not (pairs / "eval").exists()
    # the same check as --pred's
    Image.new("RGB", (32, 48)).save(pairs / "pred" / "a.png")
    code, err = _evaluate(capsys, pairs, "--pred", pairs / "pred")
    assert_refused(code, err, "evaluate", "the restored image is 32x48 but the ground truth is 64x48")


def test_evaluate_scores_an_lq_of_the_same_shape_up_to_a_pixel_of_rounding(pairs, capsys):
    Image.new("RGB", (17, 12)).save(pairs / "lq" / "a.png")  # 64 / 4 = 16, one LQ pixel more: rounding
    code, err = _evaluate(capsys, pairs, "--lq", pairs / "lq", "--method", "bicubic")
    assert code == 0, err


def test_evaluate_refuses_a_crop_border_that_leaves_nothing_naming_the_image_size(pairs, capsys):
    code, err = _evaluate(capsys, pairs, "--pred", pairs / "pred", "--crop-border", "24")
    assert_refused(code, err, "evaluate", "--crop-border 24 cuts all of a.png (64x48)", "at most 23")


def test_evaluate_json_prints_the_json_alone_on_standard_output(pairs, capsys):
    argv = ["evaluate", "--gt", pairs / "gt", "--pred", pairs / "pred", "--out", pairs / "e", "--metrics", "psnr,ssim"]
    assert main(list(map(str, [*argv, "--json"]))) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["rows"][0]["method"] == "pred" and doc["rows"][0]["psnr"] > 30
    assert "wrote" in captured.err


@pytest.mark.parametrize("role", ["gt", "pred"])
def test_evaluate_names_a_corrupt_image_in_one_paragraph(pairs, capsys, role):
    (pairs / role / "a.png").write_bytes((pairs / role / "a.png").read_bytes()[:60])
    code, err = _evaluate(capsys, pairs, "--pred", pairs / "pred")
    assert_refused(code, err, "evaluate", f"cannot score {pairs / role / 'a.png'}: truncated or corrupt")


def test_evaluate_with_an_empty_metric_list_is_refused_before_reading_anything(tmp_path, capsys):
    code, err = run(capsys, "evaluate", "--gt", tmp_path / "missing", "--pred", tmp_path / "p", "--metrics", ",")
    assert_refused(code, err, "evaluate", "--metrics ',' names no metric")
