"""``video-sample``: class-conditional videos with Algorithm 1 on the 3-D token grid (paper §3.5,
App. G.3: 64 AR steps), written as mp4 files and a PNG frame strip.

``uv run video-sample --class 12`` samples the run in ``runs/video`` (the default of
``video-train``). ``--class`` takes a 0-based index or a class name (printed as resolved).
Sample ``i`` draws its orders and noise from its own generator seeded ``seed + i``: the same
seed gives the same frames, and the same mp4 bytes (:mod:`djepa.video.media`).

Continuation / inpainting for free: ``--prefix CLIP --prefix-frames K`` encodes the clip (at the
run's fps and frame size), keeps the tokens of its first ``K`` frames known (the sampler's
known tokens, never changed) and generates the rest. ``K`` must cover whole temporal tokens.

Each clip is trimmed after its last non-padding frame (:func:`djepa.video.media.trim_padding`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import torch
import tyro

from djepa.core.cli import UserError, parse, run_main, with_cpu_speed
from djepa.core.cpu_speed import CpuSpeedFlags
from djepa.core.sampler_flags import SamplerFlags, resolve_device
from djepa.video.media import DEFAULT_PAD_THRESHOLD

__all__ = ["VideoSampleConfig", "load_video_run", "prefix_tokens", "run", "main"]


@dataclass(frozen=True, kw_only=True)
class VideoSampleConfig:
    """Sample class-conditional videos from a trained D-JEPA (Algorithm 1)."""

    sampler: SamplerFlags = field(default_factory=SamplerFlags)
    """Sampler settings (§3.5; core SamplerFlags: --ar-steps default min(N, 64), --cfg, …)."""
    checkpoint: str = "runs/video"
    """A video-train run folder, its pretrained/ export, or RUN/checkpoints/step_N."""
    class_id: Annotated[str, tyro.conf.arg(name="class")] = "0"
    """Class to sample: a 0-based index or a class name (e.g. 12 or 3-right)."""
    num_samples: int = 4
    """Videos to generate."""
    batch_size: int = 50
    """Videos generated per batch (does not change the samples)."""
    output_dir: str = "samples/video"
    """Where the .mp4 files and strip.png go."""
    prefix: str | None = None
    """A video file whose first --prefix-frames frames are kept (continuation)."""
    prefix_frames: int | None = None
    """Frames of --prefix to keep (whole temporal tokens)."""
    pad_threshold: float = DEFAULT_PAD_THRESHOLD
    """Trailing frames with mean intensity below this are padding and trimmed (0 = keep all)."""
    overwrite: bool = False
    """Replace the mp4 files of an output folder that already holds some."""
    speed: CpuSpeedFlags = field(default_factory=CpuSpeedFlags)
    """CPU speed paths, one switch (djepa.core.cpu_speed)."""


def load_video_run(path: str, device):
    """``(model, tokenizer, info)`` of a video run (:func:`djepa.core.runs.load_run`).

    Raises:
        UserError: a missing folder, or a run of another modality.
    """
    import djepa.video.tokenizer  # noqa: F401  (register the kinds without entry points)
    import djepa.video.vae  # noqa: F401
    from djepa.core.runs import TOKENIZER_FILE, load_run, resolve_run

    try:
        _, where = resolve_run(path)
    except FileNotFoundError as e:
        raise UserError(f"{e} (train one with video-train, or pass --checkpoint RUN)") from None
    info_path = where / TOKENIZER_FILE if (where / TOKENIZER_FILE).is_file() else where.parent.parent / TOKENIZER_FILE
    if info_path.is_file():
        kind = json.loads(info_path.read_text()).get("kind", "")
        if not str(kind).startswith("video-"):
            raise UserError(f"{path} is a {kind!r} run, not a video run (video-train writes kind video-pixel or video-vae)")
    run = load_run(path, device)
    if not str(run.tokenizer_config.get("kind", "")).startswith("video-"):
        raise UserError(f"{path} is a {run.tokenizer_config.get('kind')!r} run, not a video run")
    return run.model, run.tokenizer, run.tokenizer_config


def prefix_tokens(path: str, frames_kept: int, tokenizer, info: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``(known_tokens [1, N, D], known_mask [1, N])`` of the first ``frames_kept`` frames of ``path``.

    Raises:
        UserError: missing / bad file, frames of another size, ``K`` out of range or not a whole
            number of temporal tokens.
    """
    from djepa.video.datasets import pad_clip
    from djepa.video.decode import BadVideo, decode_video

    t, h, w = tokenizer.frames, tokenizer.height, tokenizer.width
    fpt = tokenizer.frames_per_token
    if not 1 <= frames_kept < t or frames_kept % fpt:
        raise UserError(f"--prefix-frames must be a multiple of {fpt} (frames per temporal token) in "
                        f"[{fpt}, {t - 1}], got {frames_kept}")
    try:
        clip, _ = decode_video(path, fps=float(info.get("fps", 8.0)), max_frames=t)
    except (BadVideo, FileNotFoundError) as e:
        raise UserError(f"--prefix: {e}") from None
    if tuple(clip.shape[1:3]) != (h, w):
        raise UserError(f"--prefix clip {Path(path).name} has {clip.shape[1]}×{clip.shape[2]} frames; the model's are "
                        f"{h}×{w} (resize it, e.g. ffmpeg -vf scale={w}:{h})")
    if len(clip) < frames_kept:
        raise UserError(f"--prefix clip {Path(path).name} has {len(clip)} frames at {info.get('fps', 8.0)} fps, "
                        f"fewer than --prefix-frames {frames_kept}")
    padded, _ = pad_clip(clip, t)
    video = torch.from_numpy(padded).permute(3, 0, 1, 2).float() / 255.0
    if tokenizer.channels == 1:
        video = (video * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1, 1)).sum(0, keepdim=True)
    tokens = tokenizer.encode(video.unsqueeze(0))
    gt, gh, gw = tokenizer.grid
    steps = frames_kept // fpt
    mask = torch.zeros(gt, gh * gw, dtype=torch.bool)
    mask[:steps] = True
    return tokens, mask.reshape(1, -1)


def run(cfg: VideoSampleConfig) -> dict:
    """Generate, write and print; returns the summary (also ``OUTPUT/summary.json``)."""
    from djepa.core.rng import row_generators
    from djepa.video.classes import resolve_class
    from djepa.video.media import to_uint8_frames, write_frame_strip, write_mp4
    from djepa.video.preview import sample_videos

    if cfg.num_samples < 1 or cfg.batch_size < 1:
        raise UserError("--num-samples and --batch-size must be >= 1")
    if (cfg.prefix is None) != (cfg.prefix_frames is None):
        raise UserError("--prefix and --prefix-frames go together")
    device = resolve_device(cfg.sampler.device)
    cfg.sampler.autocast(device)
    model, tokenizer, info = load_video_run(cfg.checkpoint, device)
    cfg.sampler.prepare_model(model)
    names = list(info.get("class_names") or [str(i) for i in range(model.config.num_classes)])
    try:
        c = resolve_class(cfg.class_id, names)
    except ValueError as e:
        raise UserError(str(e)) from None
    print(f"video-sample: class {c} = {names[c]}")
    known_t = known_m = None
    n_unknown = model.config.seq_len
    if cfg.prefix is not None:
        known_t, known_m = prefix_tokens(cfg.prefix, int(cfg.prefix_frames), tokenizer, info)
        n_unknown = int((~known_m).sum())
    sampler = cfg.sampler.sampler_config(n_unknown)
    out = Path(cfg.output_dir)
    old = sorted(out.glob("*.mp4")) if out.is_dir() else []
    if old and not cfg.overwrite:
        raise UserError(f"{out} already holds {len(old)} mp4 files; pass --overwrite or choose another --output-dir")
    for p in old:
        p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    fps = float(info.get("fps", 8.0))
    t0 = time.perf_counter()
    rows, paths, lengths, codecs = [], [], [], set()
    for start in range(0, cfg.num_samples, cfg.batch_size):
        b = min(cfg.batch_size, cfg.num_samples - start)
        labels = torch.full((b,), c, dtype=torch.long)
        gens = row_generators(range(cfg.sampler.seed + start, cfg.sampler.seed + start + b), device)
        kt = None if known_t is None else known_t.expand(b, -1, -1)
        km = None if known_m is None else known_m.expand(b, -1)
        with cfg.sampler.autocast(device):
            videos, kept = sample_videos(model, tokenizer, labels, sampler, gens, known_tokens=kt,
                                         known_mask=km, pad_threshold=cfg.pad_threshold)
        for j, (v, k) in enumerate(zip(videos, kept)):
            frames = to_uint8_frames(v[:, :k])
            path = out / f"class{c:03d}_{start + j:04d}.mp4"
            codecs.add(write_mp4(path, frames, fps))
            print(path)
            rows.append(frames)
            paths.append(str(path))
            lengths.append(k)
    seconds = time.perf_counter() - t0
    strip = write_frame_strip(out / "strip.png", rows[:16], scale=4)
    print(strip)
    summary = dict(class_id=c, class_name=names[c], videos=paths, frames_kept=lengths, strip=str(strip),
                   seconds=round(seconds, 2), codec=sorted(codecs), fps=fps,
                   sampler=dict(ar_steps=sampler.num_ar_steps, denoise_steps=sampler.num_denoise_steps,
                                cfg=sampler.cfg_scale, temperature=sampler.temperature, solver=sampler.flow_solver,
                                seed=cfg.sampler.seed),
                   prefix=cfg.prefix, prefix_frames=cfg.prefix_frames)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"video-sample: {cfg.num_samples} videos in {seconds:.1f} s; frames kept {lengths}")
    return summary


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``video-sample``."""
    return run_main("video-sample", lambda: run(with_cpu_speed(parse(VideoSampleConfig, argv, prog="video-sample"))) and 0)


if __name__ == "__main__":
    raise SystemExit(main())
