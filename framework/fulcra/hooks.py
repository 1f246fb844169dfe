"""Lifecycle hooks (pluggy). Observers of workflow events: logging, progress, metrics sinks, checkpoint
callbacks. Hooks never find components (the registry does) and never change results.

A hook plugin is an object or class with methods named like the hookspecs below, decorated with
:data:`hookimpl`. It is discovered through the entry-point group ``fulcra.hooks`` and enabled by name
in a run config (``hooks: [progress, jsonl]``, or ``module:attr``). A method whose name starts with
``fulcra_`` but matches no hookspec is an error at registration (pluggy's ``check_pending``), so a
misspelt hook never silently does nothing.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Iterable, Mapping

import pluggy

from .errors import ConfigError, PluginLoadError

__all__ = ["hookspec", "hookimpl", "HookSpecs", "HookRelay", "make_hook_relay"]

hookspec = pluggy.HookspecMarker("fulcra")
hookimpl = pluggy.HookimplMarker("fulcra")


class HookSpecs:
    """The events a workflow emits, in order: start, (step | evaluate | checkpoint)*, end."""

    @hookspec
    def fulcra_run_start(self, workflow: str, config: Mapping[str, Any], out: Path) -> None:
        """A workflow run starts.

        Args:
            workflow: the workflow's plugin name (``search``, ``distill``, ``uplift``, ...).
            config: the resolved run config (plain containers).
            out: the output directory of the run (exists).
        """

    @hookspec
    def fulcra_step(
        self, workflow: str, step: int, metrics: Mapping[str, float], total: int | None, stage: str | None
    ) -> None:
        """One optimisation or processing step finished.

        Args:
            step: 1-based step index within ``stage``.
            metrics: scalar metrics of the step (loss, lr, ...), floats.
            total: the number of steps the stage will take, when known.
            stage: a label of the current phase (``pretrain``, ``round 2``, ``probe``, ...), or None.
        """

    @hookspec
    def fulcra_evaluate(self, workflow: str, metrics: Mapping[str, Any], step: int | None, stage: str | None) -> None:
        """An evaluation finished. ``metrics`` holds floats or small nested dicts (per-seed results)."""

    @hookspec
    def fulcra_checkpoint_saved(self, workflow: str, path: Path, step: int | None) -> None:
        """A checkpoint was written atomically at ``path`` (complete on disk when called)."""

    @hookspec
    def fulcra_message(self, workflow: str, message: str) -> None:
        """A one-line note for the person running the workflow: a stage reused or recomputed (and
        why), an optional step skipped because a plugin lacks an optional interface, a warning about
        the inputs. ``message`` has no trailing newline."""

    @hookspec
    def fulcra_run_end(self, workflow: str, results: Mapping[str, Any], out: Path, error: str | None) -> None:
        """The run ended; ``error`` is the one-line cause when it failed, else None."""


class HookRelay:
    """What a workflow calls: ``ctx.hooks.step(step=3, metrics={...})``. Wraps a pluggy manager and
    fills in the workflow name; safe to use with no hook plugin registered."""

    def __init__(self, pm: pluggy.PluginManager, workflow: str = "", enabled: bool = True):
        self.pm = pm
        self.workflow = workflow
        self.enabled = enabled  # False on non-zero ranks: only rank 0 reports

    def start(self, config: Mapping[str, Any], out: Path) -> None:
        if self.enabled:
            self.pm.hook.fulcra_run_start(workflow=self.workflow, config=config, out=Path(out))

    def step(self, step: int, metrics: Mapping[str, float], total: int | None = None, stage: str | None = None) -> None:
        if self.enabled:
            clean = {k: float(v) for k, v in metrics.items()}
            self.pm.hook.fulcra_step(workflow=self.workflow, step=int(step), metrics=clean, total=total, stage=stage)

    def evaluate(self, metrics: Mapping[str, Any], step: int | None = None, stage: str | None = None) -> None:
        if self.enabled:
            self.pm.hook.fulcra_evaluate(workflow=self.workflow, metrics=dict(metrics), step=step, stage=stage)

    def checkpoint(self, path: Path | str, step: int | None = None) -> None:
        if self.enabled:
            self.pm.hook.fulcra_checkpoint_saved(workflow=self.workflow, path=Path(path), step=step)

    def message(self, message: str) -> None:
        if self.enabled:
            self.pm.hook.fulcra_message(workflow=self.workflow, message=str(message))

    def end(self, results: Mapping[str, Any], out: Path, error: str | None = None) -> None:
        if self.enabled:
            self.pm.hook.fulcra_run_end(workflow=self.workflow, results=dict(results), out=Path(out), error=error)


class _PluginManager(pluggy.PluginManager):
    """Like pytest's: a method named ``fulcra_*`` is a hook implementation even without the marker,
    so a misspelt one is caught by ``check_pending`` instead of being silently ignored."""

    def parse_hookimpl_opts(self, plugin: Any, name: str):  # type: ignore[override]
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith("fulcra_") and callable(getattr(plugin, name, None)):
            opts = {}
        return opts


def _instantiate(name: str, obj: Any, out: Path | None) -> Any:
    if not inspect.isclass(obj):
        return obj
    params = inspect.signature(obj).parameters
    return obj(out=out) if "out" in params else obj()


def make_hook_relay(
    names: Iterable[Any] = (), workflow: str = "", out: Path | None = None, enabled: bool = True
) -> HookRelay:
    """Build a relay with the named hook plugins (entry-point names, ``module:attr`` or objects).

    Raises:
        ConfigError: a hook implementation whose name matches no hookspec.
    """
    from . import registry

    pm = _PluginManager("fulcra")
    pm.add_hookspecs(HookSpecs)
    for item in names or ():
        if isinstance(item, str):
            obj = registry.load_plugin("hooks", item)
            label = item
        else:
            obj, label = item, getattr(item, "__name__", type(item).__name__)
        plugin = _instantiate(label, obj, out)
        try:
            pm.register(plugin, name=label)
        except (pluggy.PluginValidationError, ValueError) as exc:
            raise PluginLoadError(f"hooks plugin {label!r}: {exc}") from exc
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise ConfigError(f"hooks: {str(exc).splitlines()[0]} (hookspecs: {', '.join(_spec_names())})") from exc
    return HookRelay(pm, workflow=workflow, enabled=enabled)


def _spec_names() -> list[str]:
    return [n for n in vars(HookSpecs) if n.startswith("fulcra_")]
