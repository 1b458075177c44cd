"""``varestorer app --model DIR_OR_HUB_ID``: a local web app (Gradio) around the pipeline.

Upload one or many images, choose the prompt (BLIP's caption, none, or your text), the method
(those this model can run), the scale, the tiling, the colour fix and the fidelity knob; restore
with progress per image; compare input and output with a before/after slider; download the PNGs
(a zip of them for several). The model loads once, as ``varestorer restore`` loads it (the same
--model, --base, --vae, --text-encoder, --device, --dtype, --offload and caption options).
Serves on http://127.0.0.1:7860 by default (this machine only); ``--host 0.0.0.0`` serves the
local network, ``--share`` also makes a public link through Gradio's servers. Needs Gradio:
``pip install "varestorer[app]"``.
"""

from __future__ import annotations

import argparse

from .options import add_prompt_options, add_running_options, load_pipeline, number

INSTALL_HINT = 'the web app needs Gradio: pip install "varestorer[app]" (or pip install gradio)'


def register(sub) -> None:
    p = sub.add_parser(
        "app",
        help="a local web app: upload images, restore, compare before/after, download",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="export folder or Hub repo id")
    add_prompt_options(p)
    add_running_options(p)
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    g.add_argument("--port", type=number(int, 1, 65535), default=7860, help="port (default 7860)")
    g.add_argument("--share", action="store_true", help="also a public gradio.live link (through Gradio's servers)")
    p.set_defaults(func=run, no_restorer=False)


def run(args: argparse.Namespace) -> int:
    import logging
    import os

    from ..errors import ConfigError

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local app
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests
    try:
        import gradio  # noqa: F401 - only to say how to install it
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    if args.caption not in ("blip", "none"):
        raise ConfigError(f"--caption {args.caption}: the app takes blip or none (type a prompt in the page)")
    import torch

    from ..app import build_app

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = load_pipeline(args, device, ("onestep",))
    demo = build_app(pipe, batch_size=args.batch_size, prompt=args.prompt)
    try:
        _, url, share_url = demo.queue().launch(
            server_name=args.host, server_port=args.port, share=args.share, prevent_thread_lock=True, quiet=True
        )
    except OSError as exc:
        why = "the port is in use" if "empty port" in str(exc) else str(exc)  # Gradio's "Cannot find empty port"
        raise ConfigError(f"cannot serve on {args.host}:{args.port}: {why}; choose another --port") from None
    print(f"varestorer app: serving {args.model} at {url}" + (f" and {share_url}" if share_url else ""))
    print("Ctrl-C stops it", flush=True)
    demo.block_thread()
    return 0
