"""Vocoder (issue 14): the project's HiFi-GAN V1 with the official LJSpeech weights (read with
weights_only=True) resynthesises a real clip with a lower mel error than Griffin-Lim."""

from __future__ import annotations

import torch

from djepa.audio.features import mel_spectrogram
from djepa.audio.ljspeech import load_wav
from djepa.audio.vocoder import Vocoder, griffin_lim, load_hifigan


def test_hifigan_beats_griffin_lim_on_a_real_clip(lj_dir):
    wav = load_wav(lj_dir / "wavs" / "LJ001-0002.wav")[:33075]  # 1.5 s of real speech
    mel = mel_spectrogram(wav)[None]
    t = mel.shape[-1]
    hifi = Vocoder("hifigan")(mel)
    gl = griffin_lim(mel)
    assert hifi.shape == gl.shape == (1, 256 * t)
    assert hifi.abs().max() <= 1.0
    err_h = (mel_spectrogram(hifi[0])[:, :t] - mel[0]).abs().mean().item()
    err_g = (mel_spectrogram(gl[0])[:, :t] - mel[0]).abs().mean().item()
    assert err_h < 0.3 and err_h < 0.85 * err_g, (err_h, err_g)


def test_weights_fold_into_plain_convolutions():
    net = load_hifigan()
    names = {n for n, _ in net.named_parameters()}
    assert "conv_pre.weight" in names and not any("weight_g" in n for n in names)
    from djepa.audio.vocoder import hifigan_weights_path
    from djepa.core.safe_load import torch_load

    state = torch_load(hifigan_weights_path())["generator"]
    file_count = sum(v.numel() for k, v in state.items() if not k.endswith("weight_g"))
    assert sum(p.numel() for p in net.parameters()) == file_count
    assert 13.9e6 < file_count < 13.95e6  # HiFi-GAN V1: 13.92 M parameters (Kong et al., Table 1)
    # a folded weight equals g · v / ‖v‖ of the file
    v, g = state["conv_post.weight_v"], state["conv_post.weight_g"]
    torch.testing.assert_close(net.conv_post.weight, g * v / v.flatten(1).norm(dim=1)[:, None, None])
