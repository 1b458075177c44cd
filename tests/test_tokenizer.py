"""The tokenizer: Infinity's BSQ-VAE, its multi-scale quantization and checkpoint loading."""

import json
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from skimage import data as skdata

from varestorer.checkpoints import resolve_file
from varestorer.cli import main
from varestorer.errors import CheckpointError, ConfigError
from varestorer.tokenizer import BSQVAE, MultiScaleBSQ, num_tokens, scale_schedule
from varestorer.tokenizer.loading import build_vae, load_vae


def photos(size=64):
    """Two real photos (scikit-image) as (2, 3, size, size) in [-1, 1]."""
    imgs = [skdata.astronaut(), skdata.chelsea()[:, 50:350]]
    out = []
    for im in imgs:
        t = torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1).float()[None] / 127.5 - 1
        out.append(F.interpolate(t, size=(size, size), mode="area"))
    return torch.cat(out)


@pytest.fixture(scope="module")
def tiny_vae():
    torch.manual_seed(0)
    return build_vae("tiny").eval()


def multiscale_latent(batch, dim, side, seed=0):
    """A latent with structure at every scale, like an encoder's output."""
    g = torch.Generator().manual_seed(seed)
    lat = sum(
        F.interpolate(torch.randn(batch, dim, s, s, generator=g), size=(side, side), mode="bilinear")
        for s in (1, 2, 4, 8, side)
    )
    return lat / lat.norm(dim=1, keepdim=True).mean() * 2


def test_schedules_match_infinity():
    s512 = scale_schedule(512, 16)
    assert [h for h, _ in s512] == [1, 2, 4, 6, 8, 12, 16, 20, 24, 32]
    assert num_tokens(s512) == 2521
    assert [h for h, _ in scale_schedule(1024, 16)][-4:] == [32, 40, 48, 64]
    assert len(scale_schedule(1024, 16)) == 13
    assert len(scale_schedule(256, 16)) == 7
    assert scale_schedule(64, 8) == [(1, 1), (2, 2), (4, 4), (6, 6), (8, 8)]
    with pytest.raises(ConfigError, match="valid resolutions: .*512"):
        scale_schedule(500, 16)


def test_encode_decode_shapes_and_ranges(tiny_vae):
    x = photos(64)
    with torch.no_grad():
        tokens = tiny_vae.tokenize(x)
        recon = tiny_vae.decode_bits(tokens.bits)
    sched = tiny_vae.schedule(64)
    assert [tuple(b.shape) for b in tokens.bits] == [(2, h, w, 16) for h, w in sched]
    assert [tuple(t.shape) for t in tokens.teacher_inputs] == [(2, 16, h, w) for h, w in sched[1:]]
    assert tokens.bit_labels().shape == (2, num_tokens(sched), 16)
    assert tokens.teacher_input_sequence().shape == (2, num_tokens(sched) - 1, 16)
    assert tokens.quantized.shape == (2, 16, 8, 8)
    assert recon.shape == x.shape and recon.min() >= -1 and recon.max() <= 1
    for b in tokens.bits:
        assert b.dtype == torch.int64 and set(b.unique().tolist()) <= {0, 1}
    # every code is on the sphere: +-1/sqrt(d)
    assert torch.allclose(tokens.codes[3].abs(), torch.full_like(tokens.codes[3], 16**-0.5))


def test_bits_decode_back_to_exactly_the_quantized_latent(tiny_vae):
    with torch.no_grad():
        tokens = tiny_vae.tokenize(photos(64))
    latent = tiny_vae.quantizer.bits_to_latent(tokens.bits)
    assert torch.equal(latent, tokens.quantized)
    # the flat label sequence splits back into the per-scale maps
    split = MultiScaleBSQ.split_sequence(tokens.bit_labels(), tokens.schedule)
    assert all(torch.equal(a, b) for a, b in zip(split, tokens.bits))


def _linear_resize_by_hand(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Half-pixel linear resize of (..., H, W), written out: Infinity's trilinear on (1, h, w)."""

    def axis(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    r0, r1, a = axis(x.shape[-2], out_h)
    c0, c1, b = axis(x.shape[-1], out_w)
    rows = x[..., r0, :] * (1 - a)[:, None] + x[..., r1, :] * a[:, None]
    return rows[..., c0] * (1 - b) + rows[..., c1] * b


# scales whose sides do not divide the last one: there, trilinear and area resizing differ
ODD_SCHEDULE = [(1, 1), (2, 2), (3, 3), (5, 5), (8, 8)]


def hand_made_latent():
    i, j = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    chans = [torch.sin(i * 0.7 + c) + torch.cos(j * (0.3 + 0.2 * c)) + 0.1 * c * i for c in range(4)]
    return torch.stack(chans)[None]  # (1, 4, 8, 8)


def test_teacher_inputs_are_the_accumulated_codes_resized_trilinearly_as_infinity_does():
    q = MultiScaleBSQ(4)
    tokens = q(hand_made_latent(), ODD_SCHEDULE)
    acc = np.zeros((1, 4, 8, 8))
    for k, (h, w) in enumerate(ODD_SCHEDULE[:-1]):
        codes = (tokens.bits[k].permute(0, 3, 1, 2).double().numpy() * 2 - 1) / 2  # +-1/sqrt(4)
        acc = acc + _linear_resize_by_hand(codes, 8, 8)
        expected = _linear_resize_by_hand(acc, *ODD_SCHEDULE[k + 1])
        np.testing.assert_allclose(tokens.teacher_inputs[k].double().numpy(), expected, rtol=0, atol=1e-6)
        # the rule is upstream's 5-D trilinear interpolation, not area (which the tokenizer used to take)
        five_d = F.interpolate(
            torch.from_numpy(acc).float()[:, :, None],
            size=(1, *ODD_SCHEDULE[k + 1]),
            mode="trilinear",
            align_corners=False,
        )[:, :, 0]
        torch.testing.assert_close(tokens.teacher_inputs[k], five_d, rtol=0, atol=1e-6)
        if ODD_SCHEDULE[k + 1] == (5, 5):  # the test can tell the two rules apart
            area = F.interpolate(torch.from_numpy(acc).float(), size=(5, 5), mode="area")
            assert (area - tokens.teacher_inputs[k]).abs().max() > 1e-2


def test_the_pyramid_gives_each_scale_the_codes_accumulated_through_that_scale():
    q = MultiScaleBSQ(4)
    tokens = q(hand_made_latent(), ODD_SCHEDULE)
    for k in range(1, len(ODD_SCHEDULE)):
        acc = q.bits_to_latent(tokens.bits[: k + 1], size=(8, 8))
        expected = F.interpolate(acc[:, :, None], size=(1, *ODD_SCHEDULE[k]), mode="trilinear", align_corners=False)
        torch.testing.assert_close(tokens.pyramid[k - 1], expected[:, :, 0], rtol=0, atol=1e-6)
    assert torch.equal(tokens.pyramid[-1], tokens.quantized)  # the finest position sees the whole LQ latent
    seq = tokens.lq_input_sequence("pyramid")
    assert seq.shape == tokens.teacher_input_sequence().shape  # same positions, one scale more of the image
    assert torch.equal(tokens.lq_input_sequence("shifted"), tokens.teacher_input_sequence())
    with pytest.raises(ValueError, match="pyramid, shifted|'pyramid', 'shifted'"):
        tokens.lq_input_sequence("sideways")


def test_kept_scales_are_the_tokens_own_bits_and_carry_the_quantizers_gradient():
    q = MultiScaleBSQ(4)
    latent = hand_made_latent().requires_grad_(True)
    tokens = q(latent, ODD_SCHEDULE)
    predicted = [torch.full_like(b, 0.3, dtype=torch.float32) for b in tokens.bits]
    kept = tokens.keep_scales(predicted, 2)
    for k in range(len(ODD_SCHEDULE)):
        assert torch.equal(kept[k].detach(), tokens.bits[k].float() if k < 2 else predicted[k])
    kept[0].sum().backward()  # straight through the quantizer to the latent (the LQ encoder's output)
    assert latent.grad is not None and latent.grad.abs().sum() > 0
    assert tokens.keep_scales(predicted, 0) == predicted


def test_self_correction_flips_feed_later_scales_and_their_labels_correct_them():
    q = MultiScaleBSQ(4)
    lat = hand_made_latent()
    clean = q(lat, ODD_SCHEDULE)
    flips = [torch.zeros(1, 1, 1, 4, dtype=torch.bool), torch.ones(1, 2, 2, 4, dtype=torch.bool)]
    noisy = q(lat, ODD_SCHEDULE, flips=flips)
    assert all(torch.equal(a, b) for a, b in zip(clean.bits[:2], noisy.bits[:2]))  # own labels stay true
    flipped = [clean.bits[0], 1 - clean.bits[1]]
    torch.testing.assert_close(
        noisy.teacher_inputs[1], F.interpolate(q.bits_to_latent(flipped, size=(8, 8)), size=(3, 3), mode="bilinear")
    )
    assert not torch.equal(clean.bits[2], noisy.bits[2])  # scale 2 now corrects scale 1's flipped bits
    # and its residual is taken against the flipped accumulation: the final latent stays close
    err_clean = (lat - clean.quantized).norm()
    assert (lat - noisy.quantized).norm() < 2 * err_clean


def test_residual_error_shrinks_scale_by_scale():
    q = MultiScaleBSQ(16)
    sched = scale_schedule(128, 8)
    latent = multiscale_latent(2, 16, 16, seed=1)
    tokens = q(latent, sched)
    errors = [(latent - q.bits_to_latent(tokens.bits[: k + 1], size=(16, 16))).norm().item() for k in range(len(sched))]
    assert all(b < a for a, b in zip(errors, errors[1:])), errors


def test_batched_equals_per_image(tiny_vae):
    x = photos(64)
    with torch.no_grad():
        both = tiny_vae.tokenize(x).bit_labels()
        one = torch.cat([tiny_vae.tokenize(x[i : i + 1]).bit_labels() for i in range(2)])
    assert torch.equal(both, one)


def test_straight_through_decoding(tiny_vae):
    with torch.no_grad():
        tokens = tiny_vae.tokenize(photos(64))
    g = torch.Generator().manual_seed(0)
    probs = [(b.float() * 0.6 + 0.2 + 0.1 * torch.rand(b.shape, generator=g)).requires_grad_() for b in tokens.bits]
    latent = tiny_vae.quantizer.bits_to_latent(probs, straight_through=True)
    assert torch.equal(latent.detach(), tiny_vae.quantizer.bits_to_latent(tokens.bits))  # the hard bits, exactly
    out = tiny_vae.decode_bits(probs, straight_through=True)
    with torch.no_grad():
        hard = tiny_vae.decode_bits(tokens.bits)
    # the same latent; the decoder's convolutions may take another kernel with autograd on
    torch.testing.assert_close(out, hard, rtol=1e-4, atol=1e-4)
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in probs)  # ...the gradient reaches p


def official_layout(vae: BSQVAE, plain: bool = False) -> dict:
    """The state dict as Infinity's checkpoint stores it (incl. the ``quantize`` alias)."""
    sd = {k: v.clone() for k, v in vae.state_dict().items()}
    sd["quantize.lfq.mask"] = sd["quantizer.lfq.mask"].clone()
    if plain:  # the plain layout Infinity's loader also accepts: no .conv/.norm wrappers
        sd = {
            k.replace(".conv.weight", ".weight")
            .replace(".conv.bias", ".bias")
            .replace(".norm.weight", ".weight")
            .replace(".norm.bias", ".bias"): v
            for k, v in sd.items()
        }
    return sd


@pytest.mark.parametrize("plain", [False, True])
def test_official_checkpoint_loads_and_round_trips_bit_exactly(tiny_vae, tmp_path, caplog, plain):
    path = tmp_path / "infinity_vae_tiny.pth"
    torch.save({"vae": official_layout(tiny_vae, plain), "step": 1000}, path)
    with caplog.at_level(logging.WARNING):
        loaded = load_vae("tiny", path)
    assert "step" in caplog.text and "quantize.lfq.mask" in caplog.text  # unused entries are named
    for (k, a), (k2, b) in zip(tiny_vae.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    x = photos(64)
    with torch.no_grad():
        a, b = tiny_vae.tokenize(x), loaded.tokenize(x)
        assert torch.equal(a.bit_labels(), b.bit_labels())
        assert torch.equal(tiny_vae.decode_bits(a.bits), loaded.decode_bits(b.bits))
    assert not any(p.requires_grad for p in loaded.parameters())


def test_safetensors_and_folder_checkpoints(tiny_vae, tmp_path):
    save_file(tiny_vae.state_dict(), tmp_path / "vae.safetensors")
    loaded = load_vae("tiny", tmp_path / "vae.safetensors")
    assert torch.equal(loaded.encoder.conv_in.conv.weight, tiny_vae.encoder.conv_in.conv.weight)
    with pytest.raises(CheckpointError, match="is a folder without"):
        load_vae("tiny", tmp_path)


def test_wrong_checkpoint_gives_a_clear_error(tiny_vae, tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save({"vae": official_layout(tiny_vae)}, path)
    with pytest.raises(CheckpointError) as err:
        load_vae("infinity-2b", path)  # a tiny checkpoint for the 2B preset
    msg = str(err.value)
    assert "mis-shaped" in msg and "encoder.conv_in.conv.weight (32, 3, 3, 3) vs model (128, 3, 3, 3)" in msg
    assert "looks most like the 'tiny' preset" in msg

    sd = official_layout(tiny_vae)
    del sd["decoder.conv_out.conv.bias"]
    sd["encoder.extra.weight"] = torch.zeros(1)
    torch.save({"vae": sd}, path)
    with pytest.raises(CheckpointError) as err:
        load_vae("tiny", path)
    msg = str(err.value)
    assert "missing (1): decoder.conv_out.conv.bias" in msg and "unexpected (1): encoder.extra.weight" in msg

    torch.save({"optimizer": {"lr": 1.0}}, path)
    with pytest.raises(CheckpointError, match="no weights under any of"):
        load_vae("tiny", path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_vae("tiny", path)


def test_missing_hub_file_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(CheckpointError, match="huggingface-cli download FoundationVision/Infinity"):
        resolve_file("FoundationVision/Infinity", "infinity_vae_d32reg.pth")
    with pytest.raises(CheckpointError, match="not found"):
        resolve_file(str(tmp_path / "nope.pth"))


def test_infinity_2b_vae_on_meta_has_the_exact_counts():
    with torch.device("meta"):
        vae = build_vae("infinity-2b")
    assert sum(p.numel() for p in vae.parameters()) == 110_118_051
    assert sum(p.numel() for p in vae.encoder.parameters()) == 45_025_696
    assert vae.downsample == 16 and vae.codebook_dim == 32


def test_info_cli_json(capsys):
    assert main(["info", "--preset", "infinity-2b", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["vae_params"] == 110_118_051 and info["vae_encoder_params"] == 45_025_696
    assert info["scale_schedules"]["512"] == {
        "sides": [1, 2, 4, 6, 8, 12, 16, 20, 24, 32],
        "scales": 10,
        "tokens": 2521,
    }
    assert main(["info", "--preset", "nope"]) == 2
    assert "valid presets: infinity-2b, tiny" in capsys.readouterr().err
