"""The T5 text wrapper: padded/packed features, the caption cache, loading from a local folder."""

import json

import pytest
import torch

from varestorer.errors import ConfigError
from varestorer.transformer import TextEncoder, TextFeatures


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder.local()


def word_tokenizer():
    """A word-level tokenizer with T5's special tokens, made here (no download)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = "a an the cat dog dogs car red blue photo of on in snow street two".split()
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def test_features_are_padded_with_a_mask_and_independent_of_the_batch(encoder):
    caps = ["a cat", "two dogs playing in the snow", ""]
    text = encoder(caps)
    assert text.features.shape == (3, len(caps[1]) + 1, 64)  # one token per character, then </s>
    assert text.lens.tolist() == [len(c) + 1 for c in caps]
    assert (text.features[~text.mask] == 0).all()
    encoder.clear_cache()
    alone = encoder(["a cat"])
    torch.testing.assert_close(alone.features[0], text.features[0, :6], atol=1e-5, rtol=0)


def test_packed_form_round_trips(encoder):
    text = encoder(["a cat", "a red car on the street"])
    kv, lens, cu, max_len = text.packed()
    assert lens == [6, 24] and cu.tolist() == [0, 6, 30] and max_len == 24 and kv.shape == (30, 64)
    back = TextFeatures.from_packed(kv, lens)
    assert torch.equal(back.features, text.features) and torch.equal(back.mask, text.mask)
    both = TextFeatures.cat([text, encoder(["a"]).with_drop(True)])
    assert both.drop.tolist() == [False, False, True] and both.features.shape == (3, 24, 64)


def test_cache_is_keyed_by_caption(monkeypatch):
    enc = TextEncoder.local()
    enc.cache_size = 2
    calls = []
    real = enc._encode
    monkeypatch.setattr(enc, "_encode", lambda caps: calls.append(list(caps)) or real(caps))
    first = enc(["a cat", "a dog", "a cat"])
    assert calls == [["a cat", "a dog"]]  # each distinct caption encoded once
    again = enc(["a dog", "a cat"], drop=[True, False])
    assert len(calls) == 1 and again.drop.tolist() == [True, False]
    assert torch.equal(again.features[1], first.features[0])
    enc(["a car"])  # evicts the least recently used ("a dog")
    enc(["a cat"])
    assert len(calls) == 2
    enc(["a dog"])
    assert calls[-1] == ["a dog"]


def test_loads_a_local_t5_folder(tmp_path):
    from transformers import T5Config, T5EncoderModel

    tok = word_tokenizer()
    torch.manual_seed(0)
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(tok),
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=1,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",
        )
    )
    t5.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    enc = TextEncoder.from_pretrained(tmp_path, max_length=8)
    assert enc.channels == 32
    text = enc(["a red car on the street", "two dogs in the snow and more words here"])
    assert text.lens.tolist() == [7, 8]  # 6 words + </s>; truncated to max_length
    with torch.no_grad():
        ref = t5.eval()(input_ids=torch.tensor([tok("a red car on the street")["input_ids"]])).last_hidden_state
    torch.testing.assert_close(text.features[0, :7], ref[0], atol=1e-5, rtol=0)


def sentencepiece_t5_folder(path):
    """A real T5 tokenizer (sentencepiece, trained here on a few captions) and a small T5 encoder."""
    import sentencepiece as spm
    from transformers import T5Config, T5EncoderModel

    path.mkdir(parents=True, exist_ok=True)
    corpus = path / "corpus.txt"
    corpus.write_text("\n".join(["a photo of a cat on the street", "two dogs in the snow", "a red car"] * 30))
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(path / "spiece"),
        vocab_size=24,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    (path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer", "extra_ids": 4}))
    torch.manual_seed(0)
    T5EncoderModel(
        T5Config(
            vocab_size=28,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=1,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",
        )
    ).save_pretrained(path)
    return path


def test_t5_tokenizer_loads_in_legacy_mode_as_infinity_does(tmp_path):
    enc = TextEncoder.from_pretrained(sentencepiece_t5_folder(tmp_path))
    pieces = enc.tokenizer.tokenize("a cat<extra_id_0>. on")
    after = pieces[pieces.index("<extra_id_0>") + 1]
    assert after.startswith("\u2581")  # legacy: text after a special token is a new word ("\u2581.")
    assert enc.encoder.dtype == torch.float32  # fp32 stays on a CPU


def test_t5_runs_in_float16_on_a_gpu_like_transformers_loads_it(tmp_path, monkeypatch):
    """On CUDA the encoder is float16 with T5's ``wo`` layers in float32: exactly what Infinity's
    ``T5EncoderModel.from_pretrained(..., torch_dtype=torch.float16)`` gives; on a CPU it goes
    back to float32; a dtype chosen by hand is kept. (CPU stands in for CUDA here.)"""
    from transformers import T5EncoderModel

    import varestorer.transformer.text as text_module

    folder = sentencepiece_t5_folder(tmp_path)
    enc = TextEncoder.from_pretrained(folder)
    before = enc(["a cat"]).features
    monkeypatch.setattr(text_module, "_auto_dtype", lambda device: torch.float16)  # "this is a GPU"
    enc.to("cpu")
    reference = T5EncoderModel.from_pretrained(folder, dtype=torch.float16).state_dict()
    for name, value in enc.encoder.state_dict().items():
        assert value.dtype == reference[name].dtype and torch.equal(value, reference[name]), name
    assert reference["encoder.block.0.layer.1.DenseReluDense.wo.weight"].dtype == torch.float32
    assert not torch.equal(enc(["a cat"]).features, before)  # the cache of fp32 features was dropped
    monkeypatch.undo()
    enc.to("cpu")
    assert all(p.dtype == torch.float32 for p in enc.encoder.parameters())
    enc.to(torch.bfloat16)  # somebody's explicit choice
    assert all(p.dtype == torch.bfloat16 for p in enc.encoder.parameters())
    fixed = TextEncoder.from_pretrained(folder, dtype=torch.float16)  # a dtype given: kept on a CPU
    assert fixed.encoder.shared.weight.dtype == torch.float16


def test_missing_encoder_says_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="cannot load the T5 text encoder"):
        TextEncoder.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(TypeError, match="list of captions"):
        TextEncoder.local()("one caption")


def test_encoder_stays_in_eval_mode(encoder):
    encoder.train()
    assert encoder.training and not encoder.encoder.training
    assert not any(p.requires_grad for p in encoder.parameters())
