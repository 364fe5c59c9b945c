"""Model files (safetensors only, never unpickled) and batch naming."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from conftest import write_phantom

from medidiff.batch import bids_denoised_name, plan_jobs, sidecar_path
from medidiff.checkpoint import load_model
from medidiff.cli import main
from medidiff.errors import MedidiffError, ModelError


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - the classic pickle exploit shape
        return (Path.touch, (self.marker,))


def test_pickled_model_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}))
    with pytest.raises(ModelError, match="safetensors"):
        load_model(str(evil))
    assert not marker.exists()
    # torch.save output is refused the same way
    torch.save({"w": torch.zeros(2)}, tmp_path / "plain.pth")
    with pytest.raises(ModelError, match="never unpickles"):
        load_model(str(tmp_path / "plain.pth"))


def test_foreign_safetensors_is_not_a_medidiff_model(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ModelError, match="not a medidiff model"):
        load_model(str(tmp_path / "other.safetensors"))


def test_exported_model_carries_its_config(tiny_model: Path) -> None:
    loaded = load_model(str(tiny_model))
    assert loaded.config.model.channels == [8, 16, 16]
    assert next(loaded.denoiser.parameters()).dtype == torch.float32


def test_bundled_models_load() -> None:
    from medidiff.checkpoint import BUNDLED

    if not all(p.is_file() for p in BUNDLED.values()):
        pytest.skip("bundled weights not built in this checkout")
    for name in BUNDLED:
        loaded = load_model(name)
        assert loaded.config.data.modality == name.upper()


def test_export_cli(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    assert main(["export", str(tiny_run), "-o", str(out)]) == 0
    assert main(["export", str(tiny_run), "-o", str(out)]) == 2  # no clobbering
    assert main(["export", str(tiny_run), "-o", str(tmp_path / "m.pt")]) == 2
    assert out.stat().st_mode & 0o777 == 0o666 & ~_umask()  # readable by others, as every output


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_export_never_writes_into_the_checkpoints_it_reads(tiny_run: Path, tmp_path: Path, capsys) -> None:
    ckpt = next((tiny_run / "checkpoints").glob("step-*"))
    target = ckpt / "model.safetensors"
    before = target.read_bytes()
    assert main(["export", str(tiny_run), "-o", str(target), "--force"]) == 2
    assert "checkpoints" in capsys.readouterr().err
    assert target.read_bytes() == before
    assert main(["export", str(tmp_path / "no-run"), "-o", str(tmp_path / "m.safetensors")]) == 2
    assert "no such run folder" in capsys.readouterr().err


@pytest.mark.parametrize("state", ['{"optimizer": {}}', "[1]", '{"step": "3"}'])
def test_a_checkpoint_whose_state_holds_no_step_is_a_short_error(
    tiny_run: Path, tmp_path: Path, capsys, state: str
) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    ckpt = run / "checkpoints" / json.loads((run / "checkpoints" / "latest.json").read_text())["path"]
    (ckpt / "state.json").write_text(state)
    assert main(["export", str(run), "-o", str(tmp_path / "m.safetensors")]) == 2
    assert "damaged checkpoint" in capsys.readouterr().err
    (run / "checkpoints" / "latest.json").write_bytes(b"\xff\xfe\x00")
    assert main(["export", str(run), "-o", str(tmp_path / "m.safetensors")]) == 2
    assert "damaged" in capsys.readouterr().err


def test_bids_names() -> None:
    assert bids_denoised_name("sub-01_ses-2_T1w.nii.gz") == "sub-01_ses-2_desc-denoised_T1w.nii.gz"
    assert bids_denoised_name("sub-01_desc-raw_T2w.nii") == "sub-01_desc-denoised_T2w.nii.gz"
    assert sidecar_path(Path("out/sub-01_T1w.nii.gz")) == Path("out/sub-01_T1w.json")


def test_plan_single_and_folder(tmp_path: Path) -> None:
    scan = write_phantom(tmp_path / "a.nii.gz")
    jobs, bids = plan_jobs([str(scan)], str(tmp_path / "o.nii.gz"), None)
    assert [j.output for j in jobs] == [tmp_path / "o.nii.gz"] and bids is None
    with pytest.raises(MedidiffError, match=".nii"):
        plan_jobs([str(scan)], str(tmp_path / "o.png"), None)
    folder = tmp_path / "in"
    (folder / "x").mkdir(parents=True)
    write_phantom(folder / "one.nii.gz")
    write_phantom(folder / "x" / "two.nii")
    jobs, _ = plan_jobs([str(folder)], str(tmp_path / "out"), None)
    assert sorted(str(j.output.relative_to(tmp_path / "out")) for j in jobs) == ["one.nii.gz", "x/two.nii.gz"]
    # a NIfTI name for several scans would become a folder of that name: refused, nothing created
    for inputs in ([str(scan), str(folder / "one.nii.gz")], [str(folder)]):
        with pytest.raises(MedidiffError, match="output folder"):
            plan_jobs(inputs, str(tmp_path / "many.nii.gz"), None)
    assert not (tmp_path / "many.nii.gz").exists()


def test_a_refused_batch_leaves_no_folders_behind(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    (folder / "b").mkdir(parents=True)
    write_phantom(folder / "b" / "scan.nii")
    write_phantom(folder / "b" / "scan.nii.gz")
    with pytest.raises(MedidiffError, match="both write"):
        plan_jobs([str(folder)], str(tmp_path / "out"), str(tmp_path / "unc"))
    assert not (tmp_path / "out").exists() and not (tmp_path / "unc").exists()


def test_a_batch_that_writes_nothing_leaves_no_folders_behind(tiny_model: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.nii.gz").write_bytes(b"garbage")
    (folder / "sub" / "b.nii.gz").write_bytes(b"garbage")
    out = tmp_path / "new" / "out"
    args = ["denoise", str(folder), "-o", str(out), "--model", str(tiny_model), "--device", "cpu"]
    assert main(args) == 2
    assert "2 failed" in capsys.readouterr().out
    assert not (tmp_path / "new").exists()
    # a model that cannot be loaded stops the run before any scan: nothing made either
    write_phantom(folder / "a.nii.gz")
    assert main([*args[:4], "--model", str(tmp_path / "missing.safetensors")]) == 2
    assert not (tmp_path / "new").exists()
    # one good scan: its folder stays, the failed scan's empty one does not
    assert main(args) == 2
    assert (out / "a.nii.gz").is_file() and not (out / "sub").exists()
    # a folder the user made is theirs, even if nothing lands in it
    (folder / "a.nii.gz").write_bytes(b"garbage")
    mine = tmp_path / "mine"
    mine.mkdir()
    assert main([*args[:3], str(mine), *args[4:]]) == 2
    assert mine.is_dir()


def _bids(tmp_path: Path) -> Path:
    root = tmp_path / "bids"
    (root / "sub-01" / "anat").mkdir(parents=True)
    (root / "derivatives" / "old").mkdir(parents=True)
    (root / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.9.0"}')
    write_phantom(root / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    write_phantom(root / "derivatives" / "old" / "sub-01_desc-x_T1w.nii.gz")
    return root


@pytest.mark.slow
def test_batch_cli_bids_sidecars_failures_and_rerun(tiny_model: Path, tmp_path: Path, capsys) -> None:
    root = _bids(tmp_path)
    out = tmp_path / "deriv"
    args = ["denoise", str(root), "-o", str(out), "--model", str(tiny_model), "--device", "cpu"]
    assert main(args) == 0
    result = out / "sub-01" / "anat" / "sub-01_desc-denoised_T1w.nii.gz"
    assert result.is_file()
    assert not (out / "derivatives").exists()  # derivatives are not inputs
    side = json.loads(sidecar_path(result).read_text())
    for key in ("medidiff_version", "model", "model_sha256", "sigma", "steps", "sampler", "seed", "device",
                "wall_time_s"):
        assert key in side
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "medidiff"
    # a broken input is reported and skipped; finished outputs are skipped on rerun
    (root / "sub-01" / "anat" / "sub-01_T2w.nii.gz").write_bytes(b"garbage")
    before = result.stat().st_mtime_ns
    assert main(args) == 2
    captured = capsys.readouterr()
    assert "skipped" in captured.out and "sub-01_T2w" in captured.err
    assert result.stat().st_mtime_ns == before


def test_demo_writes_its_four_files_and_a_failed_demo_leaves_nothing(
    tiny_model: Path, tmp_path: Path, capsys
) -> None:
    import nibabel as nib

    out = tmp_path / "demo"
    names = ["sample_clean.nii.gz", "sample_noisy.nii.gz", "sample_denoised.nii.gz", "demo.png"]
    bad = ["demo", "-o", str(out), "--model", str(tmp_path / "missing.safetensors"), "--device", "cpu"]
    assert main(bad) == 2
    assert not out.exists()  # no folder, no clean or noisy sample without its result
    args = ["demo", "-o", str(out), "--model", str(tiny_model), "--device", "cpu"]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    printed = capsys.readouterr().out
    assert "noisy     PSNR" in printed and "denoised  PSNR" in printed
    clean, denoised = (nib.load(out / n) for n in names[:3:2])
    assert denoised.shape == clean.shape and (denoised.affine == clean.affine).all()
    before = {n: (out / n).read_bytes() for n in names}
    assert main(args) == 2  # an earlier demo is not overwritten without --force
    assert "exists already" in capsys.readouterr().err
    assert {n: (out / n).read_bytes() for n in names} == before
