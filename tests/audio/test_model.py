"""TTS model (issue 14): MAS against a brute force, durations sum to the frame count, padding
invariance and batched = single for phoneme and mel streams of different lengths (training
losses and synthesis), save / load, another modality's checkpoint refused."""

from __future__ import annotations

import itertools

import pytest
import torch

from djepa.audio.alignment import durations_to_path, expand, gaussian_log_likelihood, maximum_path
from djepa.audio.model import TTSConfig, TTSModel
from djepa.core.config import SamplerConfig, preset
from djepa.core.rng import row_generators

H = 32


def tiny(seed=0, g=2) -> TTSModel:
    torch.manual_seed(seed)
    d = preset("tiny", token_dim=80 * g, grid=(256,), condition="sequence", condition_dim=H, aligned_dim=H,
               pos_embed="rope", joint_depth=None, loss=dict(kind="flow", mlp_width=64, mlp_depth=2))
    m = TTSModel(TTSConfig(djepa=d, symbols=tuple("abcdefghij"), frames_per_token=g, hidden=H,
                           mel_mean=tuple([-5.0] * 80), mel_std=tuple([2.0] * 80)))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return m


def _compositions(total, parts):
    for cuts in itertools.combinations(range(1, total), parts - 1):
        b = (0,) + cuts + (total,)
        yield [b[i + 1] - b[i] for i in range(parts)]


@pytest.mark.parametrize("L,T", [(1, 4), (2, 5), (3, 7), (4, 8), (5, 9)])
def test_mas_equals_brute_force(L, T):
    g = torch.Generator().manual_seed(L * 100 + T)
    for trial in range(5):
        value = torch.randn(1, L, T, generator=g)
        path = maximum_path(value, torch.ones(1, L, dtype=torch.bool), torch.ones(1, T, dtype=torch.bool))
        best, best_d = -1e9, None
        for d in _compositions(T, L):
            p = durations_to_path(torch.tensor([d]), T)
            s = float((p * value).sum())
            if s > best:
                best, best_d = s, d
        assert path.sum(-1)[0].long().tolist() == best_d
        assert int(path.sum()) == T and bool((path.sum(1) == 1).all())  # each frame one phoneme


def test_mas_with_padding_and_durations_sum():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(2, 5, 80, generator=g)
    x = torch.randn(2, 12, 80, generator=g)
    pv = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    fv = torch.tensor([[True] * 12, [True] * 7 + [False] * 5])
    path = maximum_path(gaussian_log_likelihood(mu, x), pv, fv)
    d = path.sum(-1)
    assert d.sum(1).tolist() == [12, 7] and bool((d[pv] >= 1).all()) and bool((d[~pv] == 0).all())
    alone = maximum_path(gaussian_log_likelihood(mu[1:, :3], x[1:, :7]), pv[1:, :3], fv[1:, :7])
    torch.testing.assert_close(path[1, :3, :7], alone[0])
    with pytest.raises(ValueError, match="frames for"):
        maximum_path(torch.zeros(1, 5, 3), torch.ones(1, 5, dtype=torch.bool), torch.ones(1, 3, dtype=torch.bool))
    # log-likelihood against the direct formula
    ll = gaussian_log_likelihood(mu, x)
    ref = -0.5 * ((x[:, None] - mu[:, :, None]) ** 2).sum(-1) - 40 * torch.log(torch.tensor(2 * torch.pi))
    torch.testing.assert_close(ll, ref, rtol=1e-5, atol=1e-3)
    h = torch.randn(2, 5, 7, generator=g)
    e = expand(h, path)
    a = path.argmax(1)
    torch.testing.assert_close(e[0], h[0, a[0]])


def _batch(rows):
    """Collate ``rows`` [(ids, T)] with mel / f0 filled so padding holds junk."""
    g = torch.Generator().manual_seed(7)
    lmax, tmax = max(len(r[0]) for r in rows), max(r[1] for r in rows)
    ph = torch.zeros(len(rows), lmax, dtype=torch.long)
    mel = torch.randn(len(rows), tmax, 80, generator=g) * 50
    f0 = torch.rand(len(rows), tmax, generator=g) * 300
    base = torch.Generator().manual_seed(1)
    for i, (ids, t) in enumerate(rows):
        ph[i, :len(ids)] = torch.tensor(ids)
        gi = torch.Generator().manual_seed(1000 * len(ids) + t)  # by content, not by row index
        mel[i, :t] = torch.randn(t, 80, generator=gi) * 2 - 5
        f0[i, :t] = torch.rand(t, generator=gi) * 200 * (torch.rand(t, generator=gi) > 0.3)
    return dict(phonemes=ph, mel=mel, f0=f0, frame_lengths=torch.tensor([r[1] for r in rows]))


def test_phoneme_encoder_and_predictors_padding_invariant():
    m = tiny().eval()
    rows = [([1, 2, 3, 4, 5, 6], 30), ([3, 4, 5], 17)]
    b = _batch(rows)
    al = m.predict_alignment(b["phonemes"])
    one = m.predict_alignment(b["phonemes"][1:, :3])
    torch.testing.assert_close(al["h"][1, :3], one["h"][0], rtol=1e-5, atol=1e-6)
    assert al["durations"][1, :3].tolist() == one["durations"][0].tolist()
    assert int(al["frame_lengths"][1]) == int(one["frame_lengths"][0]) == int(one["durations"].sum())
    n1 = int(one["frame_lengths"][0])
    torch.testing.assert_close(al["f0"][1, :n1], one["f0"][0], rtol=1e-5, atol=1e-4)


def test_training_losses_padding_invariant():
    """A row padded (phonemes and mel frames, junk in the padding) to a longer row's sizes gives
    the same losses as alone: same mask (FixedMasking over its real tokens), no dropout, the
    flow noise drawn in the same order."""
    from djepa.core.masking import FixedMasking

    m = tiny()
    m.condition.drop_prob = 0.0
    rows = [([1, 2, 3, 4, 5, 6], 30), ([3, 4, 5], 17)]
    b = _batch(rows)
    alone = _batch([rows[1]])                 # 17 frames → 9 tokens, 3 phonemes
    padded = {k: v[1:] for k, v in b.items()}  # the same row padded to 30 frames / 6 phonemes
    pattern = [True, False, True, True, False, True, True, True, False]
    m.masking = FixedMasking(torch.tensor([pattern]))
    torch.manual_seed(3)
    o1 = m(**alone, target_model=m)
    m.masking = FixedMasking(torch.tensor([pattern + [False] * 6]))
    torch.manual_seed(3)
    o2 = m(**padded, target_model=m)
    for name, a, c in zip(o1._fields, o1, o2):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-5, msg=name)
    assert float(o1.prior_loss) > 0 and float(o1.token_loss) > 0


def test_synthesis_batched_equals_single():
    m = tiny().eval()
    ph = torch.tensor([[1, 2, 3, 4, 5, 6], [3, 4, 5, 0, 0, 0]])
    cfg = SamplerConfig(num_ar_steps=3, num_denoise_steps=3, cfg_scale=1.5)
    both = m.synthesize(ph, cfg, generators=row_generators([5, 6]))
    one = m.synthesize(ph[1:, :3], cfg, generators=row_generators([6]))
    assert both[1].shape == one[0].shape and both[1].shape[0] == 80
    torch.testing.assert_close(both[1], one[0], rtol=1e-4, atol=1e-4)


def test_reference_durations_are_the_best_monotonic_alignment_and_fix_the_length():
    """tts-eval --oracle: MAS durations of the mel prior against a reference equal a brute-force
    search over all monotonic alignments (3 phonemes, 7 frames), sum to the frame count, do not
    depend on padding, and synthesis with them (and a reference F0) has exactly that many frames."""
    m = tiny().eval()
    b = _batch([([1, 2, 3, 4, 5, 6], 30), ([3, 4, 5], 7)])
    d = m.reference_durations(b["phonemes"], b["mel"], b["frame_lengths"])
    assert d.sum(1).tolist() == [30, 7] and d[1, 3:].tolist() == [0, 0, 0] and bool((d[0] >= 1).all())
    alone = m.reference_durations(b["phonemes"][1:, :3], b["mel"][1:, :7], b["frame_lengths"][1:])
    assert alone[0].tolist() == d[1, :3].tolist()
    with torch.no_grad():
        h = m.phoneme_encoder(b["phonemes"][1:, :3], torch.ones(1, 3, dtype=torch.bool))[0]
        mu = m.prior(h)                                                     # [3, 80]
        x = m.normalize_mel(b["mel"][1, :7])                                # [7, 80]
        ll = -0.5 * ((x[None] - mu[:, None]) ** 2).sum(-1)                  # [3, 7]
    best = max(_compositions(7, 3), key=lambda c: sum(float(ll[i, sum(c[:i]):sum(c[:i + 1])].sum()) for i in range(3)))
    assert d[1, :3].tolist() == best
    cfg = SamplerConfig(num_ar_steps=2, num_denoise_steps=2)
    mel = m.synthesize(b["phonemes"], cfg, generators=row_generators([1, 2]), durations=d, f0=b["f0"])
    assert [x.shape for x in mel] == [(80, 30), (80, 7)]


def test_save_load_and_other_modality_refused(tmp_path):
    m = tiny()
    m.save_pretrained(tmp_path / "tts")
    m2 = TTSModel.from_pretrained(tmp_path / "tts")
    assert m2.tts == m.tts
    for (k, v), (k2, v2) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    from djepa.core.model import DJEPA

    DJEPA(preset("tiny", token_dim=4, grid=(4, 4), num_classes=3)).save_pretrained(tmp_path / "img")
    with pytest.raises(ValueError, match="not a text-to-speech model"):
        TTSModel.from_pretrained(tmp_path / "img")
