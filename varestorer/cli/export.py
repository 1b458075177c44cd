"""``varestorer export CHECKPOINT OUT``: the trained model as a folder to share.

CHECKPOINT is a training output folder (its ``final/``, else its latest checkpoint), a
``checkpoint-STEP`` folder or an export folder. OUT receives the LoRA adapter (PEFT format), the
fine-tuned encoder, ``varestorer_config.json``, sample comparisons and the model card
(``README.md``); ``--merge`` adds the base with the LoRA merged in. No pickles.
"""

from __future__ import annotations

import argparse

from .publish import add_license_options, license_choice


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a trained model as a shareable folder (adapter, encoder, card)",
        description=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("checkpoint", help="training output folder, checkpoint-STEP folder or export folder")
    p.add_argument("out", help="the folder to write")
    p.add_argument(
        "--merge",
        action="store_true",
        help="also write merged_transformer.safetensors (base + LoRA, official key layout)",
    )
    p.add_argument(
        "--samples",
        type=int,
        default=4,
        metavar="N",
        help="LQ | restored | HQ comparisons on N sample photos for the card (default 4; 0: none)",
    )
    p.add_argument("--repo-id", default="USER/MODEL", help="the Hub repo the card's usage code names")
    p.add_argument("--base", help="base transformer checkpoint, when not the one the export names")
    p.add_argument("--device", default=None, help="device for --merge and --samples (default: cuda if present)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUT, an export, as a whole (the new export is written beside it and swapped in when complete)",
    )
    add_license_options(p)  # the card's licence; publish renders the card again (pass it there too)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Everything is written into a folder beside OUT and swapped in when complete
    (:func:`~varestorer.export.folder.new_export`): ``--overwrite`` leaves exactly the new export."""
    import torch

    from ..export import MERGED_FILE, export_files, find_export
    from ..export.folder import check_weights, new_export
    from ..export.hub import CARD_FILE, render_card
    from ..outputs import check_output_folder, copy_file

    license = license_choice(args, None)  # checked before any work
    src = find_export(args.checkpoint)
    check_weights(src)  # damaged or diverged weights are refused naming the source file, before anything is written
    out = check_output_folder(args.out, "the export folder")
    with new_export(out, overwrite=args.overwrite, source=src) as tmp:
        for f in export_files(src):
            copy_file(f, tmp / f.name)
        print(f"export of {src} -> {out}")
        if args.merge or args.samples > 0:
            from ..inference import VARestorerPipeline

            device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
            pipe = VARestorerPipeline.from_pretrained(tmp, base=args.base, merge_lora=False).to(device)
            if args.samples > 0:
                from ..inference.compare import write_samples

                for path in write_samples(pipe, tmp, args.samples):
                    print(f"  sample {path.relative_to(tmp)}")
            if args.merge:
                from ..transformer.lora import base_state_dict, is_adapted

                if not is_adapted(pipe.transformer):
                    print("  --merge: this model has no adapter (its transformer is already whole); nothing to merge")
                else:
                    from ..export import save_weights

                    pipe.merge_lora()  # fused: the base layers hold base + LoRA
                    save_weights(base_state_dict(pipe.transformer), tmp / MERGED_FILE)
                    print(f"  {MERGED_FILE}: the base with the LoRA merged in")
        render_card(tmp, args.repo_id, license=license).save(tmp / CARD_FILE)
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        print(f"  {path.relative_to(out)}  ({path.stat().st_size / 2**20:.2f} MiB)")
    same = "".join(f" --{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k.startswith("license") and v)
    print(f"publish it with: varestorer publish {out} --repo-id {args.repo_id}{same}")
    return 0
