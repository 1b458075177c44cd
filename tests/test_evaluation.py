"""Metrics as the SR literature computes them, pairing, the report, and ``varestorer evaluate``."""

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from varestorer.cli import main
from varestorer.errors import ConfigError
from varestorer.evaluation.metrics import METRICS, build_metrics, psnr, score, ssim
from varestorer.evaluation.pairs import index_images, match, pair_key, resolve_folder


def real_pairs():
    """Photos scikit-image ships, each with a blurred and noisy copy (fixed seed)."""
    import skimage.data

    rng = np.random.default_rng(0)
    for img in (skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()):
        gt = img[:160, :200]
        pred = gaussian_filter(gt.astype(float), (1.2, 1.2, 0)) + rng.normal(0, 4, gt.shape)
        yield np.clip(pred, 0, 255).round().astype(np.uint8), gt


def test_identical_images_give_psnr_inf_and_ssim_one():
    _, gt = next(real_pairs())
    assert psnr(gt, gt) == math.inf
    assert ssim(gt, gt) == pytest.approx(1.0, abs=1e-12) and ssim(gt, gt, convention="basicsr") == pytest.approx(1.0)


def test_psnr_of_a_constant_grey_offset_is_computed_on_bt601_luma():
    gt = np.full((32, 32, 3), 100, np.uint8)
    pred = gt + 4
    dy = 4 * (65.481 + 128.553 + 24.966) / 255  # the Y offset of +4 on R, G and B: 3.435
    assert psnr(pred, gt) == pytest.approx(20 * math.log10(255 / dy), abs=1e-9)  # 37.41 dB
    assert psnr(pred, gt, crop_border=4) == pytest.approx(psnr(pred, gt), abs=1e-12)


def test_psnr_and_ssim_match_basicsr_on_real_pairs():
    from varestorer.compat import import_basicsr

    bm = import_basicsr("basicsr.metrics")
    for pred, gt in real_pairs():
        for border in (0, 4):
            bgr = pred[..., ::-1], gt[..., ::-1]
            ref_psnr = bm.calculate_psnr(*bgr, border, input_order="HWC", test_y_channel=True)
            ref_ssim = bm.calculate_ssim(*bgr, border, input_order="HWC", test_y_channel=True)
            assert abs(psnr(pred, gt, border) - ref_psnr) < 1e-4
            assert abs(ssim(pred, gt, border, convention="basicsr") - ref_ssim) < 1e-6


def test_psnr_and_ssim_match_pyiqa_on_real_pairs():
    pyiqa = pytest.importorskip("pyiqa")
    import torch

    def t(a):
        return torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255

    for pred, gt in real_pairs():
        for border in (0, 4):
            kw = dict(test_y_channel=True, color_space="ycbcr", crop_border=border, device="cpu")
            ref_psnr = float(pyiqa.create_metric("psnr", **kw)(t(pred), t(gt)))
            ref_ssim = float(pyiqa.create_metric("ssim", **kw)(t(pred), t(gt)))
            assert abs(psnr(pred, gt, border) - ref_psnr) < 0.01
            assert abs(ssim(pred, gt, border) - ref_ssim) < 1e-4


def test_the_two_ssim_conventions_differ_as_documented():
    pred, gt = next(real_pairs())
    assert 1e-4 < abs(ssim(pred, gt) - ssim(pred, gt, convention="basicsr")) < 1e-2
    with pytest.raises(ValueError, match="convention"):
        ssim(pred, gt, convention="matlab")


def test_metrics_that_cannot_run_say_why_and_niqe_runs_offline(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pyiqa(name, *a, **kw):
        if name == "pyiqa":
            raise ImportError("no pyiqa here")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_pyiqa)
    ready, missing = build_metrics(["psnr", "niqe", "musiq", "lpips"])
    assert "lpips" in ready or "alexnet" in missing["lpips"].lower()
    assert set(ready) == {"psnr", "niqe"} and "varestorer[metrics]" in missing["musiq"]
    big = np.asarray(Image.fromarray(next(real_pairs())[1]).resize((256, 256)))
    assert 0 < ready["niqe"](big) < 100
    problems = {}
    small = score(ready, np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64, 3), np.uint8), problems=problems)
    assert small["niqe"] is None and "192x192" in problems["niqe"] and small["psnr"] == math.inf
    with pytest.raises(ConfigError, match="unknown metrics"):
        build_metrics(["psnr", "fidelity"])
    assert list(METRICS)[:3] == ["psnr", "ssim", "lpips"]


def test_images_pair_by_name_whatever_the_dataset_tags(tmp_path):
    names = {
        "Canon_001_LR4.png": "canon_001",
        "Canon_001_HR.png": "canon_001",
        "DSC_1454_x4.png": "dsc_1454",
        "0801x4.png": "0801",
        "0801.png": "0801",
        "photo_lq.jpg": "photo",
        "box4.png": "box4",
    }
    for name, key in names.items():
        assert pair_key(tmp_path / name) == key, name
    root = tmp_path / "RealSR"
    for sub, name in (
        ("test_HR", "Canon_001_HR.png"),
        ("test_HR", "Nikon_002_HR.png"),
        ("test_LR", "Canon_001_LR4.png"),
        ("test_LR", "Nikon_002_LR4.png"),
    ):
        (root / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / sub / name)
    gt, lq = index_images(resolve_folder(root, "gt"), "gt"), index_images(resolve_folder(root, "lq"), "lq")
    pairs = match(gt, lq=lq)
    assert [(p.gt.name, p.lq.name) for p in pairs] == [
        ("Canon_001_HR.png", "Canon_001_LR4.png"),
        ("Nikon_002_HR.png", "Nikon_002_LR4.png"),
    ]
    v3 = tmp_path / "Canon" / "Test" / "4"  # RealSR V3: HR and LR side by side
    v3.mkdir(parents=True)
    for name in ("Canon_003_HR.png", "Canon_003_LR4.png", "Canon_004_HR.png", "Canon_004_LR4.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(v3 / name)
    both = match(index_images(v3, "gt"), lq=index_images(v3, "lq"))
    assert [(p.gt.name, p.lq.name) for p in both] == [
        ("Canon_003_HR.png", "Canon_003_LR4.png"),
        ("Canon_004_HR.png", "Canon_004_LR4.png"),
    ]
    del lq["nikon_002"]
    with pytest.raises(ConfigError, match="Nikon_002_HR.png.*--allow-missing"):
        match(gt, lq=lq)
    assert len(match(gt, lq=lq, allow_missing=True)) == 1


def _folders(tmp_path, shift=0):
    """HR photos, their x4 bicubic LR, and 'restorations' (the bicubic upsampling)."""
    import skimage.data

    for sub in ("HR", "LR", "SR"):
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
    for name, img in (("astronaut", skimage.data.astronaut()), ("coffee", skimage.data.coffee())):
        hr = Image.fromarray(img[:128, :128])
        hr.save(tmp_path / "HR" / f"{name}.png")
        lr = hr.resize((32, 32), Image.BICUBIC)
        lr.save(tmp_path / "LR" / f"{name}_x4.png")
        lr.resize((128 + shift, 128), Image.BICUBIC).save(tmp_path / "SR" / f"{name}.png")
    return tmp_path


def test_evaluate_scores_restorations_and_writes_the_table(tmp_path, capsys):
    d = _folders(tmp_path)
    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                "--pred",
                str(d / "SR"),
                "--gt",
                str(d / "HR"),
                "--lq",
                str(d / "LR"),
                "--crop-border",
                "4",
                "--metrics",
                "psnr,ssim,lpips,niqe",
                "--out",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["method"] for r in rows] == ["pred", "bicubic"]
    per_image = list(csv.DictReader(open(out / "per_image.csv")))
    assert len(per_image) == 4 and {r["image"] for r in per_image} == {"astronaut.png", "coffee.png"}
    gt = np.asarray(Image.open(d / "HR" / "astronaut.png"))
    pred = np.asarray(Image.open(d / "SR" / "astronaut.png"))
    first = next(r for r in per_image if r["method"] == "pred" and r["image"] == "astronaut.png")
    assert float(first["psnr"]) == pytest.approx(psnr(pred, gt, 4), abs=1e-9)
    table = (out / "results.md").read_text()
    assert "| pred |" in table and "| bicubic |" in table and "PSNR↑" in table and "LPIPS↓" in table
    doc = json.loads((out / "results.json").read_text())
    assert doc["settings"]["crop_border"] == 4 and "niqe" in doc["unavailable"]  # 120 px: too small for NIQE
    assert "not computed for 4 of 4 images" in table  # and the table says why
    assert (out / "metric_vs_time.png").is_file() and '"rows"' in printed


def test_an_identical_pair_neither_hides_the_others_psnr_nor_breaks_the_json(tmp_path, capsys):
    """One restoration equal to its ground truth (PSNR inf) beside a poor one: the mean PSNR is the
    poor one's, the count of identical pairs is said, and results.json is strict JSON."""
    d = _folders(tmp_path)
    (d / "SR" / "astronaut.png").write_bytes((d / "HR" / "astronaut.png").read_bytes())  # identical
    poor = psnr(np.asarray(Image.open(d / "SR" / "coffee.png")), np.asarray(Image.open(d / "HR" / "coffee.png")))
    out = tmp_path / "eval"
    args = ["evaluate", "--pred", str(d / "SR"), "--gt", str(d / "HR"), "--metrics", "psnr,ssim", "--out", str(out)]
    assert main([*args, "--json"]) == 0

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    printed = json.loads(capsys.readouterr().out, parse_constant=refuse)
    doc = json.loads((out / "results.json").read_text(), parse_constant=refuse)
    row = doc["rows"][0]
    assert row["psnr"] == pytest.approx(poor) and row["psnr_identical"] == 1 and printed["rows"] == doc["rows"]
    assert "1 of 2 pair(s) identical (infinite PSNR), left out of its mean PSNR" in (out / "results.md").read_text()
    (d / "SR" / "coffee.png").write_bytes((d / "HR" / "coffee.png").read_bytes())  # every pair identical
    assert main(args) == 0
    assert json.loads((out / "results.json").read_text(), parse_constant=refuse)["rows"][0]["psnr"] == "inf"


def test_evaluate_refuses_mismatched_sizes_naming_the_pair(tmp_path, capsys):
    d = _folders(tmp_path, shift=2)
    assert main(["evaluate", "--pred", str(d / "SR"), "--gt", str(d / "HR"), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "astronaut.png: the restored image is 130x128 but the ground truth is 128x128" in err


def test_evaluate_restores_with_bicubic_without_a_model(tmp_path, capsys):
    d = _folders(tmp_path)
    out = tmp_path / "e"
    assert (
        main(
            [
                "evaluate",
                "--method",
                "bicubic",
                "--lq",
                str(d / "LR"),
                "--gt",
                str(d / "HR"),
                "--metrics",
                "psnr,ssim",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["method"] for r in rows] == ["bicubic"] and float(rows[0]["sec_per_image"]) > 0
    assert (out / "bicubic" / "astronaut.png").is_file()
    assert (
        main(["evaluate", "--method", "onestep", "--lq", str(d / "LR"), "--gt", str(d / "HR"), "--out", str(out)]) == 2
    )
    assert "needs --model" in capsys.readouterr().err


def test_python_users_evaluate_through_a_report_object_equal_to_the_commands_table(tmp_path, capsys):
    """evaluation.run: load_pairs + evaluate return the rows the command writes (a model's pipeline
    or, here, the pipeline's resizing for bicubic)."""
    from varestorer.evaluation.run import evaluate, load_pairs
    from varestorer.inference.pipeline import VARestorerPipeline

    d = _folders(tmp_path)
    assert (
        main(
            [
                "evaluate",
                "--pred",
                str(d / "SR"),
                "--gt",
                str(d / "HR"),
                "--metrics",
                "psnr,ssim",
                "--out",
                str(tmp_path / "cli"),
            ]
        )
        == 0
    )
    data = load_pairs(d / "HR", pred=d / "SR", lq=d / "LR")
    report = evaluate(data, None, out=tmp_path / "py", metrics=("psnr", "ssim"))  # bicubic: no model needed
    assert report.restored == ["bicubic"] and [r["method"] for r in report.rows] == ["pred", "bicubic"]
    cli = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert report.row("pred")["psnr"] == pytest.approx(cli["rows"][0]["psnr"], abs=1e-12)
    assert not (tmp_path / "py" / "results.md").exists()  # the table is written by report.write()
    assert report.write()["rows"] == report.rows and (tmp_path / "py" / "results.md").is_file()
    with pytest.raises(ConfigError, match="onestep needs a pipeline"):
        evaluate(data, None, methods=("onestep",), out=tmp_path / "py2")
    assert VARestorerPipeline.method("bicubic").needs_model is False


def test_a_per_set_metric_compares_each_methods_folder_with_the_ground_truth_folder(tmp_path, monkeypatch):
    from varestorer.evaluation import metrics

    d = _folders(tmp_path)
    seen = []
    fake = metrics.Metric("fid", False, True, lambda device: lambda p, g: seen.append((p, g)) or 12.5, per_set=True)
    monkeypatch.setitem(metrics.METRICS, "fid", fake)
    out = tmp_path / "e"
    assert (
        main(
            [
                "evaluate",
                "--pred",
                str(d / "SR"),
                "--gt",
                str(d / "HR"),
                "--lq",
                str(d / "LR"),
                "--metrics",
                "psnr,fid",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert [(p.name, g.name) for p, g in seen] == [("SR", "HR"), ("bicubic", "HR")]
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [float(r["fid"]) for r in rows] == [12.5, 12.5]
    assert all(r["fid"] == "" for r in csv.DictReader(open(out / "per_image.csv")))  # one value per set


def test_sharpness_is_one_for_the_photo_below_one_for_blur_and_above_for_noise():
    from skimage import data

    from varestorer.evaluation.metrics import sharpness

    photo = np.asarray(data.astronaut())[:256, :256]
    blurred = np.asarray(Image.fromarray(photo).resize((64, 64), Image.BICUBIC).resize((256, 256), Image.BICUBIC))
    noisy = np.clip(photo + np.random.default_rng(0).normal(0, 25, photo.shape), 0, 255).astype(np.uint8)
    assert sharpness(photo, photo) == 1.0
    assert sharpness(blurred, photo) < 0.5 < 1.5 < sharpness(noisy, photo)
