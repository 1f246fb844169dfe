"""Runs that know what they computed: each stage of a workflow records a fingerprint of what it
depends on (its configuration and input files), so a rerun into the same ``out=`` reuses a stage only
when nothing it depends on changed.

A stage's record lives in ``OUT/.fulcra/stages/<name>.json``::

    {"fingerprint": "…", "inputs": {...}, "complete": false|true}

* no record, or another fingerprint: the stage's files are removed (its partial checkpoints too)
  and it is recomputed; the message names the keys that changed;
* the same fingerprint, not complete: a run killed inside the stage, so its own checkpoints are
  valid and it resumes;
* the same fingerprint, complete: reused.

``complete`` is written atomically after the stage's outputs, so a killed stage never looks finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .core import atomic_write_text

__all__ = ["Stage", "file_identity", "fingerprint"]


def file_identity(path: str | os.PathLike) -> dict:
    """What a stage depends on in a file or folder: path, size and modification time of every file
    (content hashing whole datasets would cost more than most stages)."""
    p = Path(path).expanduser()
    if p.is_dir():
        files = sorted(q for q in p.rglob("*") if q.is_file())
        return {
            "path": str(p.resolve()),
            "files": [[str(q.relative_to(p)), q.stat().st_size, q.stat().st_mtime_ns] for q in files],
        }
    if p.is_file():
        st = p.stat()
        return {"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return {"path": str(p), "missing": True}


def _canonical(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return repr(value)


def fingerprint(inputs: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``inputs`` (keys sorted)."""
    return hashlib.sha256(json.dumps(_canonical(inputs), sort_keys=True).encode()).hexdigest()


def _flat(value: Any, prefix: str = "") -> dict:
    if isinstance(value, Mapping):
        out: dict = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def _changes(old: Mapping, new: Mapping, limit: int = 4) -> str:
    a, b = _flat(_canonical(old)), _flat(_canonical(new))
    keys = sorted(k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>"))

    def show(v: Any) -> str:
        text = json.dumps(v) if not isinstance(v, str) else v
        return text if len(text) <= 40 else text[:37] + "..."

    parts = [f"{k} {show(a.get(k, '<unset>'))} -> {show(b.get(k, '<unset>'))}" for k in keys[:limit]]
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(parts) + more if parts else "inputs changed"


class Stage:
    """One fingerprinted stage of a run.

    Args:
        out: the run folder.
        name: the stage's name (``search``, ``eval/slack``); ``/`` makes sub-folders of the record.
        inputs: what the stage's result depends on: config values and :func:`file_identity` of files.
        paths: the files and folders the stage writes (removed when its inputs changed).
        message: where the one-line note goes (``ctx.hooks.message``); None prints nothing.

    Use::

        stage = Stage(out, "search", {"optimizer": ..., "data": ...}, [out / "search", out / "policy.json"], ctx.hooks.message)
        if not stage.begin():      # False: nothing to do, the stored result is valid
            ...compute, write outputs...
            stage.complete()
    """

    def __init__(
        self,
        out: str | os.PathLike,
        name: str,
        inputs: Mapping[str, Any],
        paths: Iterable[str | os.PathLike] = (),
        message: Callable[[str], None] | None = None,
        writer: bool = True,
    ):
        self.out = Path(out)
        self.name = name
        self.inputs = _canonical(inputs)
        self.paths = [Path(p) for p in paths]
        self.fingerprint = fingerprint(self.inputs)
        self.record_path = self.out / ".fulcra" / "stages" / f"{name}.json"
        self._message = message
        self.writer = writer  # False on non-zero ranks: they read the decision, never delete or write

    def _say(self, text: str) -> None:
        if self._message is not None:
            self._message(text)

    def record(self) -> dict | None:
        try:
            return json.loads(self.record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    @property
    def is_complete(self) -> bool:
        rec = self.record()
        return bool(rec and rec.get("fingerprint") == self.fingerprint and rec.get("complete"))

    def begin(self) -> bool:
        """Decide: returns False when the stage is complete with the same inputs (reuse it), True when
        it must run (fresh, resumed or recomputed; stale outputs are removed first)."""
        rec = self.record()
        if rec and rec.get("fingerprint") == self.fingerprint:
            if rec.get("complete"):
                self._say(f"reusing {self.name} (same inputs as the stored result)")
                return False
            self._say(f"resuming {self.name} (interrupted with the same inputs)")
            return True
        stale = [p for p in self.paths if p.exists()]
        if rec is not None:
            self._say(f"recomputing {self.name}: {_changes(rec.get('inputs', {}), self.inputs)}")
        elif stale:
            self._say(f"recomputing {self.name}: its outputs carry no fingerprint")
        if self.writer:
            for p in stale:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
            self._write(False)
        return True

    def complete(self) -> None:
        """Mark the stage finished (atomically, after its outputs are on disk)."""
        if self.writer:
            self._write(True)

    def _write(self, complete: bool) -> None:
        self.record_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            json.dumps({"fingerprint": self.fingerprint, "inputs": self.inputs, "complete": complete}, indent=1),
            self.record_path,
        )
