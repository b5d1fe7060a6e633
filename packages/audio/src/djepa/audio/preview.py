"""The training preview of ``tts-train`` (a :class:`~djepa.core.train.preview.PreviewHook`):
one sentence synthesised by the EMA model, written as ``samples/step_N.wav`` (HiFi-GAN) and
``samples/step_N.png`` (its mel spectrogram), the mel also to TensorBoard."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from djepa.core.config import SamplerConfig
from djepa.core.train.preview import Preview, PreviewRequest

__all__ = ["SpeechPreview"]


@dataclass
class SpeechPreview:
    text: str
    sampler: SamplerConfig
    vocoder: str = "hifigan"

    def __call__(self, model: nn.Module, request: PreviewRequest) -> Preview:
        from djepa.audio.media import mel_image, save_mel_png, write_wav
        from djepa.audio.synthesize import text_to_ids
        from djepa.audio.vocoder import Vocoder

        ids = torch.tensor([text_to_ids(self.text, model.tts)], device=request.device)
        mel = model.synthesize(ids, self.sampler, generators=request.generators(1))[0]
        wav = Vocoder(self.vocoder)(mel[None])[0]
        request.samples_dir.mkdir(parents=True, exist_ok=True)
        w = write_wav(request.path(".wav"), wav)
        p = save_mel_png(request.path(".png"), [mel], [f"step {request.step}: {self.text[:80]}"])
        return Preview(files=(w, p), tensorboard_image=mel_image(mel))
