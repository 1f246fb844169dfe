"""``fulcra view``: an interactive LUDVIG viewer in the browser (a ``commands`` plugin).

``fulcra view scene.ply=PLY scene.cameras=CAMERAS scene.images=DIR [extractor=NAME ...] [port=8080]
[out=DIR]`` takes the keys of ``fulcra run segment`` (its own config dataclass, validated the same way),
loads the scene, uplifts the features once (cached in ``out``, so reopening starts in seconds) and
serves a page on 127.0.0.1 where clicks or scribbles on a training view select an object in 3D with
the same code as ``fulcra run segment`` (:class:`fulcra_plugins.ludvig.session.SegmentSession`).
From Python: ``fulcra.viewer.serve([...keys...], port=0, block=False)`` (see ``docs/viewer.md``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

__all__ = ["ViewCommand", "serve", "check"]

#: the modules the viewer needs beyond the core, all in the ``viewer`` extra
_NEEDS = {"PIL": "pillow", "safetensors": "safetensors", "scipy": "scipy", "plyfile": "plyfile"}


def _check_extra() -> None:
    import importlib.util

    from fulcra.errors import MissingDependencyError

    missing = [pkg for mod, pkg in _NEEDS.items() if importlib.util.find_spec(mod) is None]
    if missing:
        raise MissingDependencyError(
            f"fulcra view needs {', '.join(missing)}: pip install 'fulcra[viewer]'", extra="viewer"
        )


class _Messages:
    """The hook relay a session's uplift talks to: messages and a per-view progress line."""

    def __init__(self, log: Callable[[str], None]):
        self.log = log

    def message(self, msg: str) -> None:
        self.log(msg)

    def step(self, step: int, metrics: Any = None, total: int | None = None, stage: str = "") -> None:
        if total and (step == total or step == 1):
            self.log(f"{stage} {step}/{total}")

    def checkpoint(self, path: Any = None, step: int | None = None) -> None:
        self.log(f"saved {path}")


def _split(overrides: Iterable[str] | Mapping[str, Any]) -> tuple[list[str], int | None]:
    """The ``segment`` overrides and the ``port=`` of the viewer's command line."""
    from fulcra.errors import ConfigError

    items = [f"{k}={v}" for k, v in overrides.items()] if isinstance(overrides, Mapping) else list(overrides)
    rest, port = [], None
    for item in items:
        key, eq, value = str(item).partition("=")
        if not eq:
            raise ConfigError(f"fulcra view: expected key=value, got {item!r}")
        if key.strip() == "port":
            try:
                port = int(value)
            except ValueError:
                raise ConfigError(f"key 'port': expected an integer, got {value!r}") from None
        else:
            rest.append(str(item))
    return rest, port


def serve(
    overrides: Iterable[str] | Mapping[str, Any] = (),
    *,
    port: int | None = None,
    block: bool = True,
    log: Callable[[str], None] | None = None,
):
    """Start the viewer on ``127.0.0.1:port`` (default 8080; 0: any free port) and return the
    :class:`~fulcra_plugins.viewer.server.ViewerServer` (``url``, ``state``, ``stop()``).

    Args:
        overrides: the ``fulcra run segment`` keys (``["scene.ply=...", "extractor=dinov2", "out=DIR"]``
            or a mapping), plus ``port=``; ``prompt.view`` / ``prompt.clicks`` make a first selection.
        port: overrides ``port=`` in ``overrides``.
        block: serve until interrupted (Ctrl-C); False: serve in a background thread and return.
        log: one line for the user (default: print).

    Raises:
        ConfigError / FormatError: one line, before anything is served (an unknown key, a missing
        PLY, a port in use).
    """
    from fulcra.engine import select_device
    from fulcra.errors import ConfigError
    from fulcra.runner import prepare
    from fulcra_plugins.ludvig.session import SegmentSession

    from .server import make_server
    from .state import ViewerState

    _check_extra()
    say = log or (lambda m: print(f"[view] {m}", flush=True))
    rest, port_key = _split(overrides)
    port = int(port if port is not None else (port_key if port_key is not None else 8080))
    _, cfg, common = prepare("segment", rest)  # the segment config: same keys, same defaults, same checks
    unknown = set(common) - {"out", "device", "seed", "hooks", "workflow"}
    if unknown:
        raise ConfigError(f"fulcra view: unknown key(s) {sorted(unknown)}")
    if not cfg.scene.ply and not cfg.scene.synthetic:  # before the segment code can name itself
        raise ConfigError("fulcra view: set scene.ply=PATH (or scene.synthetic=true for the embedded scene)")
    out = Path(common.get("out") or "runs/view").expanduser()
    server = make_server(None, port, say)  # bind first: a port in use fails before minutes of uplift
    try:
        t0 = time.perf_counter()
        session = SegmentSession(cfg, out, select_device(common.get("device", "auto")), hooks=_Messages(say), log=say)
        session.open().prepare()
        cached = " (reused the cached features)" if session.resumed else ""
        say(
            f"scene ready: {session.scene.num_primitives} Gaussians, {len(session.cams)} cameras, "
            f"in {time.perf_counter() - t0:.1f} s{cached}"
        )
        state = ViewerState(session, out, say)
        if cfg.prompt.view and len(cfg.prompt.clicks):
            state.select(str(cfg.prompt.view), [list(c) for c in cfg.prompt.clicks])
        server.state = state
    except BaseException:
        server.server_close()
        raise
    say(f"serving on {server.url} (127.0.0.1 only; Ctrl-C stops)")
    if not block:
        return server.start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        say("stopped")
    finally:
        server.server_close()
    return server


class ViewCommand:
    """``fulcra view KEY=VALUE ...``: the interactive viewer (``commands`` plugin ``view``)."""

    help = "interactive viewer: click an object on a view, see and export its 3D selection (LUDVIG)"
    #: the Python entry ``fulcra.viewer.serve`` forwards to (an optional member of this command)
    serve = staticmethod(serve)

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "overrides",
            nargs="*",
            metavar="KEY=VALUE",
            help="the keys of `fulcra run segment` (scene.ply=, scene.cameras=, scene.images=, extractor=, "
            "refiner=, threshold=, ...), out=DIR (exports and the feature cache) and port=N (default 8080)",
        )

        parser.add_argument(
            "--check",
            action="store_true",
            help="validate the keys (and the scene's files, unless scene.synthetic) and print the config; serve nothing",
        )

    def run(self, args) -> int:
        if args.check:
            return check(args.overrides)
        serve(args.overrides)
        return 0


def check(overrides: Iterable[str] | Mapping[str, Any] = ()) -> int:
    """``fulcra view --check``: the keys validated as ``serve`` validates them, the scene's files
    checked (not for the synthetic scene, which would be generated), the resolved config printed."""
    from omegaconf import OmegaConf

    from fulcra.config import to_yaml
    from fulcra.errors import ConfigError
    from fulcra.runner import prepare
    from fulcra_plugins.ludvig.lifting import check_scene
    from fulcra_plugins.ludvig.session import SegmentSession

    _check_extra()
    rest, port = _split(overrides)
    _, cfg, common = prepare("segment", rest)
    unknown = set(common) - {"out", "device", "seed", "hooks", "workflow"}
    if unknown:
        raise ConfigError(f"fulcra view: unknown key(s) {sorted(unknown)}")
    SegmentSession(cfg, common.get("out") or "runs/view")  # method, masks, threshold, extractor pairing
    if cfg.scene.ply or not cfg.scene.synthetic:
        check_scene(cfg.scene, "view")
    node = {"port": 8080 if port is None else port, "out": str(common.get("out") or "runs/view")}
    print(to_yaml({**node, **OmegaConf.to_container(cfg, resolve=True)}), end="")
    return 0
