"""Training: the tiny preset end to end, exact resume, signals, bad data, DDP on CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import TINY_CONFIG, write_phantom

from medidiff.errors import ConfigError, InputError
from medidiff.training import train


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _weights(run: Path) -> dict:
    from safetensors.torch import load_file

    from medidiff.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(run)
    assert ckpt is not None
    return load_file(str(ckpt / "model.safetensors"))


def _overrides(data: Path, run: Path, steps: int) -> list[str]:
    return [f"data.train={data}", f"data.val={data}", f"output_dir={run}", f"train.max_steps={steps}"]


def test_tiny_run_folder_contents(tiny_run: Path) -> None:
    assert (tiny_run / "config.yaml").is_file()
    records = _records(tiny_run)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(r["loss"]) for r in records)
    assert "val_psnr" in records[2] and "val_ssim" in records[5]
    files = {p.suffix for p in tiny_run.rglob("*") if p.is_file()}
    assert files <= {".yaml", ".jsonl", ".json", ".safetensors"}, files  # nothing pickled


def test_resume_continues_from_the_next_step_and_matches_an_uninterrupted_run(
    phantom_dir: Path, tmp_path: Path
) -> None:
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(str(TINY_CONFIG), _overrides(phantom_dir, straight, 8), progress=False)
    train(str(TINY_CONFIG), _overrides(phantom_dir, split, 5), progress=False)
    result = train(None, ["train.max_steps=8"], resume=str(split), progress=False)
    assert result.step == 8
    steps = [r["step"] for r in _records(split)]
    assert steps == list(range(1, 9))
    a, b = _weights(straight), _weights(split)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), rtol=1e-5, atol=1e-6, err_msg=key)


def test_cosine_schedule_warms_up_then_decays_to_lr_min() -> None:
    from medidiff.config import TrainConfig
    from medidiff.training import learning_rate

    cfg = TrainConfig(max_steps=110, lr=1e-3, lr_warmup_steps=10, lr_schedule="cosine", lr_min=1e-5)
    rates = [learning_rate(cfg, s) for s in range(110)]
    assert rates[0] == pytest.approx(1e-4)  # warm-up: (0 + 1) / 10 of lr
    assert rates[9] == pytest.approx(1e-3)  # warm-up done, decay not started
    assert rates[60] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5, rel=1e-6)  # half way: the mid-point
    assert rates[-1] == pytest.approx(1e-5, rel=0.05)
    assert all(a >= b for a, b in zip(rates[9:], rates[10:], strict=False))  # monotone after warm-up
    constant = TrainConfig(max_steps=110, lr=1e-3, lr_warmup_steps=10)
    assert learning_rate(constant, 100) == 1e-3


def test_init_weights_starts_from_a_trained_model(tiny_model: Path, phantom_dir: Path, tmp_path: Path) -> None:
    from medidiff.checkpoint import load_model

    run = tmp_path / "finetune"
    overrides = [*_overrides(phantom_dir, run, 0), f"train.init_weights={tiny_model}"]
    train(str(TINY_CONFIG), overrides, progress=False)  # 0 steps: the checkpoint holds the start
    start = load_model(str(tiny_model)).denoiser.net.state_dict()
    copied = load_model(str(run)).denoiser.net.state_dict()
    for key in start:  # the EMA of the copy starts at the source's weights
        np.testing.assert_allclose(copied[key].numpy(), start[key].numpy(), rtol=0, atol=1e-7, err_msg=key)
    fresh = tmp_path / "fresh"
    train(str(TINY_CONFIG), _overrides(phantom_dir, fresh, 0), progress=False)
    first = next(iter(start))
    assert not np.allclose(load_model(str(fresh)).denoiser.net.state_dict()[first].numpy(), start[first].numpy())


def test_init_weights_with_another_architecture_is_refused(
    tiny_model: Path, phantom_dir: Path, tmp_path: Path
) -> None:
    overrides = [*_overrides(phantom_dir, tmp_path / "r", 1), f"train.init_weights={tiny_model}",
                 "model.channels=[8, 8, 8]"]
    with pytest.raises(ConfigError, match="init_weights"):
        train(str(TINY_CONFIG), overrides, progress=False)


def test_resume_refuses_model_changes(tiny_run: Path) -> None:
    with pytest.raises(ConfigError, match="model"):
        train(None, ["model.channels=[4, 8, 8]"], resume=str(tiny_run), progress=False)


def test_resume_after_editing_the_model_in_config_yaml_is_a_config_error(tiny_run: Path, tmp_path: Path) -> None:
    import shutil

    import yaml

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    raw = yaml.safe_load((run / "config.yaml").read_text())
    raw["model"]["num_res_blocks"] = raw["model"]["num_res_blocks"] + 1
    (run / "config.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="does not match the model"):
        train(None, [], resume=str(run), progress=False)


def test_resume_with_no_steps_left_changes_nothing(tiny_run: Path) -> None:
    before = {p: p.read_bytes() for p in tiny_run.rglob("*") if p.is_file()}
    step = json.loads((tiny_run / "checkpoints" / "latest.json").read_text())["step"]
    with pytest.raises(ConfigError, match=f"at step {step} already"):
        train(None, [f"train.max_steps={step}"], resume=str(tiny_run), progress=False)
    assert {p: p.read_bytes() for p in tiny_run.rglob("*") if p.is_file()} == before


def test_a_diverging_run_is_a_short_error_naming_the_learning_rate(phantom_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="diverged.*train.lr"):
        train(str(TINY_CONFIG), [*_overrides(phantom_dir, tmp_path / "run", 20), "train.lr=1e30",
                                 "train.lr_warmup_steps=0"], progress=False)


def test_new_run_refuses_an_existing_run_folder(tiny_run: Path, phantom_dir: Path) -> None:
    with pytest.raises(ConfigError, match="--resume"):
        train(str(TINY_CONFIG), _overrides(phantom_dir, tiny_run, 2), progress=False)


def test_empty_dataset_fails_before_training(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="empty"):
        train(str(TINY_CONFIG), _overrides(empty, tmp_path / "run", 2), progress=False)


def test_patch_larger_than_volume_fails_before_training(tmp_path: Path) -> None:
    data = tmp_path / "small"
    data.mkdir()
    write_phantom(data / "s.nii.gz", shape=(12, 24, 24))
    with pytest.raises(ConfigError, match="patch_size"):
        train(str(TINY_CONFIG), _overrides(data, tmp_path / "run", 2), progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_corrupt_training_file_is_named_or_skipped(phantom_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "mixed"
    data.mkdir()
    write_phantom(data / "good.nii.gz")
    (data / "bad.nii.gz").write_bytes(b"not a scan at all")
    with pytest.raises(InputError, match="bad.nii.gz"):
        train(str(TINY_CONFIG), _overrides(data, tmp_path / "run1", 2), progress=False)
    result = train(str(TINY_CONFIG), [*_overrides(data, tmp_path / "run2", 2), "data.skip_unreadable=true",
                                      "data.val="], progress=False)
    assert result.step == 2


def test_paired_datalist_trains(tmp_path: Path) -> None:
    clean = write_phantom(tmp_path / "clean.nii.gz", noise=0.0)
    noisy = write_phantom(tmp_path / "noisy.nii.gz", noise=0.05)
    datalist = tmp_path / "pairs.json"
    datalist.write_text(json.dumps({"training": [{"image": noisy.name, "target": clean.name}]}))
    result = train(str(TINY_CONFIG), [f"data.train={datalist}", "data.val=", f"output_dir={tmp_path / 'run'}",
                                      "train.max_steps=2"], progress=False)
    assert result.step == 2


def test_pairs_with_different_geometry_are_refused(tmp_path: Path) -> None:
    write_phantom(tmp_path / "clean.nii.gz", shape=(24, 28, 24), noise=0.0)
    write_phantom(tmp_path / "noisy.nii.gz", shape=(24, 28, 28))
    datalist = tmp_path / "pairs.json"
    datalist.write_text(json.dumps({"training": [{"image": "noisy.nii.gz", "target": "clean.nii.gz"}]}))
    with pytest.raises(InputError, match="geometry"):
        train(str(TINY_CONFIG), [f"data.train={datalist}", "data.val=", f"output_dir={tmp_path / 'run'}"],
              progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1])
def test_sigterm_saves_a_checkpoint_that_resumes(phantom_dir: Path, tmp_path: Path, workers: int) -> None:
    """SIGTERM to the process (``kill PID``) and, with data-loading workers, to its whole process
    group (how a cluster scheduler stops a job): the workers leave the signal to the main process."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "medidiff", "train", "--config", str(TINY_CONFIG),
           *[a for o in _overrides(phantom_dir, run, 100000) for a in ("--set", o)],
           "--set", "train.save_every=100000", "--set", "train.val_every=0",
           "--set", f"data.num_workers={workers}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        if (run / "metrics.jsonl").exists() and len(_records(run)) >= 3:
            break
        time.sleep(0.2)
    if workers:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "--resume" in err and "Traceback" not in err
    saved = json.loads((run / "checkpoints" / "latest.json").read_text())["step"]
    assert saved >= 3
    result = train(None, [f"train.max_steps={saved + 2}"], resume=str(run), progress=False)
    assert result.step == saved + 2
    assert [r["step"] for r in _records(run)] == list(range(1, saved + 3))


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(phantom_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "medidiff", "train", "--config", str(TINY_CONFIG),
           *[a for o in _overrides(phantom_dir, run, 4) for a in ("--set", o)]]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [r["step"] for r in _records(run)] == [1, 2, 3, 4]  # rank 0 alone logs
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 4


def test_recorrupt_records_each_scans_own_noise_and_trains(phantom_dir: Path, tmp_path: Path) -> None:
    from medidiff.config import load_config
    from medidiff.data import PatchDataset

    noisy_dir = tmp_path / "noisy"
    noisy_dir.mkdir()
    write_phantom(noisy_dir / "a.nii.gz", noise=0.04)
    cfg = load_config(str(TINY_CONFIG), [f"data.train={noisy_dir}", "data.target_cleanup=recorrupt",
                                         "data.synthetic_phantoms=1"])
    dataset = PatchDataset.from_config(cfg, "training")
    levels = sorted(float(dataset.sample(i)["own_sigma"]) for i in range(12))
    assert levels[0] == 0.0  # the phantom is clean
    assert 0.02 < levels[-1] < 0.08, levels  # the scan's own noise, in normalized units
    run = tmp_path / "run"
    result = train(str(TINY_CONFIG), [*_overrides(noisy_dir, run, 2), "data.target_cleanup=recorrupt"],
                   progress=False)
    assert result.step == 2 and all(np.isfinite(r["loss"]) for r in _records(run))


def test_patches_are_drawn_as_from_the_whole_volume_mask(phantom_dir: Path) -> None:
    """Precomputed voxel lists give the patches MONAI's crop draws from the mask itself."""
    from monai.transforms import RandCropByPosNegLabeld

    from medidiff.config import load_config
    from medidiff.data import PatchDataset

    cfg = load_config(str(TINY_CONFIG), [f"data.train={phantom_dir}", "data.synthetic_phantoms=0"])
    dataset = PatchDataset.from_config(cfg, "training")
    volume = dataset.volumes[0]
    assert "foreground" not in volume and volume["foreground_fg_indices"].dtype.itemsize == 4
    shape = volume["image"].shape[1:]
    mask = np.zeros(int(np.prod(shape)), np.float32)
    mask[np.asarray(volume["foreground_fg_indices"])] = 1.0
    crop = RandCropByPosNegLabeld(keys=["image"], label_key="foreground", spatial_size=cfg.data.patch_size,
                                  pos=cfg.data.foreground_fraction, neg=1 - cfg.data.foreground_fraction)
    for seed in range(5):
        with_lists = dataset.augment.transforms[0]
        with_lists.set_random_state(seed=seed)
        crop.set_random_state(seed=seed)
        ours = with_lists(dict(volume))[0]["image"]
        theirs = crop({"image": volume["image"], "foreground": mask.reshape(1, *shape)})[0]["image"]
        assert np.array_equal(np.asarray(ours), np.asarray(theirs))


def test_recorrupt_refuses_ct_texture_noise() -> None:
    from medidiff.config import load_config

    with pytest.raises(ConfigError, match="recorrupt"):
        load_config(str(TINY_CONFIG), ["data.target_cleanup=recorrupt", "noise.kind=ct", "data.modality=CT"])


def test_recorrupt_refuses_image_pairs(tmp_path: Path) -> None:
    clean = write_phantom(tmp_path / "clean.nii.gz", noise=0.0)
    noisy = write_phantom(tmp_path / "noisy.nii.gz", noise=0.05)
    datalist = tmp_path / "pairs.json"
    datalist.write_text(json.dumps({"training": [{"image": noisy.name, "target": clean.name}]}))
    with pytest.raises(ConfigError, match="recorrupt is for scans without targets"):
        train(str(TINY_CONFIG), [f"data.train={datalist}", "data.val=", f"output_dir={tmp_path / 'run'}",
                                 "data.target_cleanup=recorrupt", "train.max_steps=1"], progress=False)


@pytest.mark.parametrize("cleanup", ["nlm", "nlm-blockwise"])
def test_nlm_cleanup_brings_the_training_target_closer_to_the_clean_scan(tmp_path: Path, cleanup: str) -> None:
    from medidiff.config import load_config
    from medidiff.data import PatchDataset

    folder = tmp_path / "scans"
    folder.mkdir()
    write_phantom(folder / "a.nii.gz", shape=(32, 32, 32), noise=0.05)
    clean = write_phantom(tmp_path / "clean.nii.gz", shape=(32, 32, 32), noise=0.0)

    def volume(cleanup: str) -> np.ndarray:
        cfg = load_config(str(TINY_CONFIG), [f"data.train={folder}", f"data.target_cleanup={cleanup}"])
        return np.asarray(PatchDataset.from_config(cfg, "training").volumes[0]["image"][0])

    cfg = load_config(str(TINY_CONFIG), [f"data.train={clean}"])
    truth = np.asarray(PatchDataset.from_config(cfg, "training").volumes[0]["image"][0])
    raw, cleaned = volume("none"), volume(cleanup)
    assert np.abs(cleaned - truth).mean() < 0.8 * np.abs(raw - truth).mean()


def _rician_test_patches() -> tuple[Any, Any, Any]:
    """Three clean 16^3 patches, their Rician-noisy versions and the levels 0.02, 0.05 and 0.3."""
    import torch

    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 1, 16, 16, 16, generator=g)
    sigma = torch.tensor([0.02, 0.05, 0.3])
    noisy = (x0 + sigma.view(-1, 1, 1, 1, 1) * torch.randn(x0.shape, generator=g)).abs()
    return x0, noisy, sigma


def test_guided_loss_adds_the_averaged_estimates_error_to_the_edm_loss_at_the_level_told() -> None:
    import torch

    from medidiff.checkpoint import build_denoiser
    from medidiff.config import load_config
    from medidiff.inference import DEFAULT_NETWORK_SIGMA_SCALE
    from medidiff.refine import guided_average
    from medidiff.training import guided_loss

    cfg = load_config(str(TINY_CONFIG), ["noise.kind=rician"])
    torch.manual_seed(0)
    model = build_denoiser(cfg)
    x0, noisy, sigma = _rician_test_patches()
    scan = torch.tensor([True, True, False])
    told = sigma * torch.tensor([DEFAULT_NETWORK_SIGMA_SCALE["MR"]] * 2 + [1.0])
    with torch.no_grad():
        base = guided_loss(model, cfg, x0, noisy, sigma, torch.zeros(3, dtype=torch.bool))
        torch.testing.assert_close(base, model.loss(x0, noisy, sigma))  # no scan samples: the EDM loss
        plain = model.loss(x0, noisy, told)
        torch.testing.assert_close(guided_loss(model, cfg, x0, noisy, sigma, scan), plain)  # weight 0
        # what guided averaging (the volume version) makes of each scan sample's estimate, scored inside
        estimate = model(noisy, told)
        _, c_out, _ = model.scalings(told)
        extra = 0.0
        for b in range(2):
            out = guided_average(noisy[b, 0].numpy(), estimate[b, 0].numpy(), float(sigma[b]), rician=True)
            err = float(((out - x0[b, 0].numpy())[4:-4, 4:-4, 4:-4] ** 2).mean())
            extra += err / float(c_out[b]) ** 2
    cfg2 = load_config(str(TINY_CONFIG), ["noise.kind=rician", "train.guided_loss_weight=2"])
    with torch.no_grad():
        weighted = guided_loss(model, cfg2, x0, noisy, sigma, scan)
    torch.testing.assert_close(float(weighted), float(plain) + 2 * extra / 3, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("term", "too_small", "needs"),
                         [("guided_loss_weight", 8, "at least 16"), ("ssim_loss_weight", 4, "at least 8")])
def test_a_loss_term_trains_and_is_checked(phantom_dir: Path, tmp_path: Path, term: str, too_small: int,
                                           needs: str) -> None:
    from medidiff.config import load_config

    run = tmp_path / "run"
    result = train(str(TINY_CONFIG), [*_overrides(phantom_dir, run, 2), f"train.{term}=1", "noise.kind=rician"],
                   progress=False)
    assert result.step == 2 and all(np.isfinite(r["loss"]) for r in _records(run))
    with pytest.raises(ConfigError, match=f"{term} must be"):
        load_config(str(TINY_CONFIG), [f"train.{term}=-1"])
    with pytest.raises(ConfigError, match=needs):
        load_config(str(TINY_CONFIG), [f"train.{term}=1", f"data.patch_size=[{too_small},{too_small},{too_small}]",
                                       "model.channels=[8,8]", "model.attention_levels=[false,false]"])


def test_the_ssim_and_guided_loss_terms_cannot_both_be_on() -> None:
    from medidiff.config import load_config

    with pytest.raises(ConfigError, match="cannot both be on"):
        load_config(str(TINY_CONFIG), ["train.ssim_loss_weight=1", "train.guided_loss_weight=1"])


def test_patch_ssim_matches_scikit_image() -> None:
    import torch
    from skimage.metrics import structural_similarity

    from medidiff.training import patch_ssim

    rng = np.random.default_rng(3)
    clean = rng.random((2, 1, 14, 17, 20)) * 0.6
    noisy = clean + 0.04 * rng.standard_normal(clean.shape)
    ours = patch_ssim(torch.tensor(noisy), torch.tensor(clean)).numpy()
    theirs = [structural_similarity(clean[b, 0], noisy[b, 0], data_range=1.0) for b in range(2)]
    np.testing.assert_allclose(ours, theirs, rtol=1e-9)
    assert float(patch_ssim(torch.tensor(clean), torch.tensor(clean))[0]) == pytest.approx(1.0)


def test_ssim_loss_adds_the_scaled_ssim_deficit_of_scan_samples_to_the_edm_loss() -> None:
    import torch

    from medidiff.checkpoint import build_denoiser
    from medidiff.config import load_config
    from medidiff.training import SSIM_C2, patch_ssim, ssim_loss

    cfg = load_config(str(TINY_CONFIG), ["noise.kind=rician", "train.ssim_loss_weight=0.5"])
    torch.manual_seed(0)
    model = build_denoiser(cfg)
    x0, noisy, sigma = _rician_test_patches()
    scan = torch.tensor([True, False, True])
    with torch.no_grad():
        plain = model.loss(x0, noisy, sigma)
        torch.testing.assert_close(ssim_loss(model, cfg, x0, noisy, sigma, torch.zeros(3, dtype=torch.bool)), plain)
        estimate = model(noisy, sigma)
        _, c_out, _ = model.scalings(sigma)
        deficit = 1 - patch_ssim(estimate, x0)
        extra = sum(float(SSIM_C2 * deficit[b] / c_out[b] ** 2) for b in (0, 2))
        weighted = ssim_loss(model, cfg, x0, noisy, sigma, scan)
    assert float(deficit.min()) > 0  # an untrained network is far from the clean patches
    torch.testing.assert_close(float(weighted), float(plain) + 0.5 * extra / 3, rtol=1e-4, atol=1e-6)


def test_config_yaml_keeps_an_absolute_output_dir_after_a_relative_resume(
        phantom_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    run = tmp_path / "runs" / "r"
    train(str(TINY_CONFIG), [*_overrides(phantom_dir, run, 2), "data.val="], progress=False)
    monkeypatch.chdir(tmp_path)
    train(None, ["train.max_steps=3"], resume="runs/r", progress=False)
    saved = yaml.safe_load((run / "config.yaml").read_text())["output_dir"]
    assert saved == str(run.resolve())
    with pytest.raises(ConfigError, match="--resume"):  # the saved config still names the run itself
        train(str(run / "config.yaml"), ["train.max_steps=5"], progress=False)


def test_a_default_output_dir_is_saved_absolute_and_an_empty_one_is_refused(
        phantom_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    monkeypatch.chdir(tmp_path)
    train(None, [f"data.train={phantom_dir}", "train.max_steps=1", "data.patch_size=[16,16,16]",
                 "model.channels=[8,16]", "model.attention_levels=[false,false]"], progress=False)
    saved = yaml.safe_load((tmp_path / "runs" / "default" / "config.yaml").read_text())["output_dir"]
    assert saved == str((tmp_path / "runs" / "default").resolve())
    with pytest.raises(ConfigError, match="output_dir is empty"):
        train(str(TINY_CONFIG), [f"data.train={phantom_dir}", "output_dir="], progress=False)


def test_starting_again_after_divergence_starts_a_fresh_log(phantom_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match="start again \\(there is no checkpoint yet\\)"):
        train(str(TINY_CONFIG), [*_overrides(phantom_dir, run, 20), "train.lr=1e30", "train.lr_warmup_steps=0",
                                 "train.log_every=1", "train.grad_clip=0"], progress=False)
    train(str(TINY_CONFIG), [*_overrides(phantom_dir, run, 3), "train.log_every=1"], progress=False)
    assert [r["step"] for r in _records(run)] == [1, 2, 3]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"training": 5}, "must be a list"),
        ({"training": "abc"}, "must be a list"),
        ({"training": [{"image": 5}]}, "must be file names"),
        ({"training": [{"image": ""}]}, "must be file names"),
        ({"training": [{"image": "a.nii.gz", "target": False}]}, "must be file names"),
    ],
)
def test_a_malformed_datalist_is_a_config_error(tmp_path: Path, doc: dict, message: str) -> None:
    datalist = tmp_path / "list.json"
    datalist.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=message):
        train(str(TINY_CONFIG), [f"data.train={datalist}", "data.val=", f"output_dir={tmp_path / 'run'}"],
              progress=False)


def test_empty_or_missing_validation_data_names_data_val(phantom_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    base = [f"data.train={phantom_dir}", f"output_dir={tmp_path / 'run'}", "train.val_every=1"]
    with pytest.raises(ConfigError, match=r"data\.val \(.*empty\) found no readable scan"):
        train(str(TINY_CONFIG), [*base, f"data.val={empty}"], progress=False)
    with pytest.raises(ConfigError, match=r"no such file or folder \(data\.val\)"):
        train(str(TINY_CONFIG), [*base, f"data.val={tmp_path / 'nothing.nii.gz'}"], progress=False)


def test_a_2d_training_image_is_named_with_the_right_fix(phantom_dir: Path, tmp_path: Path) -> None:
    import nibabel as nib

    data = tmp_path / "with2d"
    data.mkdir()
    write_phantom(data / "good.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((36, 36, 1), np.float32), np.eye(4)), str(data / "flat.nii.gz"))
    with pytest.raises(ConfigError, match="flat.nii.gz.*training takes 3D volumes"):
        train(str(TINY_CONFIG), _overrides(data, tmp_path / "run", 2), progress=False)


def test_an_mr_run_refuses_a_scan_in_hounsfield_units(tmp_path: Path) -> None:
    import nibabel as nib

    data = tmp_path / "mixed"
    data.mkdir()
    write_phantom(data / "mr.nii.gz")
    ct = np.full((32, 32, 32), -1000, np.int16)
    ct[8:24, 8:24, 8:24] = 40
    nib.save(nib.Nifti1Image(ct, np.eye(4)), str(data / "ct.nii.gz"))
    with pytest.raises(ConfigError, match="ct.nii.gz.*negative.*data.modality: CT"):
        train(str(TINY_CONFIG), [*_overrides(data, tmp_path / "run", 2), "data.val="], progress=False)


_HUNG_WORKER_RUN = """
import sys, time
import medidiff.data
real = medidiff.data.PatchDataset.__getitem__
def hang_after_the_last_step(self, i):
    if i >= 3 * 2:  # items beyond the three steps of two patches: prefetched by the worker, never used
        time.sleep(3600)
    return real(self, i)
medidiff.data.PatchDataset.__getitem__ = hang_after_the_last_step
from medidiff.training import train
result = train(sys.argv[1], sys.argv[2:], progress=False)
print("returned at step", result.step, flush=True)
"""


@pytest.mark.slow
def test_a_hung_data_worker_does_not_keep_a_finished_run_from_exiting(phantom_dir: Path, tmp_path: Path) -> None:
    """The workers ignore SIGTERM; a worker stuck in a read is still ended when training ends."""
    args = [str(TINY_CONFIG), f"data.train={phantom_dir}", "data.val=", f"output_dir={tmp_path / 'run'}",
            "train.max_steps=3", "train.batch_size=2", "data.num_workers=1"]
    proc = subprocess.Popen([sys.executable, "-c", _HUNG_WORKER_RUN, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the run did not exit: a hung data worker kept it alive")
    assert proc.returncode == 0, err
    assert "returned at step 3" in out
