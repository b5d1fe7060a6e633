"""djepa.core: the modality-agnostic D-JEPA engine (paper arXiv 2410.03755).

Backbone (context encoder + feature predictor), per-token loss heads (diffusion / flow
matching through a denoising MLP, prediction loss), the Algorithm-1 sampler and the
DeepSpeed training engine. Modalities (``djepa.image`` …) supply data, tokenizers and CLIs.
"""

from djepa.core.config import DJEPAConfig, LossConfig, SamplerConfig, preset

__all__ = ["DJEPAConfig", "LossConfig", "SamplerConfig", "preset"]
