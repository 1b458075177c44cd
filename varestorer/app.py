"""A local web app around a loaded :class:`~varestorer.inference.VARestorerPipeline` (Gradio).

    demo = build_app(pipe)          # varestorer app --model DIR_OR_ID does this
    demo.queue().launch()

Upload one or many images, pick where the prompt comes from, the method, the scale, the tiling,
the colour fix and the fidelity knob, and restore: a before/after slider (the input upsampled
bicubic | the restoration), the restored PNGs to download (and a zip of them when there are
several), progress per image. A file that is not a usable image (not an image, truncated, too
large) is named with the reason, as ``varestorer restore`` lists it in ``skipped.tsv``. The app is
a view: the restoring is :func:`restore_uploads`, which the tests call without a browser.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from PIL import Image
from torch import Tensor

from .data.images import ImageSkip, to_uint8
from .errors import ConfigError
from .inference.color import COLOR_FIXES
from .inference.files import read_input
from .inference.pipeline import resize_images
from .methods import METHODS
from .outputs import output_names, save_image

#: The methods the app offers, in its menu's order (the methods' table; ``multistep`` is left out:
#: it samples from the prompt alone and ignores the upload, a cost baseline ``varestorer evaluate`` runs).
METHOD_LABELS = {m.name: m.label for m in METHODS.values() if m.in_app}
#: Where the prompt comes from (``caption`` only when the pipeline has a captioner).
PROMPT_LABELS = {"caption": "automatic caption (BLIP)", "none": "no prompt", "text": "the text below"}
MODE_LABELS = {"auto": "auto (one pass up to the model's size, tiles beyond)", "resize": "one pass", "tile": "tiles"}


@dataclass(frozen=True)
class Settings:
    """What one click restores with (the page's controls)."""

    method: str = "onestep"
    prompt: str | None = ""  # None: the pipeline's captioner
    upscale: float | None = None  # None: the model's
    mode: str = "auto"
    tile_overlap: int | None = None  # None: the pipeline's (a quarter tile)
    color_fix: str | None = None  # None: the model's (pipe.default_color_fix)
    lq_scales: int | None = None  # onestep only; None: the model's
    batch_size: int = 4

    def call_kwargs(self) -> dict:
        kwargs = dict(method=self.method, upscale=self.upscale, mode=self.mode, tile_overlap=self.tile_overlap)
        if "lq_scales" in METHODS[self.method].settings:
            kwargs["lq_scales"] = self.lq_scales
        return dict(kwargs, color_fix=self.color_fix, batch_size=self.batch_size, output_type="pil")


@dataclass(frozen=True)
class Restored:
    """One restored upload: its output name, the two PNGs the slider shows, its prompt and size."""

    name: str
    before: Path
    after: Path
    prompt: str
    size: tuple[int, int]  # (width, height)


def available_methods(pipe) -> list[str]:
    """The methods of :data:`METHOD_LABELS` this model can run (:meth:`VARestorerPipeline.available_methods`)."""
    runs = pipe.available_methods()
    return [m for m in METHOD_LABELS if m in runs]


def prompt_sources(pipe) -> list[str]:
    """The prompt choices of :data:`PROMPT_LABELS` for this model (none when it was trained without prompts)."""
    if not pipe.config.use_captions:
        return []
    return (["caption"] if pipe.captioner is not None else []) + ["none", "text"]


def prompt_of(source: str, text: str) -> str | None:
    """The pipeline's ``prompt``: ``None`` (caption it), ``""`` (none) or the text."""
    return None if source == "caption" else (text or "").strip() if source == "text" else ""


def read_upload(pipe, path: str | Path, upscale: float | None) -> Tensor:
    """(3, H, W) of an uploaded file; :class:`ImageSkip` or :class:`ConfigError` saying why not
    (the declared size is checked against the largest output before any pixel is decoded)."""
    return read_input(path, upscale or pipe.upscale)


def upload_names(paths: Sequence[str | Path]) -> list[str]:
    """The PNG name of each upload: its own name (``photo.jpg`` -> ``photo.png``), numbered when
    two uploads share a name."""
    names = [Path(p).name for p in paths]
    count = Counter(names)
    rels = [n if count[n] == 1 else f"{i + 1}-{n}" for i, n in enumerate(names)]
    return [str(p) for p in output_names(rels, "png")]


def restore_uploads(
    pipe, paths: Sequence[str | Path], settings: Settings, folder: Path, progress: Callable | None = None
) -> tuple[list[Restored], list[str]]:
    """Restore each file into ``folder``: ``(restored, skipped)``, ``skipped`` one ``"name: why"``
    per file that is not a usable image. ``progress(fraction, text)`` is called before each file."""
    done, skipped = [], []
    for i, (path, name) in enumerate(zip(paths, upload_names(paths))):
        if progress is not None:
            progress(i / len(paths), f"image {i + 1}/{len(paths)}: {Path(path).name}")
        try:
            image = read_upload(pipe, path, settings.upscale)
        except (ImageSkip, ConfigError) as exc:
            skipped.append(f"{Path(path).name}: {exc}")
            continue
        done.append(_restore_one(pipe, image, settings, folder, name))
    return done, skipped


def _restore_one(pipe, image, settings: Settings, folder: Path, name: str) -> Restored:
    out = pipe([image], prompt=settings.prompt, **settings.call_kwargs())
    restored = out.images[0]
    before = resize_images(image[None], (restored.height, restored.width))[0]
    (folder / "input").mkdir(parents=True, exist_ok=True)
    after = save_image(restored, folder / name)
    before_path = save_image(Image.fromarray(to_uint8(before)), folder / "input" / name)
    return Restored(name, before_path, after, out.prompts[0], restored.size)


def zip_outputs(restored: Sequence[Restored], path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:  # PNGs are compressed already
        for r in restored:
            z.write(r.after, r.name)
    return path


def summary(restored: Sequence[Restored], skipped: Sequence[str], settings: Settings, seconds: float) -> str:
    """The status under the results (Markdown): what was done, with which settings, and each output."""
    how = f"**{settings.method}**, colour fix {settings.color_fix or 'the default'}"
    if settings.method == "onestep" and settings.lq_scales is not None:
        how += f", {settings.lq_scales} coarsest scale(s) from the input"
    lines = [f"Restored {len(restored)} image(s) with {how} in {seconds:.1f} s."]
    lines += [
        f"- `{r.name}` {r.size[0]}x{r.size[1]}" + (f", prompt: *{r.prompt}*" if r.prompt else "") for r in restored
    ]
    lines += [f"- skipped {s}" for s in skipped]
    return "\n".join(lines)


# ---------------------------------------------------------------------- the page
def build_app(pipe, *, batch_size: int = 4, prompt: str | None = None, title: str = "VARestorer") -> gr.Blocks:
    """The Gradio page around ``pipe``. ``prompt``: the prompt control's start (``None``: caption
    when the pipeline has a captioner, else no prompt; ``""``: no prompt; text: that text)."""
    work = Path(tempfile.mkdtemp(prefix="varestorer-app-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f"# {title}\n{_model_line(pipe)}")
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                controls = _controls(pipe, prompt)
            with gr.Column(scale=3):
                slider = gr.ImageSlider(
                    label="before (input, bicubic) | after (restored)", type="filepath", elem_id="compare"
                )
                gallery = gr.Gallery(
                    label="restored (click one to compare it)",
                    columns=4,
                    height=240,
                    object_fit="contain",
                    allow_preview=False,
                    visible=False,
                    elem_id="gallery",
                )
                files = gr.File(label="download (PNG)", file_count="multiple", elem_id="downloads")
                status = gr.Markdown(elem_id="status")
        pairs = gr.State([])
        restore = _restore_handler(pipe, work, batch_size)
        controls.pop("button").click(
            restore, inputs=list(controls.values()), outputs=[slider, gallery, files, status, pairs]
        )
        gallery.select(_pick, inputs=pairs, outputs=slider)
        controls["method"].change(
            lambda m: gr.update(visible=m == "onestep"), controls["method"], controls["lq_scales"]
        )
    return demo


def _model_line(pipe) -> str:
    c = pipe.config
    restorer = ", a stage-1 restorer in front" if pipe.stage1 is not None else ""
    prompts = "trained with captions" if c.use_captions else "trained without prompts"
    return (
        f"Model `{pipe.source or '?'}`: {c.mode}, {pipe.resolution} px, x{pipe.upscale:g}, "
        f"{len(pipe.schedule)} scales{restorer}; {prompts}. Runs on {pipe.device}."
    )


def _controls(pipe, prompt: str | None) -> dict:
    """The input components, in the order the restore handler takes them (and the button)."""
    c = {"files": gr.File(label="images (one or many)", file_count="multiple", file_types=["image"], elem_id="upload")}
    c["button"] = gr.Button("Restore", variant="primary", elem_id="restore")
    sources = prompt_sources(pipe)
    start = "text" if prompt else "none" if prompt == "" or "caption" not in sources else "caption"
    c["prompt_source"] = gr.Radio(
        [(PROMPT_LABELS[s], s) for s in sources] or [("no prompt (this model takes none)", "none")],
        value=start if sources else "none",
        label="prompt",
        interactive=bool(sources),
    )
    c["prompt_text"] = gr.Textbox(value=prompt or "", label="prompt text", lines=2, visible=bool(sources))
    methods = available_methods(pipe)
    c["method"] = gr.Dropdown([(METHOD_LABELS[m], m) for m in methods], value=methods[0], label="method")
    with gr.Accordion("size and tiles", open=True):
        c["upscale"] = gr.Slider(1, 8, value=pipe.upscale, step=0.5, label="scale (output / input size)")
        c["mode"] = gr.Radio([(v, k) for k, v in MODE_LABELS.items()], value="auto", label="tiling")
        R = pipe.resolution
        c["tile_overlap"] = gr.Slider(0, R - 1, value=R // 4, step=1, label=f"tile overlap (px of a {R} px tile)")
    with gr.Accordion("colour and fidelity", open=True):
        c["color_fix"] = gr.Radio(
            list(COLOR_FIXES), value=pipe.default_color_fix, label="colour fix (against the input)"
        )
        K = len(pipe.schedule)
        c["lq_scales"] = gr.Slider(
            0,
            K,
            value=pipe.config.keep_lq_scales,
            step=1,
            label=f"fidelity: coarsest scales kept from the input (0-{K}; more: closer to the input)",
            visible=methods[0] == "onestep",
        )
    return c


def _restore_handler(pipe, work: Path, batch_size: int):
    def restore(
        files, prompt_source, prompt_text, method, upscale, mode, overlap, color_fix, lq_scales, progress=gr.Progress()
    ):
        if not files:
            raise gr.Error("Upload one or more images first.")
        settings = Settings(
            method=method,
            prompt=prompt_of(prompt_source, prompt_text),
            upscale=float(upscale),
            mode=mode,
            tile_overlap=int(overlap),
            color_fix=color_fix,
            lq_scales=int(lq_scales),
            batch_size=batch_size,
        )
        started = time.perf_counter()
        try:
            done, skipped = restore_uploads(
                pipe, files, settings, _new_run(work), lambda f, text: progress(f, desc=text)
            )
        except ConfigError as exc:
            raise gr.Error(str(exc)) from None
        if not done:
            raise gr.Error("No image could be restored:\n" + "\n".join(skipped))
        for s in skipped:
            gr.Warning(f"Skipped {s}")
        downloads = [str(r.after) for r in done]
        if len(done) > 1:
            downloads.append(str(zip_outputs(done, done[0].after.parent / "restored.zip")))
        pairs = [(str(r.before), str(r.after)) for r in done]
        text = summary(done, skipped, settings, time.perf_counter() - started)
        gallery = gr.update(value=[(str(r.after), r.name) for r in done], visible=len(done) > 1)
        return pairs[0], gallery, downloads, text, pairs

    return restore


def _pick(pairs, evt: gr.SelectData):
    return pairs[evt.index]


def _new_run(work: Path) -> Path:
    """A fresh folder for one click's files; the earlier clicks' go (Gradio has copied them by now)."""
    for old in work.iterdir():
        shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=work))
