"""Ctrl-C (SIGINT) and SIGTERM: exit codes 130/143, no output, no temporary file, input unchanged.

The subprocess tests signal a real ``medidiff`` process: ``denoise`` in the middle of its reverse
process, and ``convert`` while its temporary output file is being written. The in-process tests
interrupt the NIfTI writer halfway through a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import write_phantom

from medidiff.cli import main
from medidiff.files import TEMP_PREFIX

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc), or None where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _wait_until_busy(proc: subprocess.Popen[str], cpu_seconds: float, timeout: float = 60.0) -> None:
    """Wait until the child has done ``cpu_seconds`` of work (past its imports), at least 2 s."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        assert proc.poll() is None, f"medidiff ended before the signal: {proc.communicate()}"
        used = _cpu_seconds(proc.pid)
        waited = time.monotonic() - start
        if waited >= 2.0 and (used is None or used >= cpu_seconds):
            return
        time.sleep(0.05)


def _default_sigint() -> None:
    # a test run started in the background (nohup, `cmd &` in a script) ignores SIGINT, and a child
    # inherits that; the tests are about a foreground process that gets Ctrl-C
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "medidiff", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_default_sigint)


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # pragma: no cover - the signal was ignored
        proc.kill()
        proc.communicate()
        pytest.fail("medidiff did not stop within 60 s of the signal")
    return proc.returncode, err


@pytest.mark.parametrize(("signum", "code", "word"), [(signal.SIGTERM, 143, "terminated"),
                                                      (signal.SIGINT, 130, "interrupted")])
def test_signal_during_denoise(tmp_path: Path, tiny_model: Path, signum: int, code: int, word: str):
    src = write_phantom(tmp_path / "big.nii.gz", shape=(48, 48, 48))
    before = _digest(src)
    out = tmp_path / "out" / "den.nii.gz"
    out.parent.mkdir()
    proc = _start(["denoise", str(src), "-o", str(out), "--model", str(tiny_model), "--steps", "200",
                   "--device", "cpu"], cwd=tmp_path)
    _wait_until_busy(proc, cpu_seconds=3.0)
    proc.send_signal(signum)
    rc, err = _finish(proc)
    assert rc == code, err
    assert word in err and "Traceback" not in err and len(err.strip().splitlines()) <= 3
    assert list(out.parent.iterdir()) == []  # no output, no sidecar, no temporary file
    assert not list(tmp_path.rglob(f"{TEMP_PREFIX}*"))
    assert _digest(src) == before


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_while_the_temporary_output_is_written(tmp_path: Path, signum: int, code: int):
    src = tmp_path / "big.nii"
    data = np.random.default_rng(0).standard_normal((256, 256, 256), dtype=np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(src))
    del data
    before = _digest(src)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = _start(["convert", str(src), str(out_dir / "big.nii.gz")], cwd=tmp_path)
    start = time.monotonic()
    while not list(out_dir.glob(f"{TEMP_PREFIX}*")):
        assert proc.poll() is None, f"convert ended before its temporary file was seen: {proc.communicate()}"
        assert time.monotonic() - start < 60, "no temporary file appeared"
        time.sleep(0.002)
    proc.send_signal(signum)
    rc, err = _finish(proc)
    assert rc == code, err
    assert "Traceback" not in err
    assert list(out_dir.iterdir()) == []
    assert _digest(src) == before


class _Boom(KeyboardInterrupt):
    pass


@pytest.mark.parametrize("exc", ["interrupt", "terminated"])
def test_interrupt_halfway_through_the_write_leaves_nothing(tmp_path: Path, capsys, noisy_scan: Path,
                                                           tiny_model: Path, monkeypatch: pytest.MonkeyPatch,
                                                           exc: str):
    import medidiff.io
    from medidiff.denoise_cli import Terminated

    def half_write(path: Path, header, raw) -> None:
        Path(path).write_bytes(b"\x00" * 1000)  # something on disk, as a real writer would leave
        raise Terminated() if exc == "terminated" else KeyboardInterrupt()

    monkeypatch.setattr(medidiff.io, "_write_nifti", half_write)
    before = _digest(noisy_scan)
    out = tmp_path / "out" / "den.nii.gz"
    out.parent.mkdir()
    rc = main(["denoise", str(noisy_scan), "-o", str(out), "--model", str(tiny_model)])
    assert rc == (143 if exc == "terminated" else 130)
    assert "no partial output" in capsys.readouterr().err
    assert list(out.parent.iterdir()) == []
    assert _digest(noisy_scan) == before


def test_main_restores_the_sigterm_handler(tmp_path: Path, capsys):
    previous = signal.getsignal(signal.SIGTERM)
    main(["info", str(tmp_path / "missing.nii")])
    capsys.readouterr()
    assert signal.getsignal(signal.SIGTERM) is previous


def test_sigterm_before_any_write_of_a_batch_keeps_finished_outputs(tmp_path: Path, capsys, tiny_model: Path,
                                                                   monkeypatch: pytest.MonkeyPatch):
    """An interrupted batch keeps what it finished; the rerun does only the rest."""
    import medidiff.inference
    from medidiff.denoise_cli import Terminated

    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(3):
        write_phantom(folder / f"s{k}.nii.gz", shape=(16, 16, 16), seed=k)
    real = medidiff.inference.Denoiser.denoise_volume

    def stop_at_second(self, volume, **kwargs):
        if volume.meta.source_path.endswith("s1.nii.gz"):
            raise Terminated()
        return real(self, volume, **kwargs)

    monkeypatch.setattr(medidiff.inference.Denoiser, "denoise_volume", stop_at_second)
    out = tmp_path / "out"
    assert main(["denoise", str(folder), "-o", str(out), "--model", str(tiny_model)]) == 143
    assert sorted(p.name for p in out.iterdir()) == ["s0.json", "s0.nii.gz"]
    monkeypatch.setattr(medidiff.inference.Denoiser, "denoise_volume", real)
    assert main(["denoise", str(folder), "-o", str(out), "--model", str(tiny_model)]) == 0
    assert "1 skipped" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir() if p.name.endswith(".nii.gz")) == [
        "s0.nii.gz", "s1.nii.gz", "s2.nii.gz"]


def _three_scans(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(3):
        write_phantom(folder / f"s{k}.nii.gz", shape=(16, 16, 16), seed=k)
    return folder


@pytest.mark.parametrize("stop_at_write", [3, 4])  # the second scan's map (3) or its output (4)
def test_a_job_stopped_while_its_files_are_written_leaves_none_of_them(
        tmp_path: Path, capsys, tiny_model: Path, monkeypatch: pytest.MonkeyPatch, stop_at_write: int):
    """The map, sidecar and output are staged in temporary files and renamed together, so a stop
    while any of them is written leaves nothing of that scan and the rerun finishes it."""
    import medidiff.io
    from medidiff.denoise_cli import Terminated

    folder = _three_scans(tmp_path)
    out, spread = tmp_path / "out", tmp_path / "spread"
    real = medidiff.io.write_nifti_file
    writes = []

    def stop_at_nth_write(volume, path):
        writes.append(path)
        if len(writes) == stop_at_write:
            raise Terminated()
        return real(volume, path)

    args = ["denoise", str(folder), "-o", str(out), "--model", str(tiny_model), "--flips", "2",
            "--uncertainty", str(spread)]
    monkeypatch.setattr(medidiff.io, "write_nifti_file", stop_at_nth_write)
    assert main(args) == 143
    assert sorted(p.name for p in out.iterdir()) == ["s0.json", "s0.nii.gz"]
    assert sorted(p.name for p in spread.iterdir()) == ["s0_uncertainty.nii.gz"]
    monkeypatch.setattr(medidiff.io, "write_nifti_file", real)
    capsys.readouterr()
    assert main(args) == 0
    assert "2 denoised, 1 skipped (done before), 0 failed" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [f"s{k}.{e}" for k in range(3) for e in ("json", "nii.gz")]
    assert sorted(p.name for p in spread.iterdir()) == [f"s{k}_uncertainty.nii.gz" for k in range(3)]


def test_a_forced_rerun_stopped_while_writing_keeps_the_finished_files(
        tmp_path: Path, capsys, tiny_model: Path, monkeypatch: pytest.MonkeyPatch):
    import medidiff.io
    from medidiff.denoise_cli import Terminated

    scan = write_phantom(tmp_path / "scan.nii.gz", shape=(16, 16, 16))
    args = ["denoise", str(scan), "-o", str(tmp_path / "o.nii.gz"), "--model", str(tiny_model), "--flips", "2",
            "--uncertainty", str(tmp_path / "u.nii.gz")]
    assert main(args) == 0
    before = {p.name: _digest(p) for p in tmp_path.iterdir() if p.name != "scan.nii.gz"}
    assert sorted(before) == ["o.json", "o.nii.gz", "u.nii.gz"]
    real = medidiff.io.write_nifti_file
    written = []

    def stop_at_the_output(volume, path):  # the map is written first, the output second
        if written:
            raise Terminated()
        written.append(path)
        return real(volume, path)

    monkeypatch.setattr(medidiff.io, "write_nifti_file", stop_at_the_output)
    assert main([*args, "--force", "--seed", "1"]) == 143
    assert {p.name: _digest(p) for p in tmp_path.iterdir() if p.name != "scan.nii.gz"} == before


def test_an_output_finished_by_another_run_meanwhile_renames_nothing(
        tmp_path: Path, capsys, tiny_model: Path, monkeypatch: pytest.MonkeyPatch):
    import medidiff.io

    scan = write_phantom(tmp_path / "scan.nii.gz", shape=(16, 16, 16))
    out = tmp_path / "o.nii.gz"
    real = medidiff.io.write_nifti_file

    def another_run_finishes_first(volume, path):
        real(volume, path)
        if not out.exists():
            out.write_bytes(b"the other run's output")
            (tmp_path / "o.json").write_text('{"other": true}')

    monkeypatch.setattr(medidiff.io, "write_nifti_file", another_run_finishes_first)
    rc = main(["denoise", str(scan), "-o", str(out), "--model", str(tiny_model)])
    assert rc == 2 and "exists already" in capsys.readouterr().err
    assert out.read_bytes() == b"the other run's output"
    assert (tmp_path / "o.json").read_text() == '{"other": true}'
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]


def _leave_killed_job(out: Path, spread: Path | None, name: str = "s1") -> None:
    """What a run killed between writing a job's sidecar (and map) and its output leaves."""
    info = {"medidiff_version": "0", "output": str(out / f"{name}.nii.gz")}
    if spread is not None:
        info["uncertainty"] = str(spread / f"{name}_uncertainty.nii.gz")
        (spread / f"{name}_uncertainty.nii.gz").write_bytes(b"an unfinished map")
    (out / f"{name}.json").write_text(json.dumps(info))


def test_the_leftovers_of_a_killed_job_are_replaced_without_force(tmp_path: Path, capsys, tiny_model: Path):
    folder = _three_scans(tmp_path)
    out, spread = tmp_path / "out", tmp_path / "spread"
    out.mkdir()
    spread.mkdir()
    _leave_killed_job(out, spread)
    args = ["denoise", str(folder), "-o", str(out), "--model", str(tiny_model), "--flips", "2",
            "--uncertainty", str(spread)]
    assert main(args) == 0, capsys.readouterr().err
    assert json.loads((out / "s1.json").read_text())["medidiff_version"] != "0"
    assert nib.load(spread / "s1_uncertainty.nii.gz").shape == (16, 16, 16)
    # one scan: the same
    single = tmp_path / "single"
    single.mkdir()
    _leave_killed_job(single, None, "one")
    assert main(["denoise", str(folder / "s0.nii.gz"), "-o", str(single / "one.nii.gz"),
                 "--model", str(tiny_model)]) == 0
    assert (single / "one.nii.gz").is_file()


def test_a_deleted_output_is_denoised_again_beside_its_old_sidecar(tmp_path: Path, capsys, tiny_model: Path):
    folder = _three_scans(tmp_path)
    out = tmp_path / "out"
    args = ["denoise", str(folder), "-o", str(out), "--model", str(tiny_model)]
    assert main(args) == 0
    (out / "s1.nii.gz").unlink()
    capsys.readouterr()
    assert main(args) == 0
    assert "1 denoised, 2 skipped" in capsys.readouterr().out
    assert (out / "s1.nii.gz").is_file()


def test_json_files_medidiff_did_not_write_for_this_output_are_kept(tmp_path: Path, capsys, tiny_model: Path):
    folder = _three_scans(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    foreign = {
        "s0.json": '{"RepetitionTime": 2.0}',  # a BIDS sidecar
        "s1.json": json.dumps({"medidiff_version": "0", "output": "elsewhere/other.nii.gz"}),
        "s2.json": "not json",
    }
    for name, text in foreign.items():
        (out / name).write_text(text)
    rc = main(["denoise", str(folder), "-o", str(out), "--model", str(tiny_model)])
    assert rc == 2
    assert "0 denoised, 0 skipped (done before), 3 failed" in capsys.readouterr().out
    assert {p.name: p.read_text() for p in out.iterdir()} == foreign


def test_an_output_without_its_uncertainty_map_fails_at_once(tmp_path: Path, capsys, tiny_model: Path,
                                                            monkeypatch: pytest.MonkeyPatch):
    import medidiff.inference

    folder = _three_scans(tmp_path)
    out = tmp_path / "out"
    assert main(["denoise", str(folder), "-o", str(out), "--model", str(tiny_model)]) == 0

    def never(*args, **kwargs):
        raise AssertionError("denoised although the output exists")

    monkeypatch.setattr(medidiff.inference.Denoiser, "denoise_volume", never)
    capsys.readouterr()
    rc = main(["denoise", str(folder), "-o", str(out), "--model", str(tiny_model), "--flips", "2",
               "--uncertainty", str(tmp_path / "spread")])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.count("without the uncertainty map") == 3 and "--force" in err


def test_a_map_the_leftover_sidecar_does_not_name_is_kept(tmp_path: Path, capsys, tiny_model: Path):
    folder = _three_scans(tmp_path)
    out, spread, elsewhere = tmp_path / "out", tmp_path / "spread", tmp_path / "elsewhere"
    for d in (out, spread, elsewhere):
        d.mkdir()
    _leave_killed_job(out, elsewhere)  # the sidecar names elsewhere/s1_uncertainty.nii.gz
    (spread / "s1_uncertainty.nii.gz").write_bytes(b"someone else's file")
    rc = main(["denoise", str(folder), "-o", str(out), "--model", str(tiny_model), "--flips", "2",
               "--uncertainty", str(spread)])
    assert rc == 2 and "1 failed" in capsys.readouterr().out
    assert (spread / "s1_uncertainty.nii.gz").read_bytes() == b"someone else's file"


def test_a_relative_map_name_in_a_leftover_sidecar_is_not_taken_as_ours(tmp_path: Path, capsys, tiny_model: Path):
    scan = write_phantom(tmp_path / "scan.nii.gz", shape=(16, 16, 16))
    (tmp_path / "o.json").write_text(json.dumps({"medidiff_version": "0", "output": "o.nii.gz",
                                                 "uncertainty": "u.nii.gz"}))
    (tmp_path / "u.nii.gz").write_bytes(b"a file of the same name")
    rc = main(["denoise", str(scan), "-o", str(tmp_path / "o.nii.gz"), "--model", str(tiny_model), "--flips", "2",
               "--uncertainty", str(tmp_path / "u.nii.gz")])
    assert rc == 2 and "u.nii.gz: exists already" in capsys.readouterr().err
    assert (tmp_path / "u.nii.gz").read_bytes() == b"a file of the same name"


def test_a_rerun_without_sidecars_removes_the_leftover_sidecar(tmp_path: Path, capsys, tiny_model: Path):
    scan = write_phantom(tmp_path / "scan.nii.gz", shape=(16, 16, 16))
    _leave_killed_job(tmp_path, None, "o")
    assert main(["denoise", str(scan), "-o", str(tmp_path / "o.nii.gz"), "--model", str(tiny_model),
                 "--no-sidecar"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.nii.gz", "scan.nii.gz"]


def test_a_failure_between_the_renames_leaves_what_a_rerun_recognizes(
        tmp_path: Path, capsys, tiny_model: Path, monkeypatch: pytest.MonkeyPatch):
    """The sidecar is renamed first, so any part of a scan's files that lands comes with medidiff's
    sidecar naming the map, and the rerun replaces it without --force."""
    import medidiff.files

    scan = write_phantom(tmp_path / "scan.nii.gz", shape=(16, 16, 16))
    real = medidiff.files.os.replace
    renames = []

    def fail_at_the_second_rename(src, dst):
        renames.append(Path(dst).name)
        if len(renames) == 2:
            raise OSError(28, "No space left on device")
        return real(src, dst)

    args = ["denoise", str(scan), "-o", str(tmp_path / "o.nii.gz"), "--model", str(tiny_model), "--flips", "2",
            "--uncertainty", str(tmp_path / "u.nii.gz")]
    monkeypatch.setattr(medidiff.files.os, "replace", fail_at_the_second_rename)
    assert main(args) != 0
    assert renames == ["o.json", "u.nii.gz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.json", "scan.nii.gz"]
    monkeypatch.setattr(medidiff.files.os, "replace", real)
    assert main(args) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.json", "o.nii.gz", "scan.nii.gz", "u.nii.gz"]


def test_an_output_finished_meanwhile_leaves_a_leftover_sidecar_alone(
        tmp_path: Path, capsys, tiny_model: Path, monkeypatch: pytest.MonkeyPatch):
    import medidiff.io

    scan = write_phantom(tmp_path / "scan.nii.gz", shape=(16, 16, 16))
    out = tmp_path / "o.nii.gz"
    _leave_killed_job(tmp_path, None, "o")  # a sidecar this run may replace
    leftover = (tmp_path / "o.json").read_text()
    real = medidiff.io.write_nifti_file

    def another_run_finishes_first(volume, path):
        real(volume, path)
        out.write_bytes(b"the other run's output")

    monkeypatch.setattr(medidiff.io, "write_nifti_file", another_run_finishes_first)
    assert main(["denoise", str(scan), "-o", str(out), "--model", str(tiny_model)]) == 2
    assert (tmp_path / "o.json").read_text() == leftover and out.read_bytes() == b"the other run's output"


def test_a_forced_rerun_without_sidecars_removes_the_old_medidiff_sidecar(tmp_path: Path, capsys, tiny_model: Path):
    scan = write_phantom(tmp_path / "scan.nii.gz", shape=(16, 16, 16))
    args = ["denoise", str(scan), "-o", str(tmp_path / "o.nii.gz"), "--model", str(tiny_model)]
    assert main(args) == 0 and (tmp_path / "o.json").is_file()
    assert main([*args, "--force", "--no-sidecar", "--seed", "3"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.nii.gz", "scan.nii.gz"]
