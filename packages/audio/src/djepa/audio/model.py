"""The text-to-speech D-JEPA (paper App. G.1): D-JEPA over mel-frame tokens conditioned on
phonemes and pitch, with an explicit alignment path.

Tokens: the normalised log-mel (per-bin mean / std of the training set) of ``g =
frames_per_token`` consecutive frames, concatenated: ``[B, N, 80·g]`` with ``N = ⌈T/g⌉`` on a
1-D grid with 1-D RoPE and a padding mask (rows of different length). ``g`` > 1 is our speed
choice (fewer tokens per second of speech); frames past the end of a clip inside its last token
hold the silence value (log 1e-5, normalised). g = 1 is one token per frame.

Condition (what the backbone sees):

* the **phoneme encoder** (embedding → 3 masked convolutions → 2 transformer blocks with 1-D
  RoPE) gives ``h [B, L, H]``; ``h`` is the **sequence condition** attended through the core's
  SD3-style joint blocks (the paper: multimodal attention);
* **alignment** (:mod:`djepa.audio.alignment`): a per-phoneme mel prior ``μ = Linear(h)``, MAS
  on its likelihood gives durations in training (prior loss ½‖x − μ_a‖², Matcha-TTS); a
  **duration predictor** (on ``sg(h)``, log-duration MSE) gives them at inference, and so the
  number of frames;
* the **pitch encoder** (NATSpeech / paper: lookup table ``Embedding(300, 256)``, hidden 256)
  embeds the coarse F0 of every frame. It receives the **ground-truth** Parselmouth F0 in
  training and the **pitch predictor**'s F0 at inference (a frame-level regressor on
  ``sg(length-regulated h)``: normalised log-F0 MSE on voiced frames + voicing BCE).
* per frame ``e_t = h_{a(t)} + W·pitch(f0_t) + V·pos_t`` (``pos_t``: where the frame sits in
  its phoneme, :func:`position_features`; zero at padding), averaged over the token's g frames → the **token-aligned condition** (``SequenceInput.aligned``, core
  ``DJEPAConfig.aligned_dim``), added to each token's embedding in φ and γ.

Losses: ``L = w_d·L_v + w_p·L_p`` (flow matching, App. F, and the prediction loss, as for
images) ``+ prior + duration + pitch`` (weights 1). Condition dropout (CFG) drops the phoneme
sequence and the aligned condition of a row together (durations and pitch are kept).
The target encoder φ̄ (EMA model) computes its own phoneme encoding from the same alignment.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from djepa.core.batch import TokenBatch
from djepa.core.blocks import Block
from djepa.core.condition import SequenceInput
from djepa.core.config import DJEPAConfig, SamplerConfig, config_from_dict, config_to_dict
from djepa.core.model import DJEPA
from djepa.core.rope import AxialRoPE

from djepa.audio.alignment import durations_to_path, expand, gaussian_log_likelihood, maximum_path
from djepa.audio.features import f0_to_coarse

__all__ = ["TTSConfig", "TTSModel", "TTSInput", "TTSOutput", "N_MELS", "SILENCE_LOG"]

N_MELS = 80
SILENCE_LOG = math.log(1e-5)


@dataclass(frozen=True)
class TTSConfig:
    """The TTS model: the D-JEPA backbone config plus the front-end modules and data statistics.

    Attributes:
        djepa: the backbone (token_dim = 80·frames_per_token, condition="sequence",
            condition_dim = aligned_dim = hidden, pos_embed="rope", loss kind "flow").
        symbols: the phoneme vocabulary (id 0 = padding is not listed).
        frames_per_token: g mel frames per token.
        hidden: H, width of the phoneme encoder and of the conditions.
        heads: heads of the phoneme encoder's transformer blocks.
        pitch_bins / pitch_dim: the pitch lookup table (300, 256; paper).
        mel_mean / mel_std: per-bin statistics of the training set's log-mel (80 each).
        f0_mean / f0_std: of log-F0 over voiced training frames.
        prior_weight / duration_weight / pitch_weight: weights of the alignment losses.
    """

    djepa: DJEPAConfig
    symbols: tuple[str, ...]
    frames_per_token: int = 2
    hidden: int = 128
    heads: int = 2
    pitch_bins: int = 300
    pitch_dim: int = 256
    mel_mean: tuple[float, ...] = (0.0,) * N_MELS
    mel_std: tuple[float, ...] = (1.0,) * N_MELS
    f0_mean: float = 5.3
    f0_std: float = 0.3
    prior_weight: float = 1.0
    duration_weight: float = 1.0
    pitch_weight: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "symbols", tuple(self.symbols))
        object.__setattr__(self, "mel_mean", tuple(float(v) for v in self.mel_mean))
        object.__setattr__(self, "mel_std", tuple(float(v) for v in self.mel_std))
        d = self.djepa
        if d.token_dim != N_MELS * self.frames_per_token:
            raise ValueError(f"token_dim {d.token_dim} != 80 · frames_per_token {self.frames_per_token}")
        if d.condition != "sequence" or d.context_dim != self.hidden or d.aligned_dim != self.hidden:
            raise ValueError("the TTS backbone needs condition='sequence' and condition_dim = aligned_dim = hidden")
        if len(self.mel_mean) != N_MELS or len(self.mel_std) != N_MELS:
            raise ValueError("mel_mean / mel_std need 80 values")


class TTSOutput(NamedTuple):
    """Loss breakdown of one training forward (scalars; ``loss`` first, the engine logs all)."""

    loss: Tensor
    token_loss: Tensor
    prediction_loss: Tensor
    prior_loss: Tensor
    duration_loss: Tensor
    pitch_loss: Tensor


@dataclass(frozen=True)
class TTSInput(SequenceInput):
    """The sequence condition (``values = h``, ``padding``, ``aligned``) plus what the target
    encoder needs to recompute it with its own weights: phoneme ids, the alignment path and
    the coarse pitch."""

    phonemes: Tensor | None = None
    path: Tensor | None = None
    coarse: Tensor | None = None


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1)


class _ConvStack(nn.Module):
    """``n`` × (Conv1d k → ReLU → LayerNorm), padding zeroed before every conv (so padded
    positions never leak into real ones), then a Linear to ``out`` (None = no head)."""

    def __init__(self, dim: int, n: int, k: int, out: int | None) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(dim, dim, k, padding=k // 2) for _ in range(n))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(n))
        self.head = nn.Linear(dim, out) if out else None

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        m = valid[..., None].to(x.dtype)
        for conv, norm in zip(self.convs, self.norms):
            x = norm(F.relu(conv((x * m).transpose(1, 2)).transpose(1, 2)))
        x = x * m
        return x if self.head is None else self.head(x)


class PhonemeEncoder(nn.Module):
    """ids ``[B, L]`` (0 = padding) → ``h [B, L, H]`` (zeros at padding)."""

    def __init__(self, vocab: int, dim: int, heads: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        nn.init.normal_(self.embed.weight, std=dim ** -0.5)
        with torch.no_grad():
            self.embed.weight[0].zero_()
        self.convs = _ConvStack(dim, 3, 5, None)
        self.blocks = nn.ModuleList(Block(dim, heads, 2.0, qk_norm=True) for _ in range(2))
        self.rope = AxialRoPE(dim // heads, 1, split=(dim // heads,))
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: Tensor, valid: Tensor) -> Tensor:
        x = self.convs(self.embed(ids), valid)
        rope = self.rope(torch.arange(ids.shape[1], device=ids.device)[:, None])
        for blk in self.blocks:
            x = blk(x, rope, ~valid)
        return self.norm(x) * valid[..., None].to(x.dtype)


def position_features(path: Tensor) -> Tensor:
    """Where each frame sits in its phoneme: ``path [B, L, T]`` → ``[B, T, 3]`` with
    ``(offset + ½) / duration``, ``log(duration) / 4`` and ``log(1 + offset) / 4`` (offset =
    frames since the phoneme began; zeros outside the path). Without it the frames of one
    phoneme differ only by RoPE (a FastSpeech-style length regulator adds positions too)."""
    d = path.sum(-1)                                                       # [B, L]
    start = d.cumsum(1) - d
    fd = expand(d[..., None], path)[..., 0]
    fs = expand(start[..., None], path)[..., 0]
    t = torch.arange(path.shape[-1], device=path.device, dtype=path.dtype)[None]
    on = (path.sum(1) > 0).to(path.dtype)
    off = (t - fs).clamp(min=0) * on
    return torch.stack([(off + 0.5) / fd.clamp(min=1) * on, torch.log(fd.clamp(min=1)) / 4 * on,
                        torch.log1p(off) / 4], -1)


class TTSModel(DJEPA):
    """D-JEPA for text-to-speech (module docstring). ``self.config`` is the backbone's
    :class:`DJEPAConfig` (the core's sampler and engine read it); ``self.tts`` the
    :class:`TTSConfig`."""

    model_type = "djepa-tts"

    def __init__(self, config: TTSConfig) -> None:
        super().__init__(config.djepa)
        self.tts = config
        h = config.hidden
        self.phoneme_encoder = PhonemeEncoder(len(config.symbols) + 1, h, config.heads)
        self.prior = nn.Linear(h, N_MELS)
        self.duration_predictor = _ConvStack(h, 2, 3, 1)
        self.pitch_predictor = _ConvStack(h, 2, 5, 2)
        self.pitch_embed = nn.Embedding(config.pitch_bins, config.pitch_dim)
        self.pitch_proj = nn.Linear(config.pitch_dim, h)
        self.position_proj = nn.Linear(3, h)
        self.register_buffer("mel_mean", torch.tensor(config.mel_mean), persistent=False)
        self.register_buffer("mel_std", torch.tensor(config.mel_std), persistent=False)

    # ------------------------------------------------------------------ mel <-> tokens
    @property
    def g(self) -> int:
        return self.tts.frames_per_token

    def normalize_mel(self, mel: Tensor) -> Tensor:
        """log-mel ``[B, T, 80]`` → normalised."""
        return (mel - self.mel_mean) / self.mel_std

    def denormalize_mel(self, x: Tensor) -> Tensor:
        return x * self.mel_std + self.mel_mean

    def mel_to_tokens(self, x: Tensor, frame_lengths: Tensor) -> TokenBatch:
        """normalised ``x [B, T, 80]`` (T may hold padding) → TokenBatch ``[B, ⌈T/g⌉, 80·g]``;
        frames past each row's end are the normalised silence value."""
        b, t, c = x.shape
        n = -(-t // self.g)
        valid = torch.arange(n * self.g, device=x.device)[None] < frame_lengths[:, None]
        silence = self.normalize_mel(torch.full((c,), SILENCE_LOG, device=x.device))
        x = F.pad(x, (0, 0, 0, n * self.g - t))
        x = torch.where(valid[..., None], x, silence)
        lengths = (frame_lengths + self.g - 1) // self.g
        return TokenBatch.from_lengths(x.reshape(b, n, self.g * c), lengths)

    def tokens_to_mel(self, tokens: Tensor, frame_lengths: Tensor) -> list[Tensor]:
        """``[B, N, 80·g]`` → per row the log-mel ``[80, T_b]`` (denormalised)."""
        b, n, _ = tokens.shape
        x = self.denormalize_mel(tokens.float().reshape(b, n * self.g, N_MELS))
        return [x[i, :int(frame_lengths[i])].T.contiguous() for i in range(b)]

    # ------------------------------------------------------------------ condition pieces
    def frame_condition(self, h: Tensor, path: Tensor, coarse: Tensor, num_tokens: int) -> Tensor:
        """``e_t = h_{a(t)} + W·pitch(coarse_t)`` (zero outside the path), averaged per token →
        ``[B, N, H]``."""
        frames = expand(h, path)                                           # [B, T, H]
        on = path.sum(1) > 0                                               # [B, T]
        e = frames + self.pitch_proj(self.pitch_embed(coarse)) + self.position_proj(position_features(path))
        e = e * on[..., None].to(frames.dtype)
        t = num_tokens * self.g
        e = F.pad(e, (0, 0, 0, t - e.shape[1]))
        return e.reshape(e.shape[0], num_tokens, self.g, -1).mean(2)

    def _condition(self, ids: Tensor, path: Tensor, coarse: Tensor, num_tokens: int) -> tuple[TTSInput, Tensor]:
        valid = ids > 0
        h = self.phoneme_encoder(ids, valid)
        aligned = self.frame_condition(h, path, coarse, num_tokens)
        return TTSInput(h, ~valid, aligned, phonemes=ids, path=path, coarse=coarse), h

    @torch.no_grad()
    def encode_target(self, tokens: Tensor | TokenBatch, labels: Any = None) -> Tensor:
        """The target encoder φ̄ with this (EMA) model's own phoneme encoding of the same
        phonemes, alignment and pitch (``labels`` a :class:`TTSInput`)."""
        if isinstance(labels, TTSInput) and labels.phonemes is not None:
            was = self.training
            self.eval()
            try:
                batch = self.as_batch(tokens)
                labels, _ = self._condition(labels.phonemes, labels.path, labels.coarse, batch.num_tokens)
            finally:
                self.train(was)
        return super().encode_target(tokens, labels)

    # ------------------------------------------------------------------ training
    def forward(self, tokens: Any = None, condition: Any = None, *, phonemes: Tensor | None = None,
                mel: Tensor | None = None, frame_lengths: Tensor | None = None, f0: Tensor | None = None,
                target_model: "TTSModel | None" = None, generator: torch.Generator | None = None,
                labels: Any = None) -> TTSOutput:
        """One training step's losses.

        Args:
            phonemes: ``[B, L] int64`` ids (0 = padding).
            mel: ``[B, T, 80]`` log-mel (HiFi-GAN convention), any value at padding.
            frame_lengths: ``[B] int64`` real frames per row.
            f0: ``[B, T]`` Hz per frame (0 = unvoiced).
            target_model: the EMA model (target encoder), as for :class:`DJEPA`.

        Raises:
            ValueError: a row with fewer frames than phonemes; missing inputs.
        """
        if phonemes is None or mel is None or frame_lengths is None or f0 is None:
            raise ValueError("TTSModel.forward needs phonemes, mel, frame_lengths and f0")
        x = self.normalize_mel(mel.float())
        b, t, _ = x.shape
        pvalid = phonemes > 0
        fvalid = torch.arange(t, device=x.device)[None] < frame_lengths[:, None]
        batch = self.mel_to_tokens(x, frame_lengths)
        h = self.phoneme_encoder(phonemes, pvalid)
        with torch.autocast(device_type=x.device.type, enabled=False):  # MAS and the prior in fp32
            mu = self.prior(h.float())
            with torch.no_grad():
                path = maximum_path(gaussian_log_likelihood(mu, x), pvalid, fvalid)
            mu_t = expand(mu, path)                                        # [B, T, 80]
            prior_loss = _masked_mean(0.5 * ((x - mu_t) ** 2).mean(-1) + 0.5 * math.log(2 * math.pi), fvalid)
        dur = path.sum(-1)                                                 # [B, L] frames
        logd = self.duration_predictor(h.detach(), pvalid)[..., 0]
        duration_loss = _masked_mean((logd - torch.log(dur.clamp(min=1))) ** 2, pvalid)
        frames_h = expand(h.detach(), path)
        pp = self.pitch_predictor(frames_h, fvalid)                        # [B, T, 2]
        voiced = (f0 > 0) & fvalid
        lf0 = (torch.log(f0.clamp(min=1.0)) - self.tts.f0_mean) / self.tts.f0_std
        pitch_loss = (_masked_mean((pp[..., 0] - lf0) ** 2, voiced)
                      + _masked_mean(F.binary_cross_entropy_with_logits(pp[..., 1], voiced.float(), reduction="none"), fvalid))
        coarse = f0_to_coarse(f0) * fvalid.long()
        cond = TTSInput(h, ~pvalid, self.frame_condition(h, path, coarse, batch.num_tokens),
                        phonemes=phonemes, path=path, coarse=coarse)
        out = super().forward(batch, cond, target_model=target_model, generator=generator)
        c = self.tts
        loss = out.loss + c.prior_weight * prior_loss + c.duration_weight * duration_loss + c.pitch_weight * pitch_loss
        return TTSOutput(loss, out.token_loss, out.prediction_loss, prior_loss.detach(),
                         duration_loss.detach(), pitch_loss.detach())

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def reference_durations(self, phonemes: Tensor, mel: Tensor, frame_lengths: Tensor) -> Tensor:
        """The durations training would use: MAS of the mel prior against a reference.

        Args:
            phonemes: ``[B, L] int64`` ids (0 = padding).
            mel: ``[B, T, 80]`` log-mel of the reference clips (HiFi-GAN convention).
            frame_lengths: ``[B] int64`` real frames per row.

        Returns:
            ``[B, L] int64`` frames per phoneme; each row sums to its ``frame_lengths``
            (0 at padding). Feeding these (and the reference F0) to :meth:`synthesize` is the
            teacher-forced "oracle" that ``tts-eval --oracle`` measures the predictors against.

        Raises:
            ValueError: a row with fewer frames than phonemes.
        """
        pvalid = phonemes > 0
        t = mel.shape[1]
        fvalid = torch.arange(t, device=mel.device)[None] < frame_lengths[:, None]
        h = self.phoneme_encoder(phonemes, pvalid)
        mu = self.prior(h.float())
        path = maximum_path(gaussian_log_likelihood(mu, self.normalize_mel(mel.float())), pvalid, fvalid)
        return path.sum(-1).long()

    @torch.no_grad()
    def predict_alignment(self, phonemes: Tensor, *, speed: float = 1.0, f0: Tensor | None = None,
                          durations: Tensor | None = None) -> dict[str, Tensor]:
        """Durations, frame count, pitch and the conditions for ``phonemes [B, L]``.

        ``durations`` / ``f0`` (ground truth) replace the predictors' outputs when given.
        Returns a dict: ``h``, ``durations [B, L]``, ``frame_lengths [B]``, ``path``, ``f0 [B, T]``,
        ``coarse``.
        """
        pvalid = phonemes > 0
        h = self.phoneme_encoder(phonemes, pvalid)
        if durations is None:
            logd = self.duration_predictor(h, pvalid)[..., 0]
            durations = torch.round(torch.exp(logd) / speed).clamp(min=1) * pvalid
        durations = durations.long()
        frame_lengths = durations.sum(1)
        path = durations_to_path(durations)
        t = path.shape[-1]
        fvalid = torch.arange(t, device=h.device)[None] < frame_lengths[:, None]
        if f0 is None:
            pp = self.pitch_predictor(expand(h, path), fvalid)
            f0 = torch.exp(pp[..., 0] * self.tts.f0_std + self.tts.f0_mean) * ((pp[..., 1] > 0) & fvalid)
        f0 = f0[:, :t]
        coarse = f0_to_coarse(f0) * fvalid.long()
        return dict(h=h, durations=durations, frame_lengths=frame_lengths, path=path, f0=f0, coarse=coarse)

    @torch.no_grad()
    def synthesize(self, phonemes: Tensor, sampler: SamplerConfig, *, generators: list[torch.Generator],
                   speed: float = 1.0, f0: Tensor | None = None, durations: Tensor | None = None) -> list[Tensor]:
        """Log-mel ``[80, T_b]`` per row of ``phonemes [B, L]`` (0 = padding): durations and
        pitch from the predictors (or given), then Algorithm 1 with one generator per row, so a
        row's output does not depend on the rest of the batch."""
        al = self.predict_alignment(phonemes, speed=speed, f0=f0, durations=durations)
        fl = al["frame_lengths"]
        lengths = (fl + self.g - 1) // self.g
        n = int(lengths.max())
        aligned = self.frame_condition(al["h"], al["path"], al["coarse"], n)
        template = TokenBatch.from_lengths(torch.zeros(phonemes.shape[0], n, self.config.token_dim,
                                                       device=phonemes.device), lengths)
        from djepa.core.sampler import generate

        tokens = generate(self, SequenceInput(al["h"], phonemes == 0, aligned), sampler,
                          batch=template, generators=generators)
        return self.tokens_to_mel(tokens, fl)

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, directory):  # type: ignore[override]
        """``config.json`` (model_type ``djepa-tts``, the :class:`TTSConfig`) + safetensors."""
        from djepa.core.pretrained import FORMAT_VERSION, atomic_write_text

        directory = super().save_pretrained(directory)
        meta = {"model_type": self.model_type, "format_version": FORMAT_VERSION,
                "config": config_to_dict(self.tts)}
        atomic_write_text(Path(directory) / "config.json", json.dumps(meta, indent=2) + "\n")
        return directory

    @classmethod
    def load_config(cls, directory) -> TTSConfig:  # type: ignore[override]
        """Read ``DIR/config.json`` as a :class:`TTSConfig`.

        Raises:
            FileNotFoundError / ValueError: missing, unreadable, or a model of another kind
            (e.g. an image D-JEPA: the message says so).
        """
        path = Path(directory) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: not a save_pretrained directory")
        try:
            meta = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not valid JSON ({e})") from None
        if not isinstance(meta, dict) or meta.get("model_type") != cls.model_type:
            kind = meta.get("model_type") if isinstance(meta, dict) else None
            raise ValueError(f"{path} holds a {kind!r} model, not a text-to-speech model ({cls.model_type!r}); "
                             f"pass a tts-train run folder")
        try:
            return config_from_dict(TTSConfig, meta["config"])
        except (KeyError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None
