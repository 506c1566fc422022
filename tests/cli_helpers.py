"""Checks shared by the tests that run the real ``lbm`` command (importable: tests/conftest.py puts this folder
on sys.path)."""

from __future__ import annotations

import subprocess


def assert_one_line_error(proc: subprocess.CompletedProcess[str], must_name: tuple[str, ...] | list[str]) -> str:
    """A user's mistake: non-zero exit, no traceback, exactly one ``error:`` line, the last one on stderr, naming
    every string of ``must_name``. Returns that line."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and errors[0] == proc.stderr.strip().splitlines()[-1], proc.stderr
    for text in must_name:
        assert text in errors[0], f"{text!r} not in {errors[0]!r}"
    return errors[0]
