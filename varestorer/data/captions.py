"""Captions for the training images: BLIP through transformers, or a caption file.

- :class:`BlipCaptioner`: ``Salesforce/blip-image-captioning-large`` by default (the paper's
  captioner), or any BLIP checkpoint (Hub id or local folder); batched, on the GPU when there is
  one (half precision there), greedy decoding, so a caption is a function of the image.
- :class:`CaptionFile`: a JSON-lines file mapping image paths to captions, one object a line,
  either ``{"path": "a/b.jpg", "caption": "..."}`` or ``{"a/b.jpg": "..."}``. Paths are matched
  relative to the source folder (``a/b.jpg``) or absolute.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..outputs import write_text

DEFAULT_BLIP = "Salesforce/blip-image-captioning-large"
#: Seconds to wait for the Hub to answer before loading from the cache alone (without network,
#: huggingface_hub retries each file for minutes).
HUB_PROBE_SECONDS = 5.0


def hub_unreachable(timeout: float = HUB_PROBE_SECONDS) -> str | None:
    """Why the Hugging Face Hub (``HF_ENDPOINT``, or the HTTPS proxy in the environment) cannot be
    reached in ``timeout`` seconds, or None when a TCP connection to it opens."""
    import socket
    import threading
    from urllib.parse import urlparse

    from huggingface_hub import constants

    proxy = next(
        (os.environ[k] for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy") if os.environ.get(k)), None
    )
    url = urlparse(proxy if proxy and "://" in proxy else f"http://{proxy}" if proxy else constants.ENDPOINT)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    result: list = []

    def probe():  # in a thread: a name lookup ignores socket timeouts
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(None)
        except OSError as exc:
            result.append(f"{host}:{port}: {exc.strerror or exc}")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return result[0] if result else f"{host}:{port} did not answer in {timeout:g} s"


class BlipCaptioner:
    """``captioner(images) -> list[str]``: images are PIL images or (H, W, 3) uint8 arrays."""

    def __init__(
        self,
        model: str = DEFAULT_BLIP,
        device: str | None = None,
        batch_size: int = 16,
        max_new_tokens: int = 40,
        prompt: str | None = None,
        dtype=None,
    ):
        import torch
        from transformers import BlipForConditionalGeneration, BlipProcessor

        self.name = str(model)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype is None:
            dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.dtype = dtype
        offline = None  # why the Hub cannot be reached: then the cache alone, at once
        from huggingface_hub import constants

        if not Path(self.name).expanduser().is_dir() and not constants.HF_HUB_OFFLINE:
            offline = hub_unreachable()
        try:
            kw = {"local_files_only": True} if offline else {}
            self.processor = BlipProcessor.from_pretrained(self.name, **kw)
            self.model = BlipForConditionalGeneration.from_pretrained(self.name, dtype=dtype, **kw)
        except (OSError, ValueError) as exc:  # missing files, no network, not a repo id
            if offline:
                raise ConfigError(
                    f"the BLIP captioner {self.name!r} is not in the local Hugging Face cache and the Hub cannot "
                    f"be reached ({offline}). Without network: --caption none (no captions), --caption FILE or "
                    f"--prompt TEXT; or download it where there is network (huggingface-cli download {self.name}) "
                    f"and run with HF_HUB_OFFLINE=1 (the cache alone, no waiting on the network)"
                ) from None
            raise ConfigError(
                f"cannot load the BLIP captioner {self.name!r}: {exc}. Pass a local BLIP folder "
                f"with --caption-model, a caption file with --caption FILE, or --caption none "
                f"(offline: HF_HUB_OFFLINE=1 loads it from the cache without waiting on the network)"
            ) from None
        self.model.to(self.device).eval()
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.prompt = prompt

    def __repr__(self) -> str:
        return f"BlipCaptioner({self.name!r}, device={self.device}, batch_size={self.batch_size})"

    def describe(self) -> str:
        return f"blip:{self.name}" + (f" prompt={self.prompt!r}" if self.prompt else "")

    def _batch(self, images: list) -> list[str]:
        import torch
        from PIL import Image

        pil = [Image.fromarray(im) if isinstance(im, np.ndarray) else im.convert("RGB") for im in images]
        kwargs = {"text": [self.prompt] * len(pil)} if self.prompt else {}
        inputs = self.processor(images=pil, return_tensors="pt", **kwargs)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1)
        return [" ".join(t.split()) for t in self.processor.batch_decode(ids, skip_special_tokens=True)]

    def __call__(self, images: list) -> list[str]:
        out: list[str] = []
        for i in range(0, len(images), self.batch_size):
            out.extend(self._batch(images[i : i + self.batch_size]))
        return out


class CaptionFile:
    """Captions from a JSON-lines file; ``lookup(rel_path, abs_path)`` gives the caption or None.

    A line is ``{"path": ..., "caption": ...}``, ``{path: caption}``, or the released VARestorer's
    split (``data/LSDIR/splits/1.000_000084991.jsonl``): ``{"image_path": ..., "h_div_w": ...,
    "text": ...}``, its caption used as the release's loader uses it (the part before a ``--``).
    ``prefix``: the folder the file's paths start with on the machine that wrote it (the release's
    ``/workspace/LSDIR``); a path under it is read relative to ``root``, the user's copy."""

    def __init__(self, path: str | Path, root: str | Path | None = None, prefix: str | None = None):
        self.path = Path(path)
        self.root = Path(root).resolve() if root is not None else None
        self.prefix = prefix.rstrip("/") + "/" if prefix else None
        self.captions: dict[str, str] = {}
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read the caption file {self.path}: {exc}") from None
        except UnicodeDecodeError as exc:
            line = self.path.read_bytes()[: exc.start].count(b"\n") + 1
            raise ConfigError(
                f"{self.path}:{line}: not UTF-8 (byte {exc.object[exc.start]:#04x}); save the caption "
                f"file as UTF-8 JSON lines"
            ) from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{self.path}:{n}: not a JSON object: {exc.msg}") from None
            if isinstance(obj, dict) and set(obj) >= {"path", "caption"}:
                items = [(obj["path"], obj["caption"])]
            elif isinstance(obj, dict) and set(obj) >= {"image_path", "text"}:  # the release's split
                items = [
                    (obj["image_path"], release_caption(obj["text"]) if isinstance(obj["text"], str) else obj["text"])
                ]
            elif isinstance(obj, dict) and len(obj) == 1:
                items = list(obj.items())
            else:
                raise ConfigError(
                    f'{self.path}:{n}: expected {{"path": ..., "caption": ...}}, {{path: caption}} or the '
                    f'release\'s {{"image_path": ..., "text": ...}}'
                )
            for key, caption in items:
                if not isinstance(caption, str):
                    raise ConfigError(f"{self.path}:{n}: the caption of {key!r} is not a string")
                self.captions[self._key(str(key))] = " ".join(caption.split())

    def _key(self, path: str) -> str:
        if self.prefix is not None and path.startswith(self.prefix):
            return Path(path[len(self.prefix) :]).as_posix()
        p = Path(path)
        if p.is_absolute() and self.root is not None:
            try:
                return p.resolve().relative_to(self.root).as_posix()
            except ValueError:
                return p.resolve().as_posix()
        return Path(path).as_posix().lstrip("./") if path.startswith("./") else Path(path).as_posix()

    def __len__(self) -> int:
        return len(self.captions)

    @functools.cached_property
    def _by_name(self) -> dict[str, str]:
        return {Path(k).name: v for k, v in self.captions.items()}

    def prompts_for(self, paths: list[str | Path]) -> list[str]:
        """The caption of each image to restore, looked up by its path as given, then by its file
        name; an error naming the first image without one."""
        prompts = []
        for path in paths:
            found = self.lookup(str(path), Path(path)) or self._by_name.get(Path(path).name)
            if found is None:
                raise ConfigError(f"{path} has no caption in {self.path}: add a line for it, or pass --caption none")
            prompts.append(found)
        return prompts

    def describe(self) -> str:
        return f"file:{self.path.resolve()}" + (f" prefix={self.prefix}" if self.prefix else "")

    def check_matches(self, sources: list[str], root: Path) -> int:
        """How many of ``sources`` (paths relative to ``root``) have a caption; none while the file has
        captions is an error saying which prefix the file's paths share (a split written elsewhere)."""
        found = sum(self.lookup(p, root / p) is not None for p in sources)
        if found or not self.captions:
            return found
        keys = list(self.captions)
        common = ""
        if all(k.startswith("/") for k in keys):
            common = os.path.commonpath(keys) if len(keys) > 1 else os.path.dirname(keys[0])
        hint = (
            f" Its paths start with {common}: if that folder is {root} on this machine, add --caption-prefix {common}"
            if common
            else " Its paths are relative to the folder of images: check that it is the same folder"
        )
        raise ConfigError(
            f"none of the {len(sources)} images in {root} has a caption in {self.path} "
            f"({len(self.captions)} captions).{hint}"
        )

    def lookup(self, rel_path: str, abs_path: str | Path | None = None) -> str | None:
        found = self.captions.get(Path(rel_path).as_posix())
        if found is None and abs_path is not None:
            found = self.captions.get(Path(abs_path).resolve().as_posix())
        return found


def release_caption(text: str) -> str:
    """The caption the released trainer reads from its split's ``text`` (``process_short_text``:
    the part before ``--`` when that part is not empty)."""
    head = text.split("--")[0]
    return head if "--" in text and head else text


def write_caption_file(path: str | Path, captions: dict[str, str]) -> None:
    """Write ``{path: caption}`` as a caption file (one ``{"path", "caption"}`` object a line)."""
    write_text(
        path, "".join(json.dumps({"path": p, "caption": c}, ensure_ascii=False) + "\n" for p, c in captions.items())
    )
