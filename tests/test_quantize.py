"""Int8 CPU inference (varestorer.transformer.quantize, VARestorerPipeline.quantize)."""

import json

import numpy as np
import pytest
import torch
from conftest import move_lora
from PIL import Image
from torch import nn

from varestorer.cli import main
from varestorer.distill.model import VARestorerModel
from varestorer.distill.recipe import load_recipe
from varestorer.errors import ConfigError
from varestorer.inference import VARestorerPipeline
from varestorer.transformer.quantize import QUANTISED, Int8FFN, Int8Linear, int8_available, quantize_blocks

pytestmark = pytest.mark.skipif(not int8_available(), reason="this torch build has no oneDNN int8 Linear")


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("q")
    torch.manual_seed(0)
    model = VARestorerModel.from_recipe(load_recipe("tiny", [f"train.output_dir={root}", "train.report_to=none"]))
    move_lora(model, 0.05).eval().save_export(root / "export")
    return root / "export"


def _reference_int8(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """The int8 product written out: x uint8 per tensor with a zero point from its min and max, w
    int8 per output channel (max |w| / 127), an exact integer matmul, then the scales and the bias."""
    lo, hi = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
    sx = (hi - lo) / 255
    zx = round(-lo / sx)
    qx = torch.clamp(torch.round(x / sx) + zx, 0, 255).double()
    w = linear.weight.double()
    sw = w.abs().amax(1) / 127
    qw = torch.round(w / sw[:, None])
    acc = (qx - zx) @ qw.T  # exact in float64 for these sizes
    return (acc * sx * sw + linear.bias.double()).float()


def test_an_int8_linear_computes_the_quantised_product_with_the_scales_and_bias_fused():
    torch.manual_seed(0)
    lin = nn.Linear(64, 600)  # more output rows than quantize_rows takes at once
    before = lin.weight.detach().clone()
    x = torch.randn(2, 7, 64)
    y = Int8Linear(lin)(x)
    assert torch.equal(lin.weight, before)  # the float weights are read, never divided in place
    assert y.shape == (2, 7, 600) and y.dtype == torch.float32
    ref = _reference_int8(lin, x.reshape(-1, 64)).reshape(2, 7, 600)
    # oneDNN rounds its float32 scale product differently; within one step of the int8 grid
    assert torch.allclose(y, ref, atol=2e-3, rtol=1e-3)
    # ...and about 1% away from the float product
    full = lin(x)
    assert 1e-4 < ((y - full).norm() / full.norm()).item() < 0.02


def test_the_fused_gelu_is_the_ffns_tanh_gelu_and_the_output_follows_autocast():
    torch.manual_seed(0)
    lin = nn.Linear(32, 40)
    x = torch.randn(5, 32)
    q = Int8Linear(lin, gelu=True)
    assert torch.allclose(q(x), nn.functional.gelu(Int8Linear(lin)(x), approximate="tanh"), atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert q(x).dtype == torch.bfloat16
    assert Int8Linear(lin, out_dtype=torch.float32)(x.bfloat16()).dtype == torch.float32


def test_quantising_replaces_each_blocks_linears_and_follows_the_merged_lora(export):
    pipe = VARestorerPipeline.from_pretrained(export, merge_lora=False)
    blk = pipe.transformer.blocks[0]
    merged_qkv = blk.sa.mat_qkv.get_delta_weight("default") + blk.sa.mat_qkv.base_layer.weight
    with pytest.raises(ConfigError, match="not merged"):
        quantize_blocks(pipe.transformer)
    pipe.quantize("int8")  # merges first
    assert pipe.quantized == "int8"
    for blk in pipe.transformer.blocks:
        for name in QUANTISED:
            assert isinstance(blk.get_submodule(name), Int8Linear), name
        assert isinstance(blk.ffn, Int8FFN)
        assert isinstance(blk.ca.mat_kv.base_layer, nn.Linear)  # the text keys stay as they were
    q = pipe.transformer.blocks[0].sa.mat_qkv
    plain = nn.Linear(q.in_features, q.out_features, bias=False)
    plain.weight.data.copy_(merged_qkv)
    x = torch.randn(3, q.in_features)
    assert torch.equal(q(x), Int8Linear(plain)(x))  # the LoRA's product is in the quantised weight


def test_an_int8_pipeline_restores_close_to_the_unquantised_one(export):
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    pipe = VARestorerPipeline.from_pretrained(export)
    ref_logits = pipe.student_logits(x, ["", ""], pipe.lq_tokens(x))
    ref = torch.stack(pipe(list(x), prompt="", output_type="pt").images)
    pipe.quantize("int8")
    logits = pipe.student_logits(x, ["", ""], pipe.lq_tokens(x))
    out = torch.stack(pipe(list(x), prompt="", output_type="pt").images)
    assert not torch.equal(logits, ref_logits)  # it did run in int8
    assert ((logits - ref_logits).norm() / ref_logits.norm()).item() < 0.05
    agree = (logits.argmax(-1) == ref_logits.argmax(-1)).float().mean().item()
    assert agree > 0.97, agree  # the random tiny model's bits sit near p = 1/2: the few near it flip
    assert out.shape == ref.shape and torch.isfinite(out).all()


def test_an_int8_pipeline_refuses_what_it_cannot_do_and_says_what_to_do(export):
    pipe = VARestorerPipeline.from_pretrained(export).quantize("int8")
    x = torch.rand(3, 64, 64)
    with pytest.raises(ConfigError, match="without --quantize"):
        pipe(x, prompt="", method="zeroshot")
    with pytest.raises(ConfigError, match="before quantize"):
        pipe.to(dtype=torch.bfloat16)
    with pytest.raises(ConfigError, match="one of int8"):
        pipe.quantize("int4")
    pipe(x, prompt="")  # onestep still runs


def test_restore_quantize_int8_writes_images_and_refuses_base_sampling_before_loading(export, tmp_path, capsys):
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(tmp_path / "a.png")
    args = ["restore", str(tmp_path / "a.png"), "--model", str(export), "--caption", "none", "--device", "cpu"]
    assert main([*args, "-o", str(tmp_path / "out"), "--quantize", "int8", "--attention-kernel", "matmul"]) == 0
    assert Image.open(tmp_path / "out" / "a.png").size == (64, 64)
    assert main([*args, "-o", str(tmp_path / "z"), "--quantize", "int8", "--method", "zeroshot"]) == 2
    assert "--method zeroshot samples the base model" in capsys.readouterr().err
    assert not (tmp_path / "z").exists()


def test_latency_benchmark_adds_each_cpu_speed_up_in_turn_beside_plain_onestep(capsys):
    args = ["bench", "latency", "--json", "--repeats", "1", "--warmup", "0", "--device", "cpu", "--dtype", "bfloat16"]
    assert main([*args, "--methods", "onestep", "--quantize", "int8", "--attention-kernel", "matmul"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert list(r["methods"]) == ["onestep", "onestep+matmul", "onestep+matmul+int8"] and r["quantize"] == "int8"
    assert all(row["psnr_vs_onestep"] > 25 for row in list(r["methods"].values())[1:])
