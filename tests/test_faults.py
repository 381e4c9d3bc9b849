"""run_command says a fault of the machine in one line and lets every other error keep its traceback."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from vae.errors import run_command
from vae.faults import Rerun, describe, human_size, name_the_file


def test_a_full_disk_is_one_line_with_the_file_free_space_and_the_rerun(tmp_path: Path, capsys) -> None:
    def main() -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "models" / "vae.pth"))

    with pytest.raises(SystemExit) as stopped:
        run_command("train", main, Rerun(resume=lambda: "it resumes after epoch 3"))
    assert stopped.value.code == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"train: error: no space left on the disk writing {tmp_path / 'models' / 'vae.pth'} (")
    assert line.endswith(" free): free space, then rerun `dvc repro`: it resumes after epoch 3")


def test_a_bug_keeps_its_traceback_and_a_bare_permission_error_on_no_file_is_no_fault() -> None:
    def main() -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        run_command("train", main)
    assert describe(PermissionError(errno.EACCES, "Permission denied"), Rerun()) is None  # which file? a bug


def test_the_file_a_fault_names_is_the_one_being_written_not_its_temporary(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    cause = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / ".metrics.json.abc123.tmp"))
    wrapped = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 9408 vs 9360")
    wrapped.__context__ = cause
    name_the_file(wrapped, target)
    assert cause.filename == str(target)
    assert human_size(0) == "0 bytes" and human_size(8192) == "8 KB" and human_size(3_400_000) == "3.4 MB"
