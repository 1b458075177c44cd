"""Random checkpoints of the released VARestorer at full size, in the official layouts, for measuring
what a user's first steps cost on a real machine (docs/training.md, issue 34):

    python launch/write-full-size.py OUT [--dtype bfloat16]
    OUT/varestorer.pth            the release's layout: BInfinity keys + cloneofsimo LoRA (r32) keys
    OUT/infinity_vae_d32reg.pth   the VAE d32 as {"vae": state dict}
    OUT/general_swinir_v1.ckpt    DiffBIR's SwinIR as {"state_dict": {"module." + key}}

Each file is built tensor by tensor from the preset's shapes (the model itself is made on the meta
device: no second copy of the weights), then saved. The dtype the release ships its checkpoint in is
not known here (no Hub access): bfloat16 by default, --dtype float32 for the other case.
"""

import argparse
import time
from pathlib import Path

import torch

from varestorer.presets import get_preset
from varestorer.restorer.swinir import RELEASE_CONFIG, SwinIR
from varestorer.tokenizer.loading import build_vae
from varestorer.transformer.loading import build_transformer
from varestorer.transformer.lora import DEFAULT_TARGETS


def random_like(shapes: dict, dtype: torch.dtype, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(s, generator=g) * 0.02).to(dtype) for k, s in shapes.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--rank", type=int, default=32)
    args = p.parse_args()
    out, dtype = Path(args.out), getattr(torch, args.dtype)
    out.mkdir(parents=True, exist_ok=True)
    preset = get_preset("infinity-2b")
    t0 = time.perf_counter()
    with torch.device("meta"):
        model = build_transformer(preset)
    shapes = {}
    for k, v in model.state_dict().items():
        module, _, kind = k.rpartition(".")
        if module.startswith("block_chunks.") and module.endswith(DEFAULT_TARGETS):
            shapes[f"{module}.linear.{kind}"] = v.shape
            if kind == "weight":
                shapes[f"{module}.lora_down.weight"] = (args.rank, v.shape[1])
                shapes[f"{module}.lora_up.weight"] = (v.shape[0], args.rank)
        else:
            shapes[k] = v.shape
    state = random_like(shapes, dtype)
    for k in state:
        if k.endswith("zero_k_bias"):
            state[k].zero_()
    torch.save(state, out / "varestorer.pth")
    n = sum(v.numel() for v in state.values())
    del state
    print(f"varestorer.pth: {n:,} values ({args.dtype}) in {time.perf_counter() - t0:.0f} s")
    torch.save({"vae": build_vae(preset).state_dict()}, out / "infinity_vae_d32reg.pth")
    swinir = SwinIR(**RELEASE_CONFIG)
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in swinir.state_dict().items()}}, out / "general_swinir_v1.ckpt"
    )
    for f in sorted(out.iterdir()):
        print(f"{f.name}: {f.stat().st_size / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
