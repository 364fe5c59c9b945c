"""Builds the network: MONAI's ``DiffusionModelUNet`` in 3D. Nothing else lives here."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from medidiff.config import ModelConfig


def build_unet(cfg: ModelConfig) -> nn.Module:
    """A 3D ``DiffusionModelUNet`` with one input and one output channel.

    Memory-efficient attention (``use_flash_attention``) goes through PyTorch's
    scaled-dot-product attention; it matters on CUDA where 3D attention otherwise runs out of memory.
    """
    from monai.networks.nets import DiffusionModelUNet

    return DiffusionModelUNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        channels=tuple(cfg.channels),
        attention_levels=tuple(cfg.attention_levels),
        num_res_blocks=cfg.num_res_blocks,
        norm_num_groups=cfg.norm_num_groups,
        num_head_channels=cfg.num_head_channels,
        use_flash_attention=cfg.use_flash_attention,
    )
