"""medidiff: denoise 3D MRI and CT scans with a noise-matched diffusion model.

The public API is imported lazily so that ``import medidiff`` (and ``medidiff --help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "Volume": "medidiff.volume",
    "VolumeMeta": "medidiff.volume",
    "read_volume": "medidiff.io",
    "write_volume": "medidiff.io",
    "MedidiffError": "medidiff.errors",
    "denoise": "medidiff.inference",
    "Denoiser": "medidiff.inference",
    "DenoiseOptions": "medidiff.inference",
    "train": "medidiff.training",
    "load_config": "medidiff.config",
    "evaluate": "medidiff.evaluation",
    "load_model": "medidiff.checkpoint",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'medidiff' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
