"""``varestorer prepare``: every kind of bad input converted or skipped (and reported), a dataset
``datasets`` loads and streams, resumability after an interruption, the training loader."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from varestorer.data.images import ImageSkip, read_rgb
from varestorer.data.prepare import prepare_dataset
from varestorer.errors import ConfigError


def photo(name, size=None):
    from skimage import data

    im = np.asarray(getattr(data, name)())
    if size is not None:
        im = np.asarray(Image.fromarray(im).resize(size, Image.Resampling.BILINEAR))
    return im


def quadrants(w=120, h=80):
    """An image whose top-left quadrant is red, the rest blue (to see where a rotation put it)."""
    a = np.zeros((h, w, 3), np.uint8)
    a[...] = (0, 0, 255)
    a[: h // 2, : w // 2] = (255, 0, 0)
    return a


def make_bad_input_folder(root):
    """Every case of the issue's bad-input matrix; returns {relative path: expected reason or None}."""
    (root / "nested" / "deeper").mkdir(parents=True)
    expected = {}

    def save(rel, im, reason=None, **kw):
        Image.fromarray(im).save(root / rel, **kw) if isinstance(im, np.ndarray) else im.save(root / rel, **kw)
        expected[rel] = reason

    save("good.jpg", photo("astronaut", (120, 100)), quality=95)
    save("nested/cat.png", photo("chelsea", (110, 90)))
    save("nested/deeper/coffee.webp", photo("coffee", (100, 100)), quality=95)
    # truncated JPEG
    buf = io.BytesIO()
    Image.fromarray(photo("rocket", (120, 100))).save(buf, format="JPEG", quality=95)
    (root / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    expected["truncated.jpg"] = "truncated or corrupt"
    (root / "zero.png").write_bytes(b"")
    expected["zero.png"] = "empty file"
    (root / "text.jpg").write_text("this is not an image\n")
    expected["text.jpg"] = "not an image"
    save("cmyk.jpg", Image.new("CMYK", (100, 90), (0, 255, 0, 0)), quality=95)  # magenta
    save("gray.png", Image.fromarray(photo("camera", (100, 100))))
    pal = Image.fromarray(photo("coffee", (100, 80))).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    save("palette.png", pal)
    rgba = np.zeros((90, 100, 4), np.uint8)
    rgba[..., 1] = 200
    rgba[:, :50, 3] = 255  # left half opaque green, right half transparent
    save("rgba.png", Image.fromarray(rgba, "RGBA"))
    g16 = np.full((80, 100), 32768, np.uint16)
    save("gray16.png", Image.fromarray(g16))
    import cv2

    rgb16 = np.zeros((80, 100, 3), np.uint16)
    rgb16[..., 2] = 65535  # cv2 is BGR: a red image
    cv2.imwrite(str(root / "rgb16.png"), rgb16)
    expected["rgb16.png"] = None
    save("tiny.png", photo("astronaut", (20, 20)), reason="too small")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    save("rotated.jpg", quadrants(), exif=exif, quality=95)
    (root / "notes.txt").write_text("not an image name: not even looked at")
    return expected


# ---------------------------------------------------------------------------------- conversions
def test_read_rgb_converts_every_mode(tmp_path):
    make_bad_input_folder(tmp_path)
    cmyk = read_rgb(tmp_path / "cmyk.jpg")
    assert cmyk.shape == (90, 100, 3) and np.abs(cmyk[45, 50].astype(int) - (255, 0, 255)).max() < 16
    gray = read_rgb(tmp_path / "gray.png")
    assert gray.shape == (100, 100, 3) and (gray[..., 0] == gray[..., 2]).all()
    assert read_rgb(tmp_path / "palette.png").shape == (80, 100, 3)
    rgba = read_rgb(tmp_path / "rgba.png")
    assert tuple(rgba[10, 10]) == (0, 200, 0) and tuple(rgba[10, 90]) == (255, 255, 255)  # over white
    g16 = read_rgb(tmp_path / "gray16.png")
    assert g16.dtype == np.uint8 and abs(int(g16[5, 5, 0]) - 128) <= 1  # scaled, not clipped to 255
    rgb16 = read_rgb(tmp_path / "rgb16.png")
    assert tuple(rgb16[5, 5]) == (255, 0, 0)
    rot = read_rgb(tmp_path / "rotated.jpg")
    assert rot.shape == (120, 80, 3)  # EXIF orientation applied: portrait
    # the red top-left quadrant is now top-right (rotated 90 degrees clockwise)
    assert rot[10, 70, 0] > 200 and rot[10, 70, 2] < 60 and rot[10, 10, 2] > 200
    for name, reason in (
        ("truncated.jpg", "truncated or corrupt"),
        ("zero.png", "empty file"),
        ("text.jpg", "not an image"),
    ):
        with pytest.raises(ImageSkip) as e:
            read_rgb(tmp_path / name)
        assert e.value.reason == reason


def test_bad_inputs_are_converted_or_skipped_and_reported(tmp_path, capsys):
    import datasets

    from varestorer.cli import main

    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    expected = make_bad_input_folder(src)
    assert (
        main(
            [
                "prepare",
                str(src),
                str(out),
                "--size",
                "64",
                "--caption",
                "none",
                "--workers",
                "0",
                "--shard-size",
                "5",
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    skipped = {k: v for k, v in expected.items() if v}
    kept = sorted(k for k, v in expected.items() if not v)
    assert f"skipped {len(skipped)} files" in printed
    for reason in set(skipped.values()):
        assert f"1 {reason}" in printed
    listed = [line.split("\t") for line in (out / "skipped.tsv").read_text().splitlines()[1:]]
    assert {p: r for p, r, _ in listed} == skipped
    ds = datasets.load_from_disk(str(out))
    assert sorted(ds["path"]) == kept  # every convertible image once, nothing else
    for row in ds:
        assert row["image"].mode == "RGB" and row["image"].size == (64, 64)
        left, top, w, h = row["crop"]
        assert (w, h) == (64, 64) and left >= 0 and top >= 0
    rot = ds[ds["path"].index("rotated.jpg")]
    assert rot["crop"][0] + 64 <= 80 and rot["crop"][1] + 64 <= 120  # cropped from the oriented 80x120 image


# -------------------------------------------------------------------------------- resumability
def make_photo_folder(root, n=9):
    names = [
        "astronaut",
        "chelsea",
        "coffee",
        "rocket",
        "hubble_deep_field",
        "immunohistochemistry",
        "retina",
        "camera",
        "brick",
    ]
    for i in range(n):
        sub = root / f"part{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo(names[i], (96 + 4 * i, 80 + 2 * i))).save(sub / f"{names[i]}.png")
    (root / "part0" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    captions = {f"part{i % 3}/{names[i]}.png": f"caption of {names[i]}" for i in range(n - 1)}  # last one missing
    cap = root.parent / "captions.jsonl"
    cap.write_text("".join(json.dumps({"path": p, "caption": c}) + "\n" for p, c in captions.items()))
    return cap, captions


def rows(path):
    import datasets

    ds = datasets.load_from_disk(str(path))
    return [(r["path"], tuple(r["crop"]), r["caption"], r["image"].tobytes()) for r in ds]


class Interrupt(Exception):
    pass


def test_prepare_resumes_after_an_interruption(tmp_path):
    src = tmp_path / "src"
    cap, captions = make_photo_folder(src)
    kw = dict(size=64, crops=2, caption=str(cap), shard_size=2, progress=False)

    clean = prepare_dataset(src, tmp_path / "clean", workers=2, **kw)  # the reference, with worker processes
    assert clean.images == 2 * 9 and clean.shards == 5 and len(clean.skipped) == 1
    assert clean.missing_captions == 2  # one image without a caption, two crops
    reference = rows(tmp_path / "clean")
    assert len(reference) == 18 and len(set(reference)) == 18

    out = tmp_path / "out"

    def stop_after_two(k):
        if k == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        prepare_dataset(src, out, on_shard=stop_after_two, **kw)
    partial = rows(out)  # what was finished is a loadable dataset already
    assert partial == reference[: len(partial)] and 0 < len(partial) < 18
    # a crash between writing shard 2 and recording it, and a half-written temporary file
    (out / "data-00002.arrow").write_bytes((tmp_path / "clean" / "data-00002.arrow").read_bytes())
    (out / ".data-00003.arrow.tmp").write_bytes(b"half a shard")

    resumed = prepare_dataset(src, out, **kw)
    assert resumed.shards_resumed == 2
    assert rows(out) == reference  # same rows, same order, nothing duplicated
    assert len(resumed.skipped) == 1 and resumed.images == 18
    # a third run has nothing left to do
    again = prepare_dataset(src, out, **kw)
    assert again.shards_resumed == 5 and rows(out) == reference
    # other settings into the same folder are refused; --overwrite starts again
    with pytest.raises(ConfigError, match="size"):
        prepare_dataset(src, out, **dict(kw, size=48))
    prepare_dataset(src, out, overwrite=True, **dict(kw, size=48, crops=1))
    assert len(rows(out)) == 9


def test_prepared_dataset_captions_loader_and_streaming(tmp_path):
    import datasets
    from torch.utils.data import DataLoader

    from varestorer.data.dataset import PreparedDataset, iter_prepared
    from varestorer.distill.dataloader import collate

    src = tmp_path / "src"
    cap, captions = make_photo_folder(src, n=4)
    out = tmp_path / "out"
    prepare_dataset(src, out, size=72, mode="short-side", caption=str(cap), shard_size=3, progress=False)
    ds = datasets.load_from_disk(str(out))
    assert len(ds) == 4
    for r in ds:  # captions read back from the dataset
        assert r["caption"] == captions.get(r["path"], "")
        assert min(r["image"].size) == 72  # short side resized, aspect kept
    streamed = list(datasets.load_dataset("arrow", data_files=str(out / "data-*.arrow"), split="train", streaming=True))
    assert [r["path"] for r in streamed] == ds["path"]

    train = PreparedDataset(out, size=64, random_crop=True, seed=3)
    item = train[1]
    assert item["pixel_values"].shape == (3, 64, 64) and item["caption"] == ds[1]["caption"]
    assert 0 <= item["pixel_values"].min() and item["pixel_values"].max() <= 1
    assert torch.equal(train[1]["pixel_values"], item["pixel_values"])  # a function of (seed, epoch, index)
    crops = {train[(epoch, 0)]["pixel_values"].sum().item() for epoch in range(4)}
    assert len(crops) > 1  # the random crop moves between epochs
    center = PreparedDataset(out, size=64, random_crop=False)
    first = center[2]["pixel_values"]  # the centre crop does not move with the epoch, and it is the centre
    assert torch.equal(center[(5, 2)]["pixel_values"], first)
    stored = np.asarray(ds[2]["image"].convert("RGB"), dtype=np.float32) / 255
    top, left = (stored.shape[0] - 64) // 2, (stored.shape[1] - 64) // 2
    torch.testing.assert_close(
        first, torch.from_numpy(stored[top : top + 64, left : left + 64]).permute(2, 0, 1), rtol=0, atol=1e-6
    )
    batch = next(iter(DataLoader(train, batch_size=2, collate_fn=collate)))
    assert batch["pixel_values"].shape == (2, 3, 64, 64) and len(batch["caption"]) == 2
    pairs = list(iter_prepared(out, size=64, random_crop=False))
    assert len(pairs) == 4 and pairs[0][0].shape == (3, 64, 64) and isinstance(pairs[0][1], str)


def test_prepare_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="not a folder"):
        prepare_dataset(tmp_path / "missing", tmp_path / "out", progress=False)
    (tmp_path / "src").mkdir()
    with pytest.raises(ConfigError, match="mode"):
        prepare_dataset(tmp_path / "src", tmp_path / "out", mode="squash", progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"path": "a.png", "caption": "x"}\nnot json\n')
    with pytest.raises(ConfigError, match="bad.jsonl:2"):
        prepare_dataset(tmp_path / "src", tmp_path / "out", caption=str(bad), progress=False)
    from varestorer.data.dataset import PreparedDataset

    with pytest.raises(ConfigError, match="not a dataset"):
        PreparedDataset(tmp_path / "src")


def test_the_released_split_prepares_with_the_authors_captions_from_a_users_lsdir_folder(tmp_path):
    """The release's data/LSDIR/splits/1.000_000084991.jsonl: absolute paths of the authors' machine
    (/workspace/LSDIR/...), read as the user's LSDIR folder with --caption-prefix; the captions as the
    release's loader reads them (the part before ``--``)."""
    import datasets

    src = tmp_path / "LSDIR"
    (src / "0001000").mkdir(parents=True)
    for i, name in enumerate(("astronaut", "coffee", "chelsea")):
        Image.fromarray(photo(name, (96, 80))).save(src / "0001000" / f"000000{i + 1}.png")
    split = tmp_path / "1.000_000000003.jsonl"
    lines = [
        {"image_path": "/workspace/LSDIR/0001000/0000001.png", "h_div_w": 1.0, "text": "a woman in a space suit"},
        {"image_path": "/workspace/LSDIR/0001000/0000002.png", "h_div_w": 1.0, "text": "a cup of coffee--extra"},
        {"image_path": "/workspace/LSDIR/0001000/0000003.png", "h_div_w": 1.0, "text": "a cat"},
    ]
    split.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="--caption-prefix /workspace/LSDIR"):
        prepare_dataset(src, out, size=64, mode="resize", caption=str(split), progress=False)
    report = prepare_dataset(
        src, out, size=64, mode="resize", caption=str(split), caption_prefix="/workspace/LSDIR", progress=False
    )
    assert report.missing_captions == 0
    ds = datasets.load_from_disk(str(out))
    assert dict(zip(ds["path"], ds["caption"])) == {
        "0001000/0000001.png": "a woman in a space suit",
        "0001000/0000002.png": "a cup of coffee",
        "0001000/0000003.png": "a cat",
    }
    assert all(r["image"].size == (64, 64) for r in ds)  # short side to 64 (LANCZOS), centre crop: the release's
