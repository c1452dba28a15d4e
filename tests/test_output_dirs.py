"""Output directories: only what simserve can prove it wrote is replaced, a second writer is
refused, faults (full disk, unwritable folders, SIGTERM, SIGKILL) leave nothing half-written
and nothing behind, and permissions follow the user's umask."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_sweep import tiny_base

from simserve.cli import _on_sigterm, main
from simserve.errors import InputError
from simserve.experiments.atomic import (
    MARKER,
    OutputKind,
    check_writable_dir,
    claim_output_dir,
    sweep_stale_temporaries,
    write_dir_atomically,
    write_file_atomically,
)

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--set", "workload.num_requests=40", "--set", "metrics.warmup_s=0",
         "--set", "metrics.cooldown_s=0"]
KIND = OutputKind("test directory")


def _run(out: Path, *extra: str) -> int:
    return main(["run", str(ROOT / "scenarios" / "default.yaml"), "--out", str(out), *SMALL,
                 *extra])


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _fill(text: str):
    def write(tmp: Path) -> None:
        (tmp / "a.txt").write_text(text)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text(text * 2)

    return write


# --------------------------------------------------------------------------- ownership


def test_a_benchmark_directory_with_a_summary_json_is_never_touched(tmp_path, capsys):
    # The defect: any summary.json made a directory "a run directory" and it was deleted.
    real = tmp_path / "real-benchmark"
    real.mkdir()
    (real / "summary.json").write_text('{"mean_ttft_ms": 12.0}')
    (real / "notes.md").write_text("my notes")
    assert _run(real) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refusing to overwrite" in err and str(real) in err
    assert sorted(p.name for p in real.iterdir()) == ["notes.md", "summary.json"]
    # Not even a lone summary.json (the four files an older simserve wrote are needed).
    (real / "notes.md").unlink()
    assert _run(real) == 2
    assert (real / "summary.json").read_text() == '{"mean_ttft_ms": 12.0}'


def test_a_run_directory_is_replaced_only_while_it_holds_exactly_what_simserve_wrote(
        tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(out) == 0
    marker = json.loads((out / MARKER).read_text())
    assert set(marker["files"]) == {"requests.csv", "scenario.yaml", "steps.csv",
                                    "summary.json"}
    assert marker["kind"] == "run directory"
    assert _run(out, "--seed", "3") == 0  # ours: replaced
    assert json.loads((out / "summary.json").read_text())["seed"] == 3
    (out / "notes.txt").write_text("added by the user")
    assert _run(out) == 2
    assert "notes.txt" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "added by the user"
    (out / "notes.txt").unlink()
    with (out / "summary.json").open("a") as fh:
        fh.write("\n")  # edited by the user
    assert _run(out) == 2
    assert "changed since simserve wrote them (summary.json)" in capsys.readouterr().err
    assert _hidden(tmp_path) == []


def test_an_older_simserve_run_directory_without_a_marker_is_still_replaced(tmp_path):
    out = tmp_path / "old"
    assert _run(out) == 0
    (out / MARKER).unlink()
    assert _run(out, "--plots") == 0
    assert (out / MARKER).is_file() and (out / "ttft_cdf.png").is_file()


def test_another_kind_of_simserve_directory_is_refused(tmp_path):
    out = tmp_path / "d"
    write_dir_atomically(out, _fill("x"), KIND)
    with pytest.raises(InputError, match="is a simserve test directory, not a run directory"):
        _run_raise(out)


def _run_raise(out: Path) -> None:
    from simserve.experiments.run import RUN_DIR

    with claim_output_dir(out, RUN_DIR):
        pass


def test_write_dir_atomically_records_folders_and_sizes(tmp_path):
    out = tmp_path / "d"
    write_dir_atomically(out, _fill("x"), KIND)
    marker = json.loads((out / MARKER).read_text())
    assert marker["files"] == {"a.txt": 1, "sub/b.txt": 2} and marker["folders"] == ["sub"]
    write_dir_atomically(out, _fill("yy"), KIND)
    assert (out / "sub" / "b.txt").read_text() == "yyyy"
    (out / "sub" / "extra").mkdir()
    with pytest.raises(InputError, match=r"did not write \(sub/extra\)"):
        write_dir_atomically(out, _fill("z"), KIND)


# --------------------------------------------------------------------------- unwritable


@pytest.mark.parametrize("case", ["file", "under_a_file", "cwd", "parent_of_cwd", "symlink"])
def test_unusable_out_paths_are_one_line_errors_before_simulating(tmp_path, monkeypatch,
                                                                  capsys, case):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "work").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "work")
    out = {"file": "a_file", "under_a_file": "a_file/run", "cwd": ".",
           "parent_of_cwd": "..", "symlink": "link"}[case]
    t0 = time.perf_counter()
    code = main(["run", "--out", out, *SMALL])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "--out" in err
    assert time.perf_counter() - t0 < 5
    assert (tmp_path / "a_file").read_text() == "x"


def test_read_only_folder_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    locked = tmp_path / "ro"
    locked.mkdir()
    if os.geteuid() == 0:
        # root writes through permission bits: the file system's refusal is simulated.
        real_open = os.open

        def refuse(path, *args, **kwargs):
            if str(path).startswith(str(locked)):
                raise OSError(errno.EROFS, "Read-only file system", str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", refuse)
    else:
        locked.chmod(0o555)
    for command in (["run", "--out", str(locked / "run"), *SMALL],
                    ["antipatterns", "--size", "tiny", "--only", "BF1", "--out",
                     str(locked / "ap")],
                    ["casestudy", "specdec", "--quick", "--out", str(locked / "cs")],
                    ["capacity", str(ROOT / "scenarios" / "default.yaml"), "--slo", "sarathi",
                     "--out", str(locked / "cap")]):
        t0 = time.perf_counter()
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert err.startswith("simserve: error: ") and err.count("\n") == 1, err
        assert "cannot write here" in err
        assert time.perf_counter() - t0 < 5  # refused before simulating
    locked.chmod(0o755)
    assert list(locked.iterdir()) == []


SUBCOMMANDS_WRITING = {
    "run": ["run", "--out", "{out}", *SMALL],
    "sweep": ["sweep", str(ROOT / "scenarios" / "sweeps" / "01_policy_x_rate.yaml"), "--out",
              "{out}", "--jobs", "1"],
    "capacity": ["capacity", str(ROOT / "scenarios" / "default.yaml"), "--slo", "sarathi",
                 "--out", "{out}"],
    "plot": ["plot", "{sweep}", "--out", "{out}"],
    "calibrate": ["calibrate", str(ROOT / "calibration" / "data" / "splitwise" / "perf_model.csv"),
                  "--out", "{out}"],
    "derive-profile": ["derive-profile", "a100-80gb-sxm_opt-13b_tp1_vllm", "--model",
                       "llama-2-13b", "--out", "{out}"],
    "validate": ["validate", "--out-dir", "{out}"],
    "antipatterns": ["antipatterns", "--size", "tiny", "--only", "BF1", "--out", "{out}"],
    "casestudy": ["casestudy", "specdec", "--quick", "--out", "{out}"],
}


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS_WRITING))
def test_every_writing_subcommand_refuses_an_unwritable_place_in_one_line(tmp_path, capsys,
                                                                         command):
    # The defect: each of these gave a traceback, some after up to 24 s of simulation.
    (tmp_path / "a_file").write_text("x")
    sweep = tmp_path / "sweep"
    if command == "plot":  # a finished tiny sweep to draw
        (tmp_path / "base.yaml").write_text(tiny_base(20))
        (tmp_path / "spec.yaml").write_text("name: s\nbase: base.yaml\ngrid:\n"
                                            "  workload.arrival.rate: [5, 10]\n")
        assert main(["sweep", str(tmp_path / "spec.yaml"), "--out", str(sweep), "--jobs", "1",
                     "--no-progress"]) == 0
        capsys.readouterr()
    out = tmp_path / "a_file" / "out"
    args = [a.format(out=out, sweep=sweep) for a in SUBCOMMANDS_WRITING[command]]
    t0 = time.perf_counter()
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "a file is in the way" in err, err
    assert time.perf_counter() - t0 < 10
    assert (tmp_path / "a_file").read_text() == "x"


def test_a_full_disk_during_the_write_keeps_the_old_directory(tmp_path):
    out = tmp_path / "d"
    write_dir_atomically(out, _fill("old"), KIND)

    def fill_until_full(tmp: Path) -> None:
        (tmp / "a.txt").write_text("new")
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "b.txt"))

    with pytest.raises(InputError, match="cannot write here: No space left on device"):
        write_dir_atomically(out, fill_until_full, KIND)
    assert (out / "a.txt").read_text() == "old"
    assert _hidden(tmp_path) == []


def test_full_standard_output_is_one_line_and_exit_2(tmp_path):
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "simserve", "check",
                               str(ROOT / "scenarios" / "evaluations" / "clean.yaml")],
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("simserve: error: cannot write to standard output")
    assert done.stderr.count("\n") == 1


def test_check_writable_dir_creates_nothing_and_write_file_atomically(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="--out-dir: cannot write here"):
        check_writable_dir(tmp_path / "f" / "sub", "--out-dir")
    folder = check_writable_dir(tmp_path / "new" / "deeper")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]
    folder.mkdir(parents=True)
    write_file_atomically(folder / "r.md", "hello")
    assert (folder / "r.md").read_text() == "hello" and _hidden(folder) == []


def test_a_failed_claim_leaves_no_folders(tmp_path):
    with pytest.raises(RuntimeError), claim_output_dir(tmp_path / "a" / "b" / "run"):
        raise RuntimeError("bad input found after the claim")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- faults


def test_stale_temporaries_of_dead_processes_are_cleared_by_pid(tmp_path):
    host = socket.gethostname()
    dead, alive = _dead_pid(), os.getpid()
    stale_tmp = tmp_path / f".run.tmp-{host}-{dead}-0123abcd"
    live_tmp = tmp_path / f".run.tmp-{host}-{alive}-89abcdef"
    other_host = tmp_path / f".run.tmp-elsewhere-{dead}-0123abcd"
    stale_file = tmp_path / f".summary.csv.tmp-{host}-{dead}-0a1b2c3d"
    users_file = tmp_path / f".notes.tmp-{dead}"  # not a simserve name: never touched
    replaced = tmp_path / f".gone.old-{host}-{dead}-0123abcd"  # killed between the renames
    for folder in (stale_tmp, live_tmp, other_host, replaced):
        folder.mkdir()
    (replaced / "summary.json").write_text("{}")
    stale_file.write_text("half")
    users_file.write_text("mine")
    (tmp_path / "kept").mkdir()
    removed = sweep_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted([stale_tmp.name, stale_file.name])
    assert live_tmp.is_dir() and other_host.is_dir() and (tmp_path / "kept").is_dir()
    assert users_file.read_text() == "mine"
    assert (tmp_path / "gone" / "summary.json").is_file()  # put back, not deleted


def test_sigterm_during_a_write_removes_the_temporary_directory(tmp_path):
    previous = signal.signal(signal.SIGTERM, _on_sigterm(os.getpid()))
    try:
        def killed(tmp: Path) -> None:
            (tmp / "a.txt").write_text("x")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends

        with pytest.raises(KeyboardInterrupt):
            write_dir_atomically(tmp_path / "d", killed, KIND)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert list(tmp_path.iterdir()) == []


def _simserve(args: list[str], cwd: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "simserve", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)


def _wait_for(path: Path, process: subprocess.Popen, timeout_s: float = 60) -> None:
    t0 = time.monotonic()
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() - t0 < timeout_s
        time.sleep(0.01)


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_killed_run_leaves_nothing_and_the_next_run_succeeds(tmp_path, how):
    out = tmp_path / "runs" / "big"
    # Long enough to be killed mid-simulation (the lock file appears before it starts).
    args = ["run", "--out", str(out), "--set", "workload.num_requests=200000"]
    process = _simserve(args, tmp_path)
    _wait_for(out.parent / ".big.lock", process)
    process.send_signal(getattr(signal, how))
    _stdout, stderr = process.communicate(timeout=60)
    if how == "SIGTERM":
        # The one line before it says which trace the run read.
        lines = stderr.strip().splitlines()
        assert process.returncode == 143 and lines[-1] == "simserve: terminated", stderr
        assert all(line.startswith("simserve: trace: ") for line in lines[:-1]), stderr
        assert not out.parent.exists()  # nothing left, not even the runs/ it created
    else:
        assert process.returncode == -signal.SIGKILL
    assert _run(out) == 0  # a stale lock of a killed process does not block the next run
    assert _hidden(out.parent) == []


# --------------------------------------------------------------------------- concurrency


def _writer(out: str, index: int, rounds: int, results) -> None:
    outcome = []
    for round_ in range(rounds):
        def fill(tmp: Path, tag: str = f"{index}-{round_}") -> None:
            for k in range(5):
                (tmp / f"f{k}.txt").write_text(tag)

        try:
            write_dir_atomically(out, fill, KIND)
            outcome.append("wrote")
        except InputError as exc:
            assert "another simserve process" in exc.message, exc.message
            outcome.append("refused")
    results.put(outcome)


def test_concurrent_writers_to_one_directory_never_crash_or_mix(tmp_path):
    # The defect: a race in the writer crashed once in 300 tries ("Directory not empty").
    out = str(tmp_path / "shared")
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    writers = [context.Process(target=_writer, args=(out, i, 40, results)) for i in range(6)]
    for w in writers:
        w.start()
    outcomes = [results.get(timeout=120) for _ in writers]
    for w in writers:
        w.join(timeout=60)
        assert w.exitcode == 0
    flat = [o for outcome in outcomes for o in outcome]
    assert len(flat) == 240 and flat.count("wrote") >= 6
    tags = {(Path(out) / f"f{k}.txt").read_text() for k in range(5)}
    assert len(tags) == 1  # one writer's whole directory, never a mix
    assert _hidden(tmp_path) == []


def test_two_runs_into_one_out_one_is_refused_or_both_finish(tmp_path):
    out = tmp_path / "same"
    args = ["run", "--out", str(out), "--set", "workload.num_requests=3000"]
    processes = [_simserve(args, tmp_path) for _ in range(4)]
    results = [(p.wait(timeout=120), p.communicate()[1]) for p in processes]
    for code, stderr in results:
        assert "Traceback" not in stderr
        assert code == 0 or (code == 2 and "another simserve process" in stderr
                             and stderr.count("\n") == 1), stderr
    assert any(code == 0 for code, _ in results)
    assert json.loads((out / MARKER).read_text())["kind"] == "run directory"
    assert _hidden(tmp_path) == []


# --------------------------------------------------------------------------- permissions


def test_run_directories_follow_the_umask(tmp_path):
    for umask, mode in ((0o022, 0o755), (0o077, 0o700), (0o002, 0o775)):
        previous = os.umask(umask)
        try:
            out = tmp_path / f"u{umask:o}"
            assert _run(out) == 0
        finally:
            os.umask(previous)
        assert out.stat().st_mode & 0o777 == mode
        assert (out / "summary.json").stat().st_mode & 0o777 == mode & 0o666


@pytest.mark.parametrize("command", sorted(set(SUBCOMMANDS_WRITING) - {"plot"}))
def test_an_empty_out_is_refused_not_taken_for_the_default(tmp_path, monkeypatch, capsys,
                                                          command):
    # The defect: `--out ''` was read as "no --out": a run went to runs/NAME, and `calibrate`
    # rewrote the shipped profiles in calibration/profiles/.
    monkeypatch.chdir(tmp_path)
    args = [a.format(out="", sweep="") for a in SUBCOMMANDS_WRITING[command]]
    t0 = time.perf_counter()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("simserve: error: ") and err.count("\n") == 1, err
    assert "--out" in err
    assert time.perf_counter() - t0 < 10
    assert list(tmp_path.iterdir()) == []
