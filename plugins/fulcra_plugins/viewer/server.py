"""The viewer's HTTP server: the page (``static/``, served from the package: no CDN, nothing fetched)
and a small JSON API over :class:`.state.ViewerState`, on 127.0.0.1 only.

API (all answers JSON unless said):

- ``GET /api/state``: views, the chosen view, clicks, selection size, the threshold slider, messages;
- ``GET /api/view/NAME.png[?overlay=0]``: the training image with the mask and clicks (PNG);
- ``GET /api/orbit?azimuth=A&elevation=E&radius=R``: the scene rendered from an orbit camera with the
  selection highlighted (a PNG data URL) and the training cameras' positions in it;
- ``GET /api/orbit-of?view=NAME``: the orbit angles looking from that camera's direction;
- ``POST /api/select {"view": NAME, "clicks": [[x, y], ...], "negative": [[x, y], ...]}``: segment (the same
  code as ``fulcra run segment`` with ``prompt.clicks`` and ``prompt.negative_clicks``);
- ``POST /api/text {"text": WORDS}``: open-vocabulary selection (a text-capable extractor);
- ``POST /api/threshold {"value": number | null}``: re-binarise the kept scores;
- ``POST /api/clear``, ``POST /api/export``.

A bad request (unknown view, a click outside the image, nothing to export) answers 400 with
``{"error": ONE LINE}``; the server keeps running.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlparse

from fulcra.errors import ConfigError, FulcraError

from .state import ViewerState, one_line

__all__ = ["ViewerServer", "make_server"]

_STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/viewer.js": ("viewer.js", "text/javascript")}


def _static(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


class _Handler(BaseHTTPRequestHandler):
    server: ViewerServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the state logs what matters
        pass

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, obj: Any) -> None:
        self._send(code, json.dumps(obj).encode(), "application/json")

    def _guard(self, fn) -> None:
        try:
            fn()
        except (FulcraError, ValueError, KeyError, TypeError) as exc:
            line = one_line(exc)
            self.server.log(f"request {self.path}: {line}")
            self._json(400, {"error": line})
        except Exception as exc:  # a bug must not stop the server; the page shows the line
            line = one_line(exc)
            self.server.log(f"request {self.path} failed: {line}")
            self._json(500, {"error": line})

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self._guard(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._guard(self._post)

    def _get(self) -> None:
        url = urlparse(self.path)
        st = self.server.state
        if url.path in _STATIC:
            name, ctype = _STATIC[url.path]
            return self._send(200, _static(name), ctype)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if url.path == "/api/state":
            return self._json(200, st.state())
        if url.path.startswith("/api/view/") and url.path.endswith(".png"):
            name = url.path[len("/api/view/") : -len(".png")]
            return self._send(200, st.view_png(name, q.get("overlay", "1") != "0"), "image/png")
        if url.path == "/api/orbit-of":
            return self._json(200, st.orbit_of(q.get("view", "")))
        if url.path == "/api/orbit":
            try:
                a, e, r = (float(q[k]) for k in ("azimuth", "elevation", "radius"))
            except (KeyError, ValueError):
                raise ConfigError("orbit: azimuth, elevation and radius must be numbers") from None
            return self._json(200, st.orbit(a, e, r))
        self._json(404, {"error": f"no such page {url.path}"})

    def _post(self) -> None:
        url = urlparse(self.path)
        st = self.server.state
        n = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(n) or b"{}") if n else {}
        except json.JSONDecodeError:
            raise ConfigError("request body is not JSON") from None
        if not isinstance(body, dict):
            raise ConfigError("request body must be a JSON object")
        if url.path == "/api/select":
            return self._json(
                200,
                st.select(str(body.get("view", "")), list(body.get("clicks") or []), list(body.get("negative") or [])),
            )
        if url.path == "/api/text":
            return self._json(200, st.select_text(str(body.get("text", ""))))
        if url.path == "/api/threshold":
            return self._json(200, st.set_threshold(body.get("value")))
        if url.path == "/api/clear":
            return self._json(200, st.clear())
        if url.path == "/api/export":
            return self._json(200, {**st.export(), "state": st.state()})
        self._json(404, {"error": f"no such endpoint {url.path}"})


class ViewerServer(ThreadingHTTPServer):
    """The running viewer: ``url``, ``state`` (:class:`.state.ViewerState`), ``shutdown()``."""

    daemon_threads = True
    allow_reuse_address = False  # a port in use must fail, not be shared

    def __init__(self, state: ViewerState, port: int, log=print):
        self.state, self.log = state, log
        super().__init__(("127.0.0.1", int(port)), _Handler)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> ViewerServer:
        """Serve in a background thread (returns at once)."""
        self._thread = threading.Thread(target=self.serve_forever, name="fulcra-view", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


def make_server(state: ViewerState, port: int, log=print) -> ViewerServer:
    """Bind 127.0.0.1:``port`` (0: any free port); a port in use is a one-line ConfigError."""
    if not (0 <= int(port) <= 65535):
        raise ConfigError(f"key 'port': expected 0..65535, got {port}")
    try:
        return ViewerServer(state, port, log)
    except OSError as exc:
        raise ConfigError(
            f"key 'port': cannot listen on 127.0.0.1:{port} ({exc.strerror or exc}); choose another with port=N (port=0: any free one)"
        ) from None
