"""Typed errors. Every error fulcra raises on bad input is one of these, with a one-line cause.

The CLI turns them into a single line on stderr and a non-zero exit code.
"""

from __future__ import annotations

__all__ = [
    "FulcraError",
    "UnknownPluginError",
    "MissingDependencyError",
    "PluginLoadError",
    "DuplicatePluginError",
    "ConfigError",
    "DeviceUnavailableError",
    "FormatError",
    "WeightsNotFoundError",
    "DataNotFoundError",
    "WorkerDiedError",
]


class FulcraError(Exception):
    """Base class of every error fulcra raises on purpose."""


class UnknownPluginError(FulcraError, LookupError):
    """A plugin name that no installed distribution nor the catalogue provides."""


class MissingDependencyError(FulcraError, ImportError):
    """A plugin needs an optional dependency that is not installed; names the extra to install."""

    def __init__(self, message: str, extra: str | None = None):
        super().__init__(message)
        self.extra = extra


class PluginLoadError(FulcraError, ImportError):
    """A plugin failed to import or is not of its kind; wraps the original exception."""


class DuplicatePluginError(FulcraError):
    """Two distributions claim the same kind and name."""


class ConfigError(FulcraError, ValueError):
    """An unknown, missing or mistyped configuration key or value."""


class DeviceUnavailableError(ConfigError):
    """The plugin needs a device this machine does not have (e.g. CUDA): a configuration choice that
    cannot run here, which test suites report as a skip rather than a failure."""


class FormatError(FulcraError, ValueError):
    """A malformed file: names the file and the field at fault."""


class WeightsNotFoundError(FulcraError, FileNotFoundError):
    """Pretrained weights are not on disk; says where to put them (nothing is downloaded)."""


class DataNotFoundError(FulcraError, FileNotFoundError):
    """A dataset is not on disk where the config says; says where to put it (nothing is downloaded)."""


class WorkerDiedError(FulcraError, RuntimeError):
    """A worker process decoding data ahead (``data_workers``) died: killed, most often for memory."""
