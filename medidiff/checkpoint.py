"""Checkpoints and model files: safetensors for tensors, JSON for everything else. Nothing is pickled.

A run folder looks like::

    RUN/config.yaml                   the resolved config
    RUN/metrics.jsonl                 one JSON record per logged step
    RUN/checkpoints/step-0000200/     model.safetensors (weights + EMA), optimizer.safetensors, state.json
    RUN/checkpoints/latest.json       {"step": 200, "path": "step-0000200"}

An exported model is a single ``.safetensors`` file holding the EMA weights (fp16 by default) with
the resolved config in its metadata, so it needs no YAML. ``--model`` accepts a bundled name
(``mr``, ``ct``), a run folder or an exported file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medidiff.config import Config, config_from_dict, config_to_dict
from medidiff.errors import ConfigError, ModelError
from medidiff.files import expand_user, shared_mode, write_text_atomic

MODEL_FORMAT = "medidiff-model/1"
WEIGHTS_DIR = Path(__file__).with_name("weights")
BUNDLED = {"mr": WEIGHTS_DIR / "mr.safetensors", "ct": WEIGHTS_DIR / "ct.safetensors"}


@dataclass(frozen=True)
class LoadedModel:
    """A denoiser ready for inference plus where it came from."""

    denoiser: Any  # medidiff.denoiser.Preconditioned
    config: Config
    name: str
    sha256: str


def build_denoiser(cfg: Config) -> Any:
    from medidiff.denoiser import Preconditioned
    from medidiff.model import build_unet

    return Preconditioned(
        build_unet(cfg.model), cfg.model.sigma_data, cfg.schedule.sigma_min, cfg.schedule.sigma_max
    )


# ---------------------------------------------------------------- run checkpoints


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, pstate in state["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _restore_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict
) -> None:
    per_param: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        pid, key = name.split(".", 1)
        per_param.setdefault(int(pid), {})[key] = value
    for name, value in meta.get("scalars", {}).items():
        pid, key = name.split(".", 1)
        per_param.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": per_param, "param_groups": meta["param_groups"]})


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    ema: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write ``RUN/checkpoints/step-N`` atomically (a temp folder renamed into place), then point
    ``latest.json`` at it and prune older checkpoints beyond ``keep``."""
    from safetensors.torch import save_file

    ckpt_root = run_dir / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:07d}"
    tmp = Path(tempfile.mkdtemp(prefix=".medidiff-tmp-", dir=ckpt_root))
    try:
        weights = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        weights.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()})
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": MODEL_FORMAT})
        opt_tensors, opt_meta = _optimizer_tensors(optimizer)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "state.json").write_text(
            json.dumps({**state, "step": step, "optimizer": opt_meta}, indent=1), encoding="utf-8"
        )
        for item in tmp.iterdir():  # mkdtemp makes 0o700 and safetensors 0o600 files: readable, as outputs are
            os.chmod(item, shared_mode(0o666))
        os.chmod(tmp, shared_mode(0o777))
        final = ckpt_root / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    write_text_atomic(ckpt_root / "latest.json", json.dumps({"step": step, "path": name}))
    old = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir() and p.name != name)
    for stale in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / "latest.json"
    if not pointer.is_file():
        return None
    try:
        path = run_dir / "checkpoints" / json.loads(pointer.read_text(encoding="utf-8"))["path"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise ModelError(f"{pointer}: damaged; rewrite it as {{\"step\": N, \"path\": \"step-000000N\"}}") from None
    return path if path.is_dir() else None


def load_checkpoint(ckpt: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
    """(weights with ``model.``/``ema.`` prefixes, optimizer tensors, state JSON) of a checkpoint folder."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        weights = load_file(str(ckpt / "model.safetensors"))
        opt = load_file(str(ckpt / "optimizer.safetensors"))
        state = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, json.JSONDecodeError, SafetensorError) as exc:
        raise ModelError(f"{ckpt}: damaged checkpoint ({exc}); use an earlier one") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or isinstance(state["step"], bool):
        raise ModelError(f"{ckpt}: damaged checkpoint (state.json holds no step number); use an earlier one")
    return weights, opt, state


def restore_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], state: dict
) -> None:
    _restore_optimizer(optimizer, tensors, state["optimizer"])


def split_weights(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) + 1 :]: v for k, v in weights.items() if k.startswith(prefix + ".")}


# ---------------------------------------------------------------- exported model files


def export_model(
    run_dir: Path, out_file: Path, dtype: torch.dtype = torch.float16, force: bool = False
) -> Path:
    """Write the latest EMA weights of ``run_dir`` as one safetensors file with the config inside."""
    from safetensors.torch import save_file

    from medidiff.config import load_config
    from medidiff.files import atomic_path

    if not run_dir.is_dir():
        raise ModelError(f"{run_dir}: no such run folder; give the output_dir of a training run")
    if (run_dir / "checkpoints").resolve() in [out_file.resolve(), *out_file.resolve().parents]:
        raise ModelError(f"{out_file}: is inside the run's checkpoints, which export reads; write it elsewhere")
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise ModelError(f"{run_dir}: no checkpoint found; train first")
    cfg = load_config(run_dir / "config.yaml")
    weights, _, state = load_checkpoint(ckpt)
    ema = {k: v.to(dtype) if v.is_floating_point() else v for k, v in split_weights(weights, "ema").items()}
    meta = {"format": MODEL_FORMAT, "config": json.dumps(config_to_dict(cfg)), "step": str(state["step"])}
    with atomic_path(out_file, force=force) as tmp:
        save_file(ema, str(tmp), metadata=meta)
    return out_file


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_model_file(path: Path) -> tuple[dict[str, torch.Tensor], Config]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception:  # noqa: BLE001 - any parse failure means "not a safetensors file"
        raise ModelError(
            f"{path}: not a medidiff model (not a valid safetensors file); medidiff reads only "
            "safetensors weights and never unpickles .pt/.pth files"
        ) from None
    if meta.get("format") != MODEL_FORMAT or "config" not in meta:
        raise ModelError(f"{path}: a safetensors file but not a medidiff model (no medidiff config inside)")
    try:
        cfg = config_from_dict(json.loads(meta["config"]))
    except (json.JSONDecodeError, ConfigError) as exc:
        raise ModelError(f"{path}: the model's embedded config is invalid ({exc})") from None
    return tensors, cfg


def resolve_model_spec(spec: str | os.PathLike[str] | None, modality: str | None) -> Path:
    """The file or run folder that ``--model`` names (None: the bundled model for ``modality``)."""
    if spec is None or str(spec) == "":
        key = "ct" if modality == "CT" else "mr"
        return BUNDLED[key]
    text = str(spec)
    if text.lower() in BUNDLED:
        return BUNDLED[text.lower()]
    path = expand_user(text)
    if not path.exists():
        raise ModelError(
            f"{path}: model not found; give a run folder, a .safetensors model, or one of: mr, ct"
        )
    return path


def load_model(spec: str | os.PathLike[str] | None = None, modality: str | None = None) -> LoadedModel:
    """Load a denoiser for inference (EMA weights, eval mode, float32 on the CPU).

    Raises:
        ModelError: the model is missing, damaged, or not a medidiff safetensors model. Pickled
            files (``.pt``, ``.pth``, ``.ckpt``) are refused without being opened by a unpickler.
    """
    path = resolve_model_spec(spec, modality)
    if path.is_dir():
        ckpt = latest_checkpoint(path)
        if ckpt is None:
            raise ModelError(f"{path}: not a medidiff run folder (no checkpoints/latest.json)")
        from medidiff.config import load_config

        try:
            cfg = load_config(path / "config.yaml")
        except ConfigError as exc:
            raise ModelError(f"{path}: its config.yaml is unusable ({exc})") from None
        weights, _, _ = load_checkpoint(ckpt)
        tensors = split_weights(weights, "ema")
        digest_path = ckpt / "model.safetensors"
        name = f"{path.name}@{ckpt.name}"
    else:
        if not path.is_file() and path in BUNDLED.values():
            raise ModelError(f"{path}: bundled model missing from this installation; reinstall medidiff")
        tensors, cfg = _read_model_file(path)
        digest_path = path
        name = path.stem if path in BUNDLED.values() else str(path)
    denoiser = build_denoiser(cfg)
    try:
        denoiser.net.load_state_dict({k: v.float() for k, v in tensors.items()})
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ModelError(f"{path}: weights do not match the model's config ({first})") from None
    denoiser.eval()
    return LoadedModel(denoiser=denoiser, config=cfg, name=name, sha256=_sha256(digest_path))
