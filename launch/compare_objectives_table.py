"""The table of ``launch/compare-objectives.sh``: mean and spread over seeds of each objective's scores,
held-out crops and unseen images, from the runs' ``results.json`` files (markdown on stdout, and
``OUT/table.md``)."""

import json
import statistics
import sys
from pathlib import Path

out = Path(sys.argv[1])
OBJECTIVES = {"paper": "paper: KL + MSE", "release": "release: MSE via Gumbel ST", "ce": "CE only"}
SETS = {"evaluation": "held-out crops (12, 128 px)", "unseen": "unseen images (20, 256 px)"}
METRICS = ("psnr", "ssim", "sharpness", "niqe", "color_error")


def rows(run: Path, split: str) -> dict:
    doc = json.loads((run / split / "results.json").read_text())
    return {r["method"]: r for r in doc["rows"]}


def cell(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    digits = 4 if max(abs(v) for v in values) < 1 else 2
    spread = max(values) - min(values)
    return f"{statistics.mean(values):.{digits}f} ± {spread / 2:.{digits}f}"


lines = []
for split, title in SETS.items():
    lines += [f"### {title}", "", "| objective | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    runs = {obj: sorted(out.glob(f"{obj}-seed*")) for obj in OBJECTIVES}
    for obj, label in OBJECTIVES.items():
        got = [rows(r, split)["onestep"] for r in runs[obj] if (r / split / "results.json").is_file()]
        if got:
            lines.append(
                f"| {label} ({len(got)} seeds) | " + " | ".join(cell([g.get(m) for g in got]) for m in METRICS) + " |"
            )
    first = next((r for rs in runs.values() for r in rs if (r / split / "results.json").is_file()), None)
    if first is not None:
        b = rows(first, split)["bicubic"]
        lines.append("| bicubic | " + " | ".join(cell([b.get(m)]) for m in METRICS) + " |")
    lines.append("")
text = "\n".join(lines)
(out / "table.md").write_text(text + "\n")
print(text)

# what the seed-0 students make of a few images: LQ (bicubic) | paper | release | CE only | HQ
from PIL import Image, ImageDraw  # noqa: E402

ROWS = {
    "evaluation": (out / "paper-seed0" / "heldout", ["coffee-a", "aitzgorri-b", "path-a", "summer_1am-a"]),
    "unseen": (out / "unseen", ["stereo_motorcycle", "retina", "goldfish", "licorice-l"]),
}
side = 128
cols = ["LQ (bicubic)", *OBJECTIVES, "HQ"]
for split, (pairs, names) in ROWS.items():
    sheet = Image.new("RGB", (len(cols) * (side + 4), len(names) * (side + 4) + 14), "white")
    draw = ImageDraw.Draw(sheet)
    for c, label in enumerate(cols):
        draw.text((c * (side + 4) + 2, 1), label, fill="black")
    for r, name in enumerate(names):
        tiles = [Image.open(pairs / "lq" / f"{name}.png").convert("RGB")]
        tiles += [
            Image.open(out / f"{obj}-seed0" / split / "onestep" / f"{name}.png").convert("RGB") for obj in OBJECTIVES
        ]
        tiles += [Image.open(pairs / "hq" / f"{name}.png").convert("RGB")]
        for c, im in enumerate(tiles):
            sheet.paste(im.resize((side, side), Image.Resampling.BICUBIC), (c * (side + 4), 14 + r * (side + 4)))
    sheet.save(out / f"strip-{split}.png")
