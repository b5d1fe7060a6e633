"""The engine's preview hook (issue 11, item 7): the modality writes its own media; the engine
schedules the call on the EMA model, logs the files and adds the optional image to TensorBoard."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from djepa.core.train import TrainConfig, train
from djepa.core.train.preview import Preview, PreviewRequest
from djepa.core.train.selftest import ToyDJEPA, toy_dataset


def _cfg(out: Path, **kw) -> TrainConfig:
    base = dict(output_dir=str(out), max_steps=6, micro_batch_size=8, zero_stage=0,
                precision="fp32", lr=3e-3, weight_decay=0.0, ema_decay=0.9, tensorboard=False,
                progress_bar=False, log_every=100, checkpoint_every=1000, sample_every=3, seed=11)
    base.update(kw)
    return TrainConfig(**base)


def test_a_non_image_preview_is_written_by_the_hook_on_the_ema_model(tmp_path, capsys):
    calls = []

    def wav_like(model, request: PreviewRequest) -> Preview:
        calls.append((model, request, torch.is_grad_enabled()))
        path = request.path(".wav")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"RIFF-not-really")  # any format: the core never looks inside
        return Preview(files=(path,))

    torch.manual_seed(0)
    res = train(ToyDJEPA(), toy_dataset(8), _cfg(tmp_path, tensorboard=True), preview=wav_like)
    samples = tmp_path / "samples"
    assert sorted(p.name for p in samples.iterdir()) == ["step_00000003.wav", "step_00000006.wav"]
    assert [r.step for _, r, _ in calls] == [3, 6]
    assert all(m is res.ema.module for m, _, _ in calls)  # the EMA model, not the live weights
    assert not any(grad for _, _, grad in calls)  # under no_grad
    assert {(r.samples_dir, r.seed, r.device.type) for _, r, _ in calls} == {(samples, 11, "cpu")}
    out = capsys.readouterr().out
    assert f"samples written to {samples / 'step_00000003.wav'}" in out
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert "samples" not in acc.Tags()["images"]  # no image returned: none logged


def test_preview_image_goes_to_tensorboard(tmp_path):
    image = torch.zeros(3, 4, 6)
    image[0, 1, 2] = 1.0

    def hook(model, request):
        return Preview(files=(), tensorboard_image=image)

    torch.manual_seed(0)
    train(ToyDJEPA(), toy_dataset(8), _cfg(tmp_path, max_steps=3, tensorboard=True), preview=hook)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    (event,) = acc.Images("samples")
    assert event.step == 3 and (event.width, event.height) == (6, 4)


def test_preview_and_sample_fn_are_exclusive(tmp_path):
    with pytest.raises(ValueError, match="preview or sample_fn, not both"):
        train(ToyDJEPA(), toy_dataset(8), _cfg(tmp_path), preview=lambda m, r: Preview(),
              sample_fn=lambda m, s: torch.rand(1, 3, 2, 2))


def test_request_generators_are_one_stream_per_row_seeded_seed_plus_row():
    request = PreviewRequest(step=5, samples_dir=Path("RUN/samples"), device=torch.device("cpu"), seed=7)
    assert request.path(".mp4") == Path("RUN/samples/step_00000005.mp4")
    gens = request.generators(3)
    for i, g in enumerate(gens):
        expected = torch.randn(4, generator=torch.Generator().manual_seed(7 + i))
        assert torch.equal(torch.randn(4, generator=g), expected)
