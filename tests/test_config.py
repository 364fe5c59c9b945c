"""Config: YAML into frozen dataclasses, unknown keys, overrides, relative paths."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from medidiff.config import Config, load_config
from medidiff.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


PRESETS = sorted(p.stem for p in (REPO / "configs").glob("*.yaml") if p.stem != "benchmark")


def test_the_training_presets_are_found() -> None:
    assert {"tiny", "mri", "ct", "mri-stage5", "mri-phantoms"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_presets_load(name: str) -> None:
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    assert isinstance(cfg, Config)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.max_steps = 3  # type: ignore[misc]


def test_unknown_key_lists_valid_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  max_stpes: 3\n")
    with pytest.raises(ConfigError, match=r"train\.max_stpes.*max_steps"):
        load_config(path)


def test_unknown_top_level_section(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("trian: {}\n")
    with pytest.raises(ConfigError, match="trian"):
        load_config(path)


def test_wrong_type_is_named(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  max_steps: many\n")
    with pytest.raises(ConfigError, match="train.max_steps"):
        load_config(path)


def test_overrides_parse_values_as_data_not_code(tmp_path: Path) -> None:
    cfg = load_config(None, ["train.max_steps=12", "data.patch_size=[16, 16, 32]", "train.lr=1e-4"])
    assert cfg.train.max_steps == 12
    assert cfg.data.patch_size == [16, 16, 32]
    assert cfg.train.lr == pytest.approx(1e-4)
    with pytest.raises(ConfigError):
        load_config(None, ["train.max_steps=__import__('os').system('true')"])


def test_yaml_tags_cannot_build_objects(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("output_dir: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ConfigError, match=r"tag !!python/object/apply:os.system at line 1 is not allowed"):
        load_config(path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("word", ["yes", "no", "on", "off", "Yes"])
def test_booleans_are_true_or_false_only(tmp_path: Path, word: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"train:\n  bf16: {word}\n")
    with pytest.raises(ConfigError, match="expected true or false"):
        load_config(path)
    with pytest.raises(ConfigError, match="expected true or false"):
        load_config(None, [f"train.bf16={word}"])
    assert load_config(None, ["train.bf16=false"]).train.bf16 is False
    assert load_config(None, ["data.train=yes"]).data.train.endswith("yes")  # text stays text


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("data.num_workers=-1", "data.num_workers"),
        ("data.val_patches=0", "data.val_patches"),
        ("train.val_every=-1", "train.val_every"),
        ("train.keep_checkpoints=0", "train.keep_checkpoints"),
        ("data.foreground_fraction=2", "data.foreground_fraction"),
        ("train.grad_clip=-1", "train.grad_clip"),
        ("data.synthetic_phantoms=-2", "data.synthetic_phantoms"),
    ],
)
def test_counts_and_fractions_out_of_range_are_config_errors(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_config(None, [override])


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("base: tiny.yaml\ntrain:\n  seed: 1\n  max_steps: 3\n  seed: 2\n")
    with pytest.raises(ConfigError, match=r"'seed' appears twice, at lines 3 and 5"):
        load_config(path)
    path.write_text("train: {seed: 1}\noutput_dir: a\ntrain: {max_steps: 3}\n")
    with pytest.raises(ConfigError, match=r"'train' appears twice, at lines 1 and 3"):
        load_config(path)


def test_the_same_key_in_different_sections_and_merge_keys_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "defaults: &d {seed: 4}\ntrain:\n  <<: *d\n  max_steps: 3\n"
        "data:\n  patch_size: [16, 16, 16]\nmodel:\n  channels: [16, 16]\n  attention_levels: [false, false]\n"
    )
    with pytest.raises(ConfigError, match="defaults"):  # parsed: only the unknown section is refused
        load_config(path)
    path.write_text("train:\n  <<: {seed: 4}\n  max_steps: 3\n")
    cfg = load_config(path)
    assert (cfg.train.seed, cfg.train.max_steps) == (4, 3)


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    sub = tmp_path / "cfgs"
    sub.mkdir()
    path = sub / "c.yaml"
    path.write_text("data:\n  train: ../scans\n  val: [a.nii.gz]\noutput_dir: ../runs/x\n")
    cfg = load_config(path)
    assert cfg.data.train == str((tmp_path / "scans").resolve())
    assert cfg.data.val == [str((sub / "a.nii.gz").resolve())]
    assert cfg.output_dir == str((tmp_path / "runs" / "x").resolve())


def test_patch_size_must_fit_the_unet_depth() -> None:
    with pytest.raises(ConfigError, match="divisible"):
        load_config(None, ["data.patch_size=[20, 20, 20]"])


@pytest.mark.parametrize("ramp", ["[1.0]", "[0.8, 0.2]", "[-0.5, 1.0]", "[0.0, 3.0]"])
def test_ct_ramp_must_be_an_ordered_range_in_0_2(ramp: str) -> None:
    with pytest.raises(ConfigError, match="noise.ct_ramp"):
        load_config(None, ["noise.kind=ct", f"noise.ct_ramp={ramp}"])


def test_ct_ramp_takes_integers_and_needs_ct_noise() -> None:
    assert load_config(None, ["noise.kind=ct", "noise.ct_ramp=[0, 1]"]).noise.ct_ramp == [0, 1]
    with pytest.raises(ConfigError, match='needs noise.kind "ct"'):
        load_config(None, ["noise.ct_ramp=[0.0, 1.0]"])


def test_bad_override_syntax() -> None:
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["train.max_steps"])


def test_an_unknown_key_with_a_newline_stays_on_one_line() -> None:
    from medidiff.config import config_from_dict

    with pytest.raises(ConfigError) as exc:
        config_from_dict({"train": {"lr\nx": 1}})
    text = str(exc.value)
    assert "\n" not in text and "unknown config key 'train.lr\\nx'" in text, text


def test_base_merges_sections_and_replaces_values(tmp_path: Path) -> None:
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "parent.yaml").write_text(
        "data:\n  train: [../scans/a.nii.gz, ../scans/b.nii.gz]\n  modality: MR\n"
        "train:\n  seed: 1\n  max_steps: 10\n  lr: 0.001\noutput_dir: ../runs/parent\n"
    )
    child = tmp_path / "child.yaml"
    child.write_text(
        "base: presets/parent.yaml\ndata:\n  train: [mine.nii.gz]\ntrain:\n  seed: 2\noutput_dir: runs/child\n"
    )
    cfg = load_config(child)
    assert cfg.data.train == [str((tmp_path / "mine.nii.gz").resolve())]
    assert cfg.data.modality == "MR"  # kept from the base's section
    assert (cfg.train.seed, cfg.train.max_steps, cfg.train.lr) == (2, 10, 0.001)
    assert cfg.output_dir == str((tmp_path / "runs" / "child").resolve())
    parent = load_config(tmp_path / "presets" / "parent.yaml")
    assert parent.output_dir == str((tmp_path / "runs" / "parent").resolve())


def test_base_keeps_each_files_paths_relative_to_its_own_folder(tmp_path: Path) -> None:
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "parent.yaml").write_text("data:\n  val: ../val.nii.gz\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: presets/parent.yaml\n")
    assert load_config(child).data.val == str((tmp_path / "val.nii.gz").resolve())


def test_base_overrides_still_apply_last(tmp_path: Path) -> None:
    (tmp_path / "parent.yaml").write_text("train:\n  seed: 1\n")
    (tmp_path / "child.yaml").write_text("base: parent.yaml\ntrain:\n  seed: 2\n")
    assert load_config(tmp_path / "child.yaml", ["train.seed=3"]).train.seed == 3


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"c.yaml": "base: missing.yaml\n"}, "missing.yaml was not found"),
        ({"c.yaml": "base: 5\n"}, "base: must name another YAML config file"),
        ({"c.yaml": "base: d.yaml\n", "d.yaml": "base: c.yaml\n"}, "loops (c.yaml -> d.yaml -> c.yaml)"),
        ({"c.yaml": "base: c.yaml\n"}, "loops"),
        ({"c.yaml": "base: d.yaml\n", "d.yaml": "train: [1]\n"}, "train"),
    ],
)
def test_a_bad_base_is_one_clear_error(tmp_path: Path, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "c.yaml")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_base_chain_of_eight_files_loads_and_nine_fail(tmp_path: Path) -> None:
    for i in range(8):
        (tmp_path / f"c{i}.yaml").write_text(f"base: c{i + 1}.yaml\n")
    (tmp_path / "c8.yaml").write_text("train:\n  seed: 4\n")
    assert load_config(tmp_path / "c1.yaml").train.seed == 4  # c1 ... c8
    with pytest.raises(ConfigError, match="configs deep"):
        load_config(tmp_path / "c0.yaml")  # c0 ... c8


def test_the_stage_presets_build_on_stage_7() -> None:
    stage7 = load_config(REPO / "configs" / "mri-stage7.yaml")
    names = (re.fullmatch(r"mri-stage(\d+)([a-z]?)", p.stem) for p in (REPO / "configs").glob("mri-stage*.yaml"))
    later = sorted((int(m[1]), m[2]) for m in names if m and int(m[1]) > 7)  # 21, 21b, 21c, 22, ...
    assert later[:3] == [(8, ""), (9, ""), (10, "")] and (21, "b") in later
    seeds = []
    for n, variant in later:
        cfg = load_config(REPO / "configs" / f"mri-stage{n}{variant}.yaml")
        seeds.append(cfg.train.seed)
        data = cfg.data
        if n in (21, 22):  # the zoomed-patch stages differ from stage 7 in the zoom only
            assert cfg.data.zoom_fraction > 0
            data = dataclasses.replace(cfg.data, zoom_fraction=stage7.data.zoom_fraction,
                                       zoom_max=stage7.data.zoom_max)
        elif n in (23, 24, 25):  # the same two scans, cleaned beforehand by medidiff instead of by NLM
            assert cfg.data.target_cleanup == "none"
            assert [Path(p).name for p in cfg.data.train] == [Path(p).name for p in stage7.data.train]
            assert all(Path(p).parent.parent == REPO / "runs" for p in cfg.data.train)
            data = dataclasses.replace(cfg.data, train=stage7.data.train, target_cleanup=stage7.data.target_cleanup)
        assert data == stage7.data and cfg.model == stage7.model and cfg.noise == stage7.noise
        # the loss is stage 7's but where a stage exists to try another one
        assert cfg.train.ssim_loss_weight == {26: 1.0, 27: 4.0, 28: 4.0, 29: 4.0, 30: 4.0}.get(n, 0.0)
        assert cfg.output_dir.endswith(f"mri-stage{n}{variant}")
    first_zoom = later.index((21, ""))
    assert seeds[:first_zoom] == [n for n, _ in later[:first_zoom]]  # stages 8-20: seed = stage number
    assert len(set(seeds)) == len(seeds)  # every stage draws its own patches


def test_each_ct_stage_after_3_is_the_stage_before_trained_on_with_a_new_seed() -> None:
    names = (re.fullmatch(r"ct-stage(\d+)", p.stem) for p in (REPO / "configs").glob("ct-stage*.yaml"))
    stages = sorted(int(m[1]) for m in names if m)
    assert stages[:3] == [4, 5, 6]
    stage3 = load_config(REPO / "configs" / "ct-zoom.yaml")
    previous, seeds = stage3, []
    for n in stages:
        cfg = load_config(REPO / "configs" / f"ct-stage{n}.yaml")
        assert cfg.data == previous.data and cfg.model == previous.model and cfg.noise == previous.noise
        assert cfg.data.zoom_fraction == 0.5 and cfg.data.modality == "CT" and cfg.train.max_steps == 3000
        assert Path(cfg.train.init_weights).name == f"ct-stage{n - 1}.safetensors"
        same = dataclasses.replace(cfg.train, seed=previous.train.seed, max_steps=previous.train.max_steps,
                                   init_weights=previous.train.init_weights)  # fmt: skip
        assert same == previous.train
        assert cfg.output_dir.endswith(f"ct-stage{n}")
        seeds.append(cfg.train.seed)
        previous = cfg
    assert len(set(seeds)) == len(seeds) and stage3.train.seed not in seeds


def test_a_value_yaml_cannot_build_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  max_steps: !!int abc\n")
    with pytest.raises(ConfigError, match="cannot be read.*quote it"):
        load_config(path)
    path.write_text("data:\n  train: 2024-13-01\n")  # not read as a date (which month 13 would fail)
    assert load_config(path).data.train.endswith("2024-13-01")
    assert load_config(None, ["data.train=2024-13-01"]).data.train.endswith("2024-13-01")
    assert load_config(None, ["data.train=2024-01-01"]).data.train.endswith("2024-01-01")  # never a date
