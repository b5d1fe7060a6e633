"""The sampler flags of ``image-sample`` and ``image-inpaint``: the core's
:class:`~djepa.core.sampler_flags.SamplerFlags`, which both CLI configs nest (kept here as a
name for existing imports)."""

from djepa.core.sampler_flags import SamplerFlags, resolve_device

__all__ = ["SamplerFlags", "resolve_device"]
