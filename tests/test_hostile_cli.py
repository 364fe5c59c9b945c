"""Hostile inputs to the ``medidiff`` command: every user error is a short message and exit code 2.

Covers missing, unreadable, damaged and mislabelled scans, wrong dimensionality, DICOM hazards, bad
option values, config mistakes, model files that are not medidiff models (including pickles that
would run code when unpickled), existing outputs, inputs named as outputs, NaN/constant/tiny
volumes, memory refusals, internal errors, and batches where some inputs fail.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import REPO, TINY_CONFIG, write_phantom
from io_fixtures import dicom_geometry, stored_ramp, write_dicom_series

from medidiff.cli import main
from medidiff.files import TEMP_PREFIX

# ------------------------------------------------------------------------------------------- helpers


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the SHA-256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(f"{TEMP_PREFIX}*")]


def assert_short_error(rc: int, err: str, code: int = 2) -> None:
    """Exit ``code``, one to three lines on stderr, no traceback."""
    lines = err.strip().splitlines()
    assert rc == code, err
    assert "Traceback" not in err, err
    assert 1 <= len(lines) <= 3, err
    assert lines[0].startswith("medidiff: "), err


def call(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """Run ``medidiff ARGS`` in this process; argparse errors (SystemExit) count as return codes."""
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:
        rc = int(exc.code or 0)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def run_cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The real ``medidiff`` command in a subprocess (exit code as the shell sees it)."""
    return subprocess.run(
        [sys.executable, "-m", "medidiff", *map(str, args)],
        cwd=cwd, capture_output=True, text=True, timeout=120,
    )


class EvilPayload:
    """Unpickling this creates ``marker``: proof that a loader ran code from a model file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # noqa: ANN204 - the pickle protocol
        return (open, (self.marker, "w"))


def write_evil_pickles(folder: Path, marker: Path) -> dict[str, Path]:
    """Model files that run code when unpickled: torch.save format, plain pickle, misnamed, in a run."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    files = {"pt": folder / "evil.pt", "pth": folder / "evil.pth", "safetensors": folder / "evil.safetensors"}
    torch.save({"state_dict": EvilPayload(marker)}, files["pt"])
    files["pth"].write_bytes(pickle.dumps({"state_dict": EvilPayload(marker)}))
    files["safetensors"].write_bytes(files["pth"].read_bytes())
    run = folder / "evil_run"
    step = run / "checkpoints" / "step-0000001"
    step.mkdir(parents=True)
    (step / "model.safetensors").write_bytes(files["pth"].read_bytes())
    (step / "optimizer.safetensors").write_bytes(files["pth"].read_bytes())
    (step / "state.json").write_text("{}")
    (run / "checkpoints" / "latest.json").write_text(json.dumps({"step": 1, "path": step.name}))
    (run / "config.yaml").write_text(TINY_CONFIG.read_text())
    files["run"] = run
    return files


# ------------------------------------------------------------------------------------------- the headline cases


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    write_phantom(folder / "scan.nii.gz")
    (folder / "text.nii.gz").write_text("this is not a scan\n")
    full = (folder / "scan.nii.gz").read_bytes()
    (folder / "truncated.nii.gz").write_bytes(full[: len(full) // 2])
    return folder


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("missing", "no such file"),
        ("text", "not gzip-compressed"),
        ("truncated", "truncated"),
        ("bad-option", "--steps"),
        ("evil-pickle", "not a medidiff model"),
    ],
)
def test_hostile_input_gives_short_error_and_no_output(workdir: Path, tiny_model: Path, case: str, expect: str):
    marker = workdir.parent / "pwned"
    evil = write_evil_pickles(workdir.parent / "models", marker)["pt"]
    args = {
        "missing": ["denoise", "nothere.nii.gz", "-o", "out.nii.gz", "--model", tiny_model],
        "text": ["denoise", "text.nii.gz", "-o", "out.nii.gz", "--model", tiny_model],
        "truncated": ["denoise", "truncated.nii.gz", "-o", "out.nii.gz", "--model", tiny_model],
        "bad-option": ["denoise", "scan.nii.gz", "-o", "out.nii.gz", "--model", tiny_model, "--steps", "-3"],
        "evil-pickle": ["denoise", "scan.nii.gz", "-o", "out.nii.gz", "--model", evil],
    }[case]
    before = snapshot(workdir)
    proc = run_cli(*args, cwd=workdir)
    assert_short_error(proc.returncode, proc.stderr)
    assert expect in proc.stderr
    assert not (workdir / "out.nii.gz").exists() and not (workdir / "out.json").exists()
    assert snapshot(workdir) == before  # inputs unchanged, nothing new, no temporary files
    assert not marker.exists()


def test_evil_pickle_payload_is_live_but_never_runs(tmp_path: Path, capsys, noisy_scan: Path):
    """The payload does run under a plain unpickler; medidiff refuses every variant without running it."""
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(EvilPayload(proof)))
    assert proof.exists()  # so the test below would notice if a loader unpickled it

    marker = tmp_path / "pwned"
    for kind, path in write_evil_pickles(tmp_path / "models", marker).items():
        rc, _, err = call(capsys, "denoise", noisy_scan, "-o", tmp_path / f"out-{kind}.nii.gz", "--model", path)
        assert_short_error(rc, err)
        assert not marker.exists(), kind
        assert not (tmp_path / f"out-{kind}.nii.gz").exists()
    rc, _, err = call(capsys, "sample", "-o", tmp_path / "s.nii.gz", "--model", tmp_path / "models" / "evil.pt")
    assert_short_error(rc, err)
    assert not marker.exists()


def test_safetensors_without_medidiff_metadata_is_refused(tmp_path: Path, capsys, noisy_scan: Path):
    import torch
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(3)}, str(other))
    rc, _, err = call(capsys, "denoise", noisy_scan, "-o", tmp_path / "o.nii.gz", "--model", other)
    assert_short_error(rc, err)
    assert "not a medidiff model" in err


@pytest.mark.parametrize("where", ["input", "output", "model"])
def test_tilde_of_an_unknown_user_is_a_short_error(tmp_path: Path, capsys, noisy_scan: Path, where: str):
    # Path.expanduser raises RuntimeError for "~name" without such a user; it must not surface as a crash
    ghost = "~medidiff_no_such_user/scan.nii.gz"
    args = {"input": [ghost, "-o", tmp_path / "o.nii.gz"],
            "output": [noisy_scan, "-o", f"~medidiff_no_such_user/{tmp_path.name}/o.nii.gz"],
            "model": [noisy_scan, "-o", tmp_path / "o.nii.gz", "--model", "~medidiff_no_such_user/m.safetensors"]}
    rc, _, err = call(capsys, "denoise", *args[where])
    assert_short_error(rc, err)
    assert "internal error" not in err


def test_config_paths_with_an_unknown_user_stay_as_written() -> None:
    from medidiff.config import load_config

    cfg = load_config(TINY_CONFIG, ["output_dir=~medidiff_no_such_user/run"])
    assert cfg.output_dir.endswith("~medidiff_no_such_user/run")


# ------------------------------------------------------------------------------------------- outputs and inputs


def test_existing_output_is_not_clobbered(tmp_path: Path, capsys, noisy_scan: Path, tiny_model: Path):
    out = tmp_path / "out.nii.gz"
    out.write_bytes(b"precious")
    rc, _, err = call(capsys, "denoise", noisy_scan, "-o", out, "--model", tiny_model)
    assert_short_error(rc, err)
    assert "--force" in err and out.read_bytes() == b"precious"
    rc, _, err = call(capsys, "convert", noisy_scan, out)
    assert_short_error(rc, err)
    assert out.read_bytes() == b"precious"
    assert not temp_files(tmp_path)


def test_existing_json_beside_the_output_is_not_clobbered(tmp_path: Path, capsys, noisy_scan: Path,
                                                          tiny_model: Path):
    sidecar = tmp_path / "den.json"
    sidecar.write_text('{"RepetitionTime": 2.0}')
    rc, _, err = call(capsys, "denoise", noisy_scan, "-o", tmp_path / "den.nii.gz", "--model", tiny_model)
    assert_short_error(rc, err)
    assert sidecar.read_text() == '{"RepetitionTime": 2.0}'
    assert not (tmp_path / "den.nii.gz").exists()


def test_input_is_never_the_output_even_with_force(tmp_path: Path, capsys, noisy_scan: Path, tiny_model: Path):
    before = snapshot(tmp_path)
    rc, _, err = call(capsys, "denoise", noisy_scan, "-o", noisy_scan, "--model", tiny_model, "--force")
    assert_short_error(rc, err)
    rc, _, err = call(capsys, "convert", noisy_scan, noisy_scan, "--force")
    assert_short_error(rc, err)
    rc, _, err = call(capsys, "denoise", tmp_path, "-o", tmp_path, "--model", tiny_model, "--force")
    assert_short_error(rc, err)
    assert snapshot(tmp_path) == before


def test_successful_denoise_leaves_input_unchanged_and_no_temp_files(tmp_path: Path, capsys, noisy_scan: Path,
                                                                   tiny_model: Path):
    before = hashlib.sha256(noisy_scan.read_bytes()).hexdigest()
    out = tmp_path / "den.nii.gz"
    rc, _, err = call(capsys, "denoise", noisy_scan, "-o", out, "--model", tiny_model)
    assert rc == 0, err
    assert hashlib.sha256(noisy_scan.read_bytes()).hexdigest() == before
    assert out.is_file() and (tmp_path / "den.json").is_file()
    assert not temp_files(tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # readable by colleagues, as the umask allows
    rc, _, err = call(capsys, "denoise", noisy_scan, "-o", out, "--model", tiny_model, "--force", "--strength", "1")
    assert rc == 0, err
    assert nib.load(str(out)).shape == nib.load(str(noisy_scan)).shape  # replaced by a complete file
    assert hashlib.sha256(noisy_scan.read_bytes()).hexdigest() == before
    assert not temp_files(tmp_path)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads files without permission")
def test_unreadable_input_and_config(tmp_path: Path, capsys, noisy_scan: Path, tiny_model: Path):
    noisy_scan.chmod(0)
    config = tmp_path / "c.yaml"
    config.write_text("train: {max_steps: 1}\n")
    config.chmod(0)
    try:
        rc, _, err = call(capsys, "denoise", noisy_scan, "-o", tmp_path / "o.nii.gz", "--model", tiny_model)
        assert_short_error(rc, err)
        rc, _, err = call(capsys, "train", "--config", config)
        assert_short_error(rc, err)
    finally:
        noisy_scan.chmod(0o644)
        config.chmod(0o644)


# ------------------------------------------------------------------------------------------- bad option values


@pytest.mark.parametrize(
    ("option", "named"),
    [
        (["--steps", "0"], "--steps"),
        (["--steps", "5000"], "--steps"),
        (["--steps", "two"], "--steps"),
        (["--overlap", "1.5"], "--overlap"),
        (["--overlap", "nan"], "--overlap"),
        (["--sigma", "nan"], "--sigma"),
        (["--sigma", "0"], "--sigma"),
        (["--sigma", "-inf"], "--sigma"),
        (["--strength", "inf"], "--strength"),
        (["--strength", "11"], "--strength"),
        (["--samples", "0"], "--samples"),
        (["--samples", "3", "--sampler", "euler"], "--samples"),
        (["--flips", "9"], "--flips"),
        (["--flips", "0"], "--flips"),
        (["--guided-radius", "-1"], "--guided-radius"),
        (["--guided-radius", "6"], "--guided-radius"),
        (["--guided-radius", "0.5"], "--guided-radius"),
        (["--guided-radius", "two"], "--guided-radius"),
        (["--blend", "1.5"], "--blend"),
        (["--blend", "-0.1"], "--blend"),
        (["--network-sigma-scale", "0"], "--network-sigma-scale"),
        (["--network-sigma-scale", "0.4"], "--network-sigma-scale"),
        (["--network-sigma-scale", "2.5"], "--network-sigma-scale"),
        (["--network-sigma-scale", "nan"], "--network-sigma-scale"),
        (["--detail-floor", "1.5"], "--detail-floor"),
        (["--detail-floor", "-0.1"], "--detail-floor"),
        (["--detail-floor", "nan"], "--detail-floor"),
        (["--batch-size", "-1"], "--batch-size"),
        (["--roi-size", "4", "4", "4"], "--roi-size"),
        (["--roi-size", "16", "16", "10"], "--roi-size"),  # the tiny U-Net needs multiples of 4
        (["--roi-size", "16", "16"], "--roi-size"),
        (["--seed", "-1"], "--seed"),
        (["--seed", "1" + "0" * 30], "--seed"),
        (["--sampler", "ddim"], "--sampler"),
        (["--device", "tpu"], "--device"),
        (["--modality", "PET"], "--modality"),
        (["--uncertainty", "u.nii.gz"], "--uncertainty"),
        (["--series", "0"], "--series"),
        (["--bogus"], "--bogus"),
    ],
)
def test_bad_option_values(tmp_path: Path, capsys, noisy_scan: Path, tiny_model: Path, option: list[str],
                           named: str):
    out = tmp_path / "o.nii.gz"
    rc, _, err = call(capsys, "denoise", noisy_scan, "-o", out, "--model", tiny_model, *option)
    assert_short_error(rc, err)
    assert named in err
    assert not out.exists() and not temp_files(tmp_path)


def test_uncertainty_name_is_checked_before_any_work(tmp_path: Path, capsys, noisy_scan: Path, tiny_model: Path):
    out = tmp_path / "o.nii.gz"
    for uncertainty in (out, tmp_path / "spread.txt"):
        rc, _, err = call(capsys, "denoise", noisy_scan, "-o", out, "--model", tiny_model, "--samples", "2",
                          "--uncertainty", uncertainty, "--force")
        assert_short_error(rc, err)
        assert "--uncertainty" in err and not out.exists()


def test_flips_give_an_uncertainty_map_with_the_scan_geometry(tmp_path: Path, capsys, noisy_scan: Path,
                                                              tiny_model: Path):
    out, spread = tmp_path / "o.nii.gz", tmp_path / "spread.nii.gz"
    rc, _, err = call(capsys, "denoise", noisy_scan, "-o", out, "--model", tiny_model, "--flips", "2",
                      "--uncertainty", spread)
    assert rc == 0, err
    sidecar = json.loads((tmp_path / "o.json").read_text())
    assert sidecar["flips"] == 2 and sidecar["guided_radius"] == 3.7 and sidecar["blend"] == 0.0  # MR defaults
    assert sidecar["network_sigma_scale"] == 1.1 and sidecar["detail_floor"] == 0.05
    src, unc = nib.load(noisy_scan), nib.load(spread)
    assert unc.shape == src.shape and np.array_equal(unc.affine, src.affine)
    assert float(np.asarray(unc.dataobj).max()) > 0


def test_blend_and_guided_radius_reach_the_denoiser(tmp_path: Path, capsys, noisy_scan: Path, tiny_model: Path):
    out = tmp_path / "o.nii.gz"
    rc, _, err = call(capsys, "denoise", noisy_scan, "-o", out, "--model", tiny_model, "--blend", "0.25",
                      "--guided-radius", "1", "--network-sigma-scale", "1.3", "--detail-floor", "0.2")
    assert rc == 0, err
    sidecar = json.loads((tmp_path / "o.json").read_text())
    assert sidecar["blend"] == 0.25 and sidecar["guided_radius"] == 1 and sidecar["network_sigma_scale"] == 1.3
    assert sidecar["detail_floor"] == 0.2


def test_oversized_roi_is_fitted_to_the_scan(tmp_path: Path, capsys, noisy_scan: Path, tiny_model: Path):
    out = tmp_path / "o.nii.gz"
    rc, _, err = call(capsys, "denoise", noisy_scan, "-o", out, "--model", tiny_model,
                      "--roi-size", "4096", "4096", "4096")
    assert rc == 0, err
    assert json.loads((tmp_path / "o.json").read_text())["roi_size"] == [24, 28, 24]


def test_other_commands_report_user_errors_in_one_line(tmp_path: Path, capsys, noisy_scan: Path):
    missing = tmp_path / "missing.nii.gz"
    cases = [
        ["info", missing],
        ["convert", missing, tmp_path / "c.nii.gz"],
        ["convert", noisy_scan, tmp_path / "c.txt"],
        ["evaluate", "--input", missing],
        ["export", tmp_path, "-o", tmp_path / "m.safetensors"],
        ["export", tmp_path, "-o", tmp_path / "m.pt"],
        ["sample", "-o", tmp_path / "s.nii.gz", "--model", missing],
        ["sample", "-o", tmp_path / "s.nii.gz", "--shape", "0", "8", "8"],
        ["sample", "-o", tmp_path / "s.nii.gz", "--seed", "x"],
        ["sample", "-o", tmp_path / "s.nii.gz", "--spacing", "1e300"],
        ["sample", "-o", tmp_path / "s.nii.gz", "--spacing", "1e-320"],
        ["sample", "-o", tmp_path / "s.nii.gz", "--steps", "100000000"],
        ["demo", "--noise", "-1"],
        ["train", "--config", tmp_path / "missing.yaml"],
        ["nonsense"],
    ]
    for args in cases:
        rc, _, err = call(capsys, *args)
        assert_short_error(rc, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.nii.gz"]


def test_sample_checks_the_output_name_before_loading_a_model(tmp_path: Path, capsys):
    rc, _, err = call(capsys, "sample", "-o", tmp_path / "s.txt", "--model", tmp_path / "missing.safetensors")
    assert_short_error(rc, err)
    assert ".nii" in err and "missing" not in err


def test_debug_shows_the_traceback(tmp_path: Path, capsys):
    from medidiff.errors import InputError

    missing = str(tmp_path / "missing.nii")
    for argv in (["info", missing, "--debug"], ["--debug", "info", missing]):
        with pytest.raises(InputError):
            main(argv)
    assert main(["info", missing]) == 2  # without it, one line


# ------------------------------------------------------------------------------------------- configs


def test_config_mistakes_are_user_errors(tmp_path: Path, capsys):
    marker = tmp_path / "pwned"
    configs = {
        "typo.yaml": "data:\n  patch_sise: [16, 16, 16]\n",
        "evil.yaml": f"data:\n  train: !!python/object/apply:os.system ['touch {marker}']\n",
        "evil2.yaml": f"output_dir: !!python/object/apply:builtins.open ['{marker}', 'w']\n",
        "broken.yaml": "data: [\n",
        "list.yaml": "- 1\n- 2\n",
        "keys.yaml": "1: 2\nfoo: 3\n",
        "nan.yaml": "train:\n  lr: .nan\n",
        "type.yaml": "train:\n  max_steps: many\n",
        "binary.yaml": "\xff\xfe\x00",
        "deep.yaml": "data: " + "[" * 3000 + "]" * 3000 + "\n",
    }
    for name, text in configs.items():
        path = tmp_path / name
        path.write_bytes(text.encode("latin-1"))
        rc, _, err = call(capsys, "train", "--config", path)
        assert_short_error(rc, err)
        assert len(err) < 500, err
    rc, _, err = call(capsys, "train", "--config", TINY_CONFIG, "--set", "train.max_stepz=3")
    assert_short_error(rc, err)
    assert "max_stepz" in err and "max_steps" in err  # names the typo and the valid keys
    rc, _, err = call(capsys, "train", "--config", TINY_CONFIG, "--set", "train.max_steps=__import__('os')")
    assert_short_error(rc, err)
    assert not marker.exists()
    assert not list(tmp_path.glob("runs*"))


# ------------------------------------------------------------------------------------------- difficult volumes


def _save(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    return path


def _denoised(capsys, src: Path, model: Path) -> tuple[np.ndarray, dict]:
    out = src.with_name("den_" + src.name)
    rc, _, err = call(capsys, "denoise", src, "-o", out, "--model", model)
    assert rc == 0, err
    return np.asarray(nib.load(str(out)).dataobj), json.loads(out.with_name(out.name[:-7] + ".json").read_text())


def test_nan_and_inf_voxels_stay_where_they_were(tmp_path: Path, capsys, noisy_scan: Path, tiny_model: Path):
    data = np.asarray(nib.load(str(noisy_scan)).dataobj).copy()
    data[2:6, 3:9, 4:8] = np.nan
    data[0, 0, 0], data[1, 0, 0] = np.inf, -np.inf
    out, _ = _denoised(capsys, _save(tmp_path / "nan.nii.gz", data), tiny_model)
    assert out.shape == data.shape
    finite = np.isfinite(data)
    assert np.isfinite(out[finite]).all()
    np.testing.assert_array_equal(out[~finite], data[~finite])


def test_constant_volume_comes_back_unchanged(tmp_path: Path, capsys, tiny_model: Path):
    data = np.full((16, 16, 12), 7.5, np.float32)
    out, info = _denoised(capsys, _save(tmp_path / "const.nii.gz", data), tiny_model)
    np.testing.assert_array_equal(out, data)
    assert any("constant" in note for note in info["notes"])


def test_tiny_volume_smaller_than_the_window_is_denoised_not_blanked(tmp_path: Path, capsys, noisy_scan: Path,
                                                                   tiny_model: Path):
    data = np.asarray(nib.load(str(noisy_scan)).dataobj)[:10, :10, :10].astype(np.float32)
    assert (data > 0.5).any()  # a corner with some bright voxels
    out, info = _denoised(capsys, _save(tmp_path / "tiny.nii.gz", data), tiny_model)
    assert out.shape == data.shape and np.isfinite(out).all()
    assert info["roi_size"] == [12, 12, 12]
    assert np.abs(out - data).max() < 0.5 * float(data.max())


@pytest.mark.parametrize(
    ("name", "data", "expect"),
    [
        ("allnan", np.full((16, 16, 16), np.nan, np.float32), "no finite value"),
        ("slice2d", np.ones((24, 24), np.float32), "3D"),
        ("slab", np.ones((24, 24, 1), np.float32), "3D"),
        ("thin", np.random.default_rng(0).random((24, 5, 24)).astype(np.float32), "3D"),
        ("negative", -1.0 - np.random.default_rng(0).random((16, 16, 16)).astype(np.float32), "magnitude"),
        ("zscored", np.random.default_rng(0).standard_normal((16, 16, 16)).astype(np.float32), "negative"),
        ("nan_volume_4d", np.stack([np.ones((16, 16, 16), np.float32) * (1 + np.arange(16)[:, None, None]),
                                    np.full((16, 16, 16), np.nan, np.float32)], axis=-1),
         "volume 1 of 2 (counted from 0): the volume holds no finite value"),
    ],
)
def test_volumes_that_cannot_be_denoised_are_refused(tmp_path: Path, capsys, tiny_model: Path, name: str,
                                                     data: np.ndarray, expect: str):
    src = _save(tmp_path / f"{name}.nii.gz", data)
    out = tmp_path / "out.nii.gz"
    rc, _, err = call(capsys, "denoise", src, "-o", out, "--model", tiny_model, "--modality", "MR")
    assert_short_error(rc, err)
    assert expect in err and not out.exists() and not temp_files(tmp_path)
    assert str(src) in err  # the one line names the scan


def test_volume_too_big_for_memory_is_refused_before_the_model_loads(tmp_path: Path, capsys, noisy_scan: Path,
                                                                      monkeypatch: pytest.MonkeyPatch):
    import medidiff.inference

    real = os.sysconf
    monkeypatch.setattr(medidiff.inference.os, "sysconf",
                        lambda name: 16 if name == "SC_AVPHYS_PAGES" else real(name))
    # the model does not exist: a memory refusal proves the check came first
    rc, _, err = call(capsys, "denoise", noisy_scan, "-o", tmp_path / "o.nii.gz",
                      "--model", tmp_path / "never-loaded.safetensors")
    assert_short_error(rc, err)
    assert "memory" in err and "never-loaded" not in err


def test_sample_refuses_a_shape_that_cannot_fit(tmp_path: Path, capsys, tiny_model: Path):
    rc, _, err = call(capsys, "sample", "-o", tmp_path / "s.nii.gz", "--model", tiny_model,
                      "--shape", "65536", "65536", "65536")
    assert_short_error(rc, err)
    assert "memory" in err and "smaller --shape" in err and "crop" not in err


# ------------------------------------------------------------------------------------------- DICOM at the CLI


def test_dicom_hazards_are_user_errors(tmp_path: Path, capsys, tiny_model: Path):
    geometry = dicom_geometry()
    step = geometry["slice_spacing"] * geometry["normal"]
    gap = tmp_path / "gap"
    write_dicom_series(gap, stored_ramp(), geometry,
                       positions=[geometry["origin"] + k * step for k in (0, 1, 2, 3, 5, 6, 7, 8)])
    single = tmp_path / "single"
    write_dicom_series(single, stored_ramp(n_slices=1, rows=16, cols=16), geometry)
    not_image = tmp_path / "notimage"
    not_image.mkdir()
    (not_image / "IM0001").write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI" + b"\x00" * 50)
    for folder, expect in [(gap, "missing slices"), (single, "3D"), (not_image, "DICOM")]:
        before = snapshot(folder)
        rc, _, err = call(capsys, "denoise", folder, "-o", tmp_path / "o.nii.gz", "--model", tiny_model)
        assert_short_error(rc, err)
        assert expect in err
        assert snapshot(folder) == before
    assert not (tmp_path / "o.nii.gz").exists()


def test_damaged_nrrd_and_mha_give_one_clean_line(tmp_path: Path, capfd):
    """The ITK readers' own messages (written by C++ to stderr) do not reach the user."""
    import SimpleITK as sitk

    for suffix in (".nrrd", ".mha"):
        good = tmp_path / f"good{suffix}"
        sitk.WriteImage(sitk.GetImageFromArray(np.ones((16, 16, 16), np.float32)), str(good), False)
        capfd.readouterr()
        bad = tmp_path / f"bad{suffix}"
        bad.write_bytes(good.read_bytes()[:-100])
        rc, _, err = call(capfd, "denoise", bad, "-o", tmp_path / "o.nii.gz", "--model", "none.safetensors")
        assert_short_error(rc, err)
        assert len(err.strip().splitlines()) == 1 and err.startswith("medidiff: error:"), err


# ------------------------------------------------------------------------------------------- batches


@pytest.fixture()
def mixed_folder(tmp_path: Path, noisy_scan: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    write_phantom(folder / "a.nii.gz", shape=(16, 16, 16), seed=1)
    write_phantom(folder / "d.nii.gz", shape=(16, 16, 16), seed=2)
    (folder / "b.nii.gz").write_text("not a scan")
    full = (folder / "a.nii.gz").read_bytes()
    (folder / "c.nii.gz").write_bytes(full[: len(full) // 3])
    _save(folder / "e.nii.gz", np.ones((16, 16), np.float32))
    return folder


def test_batch_skips_failing_inputs_and_a_rerun_continues(tmp_path: Path, capsys, mixed_folder: Path,
                                                          tiny_model: Path):
    before = snapshot(mixed_folder)
    out = tmp_path / "out"
    rc, stdout, err = call(capsys, "denoise", mixed_folder, "-o", out, "--model", tiny_model)
    assert rc == 2
    assert "2 denoised, 0 skipped (done before), 3 failed" in stdout
    assert "Traceback" not in err
    failed = [line.split(": ")[1] for line in err.splitlines() if line.startswith("failed: ")]
    assert sorted(failed) == [
        str(mixed_folder / n) for n in ("b.nii.gz", "c.nii.gz", "e.nii.gz")
    ]
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "a.nii.gz", "d.json", "d.nii.gz"]
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    (mixed_folder / "b.nii.gz").unlink()
    write_phantom(mixed_folder / "b.nii.gz", shape=(16, 16, 16), seed=3)  # the user fixes one input
    rc, stdout, _ = call(capsys, "denoise", mixed_folder, "-o", out, "--model", tiny_model)
    assert rc == 2 and "1 denoised, 2 skipped (done before), 2 failed" in stdout
    assert all(out.joinpath(name).stat().st_mtime_ns == stamp for name, stamp in stamps.items())
    assert (out / "b.nii.gz").is_file()
    assert not temp_files(tmp_path)
    del before["b.nii.gz"]
    after = snapshot(mixed_folder)
    del after["b.nii.gz"]
    assert after == before


def test_batch_rerun_without_sidecars_skips_finished_outputs(tmp_path: Path, capsys, tiny_model: Path):
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(2):
        write_phantom(folder / f"s{k}.nii.gz", shape=(16, 16, 16), seed=k)
    out = tmp_path / "out"
    assert call(capsys, "denoise", folder, "-o", out, "--model", tiny_model, "--no-sidecar")[0] == 0
    rc, stdout, err = call(capsys, "denoise", folder, "-o", out, "--model", tiny_model, "--no-sidecar")
    assert rc == 0, err
    assert "0 denoised, 2 skipped (done before), 0 failed" in stdout


def test_output_folder_inside_the_input_folder_is_not_read_back(tmp_path: Path, capsys, tiny_model: Path):
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(2):
        write_phantom(folder / f"s{k}.nii.gz", shape=(16, 16, 16), seed=k)
    out = folder / "denoised"
    assert call(capsys, "denoise", folder, "-o", out, "--model", tiny_model)[0] == 0
    rc, stdout, _ = call(capsys, "denoise", folder, "-o", out, "--model", tiny_model)
    assert rc == 0 and "0 denoised, 2 skipped (done before), 0 failed" in stdout
    assert not (out / "denoised").exists()


def test_internal_error_is_one_line_exit_1_and_a_batch_goes_on(tmp_path: Path, capsys, noisy_scan: Path,
                                                               tiny_model: Path, monkeypatch: pytest.MonkeyPatch):
    import medidiff.inference

    real = medidiff.inference.Denoiser.denoise_volume

    def flaky(self, volume, **kwargs):
        if "bad" in volume.meta.source_path:
            raise RuntimeError("simulated failure\nover two lines")
        return real(self, volume, **kwargs)

    monkeypatch.setattr(medidiff.inference.Denoiser, "denoise_volume", flaky)
    bad = write_phantom(tmp_path / "bad.nii.gz", shape=(16, 16, 16))
    rc, _, err = call(capsys, "denoise", bad, "-o", tmp_path / "o.nii.gz", "--model", tiny_model)
    assert_short_error(rc, err, code=1)
    assert "internal error" in err and "--debug" in err
    with pytest.raises(RuntimeError):
        main(["denoise", str(bad), "-o", str(tmp_path / "o.nii.gz"), "--model", str(tiny_model), "--debug"])
    assert not (tmp_path / "o.nii.gz").exists()

    folder = tmp_path / "batch"
    folder.mkdir()
    write_phantom(folder / "bad.nii.gz", shape=(16, 16, 16))
    write_phantom(folder / "good.nii.gz", shape=(16, 16, 16))
    rc, stdout, err = call(capsys, "denoise", folder, "-o", tmp_path / "out", "--model", tiny_model)
    assert rc == 1 and "1 denoised, 0 skipped (done before), 1 failed" in stdout
    assert (tmp_path / "out" / "good.nii.gz").is_file() and not (tmp_path / "out" / "bad.nii.gz").exists()


def test_a_scan_too_big_to_read_fails_alone_in_a_batch(tmp_path: Path, capsys, tiny_model: Path,
                                                       monkeypatch: pytest.MonkeyPatch):
    import medidiff.io

    real = medidiff.io.read_volume

    def reader(path, series=None):
        if "huge" in str(path):
            raise MemoryError
        return real(path, series=series)

    monkeypatch.setattr(medidiff.io, "read_volume", reader)
    folder = tmp_path / "in"
    folder.mkdir()
    write_phantom(folder / "huge.nii.gz", shape=(16, 16, 16))
    write_phantom(folder / "small.nii.gz", shape=(16, 16, 16))
    rc, stdout, err = call(capsys, "denoise", folder, "-o", tmp_path / "out", "--model", tiny_model)
    assert rc == 2 and "1 denoised, 0 skipped (done before), 1 failed" in stdout
    assert "too large" in err


def test_gzip_bomb_header_is_refused_without_allocating(tmp_path: Path, capsys, tiny_model: Path):
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape((4000, 4000, 4000))
    path = tmp_path / "bomb.nii.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(header.binaryblock + b"\x00" * 4 + b"\x00" * 4096)
    rc, _, err = call(capsys, "denoise", path, "-o", tmp_path / "o.nii.gz", "--model", tiny_model)
    assert_short_error(rc, err)


def test_repo_has_no_pickle_loading():
    """Model loading goes through safetensors and JSON only."""
    import re

    sources = "\n".join(p.read_text(encoding="utf-8") for p in (REPO / "medidiff").glob("*.py"))
    for forbidden in (r"torch\.load\(", r"pickle\.loads?\(", r"yaml\.load\(", r"yaml\.unsafe_load",
                      r"(?<![.\w])eval\(", r"(?<![.\w])exec\(", r"allow_pickle\s*=\s*True"):
        assert not re.search(forbidden, sources), forbidden


def test_help_gives_defaults_without_a_meaningless_none(capsys):
    rc, out, _ = call(capsys, "denoise", "--help")
    assert rc == 0
    text = " ".join(out.split())
    assert "(default: None)" not in text
    assert "(default: MR 0, CT 0.15)" in text  # the help of a modality-dependent default says it
    assert "(default: 0.2)" in text  # a plain default is still shown


def test_a_missing_model_is_one_error_for_a_batch_and_not_blamed_on_the_scan(tmp_path: Path, capsys,
                                                                              noisy_scan: Path):
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(3):
        write_phantom(folder / f"s{k}.nii.gz", shape=(16, 16, 16), seed=k)
    out = tmp_path / "out"
    rc, stdout, err = call(capsys, "denoise", folder, "-o", out, "--model", "nope")
    assert_short_error(rc, err)
    assert err.startswith("medidiff: error: nope: model not found") and "FAILED" not in stdout + err
    assert not out.exists()
    rc, _, err = call(capsys, "denoise", noisy_scan, "-o", tmp_path / "one.nii.gz", "--model", "nope")
    assert_short_error(rc, err)
    assert err.startswith("medidiff: error: nope: model not found") and str(noisy_scan) not in err


def test_an_input_given_twice_is_named_as_such(tmp_path: Path, capsys, noisy_scan: Path, tiny_model: Path):
    rc, _, err = call(capsys, "denoise", noisy_scan, noisy_scan, "-o", tmp_path / "out", "--model", tiny_model)
    assert_short_error(rc, err)
    assert "given twice" in err and not (tmp_path / "out").exists()


def test_a_map_named_like_another_scans_output_is_refused_before_any_work(tmp_path: Path, capsys,
                                                                            tiny_model: Path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_phantom(folder / "s.nii.gz", shape=(16, 16, 16), seed=0)
    write_phantom(folder / "s_uncertainty.nii.gz", shape=(16, 16, 16), seed=1)
    out = tmp_path / "out"
    rc, _, err = call(capsys, "denoise", folder, "-o", out, "--uncertainty", out, "--flips", "2",
                      "--model", tiny_model)
    assert_short_error(rc, err)
    assert "would be written for both" in err and not out.exists()
