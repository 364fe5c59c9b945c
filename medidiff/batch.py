"""Denoising many scans: output naming, BIDS derivatives, JSON sidecars, skip-finished reruns.

Names follow inputs: ``scan.nii.gz`` -> ``OUT/scan.nii.gz``; a DICOM folder ``series1/`` ->
``OUT/series1.nii.gz``. When the input folder is a BIDS dataset (it has
``dataset_description.json``), outputs keep their relative paths under ``OUT`` with a
``desc-denoised`` entity (``sub-01_desc-denoised_T1w.nii.gz``) and ``OUT`` gets its own
``dataset_description.json`` (``DatasetType: derivative``, ``GeneratedBy``). Every file is written
to a temporary name and a scan's sidecar, map and output are renamed together, the output last, so
an output that exists is finished: a rerun skips it unless ``force``,
so an interrupted batch continues where it stopped, with or without sidecars. A failing input is
reported and skipped; the others are still processed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medidiff import __version__
from medidiff.errors import MedidiffError, ModelError, OutputExistsError
from medidiff.files import expand_user, make_folder, write_text_atomic

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
INPUT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass(frozen=True)
class Job:
    """One input and where its outputs go."""

    source: Path
    output: Path
    uncertainty: Path | None = None
    in_existing_folder: bool = False  # a single named output: its folder must exist, none is created


def strip_suffix(name: str) -> str:
    for suffix in (*INPUT_SUFFIXES, ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def sidecar_path(output: Path) -> Path:
    return output.with_name(strip_suffix(output.name) + ".json")


def own_sidecar(output: Path) -> dict[str, Any] | None:
    """The JSON sidecar beside ``output`` if medidiff wrote it for that output's name, else None."""
    sidecar = sidecar_path(output)
    if not sidecar.is_file() or sidecar.stat().st_size > 1_000_000:
        return None
    try:
        info = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(info, dict) or "medidiff_version" not in info:
        return None
    return info if Path(str(info.get("output", ""))).name == output.name else None


def leftovers_of_unfinished_job(job: Job) -> set[Path]:
    """Files an earlier, unfinished run of ``job`` left beside its missing output: ours to replace.

    A job writes its uncertainty map, sidecar and output to temporary files and renames them
    together (sidecar, map, output); a crash between those renames, or an output deleted afterwards,
    can leave the sidecar and the map. They are recognized by the sidecar (:func:`own_sidecar`),
    which names the map. Nothing is ours while the output exists, and a JSON file of that name that
    medidiff did not write (a BIDS sidecar) never is.
    """
    sidecar = sidecar_path(job.output)
    info = own_sidecar(job.output) if not job.output.exists() else None
    if info is None:
        return set()
    ours = {sidecar}
    named = info.get("uncertainty")
    # the map only where the sidecar names this very file by its absolute path, as medidiff writes it
    if (job.uncertainty is not None and isinstance(named, str) and Path(named).is_absolute()
            and Path(named).resolve() == job.uncertainty.resolve()):
        ours.add(job.uncertainty)
    return ours


def bids_denoised_name(name: str) -> str:
    """``sub-01_ses-1_T1w.nii.gz`` -> ``sub-01_ses-1_desc-denoised_T1w.nii.gz`` (replacing any desc-)."""
    stem = strip_suffix(name)
    parts = stem.split("_")
    entities = [p for p in parts[:-1] if not p.startswith("desc-")]
    suffix = parts[-1] if len(parts) > 1 else "scan"
    if len(parts) == 1:
        entities = [stem]
    return "_".join([*entities, "desc-denoised", suffix]) + ".nii.gz"


def _is_bids_root(folder: Path) -> bool:
    return (folder / "dataset_description.json").is_file()


def _folder_inputs(folder: Path) -> list[Path]:
    from medidiff.data import scan_folder

    return [Path(item.image) for item in scan_folder(folder)]


def plan_jobs(inputs: list[str], output: str, uncertainty: str | None) -> tuple[list[Job], Path | None]:
    """Map inputs to outputs. Returns (jobs, BIDS output root or None).

    One input file (or one DICOM folder) with ``output`` not an existing folder: a single job
    writing exactly ``output``. Otherwise ``output`` is a folder (created if missing).
    """
    paths = [expand_user(p) for p in inputs]
    for p in paths:
        if not p.exists():
            raise MedidiffError(f"{p}: no such file or folder; check the path")
    out = expand_user(output)
    single_file = len(paths) == 1 and (
        paths[0].is_file() or not _folder_inputs(paths[0]) or _is_dicom_dir(paths[0])
    )
    if single_file and not out.is_dir():
        if not out.name.lower().endswith(NIFTI_SUFFIXES):
            raise MedidiffError(f"{out}: the output must be a .nii or .nii.gz file (or an existing folder)")
        job = Job(paths[0], out, Path(uncertainty) if uncertainty else None, in_existing_folder=True)
        if paths[0].resolve() in (out.resolve(), job.uncertainty.resolve() if job.uncertainty else None):
            raise MedidiffError(f"{out}: is also the input and inputs are never overwritten; choose another name")
        if job.uncertainty is not None and (job.uncertainty.resolve() == out.resolve()
                                            or not job.uncertainty.name.lower().endswith(NIFTI_SUFFIXES)):
            raise MedidiffError(f"--uncertainty {job.uncertainty}: give a .nii or .nii.gz name other than the output")
        return [job], None
    if not out.is_dir() and out.name.lower().endswith(NIFTI_SUFFIXES):
        what = "a folder of scans" if len(paths) == 1 else f"{len(paths)} inputs"
        raise MedidiffError(
            f"{out}: a .nii or .nii.gz output takes a single scan, and {what} need an output folder; give a folder name"
        )
    unc_dir = expand_user(uncertainty) if uncertainty else None
    jobs: list[Job] = []
    bids_root = None
    for p in paths:
        if p.is_dir() and not _is_dicom_dir(p):
            bids = _is_bids_root(p)
            bids_root = out if bids else bids_root
            for src in _folder_inputs(p):
                if out.resolve() != p.resolve() and out.resolve() in src.resolve().parents:
                    continue  # an output folder inside the input folder: earlier results are not inputs
                rel = src.relative_to(p)
                name = bids_denoised_name(rel.name) if bids else strip_suffix(rel.name) + ".nii.gz"
                target = out / rel.parent / name
                unc = None
                if unc_dir is not None:
                    unc = unc_dir / rel.parent / (strip_suffix(name) + "_uncertainty.nii.gz")
                jobs.append(Job(src, target, unc))
        else:
            name = strip_suffix(p.name) + ".nii.gz"
            unc = unc_dir / (strip_suffix(name) + "_uncertainty.nii.gz") if unc_dir else None
            jobs.append(Job(p, out / name, unc))
    sources = {job.source.resolve() for job in jobs}
    for job in jobs:
        for target in (job.output, job.uncertainty or job.output):
            if target.resolve() in sources:
                raise MedidiffError(f"{target}: is also an input and inputs are never overwritten; "
                                    "choose another output name or folder")
    seen: dict[Path, Path] = {}
    for job in jobs:
        if job.output in seen:
            if Path(job.source).resolve() == Path(seen[job.output]).resolve():
                raise MedidiffError(f"{job.source}: given twice; give each input once")
            raise MedidiffError(
                f"{job.source} and {seen[job.output]} would both write {job.output}; rename one"
            )
        seen[job.output] = job.source
    # every file the jobs write (outputs, maps, sidecars) once: a map named like another scan's output
    written: dict[Path, Path] = {}
    for job in jobs:
        for path in (job.output, job.uncertainty, sidecar_path(job.output)):
            if path is None:
                continue
            other = written.setdefault(path.resolve(), job.source)
            if other != job.source:
                raise MedidiffError(
                    f"{path}: would be written for both {other} and {job.source}; "
                    "give the uncertainty maps a folder of their own"
                )
    if not jobs:
        raise MedidiffError(f"{', '.join(inputs)}: no scans found (NIfTI, NRRD, MHA or DICOM)")
    return jobs, bids_root


def make_output_folders(jobs: list[Job]) -> list[Path]:
    """Create the folders the jobs write into; return those that did not exist, innermost first.

    Planning creates nothing, so a refused batch leaves nothing behind; a batch that then writes no
    output hands this list to :func:`medidiff.files.remove_empty_folders`.
    """
    created: set[Path] = set()
    for job in jobs:
        for target in (job.output, job.uncertainty):
            if target is not None and not job.in_existing_folder:
                created.update(make_folder(target.parent))
    return sorted(created, key=lambda d: len(d.parts), reverse=True)


def _is_dicom_dir(path: Path) -> bool:
    if not path.is_dir():
        return False
    from medidiff.io import looks_like_dicom

    return any(looks_like_dicom(f) for f in list(path.iterdir())[:50] if f.is_file())


def write_bids_description(root: Path) -> None:
    desc = {
        "Name": "medidiff denoised scans",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [
            {"Name": "medidiff", "Version": __version__, "Description": "noise-matched diffusion denoising"}
        ],
    }
    write_text_atomic(root / "dataset_description.json", json.dumps(desc, indent=2) + "\n")


@dataclass
class BatchReport:
    done: list[Path]
    skipped: list[Path]
    failed: list[tuple[Path, str]]


def run_jobs(
    jobs: list[Job],
    work: Callable[[Job], dict[str, Any]],
    force: bool,
    on_progress: Callable[[str], None] = print,
) -> BatchReport:
    """Run ``work`` on each job; finished outputs are skipped, a failing job is reported and skipped."""
    report = BatchReport([], [], [])
    single = len(jobs) == 1
    for n, job in enumerate(jobs, 1):
        prefix = "" if single else f"[{n}/{len(jobs)}] "
        finished = job.output.exists() and (job.uncertainty is None or job.uncertainty.exists())
        if not force and finished and not single:
            report.skipped.append(job.output)
            on_progress(f"{prefix}{job.output}: done already, skipped (use --force to redo)")
            continue
        try:
            info = work(job)
        except MedidiffError as exc:
            if single:
                # name the scan, as a batch's report does, unless the fault is the model's or an output's
                if str(job.source) not in str(exc) and not isinstance(exc, (ModelError, OutputExistsError)):
                    exc.args = (f"{job.source}: {exc}",)
                raise
            report.failed.append((job.source, str(exc)))
            on_progress(f"{prefix}{job.source}: FAILED: {exc}")
            continue
        except Exception as exc:  # noqa: BLE001 - one scan's internal failure must not end the batch
            if single:
                raise
            why = f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            report.failed.append((job.source, why))
            on_progress(f"{prefix}{job.source}: FAILED: {why}")
            continue
        report.done.append(job.output)
        sigma = info.get("sigma")
        shown = (
            f"{sigma:.4g}" if isinstance(sigma, float)
            else ", ".join(f"{v:.4g}" for v in sigma) if isinstance(sigma, list) else sigma
        )  # fmt: skip
        on_progress(
            f"{prefix}{job.output}: done ({info.get('modality')}, model {info.get('model')}, sigma {shown}, "
            f"{info.get('wall_time_s')} s)"
        )
    return report
