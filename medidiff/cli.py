"""The ``medidiff`` command. Each subcommand only parses arguments and calls a plain function.

Heavy imports live inside the handlers so that ``medidiff --help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from medidiff import __version__
from medidiff.errors import MedidiffError

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1
EXIT_INTERRUPTED = 130

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad options in our one-line style (exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
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
    from medidiff.io import read_volume, write_volume

    volume = read_volume(args.input, series=args.series)
    out = write_volume(volume, args.output, force=args.force)
    print(f"wrote {out}")
    return 0


# ---------------------------------------------------------------- parser and entry point

_ADDERS: list[Callable[[argparse._SubParsersAction], None]] = [_add_info, _add_convert]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="medidiff",
        description="Denoise 3D MRI and CT scans with a noise-matched diffusion model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"medidiff {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in _ADDERS:
        add(sub)
    for p in sub.choices.values():
        p.formatter_class = argparse.ArgumentDefaultsHelpFormatter
        if not any(a.dest == "debug" for a in p._actions):
            p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    debug = bool(getattr(args, "debug", False))
    try:
        return int(args.handler(args) or 0)
    except MedidiffError as exc:
        if debug:
            raise
        print(f"medidiff: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("medidiff: interrupted; no partial output was left", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError:
        if debug:
            raise
        print(
            "medidiff: error: out of memory; try a smaller --roi-size or --batch-size, or --device cpu",
            file=sys.stderr,
        )
        return EXIT_INTERNAL_ERROR
    except Exception as exc:  # noqa: BLE001 - the last line of defence, one line unless --debug
        if debug:
            raise
        print(
            f"medidiff: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL_ERROR
