"""CPU offload (``enable_model_cpu_offload``, ``--offload``) and ``varestorer bench memory``."""

import pytest
import torch
from conftest import exported_student

from varestorer.inference import VARestorerPipeline
from varestorer.inference.memory import LiveBytes, bench_memory, model_bytes

#: The execution device the offload tests name: the CPU, spelled so that a move to it is told apart.
EXEC = torch.device("cpu", 0)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return exported_student(tmp_path_factory.mktemp("student"))[1]


class _Captioner:
    def __init__(self):
        self.model = torch.nn.Linear(2, 2)
        self.device = torch.device("cpu")

    def __call__(self, images):
        return ["a photo"] * len(images)


def _watch(pipe, monkeypatch):
    """Where each model was last sent (``Module.to``), and for every forward of a model, where each
    model was then: ``(running, {name: device})``."""
    where, seen = {}, []
    names = {id(m): n for n, m in pipe.models().items()}
    original = torch.nn.Module.to

    def to(self, *args, **kwargs):
        if id(self) in names and args and not isinstance(args[0], torch.dtype):
            where[names[id(self)]] = torch.device(args[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", to)
    for name, m in pipe.models().items():
        m.register_forward_pre_hook(lambda mod, a, name=name: seen.append((name, dict(where))))
    return where, seen


def test_offloaded_models_are_on_the_device_only_for_their_step_and_restore_the_same(export, monkeypatch):
    x = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    plain = VARestorerPipeline.from_pretrained(export).set_captioner(_Captioner(), caption_from="input")
    expected = plain(x, prompt=None, output_type="pt").images[0]

    pipe = VARestorerPipeline.from_pretrained(export)
    pipe.set_captioner(_Captioner(), caption_from="input")
    pipe.enable_model_cpu_offload(EXEC)
    where, seen = _watch(pipe, monkeypatch)
    out = pipe(x, prompt=None, output_type="pt").images[0]

    torch.testing.assert_close(out, expected)
    assert pipe.device == EXEC
    together = {"encoder": {"vae"}, "vae": {"encoder"}}  # the LQ encoder and the quantizer run as one step
    running = {name for name, _ in seen}
    assert {"encoder", "transformer", "text_encoder"} <= running
    for name, devices in seen:
        on_device = {n for n, d in devices.items() if d == EXEC}
        assert name in on_device and on_device - {name} <= together.get(name, set()), (name, devices)
    assert all(d == torch.device("cpu") for d in where.values())  # all back in CPU memory after the call


def test_each_offload_step_names_models_the_pipeline_holds(export):
    """OFFLOAD_STEPS is the one place that says which model runs in which step: a misspelt name
    would leave its model in CPU memory while its step runs on the GPU."""
    from varestorer.inference.pipeline import OFFLOAD_STEPS

    pipe = VARestorerPipeline.from_pretrained(export).set_captioner(_Captioner(), caption_from="input")
    held = set(pipe.models()) | {"restorer"}  # the stage-1 model of an export that has one
    assert set().union(*OFFLOAD_STEPS.values()) == held
    with pytest.raises(KeyError):
        pipe.enable_model_cpu_offload(EXEC)._use("a step nobody declared")


def test_an_explicit_device_ends_offload(export):
    pipe = VARestorerPipeline.from_pretrained(export).enable_model_cpu_offload(EXEC)
    pipe.to("cpu")
    assert pipe.device == torch.device("cpu")


def test_restore_with_offload_writes_the_same_image(tmp_path, export):
    from PIL import Image

    from varestorer.cli import main

    Image.new("RGB", (16, 16), (20, 120, 200)).save(tmp_path / "a.png")
    common = ["restore", str(tmp_path / "a.png"), "--model", str(export), "--no-prompt", "--device", "cpu"]
    assert main([*common, "-o", str(tmp_path / "plain")]) == 0
    assert main([*common, "-o", str(tmp_path / "offload"), "--offload"]) == 0
    assert (tmp_path / "plain/a.png").read_bytes() == (tmp_path / "offload/a.png").read_bytes()


def test_live_bytes_counts_allocations_until_they_are_freed_and_not_views():
    with LiveBytes(resident=100) as tracker:
        a = torch.ones(1000)  # 4000 bytes
        b = a.view(10, 100)  # a view: no new memory
        c = a * 2  # 4000 more
        del c
        d = torch.ones(10)  # 40
    assert tracker.peak == 100 + 8000
    assert tracker.live == 4040
    del a, b, d


def test_the_meta_estimate_counts_every_models_weights_and_offload_lowers_the_peak():
    r = bench_memory("tiny", (64,), ("onestep", "zeroshot"), device="meta", dtype="bfloat16")
    every = sum(r["model_bytes"].values())
    assert set(r["model_bytes"]) == {"vae", "encoder", "transformer", "text_encoder", "captioner"}
    peaks = {(row["method"], row["offload"]): row["peak_bytes"] for row in r["rows"]}
    assert peaks.keys() == {(m, o) for m in ("onestep", "zeroshot") for o in (False, True)}
    for m in ("onestep", "zeroshot"):
        assert peaks[m, False] > every  # all weights held, plus the activations
        assert max(r["model_bytes"].values()) < peaks[m, True] < peaks[m, False]


def test_bench_memory_on_the_cpu_reports_the_peak_resident_set(capsys):
    from varestorer.cli import main

    assert main(["bench", "memory", "--preset", "tiny", "--resolutions", "64", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "peak resident set" in out and "onestep" in out


def test_bench_memory_refuses_an_unknown_method_and_bad_sizes(capsys):
    from varestorer.cli import main

    assert main(["bench", "memory", "--methods", "onestep,fast", "--device", "meta"]) == 2
    assert "choose among onestep" in capsys.readouterr().err
    assert main(["bench", "memory", "--resolutions", "512,abc", "--device", "meta"]) == 2
    assert "comma-separated integers" in capsys.readouterr().err


def test_model_bytes_is_the_bytes_of_parameters_and_buffers():
    m = torch.nn.BatchNorm1d(4)  # 8 parameters, 4 + 4 + 1 buffer values (the count is int64)
    assert model_bytes(m) == 8 * 4 + 8 * 4 + 8
    assert model_bytes(None) == 0


@pytest.mark.gpu
def test_offload_lowers_the_peak_gpu_memory_of_a_restoration():
    r = bench_memory("small", (128,), ("onestep",), device="cuda", dtype="bfloat16")
    peaks = {row["offload"]: row["peak_bytes"] for row in r["rows"]}
    assert peaks[True] < peaks[False]
