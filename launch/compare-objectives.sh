#!/usr/bin/env bash
# What the paper's teacher adds, measured on the small base (docs/training.md, "Paper or release").
# Three objectives, everything else equal (recipes/small.yaml: data, steps, restorer, input form, lr),
# each trained with 3 seeds, scored without prompts on the demo's 12 held-out crops and on 20 images
# no model here was trained on:
#   paper:   0.02 KL to the teacher + 0.5 MSE (recipes/small.yaml itself; LPIPS needs weights not here)
#   release: 1.0 MSE through the release's Gumbel straight-through, no teacher (its LPIPS: no weights)
#   ce:      the student's bitwise cross-entropy against the HQ tokens only
#   bash launch/compare-objectives.sh [OUT] [STEPS]      (2-core CPU: ~5 min a run at 300 steps)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/compare-objectives}
STEPS=${2:-300}
V=${VENV:-.venv}/bin
mkdir -p "$OUT/recipes"

# 20 images unlike the training photos: 4 photographs skimage ships and 16 rendered wallpapers of two
# Debian packages the shipped photos do not come from (gnome-backgrounds, ukui-wallpapers)
if [ ! -d "$OUT/unseen/hq" ]; then
  mkdir -p "$OUT/debs" "$OUT/unseen/src"
  (cd "$OUT/debs" && apt-get download gnome-backgrounds ukui-wallpapers >/dev/null)
  for d in "$OUT"/debs/*.deb; do dpkg-deb -x "$d" "$OUT/debs/x"; done
  "$V/python" - "$OUT" <<'PY'
import sys
from pathlib import Path

import numpy as np
import skimage.data as D
from PIL import Image

out = Path(sys.argv[1])
bg = out / "debs/x/usr/share/backgrounds"
names = ["gnome/licorice-l.webp", "gnome/licorice-d.webp", "gnome/pixels-l.webp", "gnome/pixels-d.webp",
         "gnome/truchet-l.webp", "gnome/grid-l.webp", "gnome/adwaita-l.webp", "gnome/wood-l.webp",
         "goldfish.png", "the-mouse.jpg", "calla.png", "2004default.jpg", "string.jpg",
         "firstgeneration.jpg", "rhythm.jpg", "rollpaper.png"]
images = {Path(n).stem: Image.open(bg / n).convert("RGB") for n in names}
for n in ("stereo_motorcycle", "hubble_deep_field", "immunohistochemistry", "retina"):
    a = getattr(D, n)()
    images[n] = Image.fromarray(np.asarray(a[0] if isinstance(a, tuple) else a)[..., :3])
for name, im in images.items():
    side = min(im.size) // 2  # the middle half: detail at 256 px (NIQE needs 192), not the whole scene shrunk
    left, top = (im.width - side) // 2, (im.height - side) // 2
    crop = im.crop((left, top, left + side, top + side)).resize((256, 256), Image.Resampling.LANCZOS)
    crop.save(out / "unseen/src" / f"{name}.png")
print(len(images), "unseen images")
PY
  "$V/varestorer" degrade "$OUT/unseen/src" "$OUT/unseen" --preset realesrgan-x4 --seed 0 --size 256 --save-hq --no-sheet --device cpu
fi

for seed in 0 1 2; do
  for obj in paper release ce; do
    run="$OUT/$obj-seed$seed"
    [ -f "$run/done" ] && continue
    r="$OUT/recipes/$obj-seed$seed.yaml"
    {
      echo "base: small"
      echo "train: {seed: $seed, max_steps: $STEPS, checkpointing_steps: $STEPS, validation_steps: $STEPS}"
      case $obj in
        paper) ;;
        release) echo "loss: {kl: 0.0, lpips: 0.0, mse: 1.0}"; echo "student: {decode: gumbel, gumbel_tau: 0.5}" ;;
        ce) echo "loss: {kl: 0.0, lpips: 0.0, mse: 0.0, student_cross_entropy: 1.0}" ;;
      esac
    } > "$r"
    "$V/varestorer" demo --recipe "$r" --output-dir "$run" --methods bicubic,onestep --seed 0
    "$V/varestorer" evaluate --model "$run/train/final" --method onestep --method bicubic \
      --lq "$OUT/unseen/lq" --gt "$OUT/unseen/hq" --out "$run/unseen" --caption none --crop-border 4 \
      --metrics psnr,ssim,sharpness,niqe,color_error --seed 0 --device cpu
    touch "$run/done"
  done
done
"$V/python" launch/compare_objectives_table.py "$OUT"
