"""``varestorer publish DIR --repo-id USER/NAME``: upload an export folder to the Hugging Face Hub.

The model card (``README.md``) is rendered from the folder and validated first; ``--dry-run``
stops there and prints the card's metadata and exactly the files that would be uploaded. The
token is huggingface_hub's own (``huggingface-cli login``, or ``HF_TOKEN``); it is never printed.
"""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser(
        "publish",
        help="upload an export folder (with its model card) to the Hugging Face Hub",
        description=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("folder", help="an export folder (varestorer export), or a run folder / checkpoint")
    p.add_argument("--repo-id", required=True, help="USER/NAME (or ORG/NAME) on the Hub")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--dry-run", action="store_true", help="validate the card and list the files; upload nothing")
    p.add_argument("--commit-message", default="Upload VARestorer model")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoints import is_hub_id
    from ..errors import ConfigError
    from ..export import find_export, publish

    if not is_hub_id(args.repo_id):
        raise ConfigError(f"--repo-id {args.repo_id!r} must look like USER/NAME")
    folder = find_export(args.folder)
    result = publish(
        folder, args.repo_id, private=args.private, dry_run=args.dry_run, commit_message=args.commit_message
    )
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "card"}, indent=2))
        return 0
    what = "would upload" if args.dry_run else "uploaded"
    print(
        f"{what} {len(result['files'])} files ({result['bytes'] / 2**20:.2f} MiB) from {folder} "
        f"to {args.repo_id}{' (private)' if args.private else ''}:"
    )
    for name in result["files"]:
        print(f"  {name}")
    print("card metadata: " + json.dumps(result["card_metadata"]))
    if args.dry_run:
        print("the card is valid (dry run: nothing was uploaded)")
    else:
        print(f"done: {result['url']}")
    return 0
