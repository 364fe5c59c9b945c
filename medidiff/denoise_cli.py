"""``medidiff denoise``: options to :class:`~medidiff.inference.Denoiser`, jobs to files.

SIGTERM is turned into an interrupt so the atomic writers remove their temporary files exactly as
on Ctrl-C: an interrupted run leaves finished outputs and nothing half-written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import signal
import sys
from pathlib import Path
from typing import Any

from medidiff import __version__
from medidiff.errors import MedidiffError


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when SIGTERM arrives."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def install_sigterm_handler() -> None:
    signal.signal(signal.SIGTERM, _raise_terminated)


def run_denoise(args: argparse.Namespace) -> int:
    from medidiff.batch import make_output_folders, plan_jobs
    from medidiff.files import remove_empty_folders
    from medidiff.inference import DenoiseOptions

    install_sigterm_handler()
    options = DenoiseOptions(
        sigma=args.sigma,
        steps=args.steps,
        sampler=args.sampler,
        samples=args.samples,
        flips=args.flips,
        guided_radius=args.guided_radius,
        blend=args.blend,
        network_sigma_scale=args.network_sigma_scale,
        detail_floor=args.detail_floor,
        strength=args.strength,
        seed=args.seed,
        roi_size=tuple(args.roi_size) if args.roi_size else None,
        overlap=args.overlap,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
    ).resolved()  # bad values fail here, before any model loads
    if args.uncertainty and options.runs < 2:
        raise MedidiffError("--uncertainty needs --samples or --flips 2 or more (it is the spread over runs)")
    jobs, bids_root = plan_jobs(args.inputs, args.output, args.uncertainty)
    created = make_output_folders(jobs)
    try:
        return _denoise_jobs(args, options, jobs, bids_root)
    finally:  # a run that wrote nothing leaves none of the folders it made behind
        remove_empty_folders(created)


def _check_job_outputs(job: Any, force: bool, sidecar: bool) -> set[Path]:
    """Check that the job's files may be written; return the leftovers of an unfinished run of it.

    Raises:
        OutputExistsError: a file exists, is not such a leftover, and ``force`` is not given.
    """
    from medidiff.batch import leftovers_of_unfinished_job, sidecar_path
    from medidiff.errors import OutputExistsError
    from medidiff.files import check_output

    if not force and job.output.exists() and job.uncertainty is not None and not job.uncertainty.exists():
        raise OutputExistsError(
            f"{job.output}: exists already, without the uncertainty map {job.uncertainty}; "
            "pass --force to denoise it again"
        )
    ours = leftovers_of_unfinished_job(job)
    check_output(job.output, force)
    if job.uncertainty is not None and job.uncertainty not in ours:
        check_output(job.uncertainty, force)
    if sidecar and sidecar_path(job.output) not in ours:  # a JSON file we did not write (BIDS?) is kept
        check_output(sidecar_path(job.output), force)
    return ours


def _write_job_files(job: Any, result: Any, info: dict[str, Any], force: bool, sidecar: bool, ours: set[Path]) -> None:
    """Write a scan's uncertainty map, sidecar and output together.

    All three are written to temporary files first (the long part: compressing the volumes); only
    when every one is complete, and none has appeared meanwhile (another run), are they renamed onto
    their names: the sidecar, then the map, then the output, with SIGINT and SIGTERM held back
    until the three renames are done. A stop before that leaves the previous files as they were and
    no new ones; an output that exists therefore comes with its map and sidecar, and anything less
    (a crash between renames) starts with medidiff's sidecar naming the map, which a rerun
    recognizes (:func:`medidiff.batch.leftovers_of_unfinished_job`). ``ours``: such leftovers.
    """
    from medidiff.batch import own_sidecar, sidecar_path
    from medidiff.errors import OutputExistsError
    from medidiff.files import atomic_path
    from medidiff.io import check_nifti_output, write_nifti_file

    side = sidecar_path(job.output)
    targets: list[tuple[Path, bool]] = [(job.output, force)]
    held = False
    try:
        with contextlib.ExitStack() as stack:  # exits in reverse: sidecar, map, output
            out_tmp = stack.enter_context(atomic_path(check_nifti_output(job.output, force), force=force))
            map_tmp = None
            if job.uncertainty is not None and result.uncertainty is not None:
                unc_force = force or job.uncertainty in ours
                unc = check_nifti_output(job.uncertainty, unc_force)
                map_tmp = stack.enter_context(atomic_path(unc, force=unc_force))
                targets.append((job.uncertainty, unc_force))
            side_tmp = None
            if sidecar:
                side_force = force or side in ours
                side_tmp = stack.enter_context(atomic_path(side, force=side_force))
                targets.append((side, side_force))
            if map_tmp is not None:
                write_nifti_file(result.uncertainty, map_tmp)
            if side_tmp is not None:
                side_tmp.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
            write_nifti_file(result.volume, out_tmp)
            for target, may_replace in targets:  # one appeared meanwhile (another run): rename nothing
                if target.exists() and not may_replace:
                    raise OutputExistsError(f"{target}: exists already; pass --force to overwrite it")
            held = _hold_stop_signals(True)
    finally:
        if held:
            _hold_stop_signals(False)  # a signal that came during the renames is delivered now
    if not sidecar and (side in ours or (force and own_sidecar(job.output) is not None)):
        side.unlink(missing_ok=True)  # medidiff's sidecar of an earlier run, which would describe this output wrongly


def _hold_stop_signals(hold: bool) -> bool:
    """Block (or unblock) SIGINT and SIGTERM in this thread; False where that is not possible."""
    if not hasattr(signal, "pthread_sigmask"):
        return False
    how = signal.SIG_BLOCK if hold else signal.SIG_UNBLOCK
    signal.pthread_sigmask(how, {signal.SIGINT, signal.SIGTERM})
    return True


def _denoise_jobs(args: argparse.Namespace, options: Any, jobs: list[Any], bids_root: Path | None) -> int:
    """Denoise the planned jobs (their folders exist); the exit status of ``medidiff denoise``."""
    from medidiff.batch import Job, run_jobs, write_bids_description
    from medidiff.inference import Denoiser
    from medidiff.io import read_volume

    if len(jobs) == 1:
        _check_job_outputs(jobs[0], args.force, sidecar=not args.no_sidecar)
    elif args.series is not None:
        raise MedidiffError("--series applies to a single DICOM folder input")
    denoiser = Denoiser(model=args.model, device=args.device)
    if args.model is not None and len(jobs) > 1:  # a model given serves every scan: a bad one fails once
        denoiser.load("MR")
    # steps, sampler, guided radius, blend, network sigma scale and detail floor as given: their
    # defaults depend on each scan's modality (the CT network sigma scale also on its pixel size)
    by_modality = ("steps", "sampler", "guided_radius", "blend", "network_sigma_scale", "detail_floor")
    run_options = {
        k: getattr(args if k in by_modality else options, k)
        for k in (
            "sigma",
            "steps",
            "sampler",
            "samples",
            "flips",
            "guided_radius",
            "blend",
            "network_sigma_scale",
            "detail_floor",
            "strength",
            "seed",
            "roi_size",
            "overlap",
            "batch_size",
            "precision",
        )
    }

    def work(job: Job) -> dict[str, Any]:
        ours = _check_job_outputs(job, args.force, sidecar=not args.no_sidecar)
        try:
            volume = read_volume(job.source, series=args.series)
        except MemoryError:
            raise MedidiffError(
                f"{job.source}: too large to load into the free memory; crop it or use a machine with more memory"
            ) from None
        result = denoiser.denoise_volume(volume, modality=args.modality, **run_options)
        info = {
            "medidiff_version": __version__,
            "input": str(job.source.resolve()),
            "output": str(job.output.resolve()),
            **result.info,
            "python": platform.python_version(),
        }
        if job.uncertainty is not None:
            info["uncertainty"] = str(job.uncertainty.resolve())
        _write_job_files(job, result, info, args.force, not args.no_sidecar, ours)
        return info

    report = run_jobs(jobs, work, args.force)
    if bids_root is not None and (report.done or report.skipped):
        write_bids_description(bids_root)
    if len(jobs) > 1:
        print(
            f"{len(report.done)} denoised, {len(report.skipped)} skipped (done before), "
            f"{len(report.failed)} failed"
        )
    if report.failed:
        for source, why in report.failed:
            print(f"failed: {why}" if str(source) in why else f"failed: {source}: {why}", file=sys.stderr)
        internal = any(why.startswith("internal error") for _, why in report.failed)
        return 1 if internal else 2
    return 0
