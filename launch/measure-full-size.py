"""A user's first steps with Infinity-2B at its real size, each timed with its peak RSS, into one JSON
file and a Markdown table (docs/real-size.md quotes them; issue 34):

    python launch/write-full-size.py FULL                  # random weights in the official layouts
    python launch/measure-full-size.py FULL OUT [--only import restore restore-fast warm train estimate user]

- import: ``varestorer import-release`` of FULL/varestorer.pth (with the VAE and DiffBIR's SwinIR);
- restore: ``varestorer restore`` of one photo to 512x512 with the imported model, FULL/flan-t5-xl and
  FULL/blip-image-captioning-large, from a cold start (loading included): bfloat16 and float32, each
  with and without ``--offload``;
- restore-fast: the same photo in bfloat16, plain and with the CPU speed-ups (``--quantize int8
  --attention-kernel matmul``), one after the other;
- warm: the same restoration in one process, loaded once, called twice (the second call's time);
- train: ``bench train`` of the paper's recipe and of the authors' trainer at batch 1, 256 and
  512 px, gradient checkpointing, bf16 autocast (one step after model building, no FLOP count);
  train-frozen-bf16: the same with the frozen weights held in bf16 (``--frozen-dtype bf16``);
- estimate: ``bench train --device meta`` for the same steps;
- user: the authors' trainer for one step on the import at 512 px (``varestorer train``, bf16
  autocast with the frozen weights in bf16, the real-size T5 folder, the skimage photos),
  ``varestorer export`` of its checkpoint, the export and the trainer's final folder restoring the
  same pixels, and ``varestorer publish --dry-run``.

Each case is its own process: its wall time and peak RSS (``os.wait4``) are its own. A case that
fails (out of memory: killed) is recorded with its exit status; the rest run. Run it on a quiet
machine: every case uses all cores.
"""

import argparse
import itertools
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

V = Path(sys.executable).parent


def run(name: str, cmd: list[str], out: Path, results: dict, env: dict | None = None) -> dict:
    """``cmd`` in its own process; its wall time, peak RSS, exit status and output's tail."""
    log = out / f"{name}.log"
    print(f"{name}: {shlex.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status)
    tail = log.read_text(errors="replace").strip().splitlines()[-3:]
    r = {"command": shlex.join(cmd), "wall_s": round(wall, 1), "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2)}
    r["rc"] = rc
    if rc != 0:
        r["error"] = "killed (out of memory?)" if rc < 0 else (tail[-1] if tail else "no output")
    results[name] = r
    print(f"  {r['wall_s']} s, peak RSS {r['peak_rss_gib']} GiB, rc {rc}", flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return r


def photo(out: Path) -> Path:
    """A 128x128 LQ photo (scikit-image's astronaut, area-downscaled): restored x4 to 512x512."""
    from PIL import Image
    from skimage import data

    path = out / "astronaut-128.png"
    Image.fromarray(data.astronaut()).resize((128, 128), Image.BOX).save(path)
    return path


def warm(args) -> None:
    """In-process: load once, restore twice; print the two calls' seconds as JSON."""
    import torch
    from PIL import Image

    from varestorer.data.captions import BlipCaptioner
    from varestorer.inference.pipeline import VARestorerPipeline

    t0 = time.perf_counter()
    dtype = getattr(torch, args.dtype)  # as `varestorer restore --device cpu --dtype` loads it
    pipe = VARestorerPipeline.from_pretrained(args.model, text_encoder=args.text_encoder, torch_dtype=dtype)
    pipe.to("cpu", dtype)
    if args.fast == "fast":  # what restore --quantize int8 --attention-kernel matmul does
        pipe.quantize("int8")
        pipe.set_attention_kernel("matmul")
    pipe.set_captioner(BlipCaptioner(args.caption_model, device="cpu"), caption_from="restorer")
    load = time.perf_counter() - t0
    image = Image.open(args.image)
    calls = []
    for _ in range(2):
        t = time.perf_counter()
        pipe(image, generator=torch.Generator().manual_seed(0))
        calls.append(time.perf_counter() - t)
    print(json.dumps({"load_s": load, "first_call_s": calls[0], "warm_call_s": calls[1]}))


def main() -> None:  # noqa: C901
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("full", type=Path, help="the folder launch/write-full-size.py wrote")
    p.add_argument("out", type=Path)
    p.add_argument(
        "--only",
        nargs="+",
        default=["import", "restore", "restore-fast", "warm", "estimate", "train", "train-frozen-bf16", "user"],
        help="the groups of cases to run (default: all)",
    )
    p.add_argument("--preset", default="infinity-2b", help="(tiny: a dry run of the bench cases)")
    args = p.parse_args()
    full, out = args.full.resolve(), args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    vr = [str(V / "varestorer")]
    imported = out / "imported"
    t5, blip = full / "flan-t5-xl", full / "blip-image-captioning-large"
    lq = photo(out)
    if "import" in args.only:
        run(
            "import",
            vr
            + ["import-release", str(full / "varestorer.pth"), "-o", str(imported), "--overwrite"]
            + ["--vae", str(full / "infinity_vae_d32reg.pth"), "--restorer", str(full / "general_swinir_v1.ckpt")],
            out,
            results,
        )
        results["import"]["file_gib"] = round((full / "varestorer.pth").stat().st_size / 2**30, 2)
    restore = vr + ["restore", str(lq), "--model", str(imported), "--text-encoder", str(t5)]
    restore += ["--caption-model", str(blip), "--device", "cpu", "--seed", "0", "--overwrite"]
    if "restore" in args.only:
        for dtype in ("bfloat16", "float32"):
            for offload in (False, True):
                name = f"restore-{dtype}" + ("-offload" if offload else "")
                run(name, restore + ["-o", str(out / name), "--dtype", dtype] + ["--offload"] * offload, out, results)
    if "restore-fast" in args.only:  # the CPU speed-ups against plain bfloat16, in one run
        fast = ["--quantize", "int8", "--attention-kernel", "matmul"]
        for name, extra in (("restore-bfloat16-plain", []), ("restore-bfloat16-int8-matmul", fast)):
            run(name, restore + ["-o", str(out / name), "--dtype", "bfloat16", *extra], out, results)
        for kind in ("plain", "fast"):
            cmd = [sys.executable, __file__, "--warm", str(imported), str(t5), str(blip), str(lq), "bfloat16", kind]
            r = run(f"warm-bfloat16-{kind}", cmd, out, results)
            if r["rc"] == 0:
                r.update(json.loads((out / f"warm-bfloat16-{kind}.log").read_text().strip().splitlines()[-1]))
    if "warm" in args.only:
        for dtype in ("bfloat16",):
            cmd = [sys.executable, __file__, "--warm", str(imported), str(t5), str(blip), str(lq), dtype]
            r = run(f"warm-{dtype}", cmd, out, results)
            if r["rc"] == 0:
                r.update(json.loads((out / f"warm-{dtype}.log").read_text().strip().splitlines()[-1]))
    bench = vr + ["bench", "train", "--preset", args.preset, "--batch", "1", "--gradient-checkpointing", "--json"]
    sizes = (256, 512) if args.preset == "infinity-2b" else (32, 64)
    if "estimate" in args.only:
        for res in sizes:
            r = run(f"estimate-{res}", bench + ["--resolution", str(res), "--device", "meta"], out, results)
            if r["rc"] == 0:
                r["estimate"] = _json_tail(out / f"estimate-{res}.log")
                (out / "results.json").write_text(json.dumps(results, indent=2))
    if "train" in args.only or "train-frozen-bf16" in args.only:
        frozen = ("float32",) * ("train" in args.only) + ("bf16",) * ("train-frozen-bf16" in args.only)
        for res, recipe, dtype in itertools.product(
            sizes, ("varestorer-2b-512", "varestorer-2b-512-release-trainer"), frozen
        ):
            name = f"train-{res}-{recipe.removeprefix('varestorer-2b-512').lstrip('-') or 'paper'}"
            name += "-frozen-bf16" if dtype == "bf16" else ""
            cmd = bench + ["--resolution", str(res), "--device", "cpu", "--recipe", recipe, "--frozen-dtype", dtype]
            cmd += ["--mixed-precision", "bf16", "--steps", "1", "--warmup", "0", "--no-flop-count"]
            r = run(name, cmd, out, results)
            if r["rc"] == 0:
                r["bench"] = _json_tail(out / f"{name}.log")
                (out / "results.json").write_text(json.dumps(results, indent=2))
    if "user" in args.only:
        user(vr, full, imported, lq, out, results)
    (out / "results.md").write_text(table(results))
    print(f"wrote {results_file} and {out / 'results.md'}")


def _json_tail(log: Path) -> dict:
    """The JSON object a ``--json`` command printed last (warnings may come before it)."""
    text = log.read_text()
    return json.loads(text[text.rindex("\n{") + 1 if "\n{" in text else text.index("{") :])


def user(vr, full, imported, lq, out, results) -> None:
    """The authors' trainer for one step on the import, its export, the reload, publish --dry-run."""
    run_dir = out / "run"
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run (not a resumed one)
    overrides = [
        f"model.init_from={imported}",
        f"model.text_encoder={full / 'flan-t5-xl'}",
        f"model.restorer={full / 'general_swinir_v1.ckpt'}",
        "data.dataset=skimage",
        "data.use_captions=false",
        "data.num_workers=0",
        "loss.lpips_pretrained=false",
        "train.max_steps=1",
        "train.global_batch_size=1",
        "train.frozen_dtype=bf16",  # the frozen blocks and T5 in bf16: 512 px fits in 24 GiB with the real T5
        "train.validation_steps=1000",
        "train.num_validation_images=1",
        "train.report_to=none",
        f"train.output_dir={run_dir}",
    ]
    cmd = vr + ["train", "--recipe", "varestorer-2b-512-release-trainer", *overrides, "--overwrite"]
    r = run("user-train", cmd, out, results, env={"ACCELERATE_MIXED_PRECISION": "bf16"})  # CPU bf16 autocast
    if r["rc"] != 0:
        return
    export = out / "export"
    run(
        "user-export",
        vr + ["export", str(run_dir / "checkpoint-1"), str(export), "--samples", "0", "--overwrite"],
        out,
        results,
    )
    images = []
    for name, folder in (("final", run_dir / "final"), ("export", export)):
        cmd = vr + ["restore", str(lq), "-o", str(out / f"user-restore-{name}"), "--model", str(folder)]
        cmd += ["--text-encoder", str(full / "flan-t5-xl"), "--prompt", "a photo", "--device", "cpu"]
        cmd += ["--dtype", "bfloat16", "--seed", "0", "--overwrite"]
        run(f"user-restore-{name}", cmd, out, results)
        images.append(out / f"user-restore-{name}" / lq.with_suffix(".png").name)
    results["user-restore-export"]["same_pixels_as_final"] = all(f.exists() for f in images) and _same_pixels(*images)
    run(
        "user-publish-dry-run",
        vr + ["publish", str(export), "--repo-id", "me/varestorer-test", "--dry-run"],
        out,
        results,
    )


def _same_pixels(a: Path, b: Path) -> bool:
    """The decoded images are equal (the PNG files differ by the model folder their metadata names)."""
    import numpy as np
    from PIL import Image

    return np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def table(results: dict) -> str:
    rows = ["| case | wall (s) | peak RSS (GiB) | note |", "|---|---:|---:|---|"]
    for name, r in results.items():
        note = r.get("error", "")
        if "warm_call_s" in r:
            note = f"load {r['load_s']:.0f} s, first call {r['first_call_s']:.1f} s, warm call {r['warm_call_s']:.1f} s"
        if "bench" in r:
            note = f"{r['bench']['sec_per_step']:.1f} s/step, in-process peak {r['bench']['peak_rss_gib']:.2f} GiB"
        if "estimate" in r:
            note = f"estimated peak {r['estimate']['peak_memory_gib']:.2f} GiB (GPU, bf16)"
        if "same_pixels_as_final" in r:
            note = f"the same pixels as the trainer's final folder: {r['same_pixels_as_final']}"
        rows.append(f"| {name} | {r['wall_s']} | {r['peak_rss_gib']} | {note} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--warm":
        warm(
            argparse.Namespace(
                **dict(
                    zip(("model", "text_encoder", "caption_model", "image", "dtype", "fast"), [*sys.argv[2:], "plain"])
                )
            )
        )
    else:
        main()
