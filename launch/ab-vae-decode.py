"""The VAE decode of the 2B's one-step pass at 512 px on a CPU, before and after it ran in bfloat16
(channels-last) as the released VARestorer decodes, timed in one process, alternating.

    python launch/ab-vae-decode.py [ROUNDS]

"before": the decoder in float32 (contiguous weights), as the pipeline decoded until 2026-12-07;
"after": :meth:`VARestorerPipeline.decode_latent` as it is. Both with the CPU speed-ups
(``--attention-kernel matmul --quantize int8``), random weights, one 512 px image. Prints the
seconds of each pass and the PSNR between the two outputs (random weights: any rounding flips bits,
so this is not the quality cost; docs/real-size.md measures that on the trained small model).
"""

import sys
import time

import torch

from varestorer.inference import VARestorerPipeline
from varestorer.inference.bench import build_random_pipeline


def decode_in_float32(pipe, latent):
    pipe._use("decode")
    return (pipe.vae.decode_latent(latent.float()).float() + 1) / 2


def main(rounds: int = 3) -> None:
    pipe = build_random_pipeline("infinity-2b", 512, torch.device("cpu"))
    pipe.to("cpu", torch.bfloat16).merge_lora()
    pipe.set_attention_kernel("matmul").quantize("int8")
    x = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(0))
    restore = pipe.restore_fn("onestep")
    after = VARestorerPipeline.decode_latent
    layouts = {"before": torch.contiguous_format, "after": torch.channels_last}
    restore(x, ["a photo"])  # warm-up
    outs, times = {}, {name: [] for name in layouts}
    for _ in range(rounds):
        for name, layout in layouts.items():
            VARestorerPipeline.decode_latent = decode_in_float32 if name == "before" else after
            pipe.vae.decoder.to(memory_format=layout)
            t = time.perf_counter()
            outs[name] = restore(x, ["a photo"])
            times[name].append(time.perf_counter() - t)
            print(f"{name:6s} {times[name][-1]:6.2f} s", flush=True)
    VARestorerPipeline.decode_latent = after
    mse = (outs["before"].float() - outs["after"].float()).pow(2).mean()
    for name, ts in times.items():
        print(f"{name}: {' / '.join(f'{t:.1f}' for t in ts)} s (mean {sum(ts) / len(ts):.1f} s)")
    print(f"PSNR after vs before: {10 * torch.log10(1 / mse).item():.1f} dB")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
