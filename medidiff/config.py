"""Configuration: YAML loaded into frozen dataclasses.

Defaults live only in the dataclass fields. Unknown keys fail with the list of valid ones; ``--set
a.b=value`` overrides parse the value as YAML (a number, a list, a string), never as code. Relative
data paths are resolved against the folder of the config file. The resolved config is saved with
every checkpoint, so a checkpoint needs no YAML to be used.
"""

from __future__ import annotations

import dataclasses
import math
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from medidiff.errors import ConfigError
from medidiff.files import expand_user

MAX_ZOOM = 4.0  # data.zoom_max: a training patch is cut from at least a quarter of its size per axis


@dataclass(frozen=True)
class DataConfig:
    """Where training scans come from and how patches are drawn.

    ``train``/``val``: a folder (searched recursively for NIfTI files and DICOM series; a BIDS root
    works), a glob, a list of paths, or an MSD-style datalist JSON. An entry of a datalist may carry
    ``"target"`` (a clean scan) to train on real noisy/clean pairs. ``zoom_fraction`` of the clean
    patches are cut smaller and enlarged to the patch size (each axis by a factor drawn in [1,
    ``zoom_max``]), so the network also sees anatomy on grids finer than the training scans'.
    """

    train: str | list[str] = ""
    val: str | list[str] = ""
    modality: Literal["MR", "CT"] = "MR"
    patch_size: list[int] = field(default_factory=lambda: [32, 32, 32])
    synthetic_phantoms: int = 0
    target_cleanup: Literal["none", "nlm", "nlm-blockwise", "recorrupt"] = "none"
    mask_fraction: float = 0.0
    zoom_fraction: float = 0.0
    zoom_max: float = 1.0
    foreground_fraction: float = 0.9
    skip_unreadable: bool = False
    num_workers: int = 0
    val_patches: int = 8


@dataclass(frozen=True)
class NoiseConfig:
    """The noise added to clean patches during training.

    ``kind``: ``rician`` (MR magnitude), ``ct`` (correlated FBP-like texture) or ``gaussian``.
    Levels are drawn log-uniformly in [``scan_sigma_min``, ``scan_sigma_max``] with probability
    ``scan_fraction`` (the range real scans live in), otherwise log-uniformly over the whole
    schedule range with Gaussian noise (the generative path). ``ct_ramp``: the range of the CT
    texture's ramp exponent (1: FBP; 0: white or coarse grain), drawn per patch.
    """

    kind: Literal["rician", "ct", "gaussian"] = "rician"
    scan_sigma_min: float = 0.005
    scan_sigma_max: float = 0.3
    scan_fraction: float = 0.85
    ct_ramp: list[float] = field(default_factory=lambda: [1.0, 1.0])


@dataclass(frozen=True)
class ModelConfig:
    """MONAI ``DiffusionModelUNet`` settings and the EDM preconditioning constant."""

    channels: list[int] = field(default_factory=lambda: [16, 32, 48, 64])
    attention_levels: list[bool] = field(default_factory=lambda: [False, False, False, False])
    num_res_blocks: int = 1
    norm_num_groups: int = 8
    num_head_channels: int = 8
    use_flash_attention: bool = True
    sigma_data: float = 0.5


@dataclass(frozen=True)
class ScheduleConfig:
    """Karras (EDM) noise levels, in normalized intensity units."""

    sigma_min: float = 0.002
    sigma_max: float = 5.0
    rho: float = 7.0


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation loop."""

    max_steps: int = 1000
    batch_size: int = 4
    lr: float = 2e-3
    lr_warmup_steps: int = 100
    lr_schedule: Literal["constant", "cosine"] = "constant"
    lr_min: float = 0.0
    init_weights: str | None = None
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool = True
    log_every: int = 10
    val_every: int = 0
    save_every: int = 200
    keep_checkpoints: int = 2
    guided_loss_weight: float = 0.0
    ssim_loss_weight: float = 0.0


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output_dir: str = "runs/default"


# ---------------------------------------------------------------- building from plain data


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlist = _REPR.maxdict = 6


def _shown(value: Any) -> str:
    """A config value for an error message: short and on one line, whatever the YAML held."""
    text = _REPR.repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _shown_key(key: Any) -> str:
    return key if isinstance(key, str) and key.isprintable() and len(key) <= 60 else _shown(key)


def _check_type(value: Any, annotation: Any, where: str, label: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return build_dataclass(annotation, value, where, label)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {_shown(value)} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _check_type(value, option, where, label)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {_shown(value)} has the wrong type (expected {annotation})")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {_shown(value)}")
        return [_check_type(v, args[0], f"{where}[{i}]", label) for i, v in enumerate(value)]
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {_shown(value)}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {_shown(value)}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as text; a number literal is still data
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {_shown(value)}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected text, got {_shown(value)}")
        return value
    return value


def build_dataclass(cls: type, raw: Any, where: str = "", label: str = "config") -> Any:
    """Validate a plain mapping into the frozen dataclass ``cls`` (recursively).

    Unknown keys fail with the list of valid ones, values are type-checked against the field
    annotations (``Literal``, unions, lists, nested dataclasses), and nothing is evaluated.
    ``label`` names the kind of file in messages ("config", "benchmark config").
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or label}: expected a mapping of keys, got {_shown(raw)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names), key=str)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else str(unknown[0])
        key = key if key.isprintable() else repr(key)  # a newline or tab in a key stays on one line
        raise ConfigError(f"unknown {label} key {key}; valid keys: {', '.join(names)}")
    kwargs = {
        name: _check_type(value, hints[name], f"{where}.{name}" if where else name, label)
        for name, value in raw.items()
    }
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required key is missing
        raise ConfigError(f"{where or label}: {exc}; valid keys: {', '.join(names)}") from None


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Validate a plain mapping (from YAML or a checkpoint) into a :class:`Config`."""
    cfg = build_dataclass(Config, raw)
    _validate(cfg)
    return cfg


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _validate(cfg: Config) -> None:
    if len(cfg.data.patch_size) != 3 or min(cfg.data.patch_size) < 8:
        raise ConfigError(f"data.patch_size must be three sizes of at least 8, got {cfg.data.patch_size}")
    factor = 2 ** (len(cfg.model.channels) - 1)
    if any(p % factor for p in cfg.data.patch_size):
        raise ConfigError(
            f"data.patch_size {cfg.data.patch_size} must be divisible by {factor} "
            f"for a U-Net with {len(cfg.model.channels)} levels"
        )
    if cfg.model.norm_num_groups < 1 or min(cfg.model.channels, default=0) < 1:
        raise ConfigError("model.channels entries and model.norm_num_groups must be at least 1")
    if len(cfg.model.attention_levels) != len(cfg.model.channels):
        raise ConfigError("model.attention_levels needs one entry per model.channels entry")
    if any(c % cfg.model.norm_num_groups for c in cfg.model.channels):
        raise ConfigError(
            f"every model.channels entry must be divisible by model.norm_num_groups={cfg.model.norm_num_groups}"
        )
    heads = cfg.model.num_head_channels
    levels = zip(cfg.model.channels, cfg.model.attention_levels, strict=True)
    if any(attention and (heads < 1 or c % heads) for c, attention in levels):
        raise ConfigError(f"model.num_head_channels={heads} must divide every model.channels entry with attention")
    if cfg.model.num_res_blocks < 1 or not cfg.model.sigma_data > 0:
        raise ConfigError("model.num_res_blocks must be at least 1 and model.sigma_data greater than 0")
    if not (cfg.train.lr > 0 and 0 <= cfg.train.ema_decay <= 1):
        raise ConfigError("train.lr must be greater than 0 and train.ema_decay lie in [0, 1]")
    if not 0 <= cfg.train.lr_min <= cfg.train.lr:
        raise ConfigError("train.lr_min must lie in [0, train.lr]")
    if cfg.train.max_steps < 0 or cfg.train.batch_size < 1:
        raise ConfigError("train.max_steps must be >= 0 and train.batch_size >= 1")
    loss_terms = (  # the optional loss terms: the smallest patch each can be scored on, and why
        ("guided_loss_weight", 16, "guided averaging is scored away from the patch faces"),
        ("ssim_loss_weight", 8, "SSIM's window is 7 voxels"),
    )
    for name, smallest, why in loss_terms:
        weight = getattr(cfg.train, name)
        if not 0 <= weight < math.inf:
            raise ConfigError(f"train.{name} must be 0 (off) or a positive number, got {weight}")
        if weight > 0 and min(cfg.data.patch_size) < smallest:
            raise ConfigError(
                f"train.{name} needs data.patch_size of at least {smallest} ({why}), got {cfg.data.patch_size}"
            )
    if cfg.train.ssim_loss_weight > 0 and cfg.train.guided_loss_weight > 0:
        raise ConfigError("train.ssim_loss_weight and train.guided_loss_weight cannot both be on; set one of them to 0")
    if not 0 < cfg.noise.scan_sigma_min < cfg.noise.scan_sigma_max:
        raise ConfigError("need 0 < noise.scan_sigma_min < noise.scan_sigma_max")
    if cfg.data.target_cleanup == "recorrupt" and cfg.noise.kind == "ct":
        raise ConfigError(
            'data.target_cleanup: recorrupt splits white noise and cannot make noise.kind "ct" texture; '
            'use "nlm" for CT'
        )
    if not 0.0 <= cfg.data.mask_fraction <= 1.0:
        raise ConfigError("data.mask_fraction must lie in [0, 1]")
    if cfg.data.mask_fraction > 0 and cfg.data.target_cleanup == "recorrupt":
        raise ConfigError(
            "data.mask_fraction needs clean targets to zero before the noise is added; "
            'recorrupt targets keep their own noise: set target_cleanup to "nlm" or mask_fraction to 0'
        )
    if not 0.0 <= cfg.data.zoom_fraction <= 1.0:
        raise ConfigError(f"data.zoom_fraction must lie in [0, 1], got {cfg.data.zoom_fraction}")
    if not 1.0 <= cfg.data.zoom_max <= MAX_ZOOM:
        raise ConfigError(f"data.zoom_max must lie in [1, {MAX_ZOOM:g}] (1: off), got {cfg.data.zoom_max}")
    if cfg.data.zoom_fraction > 0 and cfg.data.target_cleanup == "recorrupt":
        raise ConfigError(
            "data.zoom_fraction enlarges clean targets before the noise is added; recorrupt targets keep "
            'their own noise, which zooming would smooth: set target_cleanup to "nlm" or zoom_fraction to 0'
        )
    if not 0.0 <= cfg.noise.scan_fraction <= 1.0:
        raise ConfigError("noise.scan_fraction must lie in [0, 1]")
    ramp = cfg.noise.ct_ramp
    if len(ramp) != 2 or not 0.0 <= ramp[0] <= ramp[1] <= 2.0:
        raise ConfigError(f"noise.ct_ramp must be [lo, hi] with 0 <= lo <= hi <= 2, got {ramp}")
    if cfg.noise.kind != "ct" and list(ramp) != [1.0, 1.0]:
        raise ConfigError(f'noise.ct_ramp sets the CT noise texture and needs noise.kind "ct", not "{cfg.noise.kind}"')
    if cfg.train.save_every < 1 or cfg.train.log_every < 1:
        raise ConfigError("train.save_every and train.log_every must be at least 1")
    counts = {
        "data.num_workers": (cfg.data.num_workers, 0), "data.val_patches": (cfg.data.val_patches, 1),
        "data.synthetic_phantoms": (cfg.data.synthetic_phantoms, 0), "train.val_every": (cfg.train.val_every, 0),
        "train.keep_checkpoints": (cfg.train.keep_checkpoints, 1),
        "train.lr_warmup_steps": (cfg.train.lr_warmup_steps, 0),
    }
    for key, (value, least) in counts.items():
        if value < least:
            raise ConfigError(f"{key} must be at least {least}, got {value}")
    if not 0.0 <= cfg.data.foreground_fraction <= 1.0:
        raise ConfigError(
            f"data.foreground_fraction must lie in [0, 1] (a share of patches), got {cfg.data.foreground_fraction}"
        )
    if not (0.0 <= cfg.train.grad_clip < math.inf and 0.0 <= cfg.train.weight_decay < math.inf):
        raise ConfigError("train.grad_clip (0: off) and train.weight_decay must be numbers of at least 0")
    try:
        from medidiff.schedule import KarrasSchedule

        KarrasSchedule(cfg.schedule.sigma_min, cfg.schedule.sigma_max, cfg.schedule.rho)
    except ValueError as exc:
        raise ConfigError(f"schedule: {exc}") from None


# ---------------------------------------------------------------- YAML and overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into (["a", "b"], value), the value parsed as YAML data."""
    if "=" not in text:
        raise ConfigError(f"--set {_shown(text)}: expected KEY=VALUE, e.g. --set train.max_steps=100")
    key, _, value_text = text.partition("=")
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"--set {_shown(text)}: the key is empty")
    try:
        value = safe_load_strict(value_text) if value_text.strip() else ""
    except (yaml.YAMLError, RecursionError, DuplicateKeyError, ValueError, TypeError, OverflowError):
        value = value_text  # not YAML data (e.g. !!int abc): the text as given
    return keys, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``a.b=value`` override applied."""
    import copy

    out = copy.deepcopy(raw)
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for k in keys[:-1]:
            child = node.get(k)
            if child is None:
                child = node[k] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {_shown(text)}: {k} is not a section")
            node = child
        node[keys[-1]] = value
    return out


def _resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    def fix(p: Any) -> Any:
        if isinstance(p, str) and "\0" in p:
            raise ConfigError(f"path {_shown(p)} contains a NUL character; check the config")
        if isinstance(p, str) and p and not expand_user(p).is_absolute():
            return str((base / p).resolve())
        return str(expand_user(p)) if isinstance(p, str) and p else p

    if isinstance(raw.get("output_dir"), str) and raw["output_dir"]:
        raw["output_dir"] = fix(raw["output_dir"])
    train = raw.get("train")
    if isinstance(train, dict) and isinstance(train.get("init_weights"), str):
        name = train["init_weights"]  # a bundled model name stays a name
        train["init_weights"] = name if name.lower() in ("mr", "ct") else fix(name)
    data = raw.get("data")
    if isinstance(data, dict):
        for key in ("train", "val"):
            if isinstance(data.get(key), list):
                data[key] = [fix(p) for p in data[key]]
            elif key in data:
                data[key] = fix(data[key])
    return raw


BASE_KEY = "base"
_MAX_BASE_DEPTH = 8


class DuplicateKeyError(yaml.YAMLError):
    """A key given twice in one YAML mapping (plain YAML keeps the last one without a word)."""

    def __init__(self, key: Any, first_line: int, line: int) -> None:
        super().__init__(f"key {key!r} appears twice, at lines {first_line} and {line}; keep one")
        self.key, self.first_line, self.line = key, first_line, line


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key repeated in one mapping (merge keys ``<<`` aside)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: SafeLoader reports it itself
                continue
            if first != key_node.start_mark.line + 1:
                raise DuplicateKeyError(key, first, key_node.start_mark.line + 1)
        return super().construct_mapping(node, deep=deep)


# booleans are true and false only (YAML 1.2): YAML 1.1's yes/no/on/off stay text, so a mistyped
# value is refused by the type check instead of read as a boolean
# (and no value is read as a date: a config holds none, and 2024-01-01 stays text like any path)
_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def safe_load_strict(text: str) -> Any:
    """``yaml.safe_load`` that raises :class:`DuplicateKeyError` for a key given twice in a mapping."""
    loader = _StrictLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _read_mapping(p: Path) -> dict[str, Any]:
    """Read one YAML file that must hold a mapping (an empty file is an empty mapping)."""
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        loaded = safe_load_strict(p.read_text(encoding="utf-8"))
    except DuplicateKeyError as exc:
        raise ConfigError(f"{p}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = str(getattr(exc, "problem", "") or "")
        if isinstance(exc, yaml.constructor.ConstructorError) and "constructor for the tag" in problem:
            tag = problem.split("tag", 1)[1].strip().strip("'").replace("tag:yaml.org,2002:", "!!")
            raise ConfigError(
                f"{p}: the YAML tag {tag}{line} is not allowed; a config holds plain data (no tags)"
            ) from None
        raise ConfigError(f"{p}: not valid YAML{line}; check the indentation and colons") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a text file; give a YAML config") from None
    except (ValueError, TypeError, OverflowError) as exc:  # a value YAML cannot build (e.g. !!int abc)
        raise ConfigError(f"{p}: a value cannot be read ({exc}); quote it to keep it as text") from None
    except RecursionError:
        raise ConfigError(f"{p}: nested too deeply to be a medidiff config") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot be read ({exc.strerror or exc}); check its permissions") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{p}: expected a mapping of keys at the top level")
    return loaded


def merge_over(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``top`` laid over it: sections merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_over(out[key], value)
        else:
            out[key] = value
    return out


def _load_file(p: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Load one config file with its paths resolved, laid over the file its ``base:`` key names."""
    p = p.resolve() if p.exists() else p
    if p in chain:
        names = " -> ".join(str(c.name) for c in (*chain, p))
        raise ConfigError(f"{p}: its base: chain loops ({names}); remove one base: key")
    if len(chain) >= _MAX_BASE_DEPTH:
        raise ConfigError(f"{p}: more than {_MAX_BASE_DEPTH} configs deep in base: keys; flatten the chain")
    raw = _resolve_paths(_read_mapping(p), p.parent)
    if BASE_KEY not in raw:
        return raw
    base_name = raw.pop(BASE_KEY)
    if not isinstance(base_name, str) or not base_name.strip():
        raise ConfigError(f"{p}: base: must name another YAML config file, e.g. base: mri.yaml")
    base_path = expand_user(base_name)
    if not base_path.is_absolute():
        base_path = p.parent / base_path
    if not base_path.is_file():
        raise ConfigError(f"{p}: its base: config {base_path} was not found; check the name")
    return merge_over(_load_file(base_path, (*chain, p)), raw)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply ``--set`` overrides.

    Data paths in the file are relative to the file's folder; paths given with ``--set`` are
    relative to the current directory. A top-level ``base: other.yaml`` (relative to the file's
    folder) loads that config first and lays this file's keys over it, section by section; paths
    in each file stay relative to that file's own folder.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _load_file(Path(path))
    raw = apply_overrides(raw, overrides or [])
    raw = _resolve_paths(raw, Path.cwd()) if overrides else raw
    return config_from_dict(raw)


def save_config(cfg: Config, path: str | Path) -> None:
    from medidiff.files import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
