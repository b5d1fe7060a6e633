"""``mm-chat``: talk to the text+image model (paper App. G.4) — a REPL driven by stdin.

Each line is a message; the model answers in text, or draws when it emits
``<|visual_start|>`` (generated images are saved as PNG under ``--output-dir`` and their paths
printed). The conversation is kept (multi-turn history) until ``/reset``.

Commands::

    /image PATH     attach a PNG (24×24 RGB, the shapes set's size) to the next message
    /draw [TEXT]    the next reply is an image (TEXT, if given, is sent now)
    /reset          forget the conversation
    /quit           leave (so does end of input)

``--once "prompt" [--image PATH] [--draw]`` answers one message and exits (scripts, tests).
An error in one message (a missing or wrong-size image, …) prints one line
``mm-chat: error: …`` and the REPL goes on; with ``--once`` it exits with status 2.
Randomness: one generator seeded ``--seed`` for the session (the same inputs and seed give the
same replies).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from djepa.core.cli import UserError, parse, run_main
from djepa.core.sampler_flags import SamplerFlags, resolve_device

__all__ = ["MMChatConfig", "ChatSession", "run", "main"]


@dataclass(frozen=True)
class MMChatConfig:
    """Chat with a trained text+image D-JEPA (mm-train): text answers, drawn images."""

    checkpoint: str = "runs/mm"
    """An mm-train run folder, its pretrained/ export, or one checkpoint RUN/checkpoints/step_N."""
    output_dir: str = "samples/mm-chat"
    """Where generated images are written (PNG)."""
    once: str | None = None
    """Answer this one message and exit."""
    image: str | None = None
    """With --once: a PNG attached to the message."""
    draw: bool = False
    """With --once: the reply is an image."""
    text_temperature: float = 0.0
    """Temperature of text decoding (0 = greedy)."""
    top_p: float = 0.9
    """Nucleus mass of text sampling (with --text-temperature > 0)."""
    max_new_tokens: int = 32
    """Most text tokens per reply."""
    sampler: SamplerFlags = field(default_factory=lambda: SamplerFlags(ar_steps=16, denoise_steps=50, precision="fp32"))
    """Image sampling (Algorithm 1): AR steps, cfg, temperature, denoising steps, seed, device."""


class ChatSession:
    """A conversation: history (segments), the pending attached image, the session generator.

    Raises (from :meth:`send`): UserError for a bad image file or size.
    """

    def __init__(self, model, pixel, cfg: MMChatConfig, out: Path, device: torch.device) -> None:
        from djepa.multimodal.mm_sample import TextSampling

        self.model, self.pixel, self.cfg, self.out, self.device = model, pixel, cfg, out, device
        self.ts = TextSampling(cfg.text_temperature, cfg.top_p, cfg.max_new_tokens)
        self.sc = cfg.sampler.sampler_config(model.config.num_image_tokens)
        self.generator = torch.Generator(device=device).manual_seed(cfg.sampler.seed)
        self.history: list = []
        self.pending_image: torch.Tensor | None = None
        self.force_draw = False
        self.saved = 0

    def reset(self) -> None:
        self.history, self.pending_image, self.force_draw = [], None, False

    def attach(self, path: str) -> torch.Tensor:
        """Read ``path`` (PNG/any PIL image) → tokens ``[N, D]``.

        Raises:
            UserError: missing / unreadable file, or not the model's image size.
        """
        from djepa.multimodal.judge import load_png

        p = Path(path).expanduser()
        if not p.is_file():
            raise UserError(f"image {p} not found")
        try:
            img = load_png(p)
        except Exception as e:  # PIL's UnidentifiedImageError, truncated files, ...
            raise UserError(f"cannot read image {p}: {e}") from None
        h, w = self.pixel.image_size
        if tuple(img.shape[1:]) != (h, w):
            raise UserError(f"image {p} is {img.shape[2]}×{img.shape[1]} px; this model reads {w}×{h} px "
                            "images (the shapes set)")
        return self.pixel.encode(img[None]).float()[0]

    def send(self, text: str) -> list[str]:
        """One user message → the printed lines of the reply (text, then saved image paths)."""
        from djepa.core.train.observe import write_png
        from djepa.multimodal.mm_sample import respond, user_turn

        image, force = self.pending_image, self.force_draw
        self.pending_image, self.force_draw = None, False
        turn = user_turn(self.model, text, image, first=not self.history)
        with self.cfg.sampler.autocast(self.device):
            reply = respond(self.model, self.history + turn, self.ts, self.sc, force_image=force,
                            generator=self.generator)
        self.history += turn + reply.segments
        lines = []
        if reply.text:
            lines.append(reply.text)
        for toks in reply.images:
            self.out.mkdir(parents=True, exist_ok=True)
            path = self.out / f"image_{self.saved:04d}.png"
            write_png(path, self.pixel.decode(toks[None].float()).clamp(0, 1)[0])
            self.saved += 1
            lines.append(f"[image saved: {path}]")
        if not lines:
            lines.append("(no reply)")
        return lines


def _load(cfg: MMChatConfig):
    from djepa.multimodal.mm_model import load_mm

    device = resolve_device(cfg.sampler.device)
    model, pixel, _ = load_mm(cfg.checkpoint, device)
    return model, pixel, device


def run(cfg: MMChatConfig, stdin=None, stdout=None) -> int:
    """The REPL (or ``--once``); returns the exit status."""
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    if cfg.once is None and (cfg.image or cfg.draw):
        raise UserError("--image and --draw go with --once (in the REPL use /image PATH and /draw)")
    if cfg.sampler.compile:
        raise UserError("--compile is not supported for the text+image model (its blocks run with a KV cache)")
    model, pixel, device = _load(cfg)
    chat = ChatSession(model, pixel, cfg, Path(cfg.output_dir), device)
    if cfg.once is not None:
        if cfg.image:
            chat.pending_image = chat.attach(cfg.image)
        chat.force_draw = cfg.draw
        for line in chat.send(cfg.once):
            print(line, file=stdout)
        return 0
    interactive = hasattr(stdin, "isatty") and stdin.isatty()
    if interactive:
        print("mm-chat: /image PATH, /draw [text], /reset, /quit", file=stdout)
    while True:
        if interactive:
            print("> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line:
            break
        msg = line.strip()
        if not msg:
            continue
        try:
            if msg in ("/quit", "/exit"):
                break
            if msg == "/reset":
                chat.reset()
                print("(conversation reset)", file=stdout)
                continue
            if msg.startswith("/image"):
                arg = msg[len("/image"):].strip()
                if not arg:
                    raise UserError("/image needs a path")
                chat.pending_image = chat.attach(arg)
                print(f"(image attached: {arg})", file=stdout)
                continue
            if msg.startswith("/draw"):
                chat.force_draw = True
                msg = msg[len("/draw"):].strip()
                if not msg:
                    print("(the next reply will be an image)", file=stdout)
                    continue
            elif msg.startswith("/"):
                raise UserError(f"unknown command {msg.split()[0]} (commands: /image PATH, /draw, /reset, /quit)")
            for out_line in chat.send(msg):
                print(out_line, file=stdout)
        except (UserError, ValueError, OSError, RuntimeError) as e:
            text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(f"mm-chat: error: {text}", file=sys.stderr)
        stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``mm-chat``."""
    return run_main("mm-chat", lambda: run(parse(MMChatConfig, argv, prog="mm-chat")))


if __name__ == "__main__":
    raise SystemExit(main())
