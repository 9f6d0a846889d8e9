"""The code stays clean: ruff's lint and format checks, configured in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys

from helpers import ROOT


def test_ruff_check_and_format_are_clean():
    for args in (["check", "."], ["format", "--check", "."]):
        done = subprocess.run(
            [sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr
