"""Networks for fewstep: a DDPM++/ADM-style UNet, a DiT and a residual MLP, all with the signature
`model(x, t, class_labels=None, **extra) -> tensor shaped like x`, JVP-safe (torch.func.jvp and
forward-mode dual tensors work through them, attention included), and built from named presets or
plain-dict configs (see `presets.py`).
"""

from .attention import (GroupNorm, MultiHeadSelfAttention, SelfAttention2d, attention_backend, dot_product_attention,
                        needs_math_attention)
from .config import ModelConfig
from .dit import DiT, DiTConfig
from .embedding import ClassEmbedding, FourierEmbedding, PositionalEmbedding, TimeEmbedding, drop_labels
from .mlp import MLP, MLPConfig
from .presets import (ARCHS, PRESETS, build_model, build_model_from_config, config_from_dict, count_params,
                      get_config, list_presets)
from .unet import UNet, UNetConfig
from .widen import widen_unet

__all__ = [
    "UNet", "UNetConfig", "widen_unet", "DiT", "DiTConfig", "MLP", "MLPConfig", "ModelConfig",
    "build_model", "build_model_from_config", "get_config", "config_from_dict", "list_presets", "count_params",
    "ARCHS", "PRESETS",
    "dot_product_attention", "attention_backend", "needs_math_attention", "SelfAttention2d", "MultiHeadSelfAttention",
    "GroupNorm", "PositionalEmbedding", "FourierEmbedding", "TimeEmbedding", "ClassEmbedding", "drop_labels",
]
