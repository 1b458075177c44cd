"""Recipes are data: every shipped one validates, and mistakes give errors that say what to do."""

import pytest

from varestorer.distill.recipe import load_recipe
from varestorer.errors import ConfigError
from varestorer.resources import resource_dir


@pytest.mark.parametrize("path", sorted(resource_dir("recipes").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_recipe_validates(path):
    recipe = load_recipe(str(path))
    assert recipe.name == path.stem


def test_paper_setting():
    r = load_recipe("varestorer-2b-512")
    assert (r.model.preset, r.model.resolution, r.mode) == ("infinity-2b", 512, "distill")
    assert (r.loss.kl, r.loss.lpips, r.loss.mse) == (0.1, 0.25, 0.5)
    assert (r.optim.lr, r.optim.weight_decay) == (1e-6, 1e-2)
    assert (r.train.global_batch_size, r.train.max_steps, r.train.mixed_precision) == (32, 10_000, "bf16")
    assert r.student.lora_rank == 32 and r.student.attention == "full"
    # the release's form (EternalEvan/VARestorer), not the paper's text (ablation-paper-pyramid)
    assert (r.student.lq_input, r.student.train_encoder, r.model.restorer) == (
        "shifted_latent",
        False,
        "weights/general_swinir_v1.ckpt",
    )
    assert (r.inference.decode, r.inference.resize, r.inference.tile_weights) == ("gumbel", "lanczos", "gaussian")
    paper = load_recipe("ablation-paper-pyramid")
    assert (paper.student.lq_input, paper.student.train_encoder, paper.model.restorer) == ("pyramid", True, None)
    assert r.student.lora_targets == ["sa.mat_qkv", "sa.proj", "ca.mat_q", "ca.mat_kv", "ca.proj"]
    assert load_recipe("ablation-no-cross-attention").student.attention == "causal"
    assert load_recipe("ablation-no-kl").loss.kl == 0
    assert load_recipe("ablation-retrain-without-captions").data.use_captions is False
    assert load_recipe("varestorer-2b-512").model.transformer == "outputs/teacher-512/final/transformer.safetensors"
    assert load_recipe("teacher-512").self_correction.layers == 13
    assert load_recipe("ablation-full-finetune").student.full_finetune is True
    assert load_recipe("varestorer-2b-1024").model.resolution == 1024
    assert load_recipe("teacher-512").mode == "teacher"


def _flat(recipe) -> dict:
    return {
        f"{s}.{k}" if isinstance(v, dict) else s: x
        for s, v in recipe.to_dict().items()
        for k, x in (v.items() if isinstance(v, dict) else [(None, v)])
    }


@pytest.mark.parametrize(
    "name, changed",
    [
        ("ablation-no-kl", {"loss.kl"}),
        ("ablation-no-cross-attention", {"student.attention", "student.lq_input"}),
        ("ablation-full-finetune", {"student.full_finetune"}),
        ("ablation-retrain-without-captions", {"data.use_captions"}),
        ("ablation-no-distill", {"mode", "student.attention", "student.train_encoder", "optim.lr"}),
        ("varestorer-2b-1024", {"model.transformer", "model.resolution", "data.dataset", "student.lq_input"}),
        (
            "ablation-paper-pyramid",
            {
                "model.restorer",
                "student.lq_input",
                "student.train_encoder",
                "inference.decode",
                "inference.resize",
                "inference.tile_weights",
            },
        ),
    ],
)
def test_an_ablation_is_its_base_recipe_with_only_its_own_lines_changed(name, changed):
    base, ablation = _flat(load_recipe("varestorer-2b-512")), _flat(load_recipe(name))
    differ = {k for k in base if base[k] != ablation[k]}
    assert differ == changed | {"name", "train.output_dir"}


def test_a_recipe_inherits_from_a_base_beside_it_and_bad_bases_are_errors(tmp_path):
    (tmp_path / "mine.yaml").write_text("base: tiny\noptim:\n  lr: 3.0e-4\n")
    (tmp_path / "child.yaml").write_text("base: mine\ntrain:\n  max_steps: 3\n")
    r = load_recipe(str(tmp_path / "child.yaml"), ["train.log_steps=2"])
    tiny = load_recipe("tiny")
    assert (r.name, r.optim.lr, r.train.max_steps, r.train.log_steps) == ("child", 3e-4, 3, 2)
    assert r.model == tiny.model and r.student == tiny.student  # the rest is tiny's, two levels down
    (tmp_path / "a.yaml").write_text("base: b\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"recipe bases loop: a.yaml -> b.yaml -> a.yaml"):
        load_recipe(str(tmp_path / "a.yaml"))
    (tmp_path / "orphan.yaml").write_text("base: nowhere\n")
    with pytest.raises(ConfigError, match=r"no recipe 'nowhere': pass a file path or one of"):
        load_recipe(str(tmp_path / "orphan.yaml"))
    (tmp_path / "typo.yaml").write_text("base: tiny\ntrain:\n  max_step: 3\n")
    with pytest.raises(ConfigError, match=r"did you mean train.max_steps"):
        load_recipe(str(tmp_path / "typo.yaml"))


def test_overrides_are_parsed_as_yaml():
    r = load_recipe(
        "tiny",
        ["optim.lr=1e-4", "train.max_steps=7", "student.lora_targets=[sa.proj]", "train.resume_from_checkpoint=latest"],
    )
    assert r.optim.lr == 1e-4 and r.train.max_steps == 7 and r.student.lora_targets == ["sa.proj"]
    assert r.train.resume_from_checkpoint == "latest"


def test_unknown_keys_name_the_valid_ones():
    with pytest.raises(
        ConfigError, match=r"unknown key 'optim.lrr' in optim \(did you mean optim.lr\?\); valid keys: lr, weight_decay"
    ):
        load_recipe("tiny", ["optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"unknown key 'bogus' in the recipe; valid keys: name, mode, model"):
        load_recipe("tiny", ["bogus=1"])


def test_bad_values_are_errors():
    with pytest.raises(ConfigError, match="train.max_steps must be int"):
        load_recipe("tiny", ["train.max_steps=many"])
    with pytest.raises(ConfigError, match="student.attention='sideways' is not valid; choose one of full, causal"):
        load_recipe("tiny", ["student.attention=sideways"])
    with pytest.raises(ConfigError, match=r"student.keep_lq_scales must be in \[0, 4\] \(the 64 px schedule has 5"):
        load_recipe("tiny", ["student.keep_lq_scales=5"])
    with pytest.raises(ConfigError, match=r"must look like section.key=value"):
        load_recipe("tiny", ["optim.lr"])
    with pytest.raises(ConfigError, match="no recipe 'nope'"):
        load_recipe("nope")
