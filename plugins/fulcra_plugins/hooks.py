"""Bundled hook plugins: a progress display and a JSON Lines metrics sink."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from fulcra.hooks import hookimpl

__all__ = ["ProgressHook", "JsonlMetricsHook"]


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    return str(value)


class ProgressHook:
    """Progress of each workflow stage: a tqdm bar when tqdm is installed and stderr is a terminal,
    else a log line at most every 5 seconds."""

    def __init__(self, min_interval: float = 5.0):
        self.min_interval = min_interval
        self._bar = None
        self._stage: str | None = None
        self._last = 0.0
        try:
            import tqdm  # noqa: F401

            self._tqdm = sys.stderr.isatty()
        except ImportError:
            self._tqdm = False

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    @hookimpl
    def fulcra_run_start(self, workflow: str, config: Mapping[str, Any], out: Path) -> None:
        print(f"[fulcra] {workflow}: writing to {out}", file=sys.stderr, flush=True)

    @hookimpl
    def fulcra_step(self, workflow, step, metrics, total, stage) -> None:
        text = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        if self._tqdm:
            if stage != self._stage or self._bar is None:
                from tqdm import tqdm

                self._close()
                self._bar = tqdm(total=total, desc=f"{workflow} {stage or ''}".strip(), leave=False)
            self._stage = stage
            self._bar.n = step
            self._bar.set_postfix_str(text, refresh=False)
            self._bar.refresh()
            return
        now = time.monotonic()
        if stage != self._stage or now - self._last >= self.min_interval or (total and step >= total):
            self._stage, self._last = stage, now
            of = f"/{total}" if total else ""
            print(
                f"[fulcra] {workflow} {stage or ''} step {step}{of} {text}".replace("  ", " "),
                file=sys.stderr,
                flush=True,
            )

    @hookimpl
    def fulcra_evaluate(self, workflow, metrics, step, stage) -> None:
        flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        if flat:
            text = " ".join(f"{k}={v:.4g}" for k, v in flat.items())
            print(f"[fulcra] {workflow} {stage or ''} eval {text}".replace("  ", " "), file=sys.stderr, flush=True)

    @hookimpl
    def fulcra_message(self, workflow, message) -> None:
        if self._bar is not None:
            self._bar.write(f"[fulcra] {workflow}: {message}", file=sys.stderr)
        else:
            print(f"[fulcra] {workflow}: {message}", file=sys.stderr, flush=True)

    @hookimpl
    def fulcra_run_end(self, workflow, results, out, error) -> None:
        self._close()
        # a failure is reported once, by whoever catches it (the CLI prints one line)
        if not error:
            print(f"[fulcra] {workflow}: done", file=sys.stderr, flush=True)


class JsonlMetricsHook:
    """Appends every event to ``OUT/metrics.jsonl``: one JSON object per line with ``event``, ``time``,
    ``workflow`` and the event's fields. Appending keeps the history of resumed runs."""

    def __init__(self, out: Path | None = None, filename: str = "metrics.jsonl"):
        self.out = Path(out) if out is not None else None
        self.filename = filename

    def _write(self, record: dict) -> None:
        if self.out is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        record = {"time": round(time.time(), 3), **record}
        with open(self.out / self.filename, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(_jsonable(record)) + "\n")

    @hookimpl
    def fulcra_run_start(self, workflow, config, out) -> None:
        self.out = self.out or Path(out)
        self._write({"event": "start", "workflow": workflow, "config": config})

    @hookimpl
    def fulcra_step(self, workflow, step, metrics, total, stage) -> None:
        self._write({"event": "step", "workflow": workflow, "stage": stage, "step": step, "total": total, **metrics})

    @hookimpl
    def fulcra_evaluate(self, workflow, metrics, step, stage) -> None:
        self._write({"event": "evaluate", "workflow": workflow, "stage": stage, "step": step, "metrics": metrics})

    @hookimpl
    def fulcra_checkpoint_saved(self, workflow, path, step) -> None:
        self._write({"event": "checkpoint", "workflow": workflow, "path": str(path), "step": step})

    @hookimpl
    def fulcra_message(self, workflow, message) -> None:
        self._write({"event": "message", "workflow": workflow, "message": message})

    @hookimpl
    def fulcra_run_end(self, workflow, results, out, error) -> None:
        self._write({"event": "end", "workflow": workflow, "error": error, "results": results})
