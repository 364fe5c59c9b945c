"""Property-based tests of the config parser: configs are data, never code.

Whatever a YAML file or a ``--set`` override holds, loading either gives a :class:`Config` whose
fields have their declared types or raises :class:`ConfigError` with one short line. YAML tags that
build Python objects are refused without running, unknown keys are always named, and relative data
paths are resolved against the config file's folder.
"""

from __future__ import annotations

import dataclasses
import tempfile
import typing
from pathlib import Path

import pytest
import yaml
from conftest import TINY_CONFIG
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from medidiff.config import Config, apply_overrides, config_from_dict, config_to_dict, load_config, parse_override
from medidiff.errors import ConfigError

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (
    st.none() | st.booleans() | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
)
data = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8) | st.integers(-5, 5), children, max_size=4),
    max_leaves=12,
)
VALID = yaml.safe_load(TINY_CONFIG.read_text())
SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


def _leaf_paths() -> list[tuple[str, ...]]:
    hints = typing.get_type_hints(Config)
    paths: list[tuple[str, ...]] = []
    for name, hint in hints.items():
        if dataclasses.is_dataclass(hint):
            paths += [(name, f.name) for f in dataclasses.fields(hint)]
        else:
            paths.append((name,))
    return paths


LEAVES = _leaf_paths()


def _assert_short(exc: ConfigError) -> None:
    text = str(exc)
    assert text and "\n" not in text and len(text) < 400, text


def _assert_typed(cfg: Config) -> None:
    """Every field holds a value of its declared type (the parser converts, never passes junk on)."""
    for section in dataclasses.fields(cfg):
        value = getattr(cfg, section.name)
        if not dataclasses.is_dataclass(value):
            assert isinstance(value, str)
            continue
        hints = typing.get_type_hints(type(value))
        for f in dataclasses.fields(value):
            got, hint = getattr(value, f.name), hints[f.name]
            if hint is bool:
                assert isinstance(got, bool)
            elif hint is int:
                assert isinstance(got, int) and not isinstance(got, bool)
            elif hint is float:
                assert isinstance(got, float) and got == got and abs(got) != float("inf")
            elif typing.get_origin(hint) is list:
                assert isinstance(got, list)


@FAST
@given(data)
def test_any_data_gives_a_config_or_one_line_config_error(raw):
    try:
        cfg = config_from_dict(raw)  # type: ignore[arg-type]
    except ConfigError as exc:
        _assert_short(exc)
    else:
        _assert_typed(cfg)


@FAST
@given(st.sampled_from(LEAVES), data)
def test_a_valid_config_with_one_value_replaced(path, value):
    raw = yaml.safe_load(TINY_CONFIG.read_text())
    node = raw
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    try:
        cfg = config_from_dict(raw)
    except ConfigError as exc:
        _assert_short(exc)
        assert ".".join(path) in str(exc) or path[-1] in str(exc) or "must" in str(exc) or "need" in str(exc)
    else:
        _assert_typed(cfg)


def test_a_large_nested_value_is_quoted_in_one_short_line():
    """Nested mappings of long keys used to be quoted whole in the message (found by the test above)."""
    inner = {"k" * 50 + str(i): {"v" * 50 + str(j): None for j in range(6)} for i in range(6)}
    for path in [("train", "lr_min"), ("train", "max_steps"), ("data", "modality"), ("model", "channels")]:
        raw = yaml.safe_load(TINY_CONFIG.read_text())
        raw[path[0]][path[1]] = inner
        with pytest.raises(ConfigError) as info:
            config_from_dict(raw)
        _assert_short(info.value)
        assert len(str(info.value)) < 200


@FAST
@given(st.sampled_from([(), *[(s,) for s, t in SECTIONS.items() if dataclasses.is_dataclass(t)]]),
       st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12), scalars)
def test_unknown_keys_are_always_named(where, key, value):
    raw = yaml.safe_load(TINY_CONFIG.read_text())
    node = raw
    for k in where:
        node = node[k]
    assume(key not in node and not (not where and key in SECTIONS))
    hints = typing.get_type_hints(SECTIONS[where[0]]) if where else SECTIONS
    assume(key not in hints)
    node[key] = value
    try:
        config_from_dict(raw)
    except ConfigError as exc:
        _assert_short(exc)
        assert f"unknown config key {'.'.join((*where, key))}" in str(exc)
    else:  # pragma: no cover
        raise AssertionError(f"unknown key {key!r} accepted")


@FAST
@given(st.integers(1, 10**6), st.integers(1, 64), st.floats(1e-6, 1.0), st.sampled_from(["MR", "CT"]),
       st.booleans())
def test_round_trip_through_dict_and_yaml(max_steps, batch_size, lr, modality, bf16):
    raw = yaml.safe_load(TINY_CONFIG.read_text())
    raw["train"].update(max_steps=max_steps, batch_size=batch_size, lr=lr, bf16=bf16)
    raw["data"]["modality"] = modality
    raw["output_dir"] = str(Path(tempfile.gettempdir()).resolve() / "runs" / "tiny")  # as saved: absolute
    cfg = config_from_dict(raw)
    assert config_from_dict(config_to_dict(cfg)) == cfg
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(yaml.safe_dump(config_to_dict(cfg)))
        assert load_config(path) == cfg


@FAST
@given(st.text(max_size=300))
def test_any_text_file_gives_a_config_or_config_error(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            cfg = load_config(path)
        except ConfigError as exc:
            _assert_short(exc)
        else:
            _assert_typed(cfg)


PYTHON_TAGS = [
    "!!python/object/apply:builtins.open [{marker}, w]",
    "!!python/object/new:builtins.open [{marker}, w]",
    "!!python/name:os.system",
    "!!python/module:os",
    "!!python/object/apply:subprocess.call [[touch, {marker}]]",
]


@FAST
@given(st.sampled_from(PYTHON_TAGS), st.sampled_from(LEAVES))
def test_python_tags_are_refused_and_never_run(tag, path):
    with tempfile.TemporaryDirectory() as tmp:
        marker = Path(tmp) / "pwned"
        value = tag.format(marker=marker)
        text = f"{path[0]}: {value}\n" if len(path) == 1 else f"{path[0]}:\n  {path[1]}: {value}\n"
        config = Path(tmp) / "evil.yaml"
        config.write_text(text)
        try:
            load_config(config)
        except ConfigError as exc:
            _assert_short(exc)
        else:  # pragma: no cover
            raise AssertionError("a Python tag was accepted")
        try:
            load_config(None, [f"{'.'.join(path)}={value}"])
        except ConfigError as exc:
            _assert_short(exc)
        assert not marker.exists()


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(min_size=1, max_size=5), c, max_size=3),
    max_leaves=6,
)
identifiers = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)


@FAST
@given(st.lists(identifiers, min_size=1, max_size=3), yaml_values)
def test_override_values_are_yaml_data(keys, value):
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    if text.endswith("\n...") or text.endswith(" ..."):
        text = text.rsplit("...", 1)[0].strip()
    parsed_keys, parsed = parse_override(f"{'.'.join(keys)}={text}")
    assert parsed_keys == keys
    assert parsed == yaml.safe_load(text) if text.strip() else parsed == ""
    out = apply_overrides({}, [f"{'.'.join(keys)}={text}"])
    node = out
    for k in keys[:-1]:
        node = node[k]
    assert node[keys[-1]] == parsed


@FAST
@given(st.text(max_size=60))
def test_override_text_is_never_evaluated(text):
    """Whatever follows ``=`` is parsed as YAML data (or kept as text); nothing can run."""
    with tempfile.TemporaryDirectory() as tmp:
        marker = Path(tmp) / "pwned"
        for value in (text, f"__import__('pathlib').Path({str(marker)!r}).touch()"):
            try:
                cfg = load_config(TINY_CONFIG, [f"output_dir={value}"])
            except ConfigError as exc:
                _assert_short(exc)
            else:
                assert isinstance(cfg.output_dir, str)
        assert not marker.exists()


segment = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=8)


@FAST
@given(st.lists(segment, min_size=1, max_size=3), st.lists(segment, min_size=1, max_size=2))
def test_relative_paths_are_resolved_against_the_config_folder(rel, where):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp).resolve().joinpath(*where)
        folder.mkdir(parents=True)
        config = folder / "c.yaml"
        relative = "/".join(rel)
        absolute = str(Path(tmp).resolve() / "abs" / relative)
        config.write_text(yaml.safe_dump({"data": {"train": relative, "val": [relative, absolute]},
                                          "output_dir": relative}))
        cfg = load_config(config)
        assert cfg.data.train == str(folder.joinpath(*rel))
        assert cfg.data.val == [str(folder.joinpath(*rel)), absolute]
        assert cfg.output_dir == str(folder.joinpath(*rel))
        again = load_config(config, [f"data.val={absolute}"])  # --set paths: relative to the cwd
        assert again.data.val == absolute and again.data.train == cfg.data.train
