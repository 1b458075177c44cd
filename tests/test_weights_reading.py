"""Reading weights in the dtype they are used in, a tensor at a time: a float32 base loaded for a
bfloat16 restoration costs the bfloat16 copy only, never the file next to it (the 2B base: 4.4 GB
instead of 8.8 + 4.4)."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import exported_student
from safetensors.torch import load_file, save_file

from varestorer.checkpoints import page_releaser, read_file
from varestorer.errors import CheckpointError
from varestorer.inference.pipeline import VARestorerPipeline


def mixed_state():
    g = torch.Generator().manual_seed(0)
    return {
        "f32": torch.randn(3, 5, generator=g),
        "bf16": torch.randn(7, generator=g).bfloat16(),
        "f16": torch.randn(2, 2, 2, generator=g).half(),
        "i64": torch.arange(6).reshape(2, 3),
        "flag": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 4),
        "scalar": torch.tensor(2.5),
    }


def test_a_safetensors_file_reads_as_safetensors_reads_it_and_casts_only_floats(tmp_path):
    save_file(mixed_state(), tmp_path / "w.safetensors")
    theirs = load_file(tmp_path / "w.safetensors")
    ours = read_file(tmp_path / "w.safetensors")
    assert ours.keys() == theirs.keys()
    for k, v in theirs.items():
        assert ours[k].dtype == v.dtype and ours[k].shape == v.shape and torch.equal(ours[k], v), k
    cast = read_file(tmp_path / "w.safetensors", torch.bfloat16)
    for k, v in theirs.items():
        want = v.to(torch.bfloat16) if v.is_floating_point() else v
        assert cast[k].dtype == want.dtype and torch.equal(cast[k], want), k


def test_a_truncated_safetensors_file_is_still_refused_naming_it(tmp_path):
    save_file(mixed_state(), tmp_path / "w.safetensors")
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "w.safetensors").write_bytes(data[:-10])
    with pytest.raises(CheckpointError, match="w.safetensors.*damaged"):
        read_file(tmp_path / "w.safetensors", torch.bfloat16)


PEAK = """
import json, sys, torch
from pathlib import Path
from varestorer.checkpoints import read_file
from varestorer.export.folder import check_weights

def kib(field):
    return next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith(field))

open("/proc/self/clear_refs", "w").write("5")  # Linux: the peak RSS (VmHWM) starts again from now
base = kib("VmRSS:")
if sys.argv[2] == "read":
    state = read_file(sys.argv[1], torch.bfloat16)
else:
    check_weights(Path(sys.argv[1]).parent)  # what export and publish run on a folder
print(json.dumps({"base": base, "peak": kib("VmHWM:")}))
"""


def test_reading_float32_weights_as_bfloat16_never_holds_the_file_beside_its_copy(tmp_path):
    """200 MB of float32 read as bfloat16 (100 MB): the process grows by the copy and about one tensor
    (50 MB), not by the file (200 MB) plus the copy, as reading it whole and then casting does."""
    save_file({f"w{i}": torch.ones(1024, 12_800) for i in range(4)}, tmp_path / "w.safetensors")
    grown = growth_mb(tmp_path / "w.safetensors", "read")
    assert 90 < grown < 180, grown  # the 100 MB copy and one 50 MB tensor at most; whole, then cast: 300 MB


def growth_mb(path, mode: str) -> float:
    cmd = [sys.executable, "-c", PEAK, str(path), mode]
    r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    return (r["peak"] - r["base"]) / 1024


def test_checking_a_files_weights_are_finite_holds_one_tensor_at_a_time(tmp_path):
    """What export and publish do to every weight file (the 2B base: 8.8 GB) before copying or
    uploading it: 200 MB in four tensors checked with the process growing by one tensor and its file
    pages (50 + 50 MB), not by the file (200 MB and more)."""
    base = tmp_path / "base_transformer.safetensors"
    save_file({f"w{i}": torch.ones(1024, 12_800) for i in range(4)}, base)
    assert growth_mb(base, "check") < 120


def test_a_pipeline_loaded_in_bfloat16_holds_what_loading_in_float32_and_casting_holds_and_restores_alike(
    tmp_path,
):
    """from_pretrained(torch_dtype=bfloat16) reads the blocks in bfloat16 (their LayerNorms, the
    embeddings and the head in float32, as ``pipe.to(dtype=...)`` holds them): the same weights,
    the same restoration, without the float32 copy."""
    _, folder = exported_student(tmp_path)
    cast = VARestorerPipeline.from_pretrained(folder, merge_lora=False).to(dtype=torch.bfloat16)
    read = VARestorerPipeline.from_pretrained(folder, merge_lora=False, torch_dtype=torch.bfloat16)
    ours, theirs = read.transformer.state_dict(), cast.transformer.state_dict()
    assert ours.keys() == theirs.keys() and any("lora_" in k for k in ours)
    for k, v in theirs.items():
        assert ours[k].dtype == v.dtype and torch.equal(ours[k], v), k
    held = {v.dtype for v in ours.values() if v.is_floating_point()}
    assert held == {torch.bfloat16, torch.float32}  # the blocks in bfloat16, the rest float32
    image, g = torch.rand(3, 16, 16), lambda: torch.Generator().manual_seed(0)
    a = cast(image, prompt="a photo", output_type="pt", generator=g()).images[0]
    b = read(image, prompt="a photo", output_type="pt", generator=g()).images[0]
    assert torch.equal(a, b)


STREAM = """
import json, sys, torch
from varestorer.checkpoints import page_releaser, read_file
from varestorer.export.folder import save_weights_streamed

def kib(field):
    return next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith(field))

src, out, release = sys.argv[1], sys.argv[2], sys.argv[3] == "release"
open("/proc/self/clear_refs", "w").write("5")
base = kib("VmRSS:")
state = read_file(src)  # a torch file: memory-mapped
drop = page_releaser(src)
save_weights_streamed(state, out, written=(lambda k, t: drop(t)) if release else None)
print(json.dumps({"grown_mb": (kib("VmHWM:") - base) / 1024, "after_mb": (kib("VmRSS:") - base) / 1024}))
"""


@pytest.mark.parametrize("release", [False, True])
def test_a_torch_file_streamed_to_safetensors_is_never_resident_whole_when_its_pages_are_released(tmp_path, release):
    """What import-release does with the release's 4.2 GB varestorer.pth: 200 MB of a memory-mapped
    torch file written tensor by tensor, each tensor's file pages dropped once written, grows the
    process by about one tensor (50 MB); without the release, by the whole file."""
    src = tmp_path / "w.pth"
    state = {f"w{i}": torch.full((1024, 12_800), float(i)) for i in range(4)}
    torch.save(state, src)
    cmd = [sys.executable, "-c", STREAM, str(src), str(tmp_path / "w.safetensors"), "release" if release else "keep"]
    r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    if release:
        assert r["grown_mb"] < 120 and r["after_mb"] < 60, r
    else:
        assert r["grown_mb"] > 190, r  # the measurement sees what the release saves
    back = load_file(tmp_path / "w.safetensors")
    assert all(torch.equal(back[k], v) for k, v in state.items())  # and nothing read wrong


def test_the_page_releaser_leaves_tensors_outside_the_files_map_alone(tmp_path):
    torch.save({"a": torch.ones(4096)}, tmp_path / "w.pth")
    release = page_releaser(tmp_path / "w.pth")
    mine = torch.arange(8192, dtype=torch.float32)
    release(mine)  # anonymous memory: MADV_DONTNEED would zero it
    assert torch.equal(mine, torch.arange(8192, dtype=torch.float32))
    mapped = read_file(tmp_path / "w.pth")["a"]
    release = page_releaser(tmp_path / "w.pth")  # the maps as they are now
    release(mapped)
    assert torch.equal(mapped, torch.ones(4096))  # read again from the file when used again


def test_an_empty_file_is_said_to_be_empty_and_a_legacy_torch_file_is_read_whole(tmp_path):
    """torch.load's mmap error is not the user's problem: an empty file says so, and a legacy
    (pre-zip, torch < 1.6) file, which cannot be memory-mapped, is read without the map."""
    from varestorer.checkpoints import read_file

    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pth: it is an empty file \\(0 bytes"):
        read_file(tmp_path / "empty.pth")
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    torch.save(state, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    assert torch.equal(read_file(tmp_path / "legacy.pth")["w"], state["w"])
