"""Captions: a tiny BLIP built here from a config (no download) through the real loading and
generation code, batched like the real one; caption files; captions read back from a prepared
dataset."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from varestorer.data.captions import BlipCaptioner, CaptionFile
from varestorer.errors import ConfigError

WORDS = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "[DEC]",
    "a",
    "photo",
    "of",
    "cat",
    "dog",
    "woman",
    "cup",
    "coffee",
    "rocket",
    "sky",
    "the",
    "on",
    "in",
    "red",
    "blue",
    "with",
    "and",
    "an",
    "astronaut",
    "flag",
]


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory):
    """A BLIP checkpoint folder (model + processor + tokenizer) with random weights."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        BertTokenizerFast,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
        BlipTextConfig,
        BlipVisionConfig,
    )

    out = tmp_path_factory.mktemp("tiny-blip")
    vocab = {w: i for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(out / "tokenizer.json"))
    tokenizer = BertTokenizerFast(
        tokenizer_file=str(out / "tokenizer.json"),
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        bos_token="[DEC]",
    )
    text = BlipTextConfig(
        vocab_size=len(WORDS),
        hidden_size=32,
        encoder_hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=64,
        bos_token_id=vocab["[DEC]"],
        eos_token_id=vocab["[SEP]"],
        sep_token_id=vocab["[SEP]"],
        pad_token_id=0,
        initializer_range=0.5,
    )
    vision = BlipVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        initializer_range=0.5,
    )
    config = BlipConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=32, image_text_hidden_size=32
    )
    torch.manual_seed(0)
    BlipForConditionalGeneration(config).save_pretrained(out)
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer)
    processor.save_pretrained(out)
    return out


def images():
    from skimage import data

    return [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.astronaut()]


def test_blip_captioner_batched_and_deterministic(tiny_blip):
    cap = BlipCaptioner(str(tiny_blip), device="cpu", batch_size=2, max_new_tokens=6)
    ims = images()
    captions = cap(ims)
    assert len(captions) == 5 and all(isinstance(c, str) for c in captions)
    assert all(set(c.split()) <= set(WORDS[5:]) for c in captions)  # words of the vocabulary, no special tokens
    assert captions[0] == captions[4]  # a caption is a function of the image
    assert cap([ims[1]]) == [captions[1]]  # whatever the batch
    assert [Image.fromarray(i) for i in ims[:1]] and cap([Image.fromarray(ims[2])]) == [captions[2]]
    assert len(set(captions)) > 1  # and depends on the image
    assert cap.describe() == f"blip:{tiny_blip}"


def test_blip_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="--caption"):
        BlipCaptioner(str(tmp_path / "no-such-blip"), device="cpu")


def test_prepare_with_blip_captions(tiny_blip, tmp_path):
    import datasets

    from varestorer.data.prepare import prepare_dataset

    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    for i, im in enumerate(images()[:4]):
        Image.fromarray(np.asarray(Image.fromarray(im).resize((80, 72)))).save(src / "a" / f"{i}.png")
    out = tmp_path / "out"
    report = prepare_dataset(
        src,
        out,
        size=64,
        caption="blip",
        caption_model=str(tiny_blip),
        caption_batch_size=3,
        device="cpu",
        shard_size=3,
        progress=False,
    )
    assert report.images == 4
    ds = datasets.load_from_disk(str(out))
    direct = BlipCaptioner(str(tiny_blip), device="cpu")([r["image"] for r in ds])
    assert ds["caption"] == direct  # the captions of the stored crops, read back from the dataset
    assert json.loads((out / "prepare.json").read_text())["caption"] == f"blip:{tiny_blip}"


def test_caption_file_formats(tmp_path):
    f = tmp_path / "caps.jsonl"
    f.write_text(
        '{"path": "a/b.jpg", "caption": "a  cat\\n on a mat"}\n\n{"c.png": "a dog"}\n'
        + json.dumps({"path": str(tmp_path / "src" / "d.png"), "caption": "absolute"})
        + "\n"
    )
    caps = CaptionFile(f, root=tmp_path / "src")
    assert len(caps) == 3
    assert caps.lookup("a/b.jpg") == "a cat on a mat"
    assert caps.lookup("c.png") == "a dog"
    assert caps.lookup("d.png") == "absolute"
    assert caps.lookup("missing.png") is None
    f.write_text('{"path": "x.png", "caption": 3}\n')
    with pytest.raises(ConfigError, match="not a string"):
        CaptionFile(f)
