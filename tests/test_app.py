"""``varestorer app``: the web app's restoring is the pipeline's, its menus are the model's, bad
uploads are named; and in a real browser (Debian's chromium, driven headless by Playwright) an
uploaded photo comes back restored, with a screenshot of the page for a person to look at."""

import copy
import dataclasses
import importlib.util
import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import exported_student
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
#: Chromium on a machine without network: no background connections, no first-run work.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    return pytest.importorskip("gradio", reason='the web app needs Gradio: pip install "varestorer[app]"')


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    from varestorer.inference import VARestorerPipeline

    return VARestorerPipeline.from_pretrained(exported_student(tmp_path_factory.mktemp("app"))[1])


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A real photo (scikit-image's astronaut) at 24 px: the tiny model (64 px tiles) upscales it 4x in four tiles."""
    from skimage import data

    path = tmp_path_factory.mktemp("uploads") / "astronaut.png"
    Image.fromarray(data.astronaut()).resize((24, 24), Image.LANCZOS).save(path)
    return path


@pytest.fixture(scope="module")
def not_an_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("uploads") / "notes.png"
    path.write_text("shopping list: milk, eggs\n")
    return path


def _handler(pipe, tmp_path):
    from varestorer.app import _restore_handler

    return _restore_handler(pipe, tmp_path, 4)


def _no_progress(*args, **kwargs):
    pass


def _settings(pipe, method="onestep"):
    """The handler's arguments after the files: the page's start values."""
    from varestorer.inference.color import DEFAULT_COLOR_FIX

    return ["none", "", method, 4.0, "auto", pipe.resolution // 4, DEFAULT_COLOR_FIX, pipe.config.keep_lq_scales]


def test_restoring_through_the_app_gives_the_pipelines_image(gradio, pipe, photo, tmp_path):
    slider, gallery, files, status, pairs = _handler(pipe, tmp_path)([str(photo)], *_settings(pipe), _no_progress)
    direct = pipe(str(photo), prompt="", method="onestep").images[0]
    got = Image.open(slider[1])
    assert got.size == direct.size == (96, 96)
    assert np.array_equal(np.array(got), np.array(direct))
    before = Image.open(slider[0])  # the slider's left: the input upsampled to the output's size
    assert before.size == got.size
    assert [Path(f).name for f in files] == ["astronaut.png"]
    assert "astronaut.png" in status and "96x96" in status


def test_many_uploads_give_one_png_each_and_a_zip(gradio, pipe, photo, tmp_path):
    import zipfile

    other = tmp_path / "astronaut.jpg"
    Image.open(photo).save(other)
    (tmp_path / "work").mkdir()
    calls = []
    _, gallery, files, _, pairs = _handler(pipe, tmp_path / "work")(
        [str(photo), str(other)], *_settings(pipe), lambda f, desc: calls.append((f, desc))
    )
    assert calls == [(0.0, "image 1/2: astronaut.png"), (0.5, "image 2/2: astronaut.jpg")]  # progress per image
    names = [Path(f).name for f in files]
    assert names == ["astronaut.png", "astronaut.jpg.png", "restored.zip"]  # the names restore gives
    assert len(gallery["value"]) == len(pairs) == 2 and gallery["visible"]
    assert sorted(zipfile.ZipFile(files[-1]).namelist()) == sorted(names[:2])


def test_a_file_that_is_not_an_image_is_named_with_the_reason(gradio, pipe, not_an_image, tmp_path):
    with pytest.raises(gradio.Error, match="notes.png: not an image"):
        _handler(pipe, tmp_path)([str(not_an_image)], *_settings(pipe), _no_progress)


def test_a_truncated_or_too_large_upload_is_named_and_the_good_ones_restored(gradio, pipe, photo, tmp_path):
    from varestorer.app import Settings, restore_uploads

    truncated = tmp_path / "cut.png"
    truncated.write_bytes(photo.read_bytes()[:200])
    huge = tmp_path / "huge.png"
    Image.new("RGB", (2100, 2100)).save(huge)  # 8400x8400 at 4x: more than the pipeline makes
    done, skipped = restore_uploads(pipe, [truncated, huge, photo], Settings(), tmp_path / "out")
    assert [r.name for r in done] == ["astronaut.png"]
    assert skipped[0].startswith("cut.png: truncated or corrupt")
    assert skipped[1].startswith("huge.png: too large") and "lower --upscale" in skipped[1]


def test_the_method_menu_offers_what_the_model_can_run(gradio, pipe):
    from varestorer.app import available_methods

    assert available_methods(pipe) == ["onestep", "bicubic", "zeroshot", "guided"]  # adapter apart, no restorer
    with_restorer = copy.copy(pipe)
    with_restorer.stage1 = torch.nn.Identity()
    assert "restorer" in available_methods(with_restorer)
    varsr = copy.copy(pipe)
    varsr.config = dataclasses.replace(pipe.config, mode="varsr")
    assert available_methods(varsr) == ["bicubic", "zeroshot", "guided", "varsr"]


def test_the_prompt_choices_follow_the_model_and_its_captioner(gradio, pipe):
    from varestorer.app import prompt_of, prompt_sources

    assert prompt_sources(pipe) == ["none", "text"]  # no captioner loaded
    captioned = copy.copy(pipe).set_captioner(lambda images: ["a photo"] * len(images))
    assert prompt_sources(captioned) == ["caption", "none", "text"]
    no_prompts = copy.copy(pipe)
    no_prompts.config = dataclasses.replace(pipe.config, use_captions=False)
    assert prompt_sources(no_prompts) == []
    assert (prompt_of("caption", "x"), prompt_of("none", "x"), prompt_of("text", " a cat ")) == (None, "", "a cat")


def test_the_app_command_without_gradio_says_how_to_install_it(monkeypatch, capsys, tmp_path):
    from varestorer.cli import main

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio raises ImportError
    assert main(["app", "--model", str(tmp_path)]) == 2
    assert 'pip install "varestorer[app]"' in capsys.readouterr().err


def test_the_app_command_on_a_port_in_use_says_so(gradio, pipe, monkeypatch, capsys):
    import varestorer.cli.app
    from varestorer.cli import main

    monkeypatch.setattr(varestorer.cli.app, "load_pipeline", lambda *args: pipe)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["app", "--model", "m", "--caption", "none", "--port", str(port)]) == 2
    assert f"cannot serve on 127.0.0.1:{port}: the port is in use; choose another --port" in capsys.readouterr().err


def test_the_app_command_refuses_a_caption_file(gradio, capsys, tmp_path):
    from varestorer.cli import main

    assert main(["app", "--model", str(tmp_path), "--caption", str(tmp_path / "captions.jsonl")]) == 2
    assert "the app takes blip or none" in capsys.readouterr().err


# ---------------------------------------------------------------------- in a real browser
def _browser_or_skip():
    missing = [f"{CHROMIUM} (apt-get install chromium)"] if not Path(CHROMIUM).exists() else []
    if importlib.util.find_spec("playwright") is None:
        missing.append("the playwright package (pip install playwright; no browser download)")
    if missing:
        why = "the browser test needs " + " and ".join(missing)
        if os.environ.get("VARESTORER_REQUIRE_BROWSER") == "1":
            pytest.fail(why + " (VARESTORER_REQUIRE_BROWSER=1)")
        pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser_page(gradio, pipe):
    """``new_page()``: a fresh page of the app (serving the tiny student) in headless chromium."""
    _browser_or_skip()
    from playwright.sync_api import sync_playwright

    from varestorer.app import build_app

    demo = build_app(pipe)
    _, url, _ = demo.queue().launch(
        server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True
    )
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)

        def new_page():
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page.locator("#upload").wait_for(timeout=30_000)
            return page

        yield new_page
        browser.close()
    demo.close()


def _upload(page, path: Path) -> None:
    page.locator("#upload input[type=file]").set_input_files(str(path))
    page.locator("#upload").get_by_label(path.name).first.wait_for(timeout=30_000)  # uploaded
    page.locator("#restore").click()


def _screenshot(page, name: str, full_page: bool = True) -> Path:
    folder = Path(os.environ.get("VARESTORER_SCREENSHOTS") or REPO / "outputs" / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=folder / name, full_page=full_page)
    print(f"screenshot: {folder / name}")
    return folder / name


def test_a_photo_uploaded_in_the_browser_comes_back_restored(browser_page, photo):
    page = browser_page()
    _upload(page, photo)
    page.wait_for_function(
        "() => { const ims = [...document.querySelectorAll('#compare img')];"
        " return ims.length >= 2 && ims.every(im => im.complete && im.naturalWidth > 0) }",
        timeout=60_000,
    )
    sizes = page.eval_on_selector_all("#compare img", "ims => ims.map(im => [im.naturalWidth, im.naturalHeight])")
    assert [96, 96] in sizes  # 4x the 24 px upload
    page.locator("#status").get_by_text("Restored 1 image").wait_for(timeout=10_000)
    page.locator("#downloads").get_by_label("astronaut.png").first.wait_for(timeout=10_000)
    assert _screenshot(page, "app.png").stat().st_size > 0


def test_a_bad_upload_in_the_browser_shows_why(browser_page, not_an_image):
    page = browser_page()
    _upload(page, not_an_image)
    page.get_by_text("notes.png: not an image").first.wait_for(timeout=30_000)
    page.wait_for_timeout(500)  # the toast slides in
    assert _screenshot(page, "app-bad-upload.png", full_page=False).stat().st_size > 0
