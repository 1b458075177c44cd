"""Random checkpoints of the released VARestorer at full size, in the official layouts, for measuring
what a user's first steps cost on a real machine (docs/real-size.md, issue 34):

    python launch/write-full-size.py OUT [--dtype bfloat16] [--only NAME ...]
    OUT/varestorer.pth            the release's layout: BInfinity keys + cloneofsimo LoRA (r32) keys
    OUT/infinity_2b_reg.pth       Infinity-2B's flat state dict (the base the authors' trainer starts from)
    OUT/infinity_vae_d32reg.pth   the VAE d32 as {"vae": state dict}
    OUT/general_swinir_v1.ckpt    DiffBIR's SwinIR as {"state_dict": {"module." + key}}
    OUT/flan-t5-xl/               google/flan-t5-xl's encoder as a Hugging Face folder (float32 safetensors
                                  shards + a sentencepiece tokenizer trained here: the real one cannot be
                                  downloaded, so its vocabulary is smaller; the encoder's shapes are real)
    OUT/blip-image-captioning-large/  Salesforce/blip-image-captioning-large's architecture and processor
                                  (384 px; a WordPiece vocabulary of BLIP's 30,524 ids, made up here)

Each transformer checkpoint is built tensor by tensor from the preset's shapes (the model itself is
made on the meta device: no second copy of the weights), then saved. The dtype the release ships its
checkpoint in is not known here (no Hub access): bfloat16 by default, --dtype float32 for the other case.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from varestorer.inference.memory import BLIP_LARGE
from varestorer.presets import get_preset
from varestorer.restorer.swinir import RELEASE_CONFIG, SwinIR
from varestorer.tokenizer.loading import build_vae
from varestorer.transformer.loading import build_transformer
from varestorer.transformer.lora import DEFAULT_TARGETS
from varestorer.transformer.text import T5_ENCODERS

FILES = ("varestorer.pth", "infinity_2b_reg.pth", "infinity_vae_d32reg.pth", "general_swinir_v1.ckpt")
FOLDERS = ("flan-t5-xl", "blip-image-captioning-large")


def random_like(shapes: dict, dtype: torch.dtype, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    state = {k: (torch.randn(s, generator=g) * 0.02).to(dtype) for k, s in shapes.items()}
    for k in state:
        if k.endswith("zero_k_bias"):
            state[k].zero_()
    return state


def transformer_shapes(rank: int | None) -> dict:
    """Infinity-2B's state-dict shapes; with ``rank``, the release's (cloneofsimo LoRA on the blocks'
    attention Linears: ``<module>.linear.weight``, ``lora_down``, ``lora_up``)."""
    with torch.device("meta"):
        model = build_transformer(get_preset("infinity-2b"))
    shapes = {}
    for k, v in model.state_dict().items():
        module, _, kind = k.rpartition(".")
        if rank and module.startswith("block_chunks.") and module.endswith(DEFAULT_TARGETS):
            shapes[f"{module}.linear.{kind}"] = v.shape
            if kind == "weight":
                shapes[f"{module}.lora_down.weight"] = (rank, v.shape[1])
                shapes[f"{module}.lora_up.weight"] = (v.shape[0], rank)
        else:
            shapes[k] = v.shape
    return shapes


def write_transformer(path: Path, dtype: torch.dtype, rank: int | None) -> None:
    t0 = time.perf_counter()
    state = random_like(transformer_shapes(rank), dtype)
    torch.save(state, path)
    n = sum(v.numel() for v in state.values())
    print(f"{path.name}: {n:,} values ({dtype}) in {time.perf_counter() - t0:.0f} s")


def corpus() -> list[str]:
    """English sentences for the stand-in tokenizers: the toolkit's own documentation."""
    root = Path(__file__).resolve().parent.parent
    lines = [ln.strip() for f in sorted(root.glob("docs/*.md")) + [root / "README.md"] for ln in f.open()]
    return [ln for ln in lines if len(ln.split()) > 3]


def write_t5(out: Path) -> None:
    """flan-t5-xl's encoder with random weights (float32, as the Hub's files) and a sentencepiece
    tokenizer trained on :func:`corpus` (T5's special ids: pad 0, eos 1, unk 2; 100 extra ids)."""
    import sentencepiece as spm
    from transformers import T5Config, T5EncoderModel

    out.mkdir(parents=True, exist_ok=True)
    text = out / "corpus.txt"
    text.write_text("\n".join(corpus()))
    spm.SentencePieceTrainer.train(
        input=str(text),
        model_prefix=str(out / "spiece"),
        vocab_size=4000,
        hard_vocab_limit=False,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    text.unlink()
    (out / "spiece.vocab").unlink()
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer", "extra_ids": 100}))
    torch.manual_seed(0)
    T5EncoderModel(T5Config(**T5_ENCODERS["google/flan-t5-xl"])).save_pretrained(out, max_shard_size="2GB")


def write_blip(out: Path) -> None:
    """BLIP-large (ViT-L 384 + BERT-base decoder) with random weights and a BERT WordPiece
    vocabulary of exactly BLIP's 30,524 ids ([PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103,
    [DEC] 30522, [ENC] 30523), so every id the random decoder draws decodes."""
    from transformers import (
        BertTokenizerFast,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    out.mkdir(parents=True, exist_ok=True)
    words = sorted({w.lower().strip(".,;:()`*|[]") for ln in corpus() for w in ln.split()} - {""})
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += [w for w in words if w.isalpha()][: 30522 - len(vocab)]
    vocab += [f"word{i}" for i in range(30522 - len(vocab))] + ["[DEC]", "[ENC]"]
    tokenizer = BertTokenizerFast(
        vocab={w: i for i, w in enumerate(vocab)}, bos_token="[DEC]", additional_special_tokens=["[ENC]"]
    )
    torch.manual_seed(0)
    BlipForConditionalGeneration(BlipConfig(**BLIP_LARGE)).save_pretrained(out)
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 384, "width": 384}), tokenizer=tokenizer
    )
    processor.save_pretrained(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--only", nargs="+", choices=FILES + FOLDERS, help="write these only (default: all)")
    args = p.parse_args()
    out, dtype = Path(args.out), getattr(torch, args.dtype)
    out.mkdir(parents=True, exist_ok=True)
    todo = set(args.only or FILES + FOLDERS)
    preset = get_preset("infinity-2b")
    if "varestorer.pth" in todo:
        write_transformer(out / "varestorer.pth", dtype, args.rank)
    if "infinity_2b_reg.pth" in todo:
        write_transformer(out / "infinity_2b_reg.pth", dtype, None)
    if "infinity_vae_d32reg.pth" in todo:
        torch.save({"vae": build_vae(preset).state_dict()}, out / "infinity_vae_d32reg.pth")
    if "general_swinir_v1.ckpt" in todo:
        state = SwinIR(**RELEASE_CONFIG).state_dict()
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, out / "general_swinir_v1.ckpt")
    if "flan-t5-xl" in todo:
        write_t5(out / "flan-t5-xl")
    if "blip-image-captioning-large" in todo:
        write_blip(out / "blip-image-captioning-large")
    for f in sorted(out.iterdir()):
        size = sum(g.stat().st_size for g in f.rglob("*")) if f.is_dir() else f.stat().st_size
        print(f"{f.name}: {size / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
