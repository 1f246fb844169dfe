"""Run a workflow from a recipe or config file with overrides: what ``fulcra run`` does."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from omegaconf import OmegaConf

from . import config as _config
from . import registry
from .engine import dist
from .engine.core import atomic_write_text, seed_everything, select_device
from .errors import ConfigError
from .hooks import make_hook_relay
from .interfaces import CheckedWorkflow, RunContext

__all__ = ["prepare", "run", "DEFAULT_HOOKS"]

DEFAULT_HOOKS = ("progress", "jsonl")


def prepare(source: str | Mapping | None, overrides: Iterable[str] = ()) -> tuple[str, Any, dict]:
    """Resolve and validate a run config without running it: (workflow, workflow config, common keys)."""
    raw = _config.load_run_config(source, overrides)
    return _config.resolve_run_config(raw)


def _default_out(source: Any, workflow: str) -> Path:
    label = (
        source if isinstance(source, str) and "/" not in source and not source.endswith((".yaml", ".yml")) else workflow
    )
    return Path("runs") / f"{Path(str(label)).stem}"


def _out_dir(common: Mapping, source: Any, workflow: str) -> Path:
    """The run folder: ``out=`` (a path) or ``runs/<recipe>``; a folder holding another workflow's run
    is refused, so that one run never overwrites another's results."""
    if "out" in common and not isinstance(common["out"], (str, Path)):
        raise ConfigError(f"key 'out': expected a folder path, got {common['out']!r}")
    out = Path(common.get("out") or _default_out(source, workflow)).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"key 'out': {out} exists and is not a folder")
    if not out.exists():  # it will be created: its nearest existing parent must be a writable folder
        parent = next(p for p in out.absolute().parents if p.exists())
        try:  # a probe folder, removed at once (os.access says yes to root even on /proc)
            os.rmdir(tempfile.mkdtemp(prefix=".fulcra-probe-", dir=parent))
        except OSError as exc:
            raise ConfigError(
                f"key 'out': cannot create {out}: {parent} is not a writable folder ({exc.strerror})"
            ) from None
    previous = out / "config.yaml"
    if previous.is_file():
        try:
            import yaml

            other = (yaml.safe_load(previous.read_text(encoding="utf-8")) or {}).get("workflow")
        except Exception:  # an unreadable config.yaml is not a reason to refuse
            other = None
        if other and other != workflow:
            raise ConfigError(
                f"key 'out': {out} holds a {other!r} run (config.yaml); choose another out= "
                f"for this {workflow!r} run, or delete that folder"
            )
    return out


def run(source: str | Mapping | None, overrides: Iterable[str] = (), *, hooks: Iterable[Any] | None = None) -> dict:
    """Run a recipe (name in ``registry.yaml``) or a config (YAML path or mapping) with overrides.

    Common keys: ``out`` (output directory, also the resume point), ``seed`` (default 0), ``device``
    (``auto``/``cpu``/``cuda``), ``hooks`` (hook plugin names; default progress + jsonl).
    Returns the workflow's results dict. Under ``torchrun`` every rank runs this; only rank 0 reports.
    """
    name, cfg, common = prepare(source, overrides)
    out = _out_dir(common, source, name)
    seed = common.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"key 'seed': expected an integer, got {seed!r}")
    dist.init_distributed()
    device = select_device(common.get("device", "auto"))
    hook_names = list(common.get("hooks", DEFAULT_HOOKS)) if hooks is None else list(hooks)
    relay = make_hook_relay(hook_names, workflow=name, out=out, enabled=dist.rank() == 0)
    workflow = registry.load_plugin("workflows", name)(cfg)
    if isinstance(workflow, CheckedWorkflow):
        workflow.check()  # inputs validated before out= exists: a bad input leaves nothing behind
    if dist.rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        resolved = {
            "workflow": name,
            "out": str(out),
            "seed": seed,
            "device": str(device),
            **OmegaConf.to_container(cfg, resolve=True),
        }
        atomic_write_text(_config.to_yaml(resolved), out / "config.yaml")
    dist.barrier()
    seed_everything(seed)
    ctx = RunContext(out=out, device=device, hooks=relay, seed=seed, rank=dist.rank(), world_size=dist.world_size())
    relay.start(config=OmegaConf.to_container(cfg, resolve=True), out=out)
    t0 = time.time()
    try:
        results = workflow.run(ctx) or {}
    except BaseException as exc:
        relay.end(results={}, out=out, error=f"{type(exc).__name__}: {exc}")
        raise
    results = dict(results)
    relay.end(results=results, out=out, error=None)
    if dist.rank() == 0:
        summary = {"workflow": name, "seconds": round(time.time() - t0, 2)}
        atomic_write_text(json.dumps(summary, indent=2), out / "run.json")
    return results
