"""What a compile produced, however it was made (passes run, or served from the cache)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import EXIT_OK
from .report_text import summary


@dataclass
class CompileResult:
    """What a compile produced: its verdict, where it wrote, and the full report."""

    exit_code: int
    output_dir: Path
    report: dict[str, Any]

    @property
    def passed(self) -> bool:
        return self.exit_code == EXIT_OK

    @property
    def artifact(self) -> Path:
        return self.output_dir / self.report["build"]["artifact"]

    def summary(self) -> str:
        """A few lines for a terminal."""
        return summary(self.report)
