"""The ``medidiff`` command. Each subcommand only parses arguments and calls a plain function.

Heavy imports live inside the handlers so that ``medidiff --help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from medidiff import __version__
from medidiff.errors import MedidiffError

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad options in our one-line style (exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        message = " ".join(message.split())  # argparse echoes the bad value, however long it is
        message = message if len(message) <= 300 else message[:297] + "..."
        self.exit(EXIT_USER_ERROR, f"medidiff: error: {message} (see `{self.prog} --help`)\n")


# ---------------------------------------------------------------- info / convert


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print shape, spacing, orientation and intensities of a scan")
    p.add_argument("scan", help="NIfTI file, DICOM folder, NRRD or MHA/MHD file")
    p.add_argument("--series", default=None, help="DICOM series UID or index when a folder holds several")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    p.set_defaults(handler=_cmd_info)


def _cmd_info(args: argparse.Namespace) -> int:
    from medidiff.inspect import describe, format_description

    desc = describe(args.scan, series=args.series)
    if args.json:
        import json

        print(json.dumps(desc, indent=2))
    else:
        print(format_description(desc))
    return 0


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a scan (DICOM series, NRRD, MHA, NIfTI) to NIfTI")
    p.add_argument("input", help="NIfTI file, DICOM folder, NRRD or MHA/MHD file")
    p.add_argument("output", help="output .nii or .nii.gz")
    p.add_argument("--series", default=None, help="DICOM series UID or index when a folder holds several")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.set_defaults(handler=_cmd_convert)


def _cmd_convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    from medidiff.io import read_volume, write_volume

    if Path(args.output).resolve() == Path(args.input).resolve():
        raise MedidiffError(f"{args.output}: is the input; inputs are never overwritten, choose another name")
    volume = read_volume(args.input, series=args.series)
    out = write_volume(volume, args.output, force=args.force)
    print(f"wrote {out}")
    return 0


# ---------------------------------------------------------------- evaluate / benchmark


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="PSNR and SSIM of denoised scans against a reference, or no-reference measures without one",
    )
    p.add_argument("--reference", default=None, help="clean scan; omit for the no-reference measures")
    p.add_argument(
        "--input",
        dest="inputs",
        action="append",
        required=True,
        metavar="TEST",
        help="scan to score (repeat for several); must be on the reference's grid",
    )
    p.add_argument("--mask", default="auto", help="mask file (non-zero = inside), 'auto' or 'none'")
    p.add_argument(
        "--data-range",
        type=float,
        default=None,
        help="peak R of PSNR/SSIM (default: window width for CT = 2000, else reference max - min)",
    )
    p.add_argument(
        "--window",
        default=None,
        help="LO,HI: clip both scans first (default -1000,1000 for CT); write --window=-1000,1000",
    )
    p.add_argument("--modality", choices=["MR", "CT"], default=None, help="default: from the scan")
    p.add_argument("--noisy", default=None, help="the scan before denoising: adds residual measures")
    p.add_argument("--roi", nargs=2, default=None, metavar=("A", "B"), help="two ROI masks: contrast and CNR")
    p.add_argument("--series", default=None, help="DICOM series UID or index when a folder holds several")
    p.add_argument("--monai-ssim", action="store_true", help="also report MONAI's Gaussian-window SSIM")
    p.add_argument("--json", action="store_true", help="print JSON (an object, or a list for several inputs)")
    p.set_defaults(handler=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from medidiff.evaluation import evaluate_files, format_report

    results = evaluate_files(
        args.reference,
        args.inputs,
        mask=args.mask,
        data_range=args.data_range,
        window=args.window,
        modality=args.modality,
        monai_ssim=args.monai_ssim,
        noisy=args.noisy,
        roi=args.roi,
        series=args.series,
    )
    if args.json:
        import json

        print(json.dumps(results[0] if len(results) == 1 else results, indent=2))
    else:
        print(format_report(results))
    return 0


def _add_benchmark(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("benchmark", help="compare medidiff with classical denoisers on held-out scans")
    p.add_argument("--config", default=None, help="benchmark YAML (default: configs/benchmark.yaml)")
    p.add_argument("--quick", action="store_true", help="small crops, one noise level each (under 2 minutes)")
    p.add_argument("--output", default=None, help="results folder (default: results/benchmark[-quick])")
    p.add_argument("--methods", nargs="+", default=None, help="run only these methods")
    p.add_argument(
        "--data-dir", default=None, help="folder holding the reference scans (overrides the config)"
    )
    p.add_argument(
        "--update-docs", action="store_true", help="rewrite the generated part of docs/benchmarks.md"
    )
    p.add_argument("--force", action="store_true", help="overwrite results in an existing output folder")
    p.set_defaults(handler=_cmd_benchmark)


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from medidiff.benchmark import load_benchmark_config, run_benchmark, update_docs

    cfg = load_benchmark_config(args.config, data_dir=args.data_dir, methods=args.methods)
    output = args.output or ("results/benchmark-quick" if args.quick else "results/benchmark")
    report = run_benchmark(cfg, output=output, quick=args.quick, force=args.force)
    print(report.summary)
    if args.update_docs:
        print(f"updated {update_docs(report)}")
    return 0


# ---------------------------------------------------------------- denoise / train / sample / demo / export


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _positive_int(text: str) -> int:
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seed(text: str) -> int:
    value = _whole_number(text)
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be between 0 and 2**63 - 1, got {text}")
    return value


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _voxel_size(text: str) -> float:
    value = _positive_float(text)
    if not 1e-3 <= value <= 100:  # a NIfTI header stores float32: 1e300 or 1e-320 would not survive
        raise argparse.ArgumentTypeError(f"a voxel size lies between 0.001 and 100 mm, got {text}")
    return value


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="bundled name (mr, ct), run folder or exported .safetensors; default: by modality")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where the network runs")


def _add_denoise(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("denoise", help="denoise scans (files, DICOM folders or folders of scans)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="scan file, DICOM folder, or folder of scans")
    p.add_argument("-o", "--output", required=True,
                   help="output .nii/.nii.gz for one input; an output folder for several or a folder")
    _add_model_options(p)
    p.add_argument("--modality", choices=["MR", "CT"], default=None,
                   help="override the modality from the DICOM tag, header or HU range")
    p.add_argument("--series", default=None, help="DICOM series UID or index when a folder holds several")
    p.add_argument("--sigma", type=_positive_float, default=None,
                   help="noise std in the scan's units (HU for CT); default: estimated")
    p.add_argument("--strength", type=_nonneg_float, default=0.0,
                   help="re-noise to (1+S) x the level the network is told before the reverse process "
                        "(SDEdit): more smoothing")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help="reverse-process steps; 1 is the single-step estimate (default: 1, ancestral 4)")
    p.add_argument("--sampler", choices=["euler", "heun", "ancestral"], default=None,
                   help="euler/heun are deterministic, ancestral stochastic (default euler; ancestral with --samples)")
    p.add_argument("--samples", type=_positive_int, default=1, help="average K stochastic runs")
    p.add_argument("--flips", type=_positive_int, default=1,
                   help="average over K mirror images of the scan, 1-8 (K times the work; default 1)")
    p.add_argument("--guided-radius", type=_nonneg_float, default=None, metavar="R",
                   help="after the network, average the noisy scan over a ball of R voxels weighted by the "
                   "network's estimate and the scan's local means; 0 turns it off (default: MR 3.7, CT 3)")
    p.add_argument("--blend", type=_nonneg_float, default=None, metavar="F",
                   help="keep a share F (0-1) of the input: (1 - F) x denoised + F x input; on CT some grain, as "
                   "a full-dose scan has, 0 for the smoothest result (default: MR 0, CT 0.15)")
    p.add_argument("--detail-floor", type=_nonneg_float, default=None, metavar="F",
                   help="after guided averaging, smooth away the finest detail no stronger than F x sigma, 0-1 "
                   "(left-over noise in flat tissue); 0 turns it off (default: MR 0.05, CT 0)")
    p.add_argument("--network-sigma-scale", type=_positive_float, default=None, metavar="S",
                   help="tell the network S x sigma, 0.5-2; the steps after it keep sigma (default: MR 1.1, CT 1, "
                        "rising to 1.2 for CT pixels of 0.75 mm and below)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of every random draw")
    p.add_argument("--uncertainty", default=None,
                   help="write the voxelwise std over --samples/--flips runs here (a file, or a folder for batches)")
    p.add_argument("--roi-size", type=_positive_int, nargs=3, default=None, metavar=("X", "Y", "Z"),
                   help="sliding-window size in voxels (default: fitted around the training patch + 8)")
    p.add_argument("--overlap", type=_nonneg_float, default=0.2,
                   help="overlap between windows, a fraction of the base window (0.2: 8 voxels)")
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="network arithmetic: auto = bf16 on CUDA and on CPUs with native bf16 (AMX/AVX512-BF16), else fp32",
    )
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help="windows per network call (default: on the CPU 2 in fp32, 1 in bf16; 16 on a GPU)")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.add_argument("--no-sidecar", action="store_true", help="do not write the JSON sidecar")
    p.set_defaults(handler=_cmd_denoise)


def _cmd_denoise(args: argparse.Namespace) -> int:
    from medidiff.denoise_cli import run_denoise

    return run_denoise(args)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a denoiser from a YAML config (also under torchrun)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="YAML config, e.g. configs/mri.yaml")
    src.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.max_steps=100 (repeatable)")
    p.add_argument("--progress", choices=["auto", "bar", "log"], default="auto",
                   help="progress bar on a terminal (auto) or plain log lines")
    p.set_defaults(handler=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    import logging

    from medidiff.training import train

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    progress = None if args.progress == "auto" else args.progress == "bar"
    result = train(args.config, args.overrides, resume=args.resume, progress=progress)
    if result.interrupted:
        print(f"interrupted at step {result.step}; checkpoint saved. Continue with: "
              f"medidiff train --resume {result.run_dir}", file=sys.stderr)
        return 128 + result.signum if result.signum else EXIT_INTERRUPTED
    print(f"trained to step {result.step}; run folder {result.run_dir}")
    return 0


def _add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="draw new volumes from the model's prior, starting from pure noise")
    p.add_argument("-o", "--output", required=True, help="output .nii/.nii.gz")
    _add_model_options(p)
    p.add_argument("--modality", choices=["MR", "CT"], default="MR", help="picks the bundled model")
    p.add_argument("--shape", type=_positive_int, nargs=3, default=[64, 64, 64], metavar=("X", "Y", "Z"))
    p.add_argument("--spacing", type=_voxel_size, default=1.5, help="voxel size of the output (mm, 0.001-100)")
    p.add_argument("--steps", type=_positive_int, default=40, help="reverse-process steps (1-1000)")
    p.add_argument("--sampler", choices=["euler", "heun", "ancestral"], default="heun")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.set_defaults(handler=_cmd_sample)


def _cmd_sample(args: argparse.Namespace) -> int:
    from medidiff.generate import sample_prior

    out = sample_prior(args.output, model=args.model, modality=args.modality, shape=tuple(args.shape),
                       spacing=args.spacing, steps=args.steps, sampler=args.sampler, seed=args.seed,
                       device=args.device, force=args.force)
    print(f"wrote {out}")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="make a noisy sample head scan, denoise it, print PSNR/SSIM, save a PNG")
    p.add_argument("-o", "--output", default="medidiff-demo", help="folder for the sample, result and PNG")
    p.add_argument("--noise", type=_positive_float, default=0.05,
                   help="Rician noise std as a fraction of the bright-tissue intensity")
    _add_model_options(p)
    p.add_argument("--force", action="store_true", help="overwrite files of an earlier demo")
    p.set_defaults(handler=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from medidiff.demo import run_demo

    run_demo(args.output, noise=args.noise, model=args.model, device=args.device, force=args.force)
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a run's EMA weights as one .safetensors model file")
    p.add_argument("run", help="run folder written by medidiff train")
    p.add_argument("-o", "--output", required=True, help="output .safetensors")
    p.add_argument("--fp32", action="store_true", help="keep float32 weights (default float16)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.set_defaults(handler=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from medidiff.checkpoint import export_model

    if not args.output.endswith(".safetensors"):
        raise MedidiffError(f"{args.output}: an exported model must end in .safetensors")
    out = export_model(Path(args.run), Path(args.output), torch.float32 if args.fp32 else torch.float16,
                       force=args.force)
    print(f"wrote {out}")
    return 0


# ---------------------------------------------------------------- parser and entry point

_ADDERS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_info,
    _add_convert,
    _add_denoise,
    _add_train,
    _add_sample,
    _add_demo,
    _add_export,
    _add_evaluate,
    _add_benchmark,
]


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default unless it is None (its help then says what None means)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="medidiff",
        description="Denoise 3D MRI and CT scans with a noise-matched diffusion model.",
        formatter_class=_DefaultsHelp,
    )
    parser.add_argument("--version", action="version", version=f"medidiff {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in _ADDERS:
        add(sub)
    for p in sub.choices.values():
        p.formatter_class = _DefaultsHelp
        if not any(a.dest == "debug" for a in p._actions):
            p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
        for action in p._actions:  # unset, so a --debug before the command is not overwritten
            if action.dest == "debug":
                action.default = argparse.SUPPRESS
    return parser


def _sigterm_as_interrupt() -> Any:
    """Make SIGTERM raise an interrupt as Ctrl-C does, so every command removes its temporary files.

    Returns the previous handler (None where it cannot be changed: not the main thread).
    """
    import signal

    from medidiff.denoise_cli import install_sigterm_handler

    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGTERM)
    install_sigterm_handler()
    return previous


def _out_of_memory() -> int:
    print(
        "medidiff: error: out of memory; try a smaller --roi-size or --batch-size, or --device cpu",
        file=sys.stderr,
    )
    return EXIT_INTERNAL_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    debug = bool(getattr(args, "debug", False))
    previous = _sigterm_as_interrupt()
    try:
        return int(args.handler(args) or 0)
    except MedidiffError as exc:
        if debug:
            raise
        print(f"medidiff: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt as exc:
        terminated = type(exc).__name__ == "Terminated"
        print(f"medidiff: {'terminated' if terminated else 'interrupted'}; no partial output was left",
              file=sys.stderr)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    except MemoryError:
        if debug:
            raise
        return _out_of_memory()
    except Exception as exc:  # noqa: BLE001 - the last line of defence, one line unless --debug
        if debug:
            raise
        if type(exc).__name__ == "OutOfMemoryError" or "can't allocate memory" in str(exc):  # torch
            return _out_of_memory()
        text = " ".join(str(exc).split())  # backends (torch, ITK) write messages over many lines
        text = text if len(text) <= 300 else text[:297] + "..."
        print(
            f"medidiff: internal error: {type(exc).__name__}: {text} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL_ERROR
    finally:
        if previous is not None:
            import signal

            signal.signal(signal.SIGTERM, previous)
