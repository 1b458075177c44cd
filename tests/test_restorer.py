"""The stage-1 restorer: DiffBIR's SwinIR, its checkpoint layout and loading."""

import importlib.util
import json
import math
import os
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from varestorer.errors import CheckpointError
from varestorer.restorer import RELEASE_CONFIG, SwinIR, load_restorer, restorer_config_from_state, save_restorer
from varestorer.restorer.swinir import RGB_MEAN, TINY_CONFIG, shifted_window_mask

#: DiffBIR's ``swinir.py`` (``infinity/models/swinir.py`` of EternalEvan/VARestorer), to compare with;
#: the equivalence tests are skipped without it.
REFERENCE = os.environ.get("VARESTORER_SWINIR_REFERENCE")

#: Counted on the reference built with the release's arguments (DiffBIR's ``SwinIR``).
RELEASE_PARAMETERS = 15_792_587
RELEASE_KEYS = 732  # 48 blocks x 14 (+ attn_mask on the 24 shifted ones), 8 x layers.{i}.conv, 20 around


def plain(config: dict) -> dict:
    return {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in config.items() if not k.startswith("_")}


def randomized(config: dict, seed: int = 0) -> SwinIR:
    """A model whose every weight (norms and biases too) is random, so that any misplaced one shows."""
    model = SwinIR(**config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            unit = 1.0 if isinstance(model.get_submodule(name.rpartition(".")[0]), nn.LayerNorm) else 0.0
            p.copy_(unit + torch.randn(p.shape, generator=g) * (0.05 if p.ndim > 1 else 0.1))
    return model


@pytest.fixture(scope="module")
def tiny():
    return randomized(TINY_CONFIG)


def images(*size, batch=1, seed=0):
    return torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def test_the_release_config_has_the_reference_parameter_count_and_state_dict_layout():
    with torch.device("meta"):
        model = SwinIR(**RELEASE_CONFIG)
    state = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == RELEASE_PARAMETERS
    assert len(state) == RELEASE_KEYS
    block = "layers.7.residual_group.blocks.5."
    for key in (
        "conv_first.1.weight",
        "patch_embed.norm.weight",
        block + "norm1.bias",
        block + "attn.relative_position_bias_table",
        block + "attn.relative_position_index",
        block + "attn.qkv.bias",
        block + "attn.proj.weight",
        block + "norm2.weight",
        block + "mlp.fc1.weight",
        block + "mlp.fc2.bias",
        "layers.7.conv.weight",
        "norm.bias",
        "conv_after_body.weight",
        "conv_before_upsample.0.weight",
        "conv_up3.weight",
        "conv_hr.bias",
        "conv_last.weight",
    ):
        assert key in state, key
    assert state["conv_first.1.weight"].shape == (180, 3 * 64, 3, 3)
    assert state[block + "attn.relative_position_bias_table"].shape == (15 * 15, 6)
    assert state[block + "attn_mask"].shape == (64, 64, 64)  # (64 / 8)**2 windows of 8 x 8
    masks = [k for k in state if k.endswith("attn_mask")]
    assert len(masks) == 24 and all(int(k.split(".")[4]) % 2 for k in masks)  # the shifted (odd) blocks only


def test_the_release_architecture_is_inferred_from_its_state_dict_keys_and_shapes():
    with torch.device("meta"):
        state = SwinIR(**RELEASE_CONFIG).state_dict()
    assert plain(restorer_config_from_state(state)) == plain(RELEASE_CONFIG)
    assert plain(restorer_config_from_state({"module." + k: v for k, v in state.items()})) == plain(RELEASE_CONFIG)


def test_without_unshuffle_the_model_super_resolves_by_sf_and_its_layout_is_inferred():
    config = {**TINY_CONFIG, "sf": 4, "unshuffle_scale": None}  # SwinIR's own real-world SR models
    model = randomized(config)
    assert "conv_first.weight" in model.state_dict()
    assert plain(restorer_config_from_state(model.state_dict())) == plain(config)
    with torch.no_grad():
        assert model(images(12, 20)).shape == (1, 3, 48, 80)


def test_other_upsamplers_residual_convs_and_unshuffle_scales_are_refused():
    for change in (dict(upsampler="pixelshuffle"), dict(resi_connection="3conv"), dict(unshuffle_scale=4), dict(sf=3)):
        with pytest.raises(ValueError):
            SwinIR(**{**TINY_CONFIG, **change})


def test_a_residual_restorer_starts_as_the_identity_and_keeps_that_form_through_save_and_load(tmp_path):
    config = {**TINY_CONFIG, "residual": True}  # the small preset's form
    x = images(32, 32)
    with torch.no_grad():
        torch.testing.assert_close(SwinIR(**config)(x), x, rtol=0, atol=0)
        model = randomized(config)
        save_restorer(model, tmp_path / "r.safetensors")
        loaded = load_restorer(tmp_path / "r.safetensors")
        assert loaded.config.residual
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
        plain_form = SwinIR(**TINY_CONFIG)
        plain_form.load_state_dict(model.state_dict())  # the same keys; only the input is not added
        torch.testing.assert_close(plain_form(x) + x - plain_form(x).new_tensor(RGB_MEAN).view(1, 3, 1, 1), model(x))
    with pytest.raises(ValueError, match="needs unshuffle_scale"):
        SwinIR(**{**config, "unshuffle_scale": None})


@pytest.mark.parametrize("size", [(32, 32), (64, 48)])  # the stored shifted-window mask's size, and another
def test_the_output_has_the_input_size(tiny, size):
    with torch.no_grad():
        out = tiny(images(*size, batch=2))
    assert out.shape == (2, 3, *size) and out.isfinite().all()


def test_an_input_of_another_size_is_reflect_padded_and_its_output_cropped_to_that_size(tiny):
    x = images(36, 44)
    with torch.no_grad():
        out = tiny(x)
        by_hand = tiny(F.pad(x, (0, 4, 0, 4), mode="reflect"))[..., :36, :44]
    assert out.shape == (1, 3, 36, 44)
    torch.testing.assert_close(out, by_hand, rtol=0, atol=0)


def test_the_shifted_window_mask_keeps_apart_only_tokens_the_shift_wrapped_around():
    mask = shifted_window_mask(8, 8, 4, 2)  # 2 x 2 windows; only the last row/column of windows is mixed
    assert mask.shape == (4, 16, 16)
    assert (mask[0] == 0).all()
    assert set(mask[3].unique().tolist()) == {-100.0, 0.0} and (mask[3].diagonal() == 0).all()


@pytest.mark.parametrize("layout", ["diffbir", "flat", "basicsr"])
def test_a_checkpoint_in_a_released_layout_loads_strictly_and_restores_like_its_model(tiny, tmp_path, layout):
    state = tiny.state_dict()
    if layout == "diffbir":  # general_swinir_v1.ckpt: under "state_dict", keys of a DDP-wrapped model
        obj, path = {"state_dict": {"module." + k: v for k, v in state.items()}}, tmp_path / "swinir.ckpt"
    elif layout == "flat":
        obj, path = state, tmp_path / "swinir.pth"
    else:  # BasicSR (SwinIR's own releases): the EMA weights are the ones used
        noise = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
        obj, path = {"params": noise, "params_ema": state}, tmp_path / "swinir.pth"
    torch.save(obj, path)
    model = load_restorer(path)
    assert plain(model.config) == plain(TINY_CONFIG)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x = images(32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tiny(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    "change, named",
    [
        ("missing", "layers.1.residual_group.blocks.0.mlp.fc2.bias"),
        ("missing", "conv_first.1.weight"),  # also needed to infer the architecture
        ("extra", "layers.0.residual_group.blocks.0.attn.extra"),
        ("shape", "norm.weight"),
    ],
)
def test_a_missing_extra_or_mis_shaped_key_is_a_checkpoint_error_naming_it(tiny, tmp_path, change, named):
    state = {"module." + k: v for k, v in tiny.state_dict().items()}
    if change == "missing":
        del state["module." + named]
    elif change == "extra":
        state["module." + named] = torch.zeros(3)
    else:
        state["module." + named] = torch.ones(13)
    torch.save({"state_dict": state}, tmp_path / "swinir.ckpt")
    with pytest.raises(CheckpointError, match=named.replace(".", r"\.")):
        load_restorer(tmp_path / "swinir.ckpt")


def test_save_restorer_round_trips_weights_and_the_config_it_cannot_infer(tmp_path):
    config = {**TINY_CONFIG, "img_range": 255.0}  # not in a state dict: read from the file's metadata
    model = randomized(config, seed=3)
    save_restorer(model, tmp_path / "swinir.safetensors")
    loaded = load_restorer(tmp_path / "swinir.safetensors")
    assert plain(loaded.config) == plain(config)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = images(36, 44)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert load_restorer(tmp_path / "swinir.safetensors", config=TINY_CONFIG).config.img_range == 1.0


@pytest.fixture
def reference(monkeypatch):
    """DiffBIR's module, with the three timm helpers it imports stubbed (timm is not installed)."""
    if not REFERENCE or not os.path.isfile(REFERENCE):
        pytest.skip(
            "set VARESTORER_SWINIR_REFERENCE to DiffBIR's swinir.py (git --git-dir=<VARestorer mirror> show "
            "HEAD:infinity/models/swinir.py > swinir.py) to compare with it"
        )
    layers = types.ModuleType("timm.models.layers")
    layers.DropPath, layers.trunc_normal_ = nn.Identity, nn.init.trunc_normal_
    layers.to_2tuple = lambda x: tuple(x) if isinstance(x, (tuple, list)) else (x, x)
    for name, module in (("timm", types.ModuleType("timm")), ("timm.models", types.ModuleType("timm.models"))):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setitem(sys.modules, "timm.models.layers", layers)
    spec = importlib.util.spec_from_file_location("diffbir_swinir_reference", REFERENCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_model(reference, config: dict):
    args = {k: v for k, v in config.items() if k != "unshuffle_scale"}
    return reference.SwinIR(patch_size=1, unshuffle=True, unshuffle_scale=config["unshuffle_scale"], **args).eval()


@pytest.mark.parametrize(
    "sf, img_size, sizes",
    [(2, 16, [(32, 32), (64, 64), (40, 48)]), (4, 8, [(32, 32), (64, 48)]), (8, 8, [(64, 64), (128, 64)])],
)
def test_outputs_equal_the_reference_implementation_with_the_same_weights(reference, sf, img_size, sizes):
    config = {**TINY_CONFIG, "sf": sf, "unshuffle_scale": sf, "img_size": img_size}
    model = randomized(config, seed=sf)
    ref = reference_model(reference, config)
    ref.load_state_dict(model.state_dict(), strict=True)  # the same keys, shapes and buffers
    for size in sizes:  # the stored shifted-window mask and ones computed per call
        x = images(*size)
        with torch.no_grad():
            torch.testing.assert_close(model(x), ref(x), rtol=0, atol=1e-5)


def test_the_release_config_has_the_reference_state_dict(reference):
    ref = reference_model(reference, RELEASE_CONFIG)
    with torch.device("meta"):
        ours = SwinIR(**RELEASE_CONFIG).state_dict()
    assert {k: tuple(v.shape) for k, v in ref.state_dict().items()} == {k: tuple(v.shape) for k, v in ours.items()}
    assert sum(p.numel() for p in ref.parameters()) == RELEASE_PARAMETERS


def test_restorer_mode_trains_swinir_on_degraded_photos_and_a_distillation_recipe_runs_it(tmp_path):
    """mode: restorer trains the SwinIR stage with the trainer (same data, degradations, checkpoints
    and export as every mode); its final/ folder is what model.restorer names."""
    from varestorer.distill.model import VARestorerModel
    from varestorer.distill.recipe import load_recipe
    from varestorer.distill.trainer import train
    from varestorer.restorer import load_restorer

    recipe = load_recipe(
        "tiny",
        [
            "mode=restorer",
            "restorer.architecture=tiny",
            f"train.output_dir={tmp_path / 'run'}",
            "train.report_to=none",
            "train.max_steps=3",
            "train.checkpointing_steps=2",
            "train.validation_steps=2",
            "optim.lr=1e-3",
        ],
    )
    train(recipe)
    final = tmp_path / "run" / "final"
    assert {"restorer.safetensors", "restorer_config.json"} <= {p.name for p in final.iterdir()}
    assert (tmp_path / "run" / "validation" / "step-000002.png").is_file()
    history = [json.loads(line) for line in (tmp_path / "run" / "losses.jsonl").read_text().splitlines()]
    assert all(math.isfinite(h["loss"]) for h in history if "loss" in h)
    trained = load_restorer(final / "restorer.safetensors")
    untrained = SwinIR(**TINY_CONFIG)
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), untrained.state_dict().values()))

    student = VARestorerModel.from_recipe(
        load_recipe("tiny", [f"model.restorer={final}", f"train.output_dir={tmp_path / 'd'}", "train.report_to=none"])
    )
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        expected = student.lq_encoder(trained((x + 1) / 2) * 2 - 1).float()
        assert torch.equal(student.lq_latent(x), expected)
