"""Write the golden exports: one tiny export's weights and its ``varestorer_config.json`` as each
format version wrote it, with the hashes of what each restores to (``expected.json``).

    python tests/golden/make_exports.py

Run it only for a change meant to alter what existing exports restore to, and say so in the
commit: ``tests/test_export_config.py`` checks that every stored version restores to these bytes.
The weights are a tiny student (seed 0, LoRA moved away from zero) held in float16 to keep them
small (the loader reads any float dtype).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
EXPORTS = HERE / "exports"
sys.path.insert(0, str(HERE.parent))

#: The keys each version wrote besides ``format`` and ``format_version`` (version 1: its last
#: layout, 2026-12-01; version 2 wrote the same keys explicitly; 3 added the release's choices).
V1_KEYS = (
    "mode base_preset base_transformer base_vae text_encoder random_init_base resolution scale_schedule "
    "attention use_captions has_adapter has_encoder recipe upscale lq_input keep_lq_scales"
).split()
V3_KEYS = [*V1_KEYS, "decode", "restorer", "resize", "tile_weights", "transformer_config", "source"]
VERSION_KEYS = {1: V1_KEYS, 2: V1_KEYS, 3: V3_KEYS}
#: The inputs restored: 12 px -> 48 px (one resized pass), 24 px -> 96 px (tiles of 64 px).
INPUT_SIDES = (12, 24)


def inputs() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(2026)
    return [torch.rand(3, s, s, generator=g) for s in INPUT_SIDES]


def restored_hash(folder: Path) -> str:
    """The sha256 of the uint8 images the export restores the inputs to, as a user's call does."""
    from varestorer.inference import VARestorerPipeline

    pipe = VARestorerPipeline.from_pretrained(folder)
    images = pipe(inputs(), prompt="a photo", output_type="np").images
    digest = hashlib.sha256()
    for image in images:
        digest.update(repr(image.shape).encode())
        digest.update(image.tobytes())
    return digest.hexdigest()


def assemble(version: int, out: Path) -> Path:
    """The stored export of format ``version`` as a folder ``out``: the weights and that version's config."""
    shutil.copytree(EXPORTS / "weights", out)
    shutil.copy(EXPORTS / f"v{version}.json", out / "varestorer_config.json")
    return out


def main() -> None:
    from conftest import exported_student

    from varestorer.export import FORMAT_VERSION

    with tempfile.TemporaryDirectory() as tmp:
        _, export = exported_student(Path(tmp), "student.lq_input=shifted")
        shutil.rmtree(EXPORTS, ignore_errors=True)
        (EXPORTS / "weights").mkdir(parents=True)
        for f in export.iterdir():
            if f.suffix == ".safetensors":
                state = load_file(str(f))
                save_file(
                    {k: v.half() if v.is_floating_point() else v for k, v in state.items()},
                    str(EXPORTS / "weights" / f.name),
                )
            elif f.name != "varestorer_config.json":
                shutil.copy(f, EXPORTS / "weights" / f.name)
        current = json.loads((export / "varestorer_config.json").read_text())
    current["recipe"]["train"]["output_dir"] = "outputs/golden"  # not the temporary folder it was made in
    for version in range(1, FORMAT_VERSION + 1):
        keys = VERSION_KEYS.get(version, [k for k in current if k not in ("format", "format_version")])
        data = {"format": "varestorer", "format_version": version, **{k: current[k] for k in keys}}
        (EXPORTS / f"v{version}.json").write_text(json.dumps(data, indent=2) + "\n")
    expected = {}
    with tempfile.TemporaryDirectory() as tmp:
        for version in range(1, FORMAT_VERSION + 1):
            expected[f"v{version}"] = restored_hash(assemble(version, Path(tmp) / f"v{version}"))
    (EXPORTS / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
    print(json.dumps(expected, indent=2))


if __name__ == "__main__":
    main()
