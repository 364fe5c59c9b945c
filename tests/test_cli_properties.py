"""Property-based tests of the command line: any option value is accepted or refused in one line.

The model given to ``--model`` does not exist, so a run whose options are all valid ends at the model
lookup; the tests check that invalid values are refused first (exit 2, the option named, at most
three lines, no traceback) and that nothing is ever written.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import tempfile
from pathlib import Path

import pytest
from conftest import write_phantom
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from medidiff.cli import build_parser, main

FAST = settings(max_examples=30, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
# argparse takes a value that starts with "-" for an option unless it looks like a negative number
_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")


def _as_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _as_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _argparse_takes(text: str) -> bool:
    return not text.startswith("-") or " " in text or bool(_NEGATIVE_NUMBER.match(text))


def _valid(option: str, text: str) -> bool:
    """Whether ``--option text`` is a valid denoise setting (the documented ranges)."""
    if not _argparse_takes(text):
        return False
    i, f = _as_int(text), _as_float(text)
    if option == "--steps":
        return i is not None and 1 <= i <= 1000
    if option == "--batch-size":
        return i is not None and i >= 1
    if option == "--flips":
        return i is not None and 1 <= i <= 8
    if option == "--seed":
        return i is not None and 0 <= i < 2**63
    if f is None or not math.isfinite(f):
        return False
    if option == "--overlap":
        return 0 <= f < 1
    if option == "--strength":
        return 0 <= f <= 10
    if option == "--sigma":
        return f > 0
    raise AssertionError(option)


OPTIONS = ["--steps", "--batch-size", "--flips", "--seed", "--overlap", "--strength", "--sigma"]
EDGE = ["0", "-0", "1", "-1", "0.5", "-0.5", ".5", "1e3", "1e309", "-1e309", "nan", "inf", "-inf", "NaN",
        " 3 ", "1_000", "0x10", "", "--", "-x", "٣", "1" * 5000, str(2**63), str(2**63 - 1), "1000", "1001",
        "10", "10.5", "0.999", "1.0"]
values = (st.sampled_from(EDGE) | st.integers(-(2**70), 2**70).map(str)
          | st.floats(allow_nan=True, allow_infinity=True).map(repr) | st.text(max_size=8))


@pytest.fixture(scope="module")
def scan_dir() -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        write_phantom(Path(tmp) / "scan.nii.gz", shape=(12, 12, 12))
        yield Path(tmp)


def _run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = int(exc.code or 0)
    return rc, err.getvalue()


def _assert_one_error(rc: int, err: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= 3 and all(len(line) < 1000 for line in lines), err


@FAST
@given(st.sampled_from(OPTIONS), values)
def test_parser_accepts_exactly_the_valid_values(option, text):
    parser = build_parser()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            args = parser.parse_args(["denoise", "in.nii.gz", "-o", "out.nii.gz", option, text])
        except SystemExit as exc:
            assert exc.code == 2
            assert option in err.getvalue() and len(err.getvalue().strip().splitlines()) == 1
            return
    value = getattr(args, option[2:].replace("-", "_"))
    assert isinstance(value, int if option in ("--steps", "--batch-size", "--flips", "--seed") else float)
    if option in ("--overlap", "--strength", "--sigma"):
        assert math.isfinite(value) and value >= 0


@FAST
@given(st.dictionaries(st.sampled_from(OPTIONS), values, max_size=4),
       st.one_of(st.none(), st.lists(st.sampled_from(["4", "8", "16", "0", "-8", "x", "1e2"]), min_size=3,
                                     max_size=3)))
def test_denoise_refuses_any_invalid_value_and_writes_nothing(scan_dir, options, roi):
    argv = ["denoise", str(scan_dir / "scan.nii.gz"), "-o", str(scan_dir / "out.nii.gz"),
            "--model", str(scan_dir / "no-such-model.safetensors"), "--device", "cpu"]
    for option, text in options.items():
        argv += [option, text]
    invalid = [option for option, text in options.items() if not _valid(option, text)]
    if roi is not None:
        argv += ["--roi-size", *roi]
        sizes = [_as_int(t) if _argparse_takes(t) else None for t in roi]
        if any(s is None or s < 8 for s in sizes):
            invalid.append("--roi-size")
    rc, err = _run(argv)
    _assert_one_error(rc, err)
    if invalid:
        assert any(option in err for option in invalid), (invalid, err)
    else:
        assert "no-such-model" in err and "model not found" in err
    assert sorted(p.name for p in scan_dir.iterdir()) == ["scan.nii.gz"]


TOKENS = ["--steps", "--sigma", "--strength", "--overlap", "--seed", "--samples", "--flips", "--sampler", "euler",
          "heun", "ancestral", "ddim", "--roi-size", "--batch-size", "--modality", "MR", "CT", "PET", "--device", "cpu",
          "--series", "--uncertainty", "u.nii.gz", "--force", "--no-sidecar", "--debug", "--bogus", "-o",
          "1", "0", "-1", "2", "16", "0.5", "nan", "x"]
junk = st.text(alphabet="abcxyz_", min_size=1, max_size=6).map(lambda t: f"junk_{t}")


@FAST
@given(st.lists(st.sampled_from(TOKENS) | junk, max_size=8))
@example(tokens=["--debug", "--debug"])
def test_any_argument_list_ends_in_one_short_message(scan_dir, tokens):
    argv = ["denoise", str(scan_dir / "scan.nii.gz"), "-o", str(scan_dir / "out.nii.gz"), *tokens,
            "--model", str(scan_dir / "no-such-model.safetensors"), "--device", "cpu"]
    argv = [a for a in argv if a != "--debug"]  # --debug re-raises by design; the rest must still be one line
    cwd = os.getcwd()
    os.chdir(scan_dir)  # a stray relative output name would land here, and be caught below
    try:
        rc, err = _run(argv)
    finally:
        os.chdir(cwd)
    _assert_one_error(rc, err)
    assert sorted(p.name for p in scan_dir.iterdir()) == ["scan.nii.gz"]


@FAST
@given(st.lists(values, min_size=3, max_size=3), values, values, values)
def test_sample_refuses_bad_values_and_writes_nothing(scan_dir, shape, steps, spacing, seed):
    argv = ["sample", "-o", str(scan_dir / "s.nii.gz"), "--model", str(scan_dir / "no-such-model.safetensors"),
            "--device", "cpu", "--shape", *shape, "--steps", steps, "--spacing", spacing, "--seed", seed]
    rc, err = _run(argv)
    _assert_one_error(rc, err)
    assert sorted(p.name for p in scan_dir.iterdir()) == ["scan.nii.gz"]


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 1000) | st.integers(-(2**70), 2**70),
       roi=st.lists(st.sampled_from([8, 12, 16, 20, 9, 6]), min_size=3, max_size=3),
       steps=st.integers(1, 3), strength=st.floats(0, 2), overlap=st.floats(0, 0.9),
       sampler=st.sampled_from(["euler", "heun", "ancestral"]))
def test_real_runs_succeed_or_refuse_never_crash(tiny_model, seed, roi, steps, strength, overlap, sampler):
    """With a real (tiny) model: exit 0 with a complete output, or a user error; never an internal error."""
    import nibabel as nib
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        src = write_phantom(Path(tmp) / "scan.nii.gz", shape=(12, 14, 12))
        out = Path(tmp) / "out.nii.gz"
        rc, err = _run(["denoise", str(src), "-o", str(out), "--model", str(tiny_model), "--device", "cpu",
                        "--seed", str(seed), "--roi-size", *map(str, roi), "--steps", str(steps),
                        "--strength", repr(strength), "--overlap", repr(overlap), "--sampler", sampler])
        if rc == 0:
            data = np.asarray(nib.load(str(out)).dataobj)
            assert data.shape == (12, 14, 12) and np.isfinite(data).all()
        else:
            _assert_one_error(rc, err)
            assert not out.exists()
        assert not list(Path(tmp).glob(".medidiff-tmp-*"))
