"""The benchmark: config validation, row format, failure isolation, outputs, and a --quick run."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import yaml

from medidiff import benchmark
from medidiff.errors import ConfigError, MedidiffError, OutputExistsError
from medidiff.volume import Volume

REFERENCE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "reference"


def fake_sha256(modality: str | None) -> str:
    """The fake model's "weights hash": one per modality, so a test can tell which model ran."""
    import hashlib

    return hashlib.sha256(str(modality).encode()).hexdigest()


class FakeDenoiser:
    """Stands in for ``medidiff.inference.Denoiser``: a mild Gaussian blur; uncertainty 0.01 for
    samples > 1 and 0.001 x flips for flips > 1 (so a test can see which option arrived)."""

    def __init__(self, model: Any = None, device: str = "auto") -> None:
        self.model = model
        self.loaded: list[str] = []

    def load(self, modality: str) -> None:
        self.loaded.append(modality)

    def denoise_volume(self, volume: Volume, modality: str | None = None, **options: Any) -> SimpleNamespace:
        from scipy import ndimage

        data = ndimage.gaussian_filter(volume.data[0], 0.6)
        samples = options.get("samples") or 1
        flips = options.get("flips") or 1
        spread = None
        if samples > 1 or flips > 1:
            spread = volume.with_data(np.full_like(data, 0.01 if samples > 1 else 0.001 * flips))
        info = {"steps": options.get("steps"), "samples": samples, "precision": options.get("precision"),
                "model": f"fake-{modality}", "model_sha256": fake_sha256(modality)}
        if options.get("precision") == "fp32":  # tells the rows apart
            data = ndimage.gaussian_filter(volume.data[0], 1.2)
        if options.get("guided_radius") == 0 and options.get("blend") == 0:
            data = ndimage.gaussian_filter(volume.data[0], 0.3)
        sigma = options.get("sigma") or 0.042  # "estimates" 0.042 unless told
        return SimpleNamespace(volume=volume.with_data(data), uncertainty=spread, sigma=sigma, info=info)


class FailingDenoiser(FakeDenoiser):
    """Raises for the default settings; kills its process (as a segfault would) for three steps."""

    def denoise_volume(self, volume: Volume, modality: str | None = None, **options: Any) -> SimpleNamespace:
        if options.get("steps") == 3:
            os._exit(3)
        raise RuntimeError("no bundled model for this modality")


def _synthetic_data(folder: Path) -> None:
    """A tiny MR 'head' (24^3) and a tiny CT 'body' (40x40x6, HU), as NIfTI files."""
    folder.mkdir(parents=True, exist_ok=True)
    grid = np.meshgrid(*[np.linspace(-1, 1, 24)] * 3, indexing="ij")
    radius = np.sqrt(sum(g**2 for g in grid))
    mr = np.where(radius < 0.85, 60.0 + 30.0 * np.cos(4 * grid[0]), 0.0).astype(np.float32)
    nib.save(nib.Nifti1Image(mr, np.eye(4)), folder / "mr.nii.gz")
    x, y = np.meshgrid(np.arange(40) - 20, np.arange(40) - 20, indexing="ij")
    slice_ = np.full((40, 40), -1000.0)
    slice_[x**2 / 17**2 + y**2 / 14**2 < 1] = 40.0
    slice_[(x - 6) ** 2 + y**2 < 16] = -850.0
    ct = np.repeat(slice_[:, :, None], 8, axis=2).astype(np.float32)
    nib.save(nib.Nifti1Image(ct, np.diag([1.5, 1.5, 2.0, 1.0])), folder / "ct.nii.gz")


def _config(folder: Path, methods: list[str], mr_only: bool = False, **changes: Any) -> benchmark.BenchmarkConfig:
    cases = [
        {"name": "mr_tiny", "file": "mr.nii.gz", "modality": "MR", "noise_levels": [3] if mr_only else [3, 9]},
        {"name": "ct_tiny", "file": "ct.nii.gz", "modality": "CT", "noise_levels": [40]},
    ]
    raw = {
        "data_dir": str(folder),
        "methods": methods,
        "cases": cases[:1] if mr_only else cases,
        "ct": {"n_angles": 90},
        **changes,
    }
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump(raw))
    return benchmark.load_benchmark_config(path)


# ---------------------------------------------------------------- configuration


def test_a_benchmark_config_with_a_key_given_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bench.yaml"
    path.write_text("methods: [noisy]\nseed: 1\nmethods: [tv]\n")
    with pytest.raises(ConfigError, match=r"'methods' appears twice, at lines 1 and 3"):
        benchmark.load_benchmark_config(path, data_dir=tmp_path)


def test_a_failed_run_leaves_no_empty_output_folder_and_keeps_an_existing_one(tmp_path: Path) -> None:
    config = tmp_path / "bench.yaml"
    config.write_text("methods: [tv]\n")
    cfg = benchmark.load_benchmark_config(config, data_dir=tmp_path / "missing")
    out = tmp_path / "out" / "run"
    with pytest.raises(MedidiffError, match="reference scan not found"):
        benchmark.run_benchmark(cfg, out)
    assert not out.parent.exists()
    out.mkdir(parents=True)
    with pytest.raises(MedidiffError, match="reference scan not found"):
        benchmark.run_benchmark(cfg, out)
    assert out.is_dir()


def test_repository_config_mirrors_the_defaults(tmp_path: Path) -> None:
    shipped = benchmark.load_benchmark_config(benchmark.DEFAULT_CONFIG)
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    defaults = benchmark.load_benchmark_config(empty, data_dir=shipped.data_dir)
    assert shipped == defaults
    assert Path(shipped.data_dir) == benchmark.DEFAULT_DATA_DIR.resolve()


@pytest.mark.parametrize(("name", "cases"), [("ct_abdomen_in_sample.yaml", 1), ("mr_mni152.yaml", 1),
                                             ("mr_phantom_head.yaml", 1), ("thick_slices.yaml", 2),
                                             ("ct_phantom_head.yaml", 1)])
def test_extra_benchmark_configs_load(name: str, cases: int, tmp_path: Path) -> None:
    """The configs under benchmarks/ that docs/benchmarks.md runs: valid keys, the cases they name."""
    cfg = benchmark.load_benchmark_config(Path(__file__).parents[1] / "benchmarks" / name, data_dir=tmp_path)
    assert len(cfg.cases) == cases
    assert set(cfg.methods) <= set(benchmark.METHODS)
    assert Path(cfg.data_dir) == tmp_path.resolve()


@pytest.mark.parametrize(("config", "contrast"), [("mr_phantom_head.yaml", "T1"), ("ct_phantom_head.yaml", "CT")])
def test_phantom_benchmark_case_is_the_file_write_phantom_makes(config: str, contrast: str, tmp_path: Path) -> None:
    """benchmarks/write_phantom.py writes the head the phantom benchmark configs read, geometry included."""
    import subprocess
    import sys

    from medidiff.phantom import head_phantom, phantom_affine

    root = Path(__file__).parents[1]
    cfg = benchmark.load_benchmark_config(root / "benchmarks" / config, data_dir=tmp_path)
    out = tmp_path / cfg.cases[0].file
    cmd = [sys.executable, str(root / "benchmarks" / "write_phantom.py"), str(out), "--shape", "24", "32", "24",
           "--contrast", contrast]
    subprocess.run(cmd, check=True, capture_output=True)
    img = nib.load(str(out))
    np.testing.assert_array_equal(np.asarray(img.dataobj), head_phantom((24, 32, 24), contrast, seed=7001))  # type: ignore[arg-type]
    np.testing.assert_allclose(img.affine, phantom_affine((24, 32, 24), 1.0))
    assert cfg.cases[0].modality == ("CT" if contrast == "CT" else "MR")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"sede": 1}, "unknown benchmark config key sede; valid keys: data_dir, seed"),
        ({"cases": [{"name": "a", "file": "b", "modality": "MR", "noise_levels": [3], "crop": 3}]}, "cases[0].crop"),
        ({"classical": {"tv_weight": 1}}, "valid keys: tv_weight_factor"),
        ({"methods": ["nlm"]}, "unknown method 'nlm'; valid methods: medidiff"),
        ({"seed": "zero"}, "seed: expected an integer"),
        ({"medidiff": {"flips": 1}}, "medidiff.flips must be between 2 and 8"),
        ({"ct": {"filter": "shepp"}}, "ct.filter"),
        ({"cases": [{"name": "a", "file": "b", "modality": "PET", "noise_levels": [3]}]}, "cases[0].modality"),
    ],
)
def test_bad_config_is_one_line_config_error(tmp_path: Path, raw: dict[str, Any], expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as info:
        benchmark.load_benchmark_config(path)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_method_override_is_config_error() -> None:
    with pytest.raises(ConfigError, match="valid methods"):
        benchmark.load_benchmark_config(methods=["tv", "bm3d"])


# ---------------------------------------------------------------- running on tiny synthetic cases


def test_rows_and_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import medidiff.inference

    _synthetic_data(tmp_path / "data")
    monkeypatch.setattr(medidiff.inference, "Denoiser", FakeDenoiser)
    cfg = _config(tmp_path / "data", ["medidiff", "medidiff-avg", "medidiff-flips", "tv", "wavelet", "bm4d"], seed=3)
    report = benchmark.run_benchmark(cfg, tmp_path / "out")
    rows = report.rows
    assert [r["method"] for r in rows if r["case"] == "mr_tiny" and r["noise_level"] == 3.0][:2] == [
        "noisy",
        "medidiff",
    ]
    assert len({(r["case"], r["noise_level"]) for r in rows}) == 3
    by_method = {(r["case"], r["noise_level"], r["method"]): r for r in rows}
    tv = by_method[("mr_tiny", 9.0, "tv")]
    assert tv["psnr"] > by_method[("mr_tiny", 9.0, "noisy")]["psnr"]
    assert tv["sigma_true"] == pytest.approx(0.09) and tv["time_s"] >= 0 and tv["peak_mem_mb"] >= 0
    den = by_method[("ct_tiny", 40.0, "medidiff")]
    assert den["sigma_est"] == pytest.approx(0.042) and "error" not in den
    # each medidiff row names the weights that ran (as the method's process loaded them); others none
    assert den["model"] == "fake-CT" and den["model_sha256"] == fake_sha256("CT")
    assert by_method[("mr_tiny", 3.0, "medidiff")]["model_sha256"] == fake_sha256("MR")
    assert "model" not in tv and "model_sha256" not in tv
    assert by_method[("ct_tiny", 40.0, "noisy")]["sigma_true"] == pytest.approx(40.0, rel=0.3)
    assert by_method[("mr_tiny", 3.0, "medidiff-avg")]["uncertainty_mean"] == pytest.approx(0.01)
    assert by_method[("mr_tiny", 3.0, "medidiff-flips")]["uncertainty_mean"] == pytest.approx(0.008)  # 8 flips
    # wavelet needs PyWavelets: a row either way, with numbers or with the error text
    wavelet = by_method[("mr_tiny", 3.0, "wavelet")]
    assert ("psnr" in wavelet) != ("error" in wavelet)

    out = tmp_path / "out"
    with open(out / "results.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == len(rows) and set(benchmark.CSV_FIELDS) == set(table[0])
    document = json.loads((out / "results.json").read_text())
    assert {"cpu", "logical_cores", "usable_cores", "versions", "date"} <= set(document["machine"])
    assert "torch" in document["machine"]["versions"] and "VmHWM" in document["memory"]
    assert any("bm4d" in s for s in document["skipped"]) or any(r["method"] == "bm4d" for r in rows)
    markdown = (out / "results.md").read_text()
    assert "| case | noise |" in markdown and "mr_tiny" in markdown
    digests = f"fake-CT {fake_sha256('CT')[:12]}, fake-MR {fake_sha256('MR')[:12]}."
    assert f"medidiff models (sha256 of the weights file): {digests}" in markdown
    ct_row = next(r for r in table if r["case"] == "ct_tiny" and r["method"] == "medidiff")
    assert ct_row["model_sha256"] == fake_sha256("CT")
    names = {p.name for p in report.figures}
    assert {"montage_mr_tiny_3.png", "montage_ct_tiny_40.png", "psnr_vs_noise.png"} <= names
    assert all(p.stat().st_size > 1000 for p in report.figures)

    with pytest.raises(OutputExistsError, match="--force"):
        benchmark.run_benchmark(cfg, out)


def test_fp32_true_sigma_and_classic_nlm_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import medidiff.inference

    _synthetic_data(tmp_path / "data")
    monkeypatch.setattr(medidiff.inference, "Denoiser", FakeDenoiser)
    methods = ["medidiff", "medidiff-fp32", "medidiff-sigma", "nlmeans", "nlmeans-classic"]
    cfg = _config(tmp_path / "data", methods, isolate=False)
    rows = benchmark.run_benchmark(cfg, tmp_path / "out").rows
    names: dict[tuple, list[str]] = {}
    for row in rows:
        names.setdefault((row["case"], row["noise_level"]), []).append(row["method"])
    assert names[("mr_tiny", 3.0)] == ["noisy", *methods]
    assert names[("ct_tiny", 40.0)] == ["noisy", *methods]  # DIPY's default (blockwise) for CT too
    by = {(r["case"], r["noise_level"], r["method"]): r for r in rows}
    # only medidiff-sigma is handed the true sigma; the others estimate it
    assert by[("mr_tiny", 3.0, "medidiff-sigma")]["sigma_est"] == pytest.approx(0.03)
    assert by[("mr_tiny", 3.0, "medidiff")]["sigma_est"] == pytest.approx(0.042)
    assert by[("mr_tiny", 3.0, "medidiff")]["psnr"] != by[("mr_tiny", 3.0, "medidiff-fp32")]["psnr"]
    assert by[("mr_tiny", 3.0, "nlmeans")]["psnr"] != by[("mr_tiny", 3.0, "nlmeans-classic")]["psnr"]
    assert by[("ct_tiny", 40.0, "nlmeans")]["psnr"] != by[("ct_tiny", 40.0, "nlmeans-classic")]["psnr"]

    # where nlmeans is set to the classic method, the classic row would repeat it and is skipped
    classic = _config(tmp_path / "data", methods, isolate=False, classical={"nlmeans_method_ct": "classic"})
    rows = benchmark.run_benchmark(classic, tmp_path / "out-classic").rows
    assert [r["method"] for r in rows if r["case"] == "ct_tiny"] == ["noisy", *methods[:-1]]


def test_the_model_is_loaded_in_the_setup_not_in_the_timed_call(tmp_path: Path) -> None:
    events: list[str] = []

    class Recording(FakeDenoiser):
        def load(self, modality: str) -> None:
            events.append(f"load {modality}")

        def denoise_volume(self, volume: Volume, modality: str | None = None, **options: Any) -> SimpleNamespace:
            events.append("denoise")
            return super().denoise_volume(volume, modality, **options)

    _synthetic_data(tmp_path / "data")
    cfg = _config(tmp_path / "data", ["medidiff"], isolate=False)
    sample = next(s for s in benchmark.make_samples(cfg) if s.case.modality == "CT")
    result = benchmark.run_method("medidiff", sample, cfg, factory=Recording)
    assert events == ["load CT", "denoise"] and result.setup_s >= 0 and result.run_s >= 0


def test_a_medidiff_row_names_the_bundled_weights_that_ran(tmp_path: Path) -> None:
    import hashlib

    from medidiff.checkpoint import BUNDLED

    _synthetic_data(tmp_path / "data")
    cfg = _config(tmp_path / "data", ["medidiff"], mr_only=True, isolate=False)
    sample = benchmark.make_samples(cfg)[0]
    result = benchmark.run_method("medidiff", sample, cfg)  # the real Denoiser and the bundled MR model
    assert result.model == "mr"
    assert result.model_sha256 == hashlib.sha256(BUNDLED["mr"].read_bytes()).hexdigest()


def test_the_fine_voxel_script_scores_a_model_as_the_benchmark_does(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from fine_voxels import score_models

    _synthetic_data(tmp_path / "data")
    cfg = _config(tmp_path / "data", ["medidiff"], isolate=False)
    rows = score_models(cfg, ["ct"])  # the bundled CT model on the benchmark's CT draws
    samples = [s for s in benchmark.make_samples(cfg) if s.case.modality == "CT"]
    assert [(r[0], r[1]) for r in rows] == [(s.case.name, s.level) for s in samples]
    for row, sample in zip(rows, samples, strict=True):
        psnr, ssim = benchmark._score(sample, benchmark.run_method("medidiff", sample, cfg).denoised)
        assert (row[3], row[4]) == pytest.approx((psnr, ssim), abs=1e-9)


def test_samples_of_one_modality_keep_the_whole_benchmarks_noise_draws(tmp_path: Path) -> None:
    _synthetic_data(tmp_path / "data")
    cfg = _config(tmp_path / "data", ["tv"])
    cfg = dataclasses.replace(cfg, cases=cfg.cases[::-1])  # CT first, so the MR case is not case 0
    everything = benchmark.make_samples(cfg)
    for modality in ("MR", "CT"):
        picked = benchmark.make_samples(cfg, modality=modality)
        expected = [s for s in everything if s.case.modality == modality]
        assert [(s.case.name, s.level) for s in picked] == [(s.case.name, s.level) for s in expected]
        assert all(np.array_equal(a.noisy, b.noisy) for a, b in zip(picked, expected, strict=True))


def test_network_only_row_is_made_where_the_default_adds_to_the_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import medidiff.inference

    _synthetic_data(tmp_path / "data")
    monkeypatch.setattr(medidiff.inference, "Denoiser", FakeDenoiser)
    cfg = _config(tmp_path / "data", ["medidiff", "medidiff-net", "tv"], isolate=False)
    rows = benchmark.run_benchmark(cfg, tmp_path / "out").rows
    by = {(r["case"], r["method"]): r for r in rows}
    for case in ("mr_tiny", "ct_tiny"):  # guided averaging (and the CT blend); guided_radius=0 arrived
        assert by[(case, "medidiff-net")]["psnr"] != by[(case, "medidiff")]["psnr"]
    # a modality whose default is the network alone gets no repeated row
    monkeypatch.setitem(medidiff.inference.DEFAULT_BLEND, "CT", 0.0)
    monkeypatch.setitem(medidiff.inference.DEFAULT_GUIDED_RADIUS, "CT", 0)
    rows = benchmark.run_benchmark(cfg, tmp_path / "out2").rows
    assert ("ct_tiny", "medidiff-net") not in {(r["case"], r["method"]) for r in rows}


def test_a_failing_or_crashing_method_is_recorded_in_its_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import medidiff.inference

    _synthetic_data(tmp_path / "data")
    monkeypatch.setattr(medidiff.inference, "Denoiser", FailingDenoiser)
    cfg = _config(tmp_path / "data", ["medidiff", "medidiff-3step", "tv"], mr_only=True)
    rows = {r["method"]: r for r in benchmark.run_benchmark(cfg, tmp_path / "out").rows}
    assert rows["medidiff"]["error"] == "RuntimeError: no bundled model for this modality"
    assert "psnr" not in rows["medidiff"]
    assert "exit code 3" in rows["medidiff-3step"]["error"]
    assert rows["tv"]["psnr"] > rows["noisy"]["psnr"] and "error" not in rows["tv"]
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "no bundled model" in markdown and "exit code 3" in markdown


def test_method_processes_survive_openmp_threads_in_the_parent(tmp_path: Path) -> None:
    """A process forked after PyTorch started its OpenMP pool hangs in DIPY's OpenMP code."""
    import threading

    import torch

    torch.nn.functional.conv3d(torch.randn(1, 1, 24, 24, 24), torch.ones(1, 1, 5, 5, 5))
    _synthetic_data(tmp_path / "data")
    cfg = _config(tmp_path / "data", ["nlmeans"], mr_only=True)
    sample = benchmark.make_samples(cfg)[0]
    result: dict[str, Any] = {}
    worker = threading.Thread(
        target=lambda: result.update(out=benchmark.measure_method("nlmeans", sample, cfg)), daemon=True
    )
    worker.start()
    worker.join(90)
    assert "out" in result, "the method's process hung"
    output, mode = result["out"]
    assert output.denoised.shape == sample.noisy.shape and mode in benchmark.MEMORY_NOTES


def test_update_docs_rewrites_only_the_marked_section(tmp_path: Path) -> None:
    figure = tmp_path / "psnr_vs_noise.png"
    figure.write_bytes(b"png")
    report = benchmark.BenchmarkReport(tmp_path, [], {}, "", [figure], "| table one |\n", "")
    docs = tmp_path / "docs"
    target = benchmark.update_docs(report, docs)
    text = target.read_text()
    assert benchmark.DOCS_START in text and benchmark.DOCS_END in text and "table one" in text
    assert (docs / "figures" / "psnr_vs_noise.png").read_bytes() == b"png"
    target.write_text("# Mine\n\nintro\n\n" + text[text.index(benchmark.DOCS_START) :] + "\nafter\n")
    report.markdown = "| table two |\n"
    text = benchmark.update_docs(report, docs).read_text()
    assert text.startswith("# Mine\n\nintro") and text.rstrip().endswith("after")
    assert "table two" in text and "table one" not in text


# ---------------------------------------------------------------- the real --quick run


@pytest.mark.slow
@pytest.mark.skipif(not REFERENCE_DIR.is_dir(), reason=f"reference scans not found at {REFERENCE_DIR}")
def test_quick_run_on_reference_scans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import medidiff.inference
    from medidiff.cli import main

    monkeypatch.setattr(medidiff.inference, "Denoiser", FakeDenoiser)
    argv = ["benchmark", "--quick", "--output", str(tmp_path / "quick"), "--data-dir", str(REFERENCE_DIR)]
    assert main([*argv, "--methods", "medidiff", "nlmeans", "tv"]) == 0
    # quick means small crops (the shapes below), not a wall-clock limit: these machines are noisy
    rows = json.loads((tmp_path / "quick" / "results.json").read_text())["rows"]
    assert {r["case"] for r in rows} == {"mr_colin27_t1", "ct_chest_cta"}
    assert {r["method"] for r in rows} == {"noisy", "medidiff", "nlmeans", "tv"}
    for row in rows:
        assert "error" not in row, row
        assert row["psnr"] is not None and 0 < row["ssim"] <= 1
        noisy = next(r for r in rows if r["case"] == row["case"] and r["method"] == "noisy")
        if row["method"] == "tv" or (row["method"] == "nlmeans" and row["case"] == "mr_colin27_t1"):
            assert row["psnr"] > noisy["psnr"], row
        elif row["method"] == "nlmeans":  # DIPY's blockwise NLM smooths the chest CTA beyond its noise
            assert noisy["psnr"] - 4 < row["psnr"] < noisy["psnr"], row  # (docs/evaluation.md)
    mr_noisy = next(r for r in rows if r["case"] == "mr_colin27_t1" and r["method"] == "noisy")
    assert mr_noisy["shape"] == "64x64x64" and mr_noisy["sigma_true"] == pytest.approx(0.05)
    ct_noisy = next(r for r in rows if r["case"] == "ct_chest_cta" and r["method"] == "noisy")
    assert ct_noisy["shape"] == "64x64x32" and ct_noisy["sigma_true"] == pytest.approx(50.0, rel=0.25)


def test_an_installed_package_finds_the_config_of_the_clone_it_runs_in(tmp_path: Path, monkeypatch) -> None:
    # after `pip install .` the package sits in site-packages, away from configs/; the clone is the cwd
    repo = benchmark.REPO_ROOT
    monkeypatch.setattr(benchmark, "REPO_ROOT", tmp_path / "site-packages")
    monkeypatch.chdir(repo)
    assert benchmark.source_root() == repo
    assert Path(benchmark.load_benchmark_config().data_dir) == benchmark.DEFAULT_DATA_DIR.resolve()
    monkeypatch.chdir(tmp_path)  # neither: the package's parent, and the built-in defaults
    assert benchmark.source_root() == tmp_path / "site-packages"


def test_the_recorded_benchmark_names_the_weights_that_ship() -> None:
    """docs/benchmarks.md's table was measured with the bundled weights: a new weights file needs a rerun."""
    import hashlib
    import re

    from medidiff.checkpoint import BUNDLED

    text = (Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md").read_text()
    section = text.split("<!-- benchmark:start -->", 1)[1].split("<!-- benchmark:end -->", 1)[0]
    line = re.search(r"medidiff models \(sha256 of the weights file\): (.*)\.", section)
    assert line, "the benchmark section names no models"
    recorded = dict(item.split() for item in line[1].split(", "))
    shipped = {name: hashlib.sha256(path.read_bytes()).hexdigest()[:12] for name, path in BUNDLED.items()}
    assert recorded == shipped
    machines = text.split("## Machines", 1)[1].split("\n## ", 1)[0]
    for name, digest in shipped.items():
        assert re.search(rf"`{name}\.safetensors`( sha256)? {digest}", machines), name
