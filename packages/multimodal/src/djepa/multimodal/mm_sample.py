"""Sampling the text+image model (paper App. G.4): text by next-token prediction, images by
Algorithm 1 (§3.5) on a fixed-size span, switching on ``<|visual_start|>``.

App. G.4: *"During the sampling process, we input the image caption that needs to be generated
and let the network continuously predict the next tokens until it samples a '<|visual_start|>'
control token. Then, it switches to the next set of tokens prediction mode to complete the
sampling of the entire image."*

* **Text** (:func:`decode_text`): the context encoder φ with a key/value cache; per row the next
  id is drawn from ``softmax(logits / temperature)`` restricted to the nucleus of mass ``top_p``
  (Holtzman et al. 2020; ``temperature = 0`` = greedy), each row from its own generator. Ids
  never sampled: pad, bos, unk, ``<|user|>``, ``<|assistant|>`` and ``<|visual_end|>`` (forced
  after a span). A row stops at ``<eos>`` (or, with ``stop_on_visual``, at ``<|visual_start|>``).
  Rows are left-padded, so a batch decodes in lock step; padding is never a key, so a row
  decodes the same alone or in any batch.
* **Image** (:func:`generate_images`): given prefixes ending in ``<|visual_start|>``, φ and γ run
  once over the prefix (their caches), then Algorithm 1 over the ``H×W`` span: a random order
  per row, the cosine schedule :func:`djepa.core.sampler.ar_schedule`, at each AR step φ on the
  span (keys: the prefix and the span tokens known so far), γ on the span (mask token where
  unknown), the denoising MLP's sampler on the tokens revealed (temperature, CFG growing linearly
  as in :func:`djepa.core.sampler.cfg_at`). CFG's unconditional branch is the same span after the
  null prefix ``<bos> <|visual_start|>`` — the preceding text dropped, as in training
  (``text_drop_prob``); ``cfg_scale = 1`` runs no unconditional branch.
* **A reply** (:func:`respond`): decode text; on ``<|visual_start|>`` (or at once with
  ``force_image``) generate the image, append ``<|visual_end|>`` and continue until ``<eos>``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from djepa.core.config import SamplerConfig
from djepa.core.rng import RowStreams
from djepa.core.sampler import ar_schedule, cfg_at
from djepa.multimodal.mm_sequence import Image, Segment, Text, attention_mask, null_image_prefix, pack
from djepa.multimodal.mm_tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID

__all__ = ["Prefix", "encode_prefix", "decode_text", "generate_images", "respond", "Reply",
           "sample_next", "MMPreview", "TextSampling"]


@dataclass(frozen=True)
class TextSampling:
    """Text decoding settings: temperature (0 = greedy), nucleus mass ``top_p`` in (0, 1],
    the most new tokens per reply."""

    temperature: float = 0.0
    top_p: float = 0.9
    max_new_tokens: int = 32

    def __post_init__(self) -> None:
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")


@dataclass
class Prefix:
    """A left-padded prefix after φ: ``batch`` (packed), ``h [B, L, E]`` φ's states,
    ``cache`` φ's keys/values, ``key_ok [B, L]`` (True = a real token, may be attended),
    ``next_pos [B]`` the RoPE index of the next token."""

    batch: object
    h: Tensor
    cache: list
    key_ok: Tensor
    next_pos: Tensor


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def encode_prefix(model, rows: list[list[Segment]]) -> Prefix:
    """φ over the left-padded ``rows`` (one pass; every image in them is context, unmasked)."""
    dev = _device(model)
    b = pack(rows, model.config.token_dim, left=True).to(dev)
    h, cache = model.encode(model.embed(b), b.positions, attention_mask(b))
    return Prefix(b, h, cache, ~b.padding, b.positions[:, -1].max(-1).values + 1)


def _banned(model) -> list[int]:
    tok = model.tokenizer()
    return [PAD_ID, BOS_ID, UNK_ID, tok.user, tok.assistant, tok.visual_end]


def sample_next(logits: Tensor, ts: TextSampling, generators: list[torch.Generator] | None,
                banned: list[int]) -> Tensor:
    """``logits [B, V]`` → next ids ``[B]``: greedy at temperature 0, else top-p sampling with
    row ``i`` drawing from ``generators[i]``. ``banned`` ids get probability 0."""
    logits = logits.float().clone()
    logits[:, banned] = float("-inf")
    if ts.temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / ts.temperature, dim=-1)
    sp, si = probs.sort(dim=-1, descending=True)
    keep = (sp.cumsum(-1) - sp) < ts.top_p  # the smallest prefix whose mass reaches top_p
    sp = sp * keep
    out = []
    for i in range(logits.shape[0]):
        g = None if generators is None else generators[i]
        j = torch.multinomial(sp[i].cpu() / sp[i].sum().cpu(), 1, generator=g)
        out.append(si[i, j.to(si.device)])
    return torch.cat(out)


def _step(model, pre: Prefix, ids: Tensor) -> Prefix:
    """Append one text token per row (``ids [B]``) through φ's cache."""
    dev = ids.device
    B = ids.shape[0]
    pos = pre.next_pos[:, None, None].expand(B, 1, 3)
    key_ok = torch.cat([pre.key_ok, torch.ones(B, 1, dtype=torch.bool, device=dev)], dim=1)
    h, cache = model.encode(model.text_embed(ids[:, None]), pos, key_ok[:, None, None, :], pre.cache)
    return Prefix(pre.batch, torch.cat([pre.h, h], 1), cache, key_ok, pre.next_pos + 1)


@torch.no_grad()
def decode_text(model, rows: list[list[Segment]], ts: TextSampling = TextSampling(), *,
                generators: list[torch.Generator] | None = None, stop_on_visual: bool = True,
                use_cache: bool = True) -> tuple[list[list[int]], list[str]]:
    """Decode text after each row of ``rows`` (module docstring).

    Returns:
        ``(new ids per row, stop reason per row)``; the ids include the stop token; reasons
        ``"eos"``, ``"visual_start"`` or ``"length"``.

    ``use_cache=False`` recomputes φ over the whole sequence every step (the reference the
    cached path is tested against).
    """
    model.eval()
    tok = model.tokenizer()
    banned = _banned(model)
    B = len(rows)
    out: list[list[int]] = [[] for _ in range(B)]
    reason = ["length"] * B
    done = [False] * B
    fed: list[list[int]] = [[] for _ in range(B)]  # every id fed per row (finished rows keep step)
    pre = encode_prefix(model, rows)
    for _ in range(ts.max_new_tokens):
        nxt = sample_next(model.logits(pre.h[:, -1]), ts, generators, banned)
        for i in range(B):
            fed[i].append(int(nxt[i]))
            if done[i]:
                continue
            t = int(nxt[i])
            out[i].append(t)
            if t == EOS_ID or (stop_on_visual and t == tok.visual_start):
                done[i] = True
                reason[i] = "eos" if t == EOS_ID else "visual_start"
        if all(done):
            break
        if use_cache:
            pre = _step(model, pre, nxt)
        else:
            pre = encode_prefix(model, [r + [Text(tuple(f))] for r, f in zip(rows, fed)])
    return out, reason


@torch.no_grad()
def generate_images(model, rows: list[list[Segment]], sampler: SamplerConfig = SamplerConfig(num_ar_steps=16), *,
                    generators: list[torch.Generator] | None = None, clip_range=(-1.0, 1.0)) -> Tensor:
    """Algorithm 1 on one image span after each row of ``rows`` (each must end with
    ``<|visual_start|>``), conditioned on everything before it (module docstring).

    Returns:
        ``[B, H·W, D]`` float32 tokens (row-major over the model's grid).

    Raises:
        ValueError: a row that does not end with ``<|visual_start|>``; ``generators`` of the
            wrong count.
    """
    model.eval()
    c = model.config
    tok = model.tokenizer()
    dev = _device(model)
    B = len(rows)
    if generators is not None and len(generators) != B:
        raise ValueError(f"{len(generators)} generators for {B} rows")
    for r in rows:
        if not r or not isinstance(r[-1], Text) or not r[-1].ids or r[-1].ids[-1] != tok.visual_start:
            raise ValueError("an image prefix must end with <|visual_start|>")
    H, W = c.image_grid
    N, D = H * W, c.token_dim
    use_cfg = sampler.cfg_scale != 1.0
    all_rows = rows + ([[Text(null_image_prefix(tok))] for _ in rows] if use_cfg else [])
    R = len(all_rows)
    pre = encode_prefix(model, all_rows)
    prefix_mask = attention_mask(pre.batch)
    _, gcache = model.predict(pre.h, torch.zeros_like(pre.key_ok), pre.batch.positions, prefix_mask)
    # span positions (s, s + r, s + c) and its fixed key sets
    rr, cc = torch.arange(N, device=dev) // W, torch.arange(N, device=dev) % W
    s0 = pre.next_pos[:, None]
    positions = torch.stack([s0.expand(R, N), s0 + rr, s0 + cc], dim=-1)
    # orders: row i from its generator (or one shared stream), as djepa.core.sampler does
    if generators is None:
        keys = torch.rand(B, N).to(dev)
    else:
        keys = torch.stack([torch.rand(N, generator=g, device=g.device).to(dev) for g in generators])
    orders = keys.argsort(-1)
    schedule = ar_schedule(N, sampler.num_ar_steps)
    tokens = torch.zeros(B, N, D, device=dev)
    known = torch.zeros(B, N, dtype=torch.bool, device=dev)
    extra = {}
    if c.loss.kind == "flow":
        extra = dict(solver=sampler.flow_solver)
        if sampler.flow_time_shift is not None:
            extra["time_shift"] = sampler.flow_time_shift
    revealed = 0
    for k, st in enumerate(schedule):
        if st.num_revealed == 0:
            continue
        tok_in = torch.cat([tokens, tokens]) if use_cfg else tokens
        known_in = torch.cat([known, known]) if use_cfg else known
        x = model.embed_image(tok_in, positions)
        enc_keys = torch.cat([pre.key_ok, known_in], dim=1)[:, None, None, :].expand(R, 1, N, -1)
        h, _ = model.encode(x, positions, enc_keys, pre.cache)
        pred_keys = torch.cat([pre.key_ok, torch.ones(R, N, dtype=torch.bool, device=dev)], 1)[:, None, None, :]
        z, _ = model.predict(h, ~known_in, positions, pred_keys.expand(R, 1, N, -1), gcache)
        idx = orders[:, revealed:revealed + st.num_revealed]  # [B, q]
        take = idx.shape[1]
        zc = torch.gather(z[:B], 1, idx[..., None].expand(-1, -1, z.shape[-1])).reshape(B * take, -1)
        zu = torch.gather(z[B:], 1, idx[..., None].expand(-1, -1, z.shape[-1])).reshape(B * take, -1) if use_cfg else None
        scale = cfg_at(sampler.cfg_scale, sampler.cfg_schedule, st.mask_len, N) if use_cfg else 1.0
        gen = None if generators is None else RowStreams(generators, [take] * B)
        new = model.token_loss.sample(zc, z_uncond=zu, cfg_scale=scale, temperature=sampler.temperature,
                                      num_steps=sampler.num_denoise_steps, generator=gen,
                                      clip_range=clip_range, **extra).float()
        tokens.scatter_(1, idx[..., None].expand(-1, -1, D), new.reshape(B, take, D))
        known.scatter_(1, idx, True)
        revealed += take
    return tokens


@dataclass
class Reply:
    """One assistant reply: ``text`` (decoded), ``images`` (``[N, D]`` token tensors in order),
    ``segments`` (what was appended to the history, ending with ``<eos>``)."""

    text: str
    images: list[Tensor] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)


def user_turn(model, text: str, image_tokens: Tensor | None, first: bool) -> list[Segment]:
    """A user message as segments: ``[<bos>] <|user|> [<|visual_start|> IMG <|visual_end|>] text
    <|assistant|>`` (an attached image before the text, as in training)."""
    tok = model.tokenizer()
    head = (BOS_ID,) if first else ()
    if image_tokens is None:
        return [Text((*head, tok.user, *tok.encode(text), tok.assistant))]
    return [Text((*head, tok.user, tok.visual_start)), Image(image_tokens, tuple(model.config.image_grid)),
            Text((tok.visual_end, *tok.encode(text), tok.assistant))]


@torch.no_grad()
def respond(model, history: list[Segment], ts: TextSampling, sampler: SamplerConfig, *,
            force_image: bool = False, generator: torch.Generator | None = None,
            max_images: int = 1) -> Reply:
    """The assistant's reply after ``history`` (which ends with ``<|assistant|>``): text until
    ``<eos>``, switching to an image on ``<|visual_start|>`` (module docstring). At most
    ``max_images`` images; a further ``<|visual_start|>`` ends the reply."""
    tok = model.tokenizer()
    gens = None if generator is None else [generator]
    seq = list(history)
    reply = Reply(text="")
    pieces: list[int] = []
    budget = ts.max_new_tokens
    pending_image = force_image
    while True:
        if pending_image:
            seq.append(Text((tok.visual_start,)))
            reply.segments.append(Text((tok.visual_start,)))
            img = generate_images(model, [seq], sampler, generators=gens)[0].cpu()
            reply.images.append(img)
            seq += [Image(img, tuple(model.config.image_grid)), Text((tok.visual_end,))]
            reply.segments += [Image(img, tuple(model.config.image_grid)), Text((tok.visual_end,))]
            pending_image = False
        if budget <= 0:
            break
        ids, why = decode_text(model, [seq], TextSampling(ts.temperature, ts.top_p, budget), generators=gens)
        new = ids[0]
        budget -= len(new)
        body = [t for t in new if t not in (EOS_ID, tok.visual_start)]
        pieces += body
        if why[0] == "visual_start" and len(reply.images) < max_images:
            if body:
                seq.append(Text(tuple(body)))
                reply.segments.append(Text(tuple(body)))
            pending_image = True
            continue
        if body:
            seq.append(Text(tuple(body)))
            reply.segments.append(Text(tuple(body)))
        break
    reply.segments.append(Text((EOS_ID,)))
    reply.text = tok.decode(pieces).strip()
    return reply


class MMPreview:
    """Training preview: images for a few prompts (``samples/step_N.png``) and the captions the
    model gives to its own first images (``samples/step_N.txt``)."""

    def __init__(self, pixel, prompts: list[str], sampler: SamplerConfig) -> None:
        self.pixel, self.prompts, self.sampler = pixel, prompts, sampler

    def __call__(self, model, request):
        from djepa.core.train.observe import make_grid, write_png
        from djepa.core.train.preview import Preview

        rows = [user_turn(model, f"draw {p}", None, True) + [Text((model.tokenizer().visual_start,))]
                for p in self.prompts]
        toks = generate_images(model, rows, self.sampler, generators=request.generators(len(rows)))
        images = self.pixel.decode(toks.cpu()).clamp(0, 1)
        grid = make_grid(images)
        request.samples_dir.mkdir(parents=True, exist_ok=True)
        path = request.path(".png")
        write_png(path, grid)
        caps_rows = [user_turn(model, "what is in this picture?", t.cpu(), True) for t in toks]
        ids, _ = decode_text(model, caps_rows, TextSampling(0.0, 1.0, 24))
        tok = model.tokenizer()
        txt = request.path(".txt")
        txt.write_text("".join(f"{p}\t->\t{tok.decode(i)}\n" for p, i in zip(self.prompts, ids)))
        return Preview(files=(path, txt), tensorboard_image=grid)
