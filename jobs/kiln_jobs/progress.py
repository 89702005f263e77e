"""Progress of a job: a bar in the logs for people, one JSON line per update for the operator.

Every long stage reports through a `ProgressLog`. Each update

- moves a tqdm bar on stderr (the pod log a person reads);
- prints one line on stdout, exactly::

      {"kiln_progress": {"stage": "qat", "percent": 42.0, "message": "qat: step 21/50"}}

  (keys: `stage` a short stage name, `percent` 0-100 within that stage, `message` free text; the
  object is `kiln_jobs.manifest.Progress`). The operator tails the pod log and parses these lines
  with `parse_progress_line`; any other output on stdout is not JSON with that key and is ignored;
- rewrites the progress file (`--progress-file`), atomically, with the latest `Progress` as JSON.

Lines and file writes are throttled to one per `min_interval` seconds per stage; a stage's first
update, its 100% and the last update before it closes are always written, so a reader never misses
where a stage started or ended.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TextIO

from tqdm import tqdm

from kiln_jobs.manifest import Progress

__all__ = ["PROGRESS_KEY", "ProgressLog", "StageProgress", "parse_progress_line"]

PROGRESS_KEY = "kiln_progress"
# Weight of a stage the run did not announce (see `ProgressLog.expect`).
UNPLANNED_WEIGHT = 5.0
_MARKER = '{"' + PROGRESS_KEY + '"'
_DECODER = json.JSONDecoder()


class ProgressLog:
    """Where a run's progress goes: log bars, stdout JSON lines and the progress file."""

    def __init__(
        self,
        progress_file: Path | None = None,
        *,
        stream: TextIO | None = None,
        min_interval: float = 2.0,
        bars: bool = True,
        lines: bool = True,
    ) -> None:
        """Args:
        progress_file: Rewritten with the latest update; None writes no file.
        stream: Where the JSON lines go (default: stdout at the time of writing).
        min_interval: Seconds between two written updates of the same stage.
        bars: Draw tqdm bars on stderr.
        lines: Print the JSON progress lines on stdout.
        """
        self.progress_file = progress_file
        self._stream = stream
        self.min_interval = min_interval
        self.bars = bars
        # The JSON lines are for the operator reading a pod's log; a person at a terminal
        # (`kiln run`) reads the bars.
        self.lines = lines
        self.latest: Progress | None = None
        self._weights: dict[str, float] = {}
        self._total = 0.0
        self._done = 0.0
        self._overall = 0.0

    def expect(self, stages: Sequence[tuple[str, float]]) -> None:
        """The stages the run plans, with their relative weights, so updates carry an overall
        percent. Stages not announced here (an escalation attempt) count with weight
        `UNPLANNED_WEIGHT` and stretch the total as they come."""
        self._weights = dict(stages)
        self._total = sum(self._weights.values())

    def overall(self, stage: str, percent: float) -> float | None:
        """Percent of the whole run, given a stage's own percent; None without a plan."""
        if not self._total:
            return None
        weight = self._weights.get(stage, UNPLANNED_WEIGHT)
        total = max(self._total, self._done + weight)
        value = 100.0 * (self._done + weight * percent / 100.0) / total
        self._overall = max(self._overall, min(value, 100.0))
        return round(self._overall, 1)

    def finished(self, stage: str) -> None:
        """Count a finished stage's weight as done."""
        if self._total:
            self._done += self._weights.get(stage, UNPLANNED_WEIGHT)
            self._total = max(self._total, self._done)

    def stage(self, name: str) -> StageProgress:
        """Progress of one stage; use as a context manager, call it with (percent, message)."""
        return StageProgress(self, name)

    def write(self, update: Progress) -> None:
        """Publish one update now: a stdout line and the progress file."""
        self.latest = update
        if self.lines:
            stream = self._stream or sys.stdout
            body = update.model_dump(mode="json", exclude_none=True)
            line = json.dumps({PROGRESS_KEY: body}, separators=(",", ":"))
            stream.write(line + "\n")
            stream.flush()
        if self.progress_file is not None:
            _write_atomically(self.progress_file, update.model_dump_json())


class StageProgress:
    """A `ProgressReporter` (see `techniques.context`) for one stage."""

    def __init__(self, log: ProgressLog, name: str) -> None:
        self.log = log
        self.name = name
        self._bar: tqdm | None = None
        self._last_written = float("-inf")
        self._pending: Progress | None = None

    def __enter__(self) -> StageProgress:
        self._bar = tqdm(
            total=100,
            desc=self.name,
            unit="%",
            file=sys.stderr,
            disable=not self.log.bars,
            mininterval=1.0,
            bar_format="{desc}: {percentage:3.0f}%|{bar:30}| {elapsed} {postfix}",
        )
        self(0.0, f"{self.name}: started")
        return self

    def __call__(self, percent: float, message: str = "") -> None:
        """Record that the stage is `percent` done; written now or at the next chance."""
        percent = min(max(float(percent), 0.0), 100.0)
        update = Progress(
            stage=self.name,
            percent=round(percent, 1),
            message=message,
            overall=self.log.overall(self.name, percent),
        )
        if self._bar is not None:
            self._bar.n = percent
            self._bar.set_postfix_str(message[-60:], refresh=False)
            self._bar.refresh()
        now = time.monotonic()
        if percent >= 100.0 or now - self._last_written >= self.log.min_interval:
            self._emit(update, now)
        else:
            self._pending = update

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._pending is not None:
            self._emit(self._pending, time.monotonic())
        if self._bar is not None:
            self._bar.close()
        self.log.finished(self.name)

    def _emit(self, update: Progress, now: float) -> None:
        self.log.write(update)
        self._last_written = now
        self._pending = None


def parse_progress_line(line: str) -> Progress | None:
    """The `Progress` a log line carries, or None for any other line.

    The JSON object may follow other text on the same line: where stdout and stderr share one
    stream (a terminal, `2>&1`), a progress bar's carriage-return output can precede it.
    """
    start = line.find(_MARKER)
    if start < 0:
        return None
    try:
        body, _ = _DECODER.raw_decode(line, start)
        return Progress.model_validate(body[PROGRESS_KEY])
    except (ValueError, KeyError, TypeError):
        return None


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)
