"""Each training sample's randomness is a function of (seed, epoch, index) only: the same on 1 or
N processes, new every epoch, never shared between two samples (varestorer/data/seeds.py)."""

import json
from pathlib import Path

import pytest
import torch

from varestorer.data.samples import SampleImages
from varestorer.data.seeds import sample_seeds, split_key
from varestorer.distill.dataloader import EpochShuffleSampler

TESTS = Path(__file__).resolve().parent


def test_no_two_samples_of_any_epochs_share_a_seed():
    seeds = [sample_seeds(0, epoch, i) for epoch in range(3) for i in range(20_000)]
    assert len({s.crop for s in seeds}) == len({s.degradation for s in seeds}) == len(seeds)
    # the additive mix it replaces, seed*1_000_003 + epoch*7_919 + index, gave these two one seed
    assert sample_seeds(0, 1, 5) != sample_seeds(0, 0, 5 + 7_919)
    assert sample_seeds(0, 0, 5) == sample_seeds(0, 0, 5) != sample_seeds(1, 0, 5)
    assert all(0 <= v < 2**63 for s in seeds[:100] for v in s)


def test_the_sampler_hands_the_dataset_its_epoch_with_each_index():
    sampler = EpochShuffleSampler(6, seed=3)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert {e for e, _ in first} == {0} and {e for e, _ in second} == {1}
    assert sorted(i for _, i in first) == sorted(i for _, i in second) == list(range(6))
    assert [i for _, i in first] != [i for _, i in second]
    assert split_key(4) == (0, 4) and split_key((2, 4)) == (2, 4)


def test_a_sample_gets_a_new_crop_and_degradation_seed_every_epoch():
    data = SampleImages(64, repeats=2, seed=3)
    a, b = data[(0, 5)], data[(1, 5)]
    assert a["index"] == b["index"] == 5 and a["seed"] != b["seed"]
    assert not torch.equal(a["pixel_values"], b["pixel_values"])
    assert torch.equal(data[(1, 5)]["pixel_values"], b["pixel_values"]) and data[5]["seed"] == a["seed"]


@pytest.mark.slow
def test_two_processes_see_the_samples_of_one_process_new_every_epoch(tmp_path, cpu_processes):
    """Two processes over gloo (accelerate shards the loader), two epochs, against one process."""

    def probe(processes: int) -> list[dict]:
        out = tmp_path / f"p{processes}"
        out.mkdir()
        cpu_processes(processes, TESTS / "loader_probe.py", out, "train.global_batch_size=4")
        return [row for rank in range(processes) for row in json.loads((out / f"rank{rank}.json").read_text())]

    one, two = probe(1), probe(2)
    assert len(one) == len(two) == 2 * 40  # the tiny recipe: 10 photos x 4 repeats an epoch
    by_key = {(r["epoch"], r["index"]): r for r in one}
    for r in two:  # each sample: the crop and degradation seed a single process gives it
        assert by_key[r["epoch"], r["index"]] == r
    for epoch in (0, 1):  # every sample once an epoch, over both processes together
        assert sorted(r["index"] for r in two if r["epoch"] == epoch) == list(range(40))
    for i in range(40):  # and new draws in the next epoch
        a, b = by_key[0, i], by_key[1, i]
        assert a["seed"] != b["seed"] and a["crop"] != b["crop"]
