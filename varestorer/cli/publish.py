"""``varestorer publish DIR --repo-id USER/NAME``: upload an export folder to the Hugging Face Hub.

The model card (``README.md``) is rendered from the folder and validated first; ``--dry-run``
stops there and prints the card's metadata and exactly the files that would be uploaded. The
card's ``license`` is that of what the weights were made from (Infinity-2B's MIT, the small base's
Apache-2.0, ...) unless ``--license`` sets another; its Licences section lists every part with its
own. The token is huggingface_hub's own (``huggingface-cli login``, or ``HF_TOKEN``); it is never
printed.
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
    add_license_options(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def add_license_options(p) -> None:
    """``--license`` (with ``--license-name``/``--license-link`` for ``other``): the weights' licence."""
    p.add_argument(
        "--license",
        default=None,
        metavar="ID",
        help="the weights' licence, a Hub identifier (apache-2.0, mit, cc-by-nc-4.0, ..., or other); "
        "default: the licence of what they were made from",
    )
    p.add_argument(
        "--license-name", default=None, metavar="NAME", help="with --license other: the licence's id (my-license-1.0)"
    )
    p.add_argument(
        "--license-link",
        default=None,
        metavar="URL_OR_FILE",
        help="with --license other: its URL, or a file in the folder (LICENSE)",
    )


def license_choice(args: argparse.Namespace, folder):
    """The licence the options set (checked against the Hub's identifiers), or None."""
    from ..errors import ConfigError
    from ..export.licenses import chosen_license

    if args.license is None:
        if args.license_name or args.license_link:
            raise ConfigError("--license-name and --license-link go with --license other; add it")
        return None
    return chosen_license(args.license, args.license_name, args.license_link, folder)


def run(args: argparse.Namespace) -> int:
    from ..checkpoints import is_hub_id
    from ..errors import ConfigError
    from ..export import find_export, publish

    if not is_hub_id(args.repo_id):
        raise ConfigError(f"--repo-id {args.repo_id!r} must look like USER/NAME")
    folder = find_export(args.folder)
    result = publish(
        folder,
        args.repo_id,
        private=args.private,
        dry_run=args.dry_run,
        commit_message=args.commit_message,
        license=license_choice(args, folder),
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
    print(f"licence of the weights: {result['license']['license']} ({result['license']['why']})")
    for row in result["licenses"]:
        if not row["own"]:
            print(f"  {row['role']}: {row['part']}, {row['licence']} ({row['where']})")
    for note in result["notes"]:
        print(f"note: {note}")
    if args.dry_run:
        print("the card is valid (dry run: nothing was uploaded)")
    else:
        print(f"done: {result['url']}")
    return 0
