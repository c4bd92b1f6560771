"""Each participant's calm display as a local web page (tablets, phones), served on the session's asyncio loop.

`WebDisplay` is a `SessionListener`: built before the session runs, it binds its socket at once (so the URLs can be
printed and shown as QR codes before the clock starts) and starts serving when the session starts. Each participant
gets one URL holding an unguessable token (`secrets.token_urlsafe`); the page, its script and its websocket answer
only to that token (anything else gets an empty 403), show only that participant's `ParticipantView` and accept
only their own pause, continue and stop.

What a page shows is decided by the session, exactly as for the Qt participant window: the prompt, the message,
the glow's target level (neutral when feedback is hidden, the session's sham level in sham phases) and the pacer.
The pacer is sent as parameters (breath period, inhale fraction, where in the breath it is at the frame's session
time, the session clock's rate) taken from `protocols.pacer`, and the page draws the same raised-cosine waveform
itself, so it animates smoothly between frames. No numbers are ever shown.

The recording never waits for a page: frames are made by one ticker task (a few per second per participant, once
whatever the number of pages) and handed to each page's one-frame slot, replacing an unsent older frame; a sender
task per page writes it. A slow or frozen page only falls behind in its own slot, a closed one is dropped; the
page reconnects by itself and gets the current frame at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import secrets
import socket
import threading
from dataclasses import dataclass, field
from importlib import resources

from aiohttp import WSMsgType, web

from biofeedback.live.session import LiveSession, SessionListener
from biofeedback.live.view_model import ParticipantView
from protocols.model import Pacer
from protocols.pacer import pacer_phase

log = logging.getLogger(__name__)

FRAMES_PER_S = 4.0
"""Frames per second sent to each page (the page animates the pacer and glow itself in between)."""
WRITER_LIMIT_BYTES = 32 * 1024
"""Bytes a page may have unsent in its socket before its sender waits (only its own sender)."""
HEARTBEAT_S = 5.0
"""Websocket ping interval: a page that stops answering is closed and dropped."""
PAUSED_MESSAGE = "Paused. Take all the time you need."
STATIC_FILES = {"display.js": "application/javascript", "display.css": "text/css"}
_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",  # the token is in the URL: never pass it on
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
}
ACTIONS = {"pause": "participant_pause", "resume": "participant_resume", "stop": "participant_stop"}


class WebDisplayError(RuntimeError):
    """The web display cannot be served (the address is taken or cannot be bound)."""


def page_frame(view: ParticipantView, pacer: tuple[Pacer, float] | None, clock_rate: float) -> dict:
    """The JSON frame a page draws: `view` as the Qt participant window would show it.

    `pacer` is (the phase's pacer, seconds into the phase at `view.t`) while the view shows a pacer; the frame
    carries its period, inhale fraction and where in the breath (`protocols.pacer.pacer_phase`) it is at `view.t`.
    The glow's target is the soothing level only while the view shows feedback, else neutral (0).
    """
    frame: dict = {
        "type": "frame",
        "t": view.t,
        "rate": clock_rate,
        "prompt": view.prompt,
        "message": view.message or (PAUSED_MESSAGE if view.paused and not view.finished else ""),
        "paused": view.paused,
        "self_paused": view.self_paused,
        "finished": view.finished,
        "replay": view.replay,
        "feedback": view.shows_feedback,
        "glow": float(view.soothing_level) if view.shows_feedback else 0.0,
        "pacer": None,
    }
    if view.pacer_size is not None and pacer is not None and not view.paused and not view.finished:
        spec, t_in_phase = pacer
        cycle, _stage = pacer_phase(t_in_phase, spec)
        frame["pacer"] = {"period_s": spec.period_s, "inhale_fraction": spec.inhale_fraction, "cycle": cycle,
                          "size": view.pacer_size}  # fmt: skip
    return frame


class FrameSlot:
    """A one-frame send queue: `put` never waits and replaces a frame not yet sent (a slow page skips frames)."""

    def __init__(self) -> None:
        self._frame: str | None = None
        self._ready = asyncio.Event()
        self.dropped = 0

    def put(self, frame: str) -> None:
        if self._frame is not None:
            self.dropped += 1
        self._frame = frame
        self._ready.set()

    async def get(self) -> str:
        await self._ready.wait()
        self._ready.clear()
        frame, self._frame = self._frame, None
        assert frame is not None
        return frame


@dataclass(eq=False)
class _Page:
    participant_id: str
    ws: web.WebSocketResponse
    slot: FrameSlot = field(default_factory=FrameSlot)


def _bind(host: str, port: int) -> socket.socket:
    if not 0 <= port <= 65535:
        raise WebDisplayError(f"--web-port must be 0-65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise WebDisplayError(f"--web-host {host!r} is not an address of this computer ({exc.strerror})") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(64)
    except OSError as exc:
        sock.close()
        why = "is already in use: choose another --web-port" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise WebDisplayError(f"cannot serve the web display on {host}:{port}: the address {why}") from None
    sock.setblocking(False)
    return sock


def _reachable_host(host: str) -> str:
    """The host to put in URLs: the address bound, or this computer's network address when bound to all."""
    if host not in ("0.0.0.0", "::", ""):
        return f"[{host}]" if ":" in host else host
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("10.255.255.255", 1))  # UDP: no packet is sent, it only picks the outgoing interface
        return s.getsockname()[0]
    return socket.gethostname()


class WebDisplay(SessionListener):
    """Serves every participant of `session` their own display page at `urls[participant_id]`.

    Binds `host:port` at once (port 0: any free port), raising `WebDisplayError` with one line if it cannot.
    Add it to the session (`session.add_listener`) before `run()`; it serves while the session runs.
    """

    def __init__(self, session: LiveSession, host: str = "127.0.0.1", port: int = 0, *,
                 fps: float = FRAMES_PER_S) -> None:  # fmt: skip
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps!r}")
        self.session = session
        self.fps = fps
        self.tokens = {s.binding.participant_id: secrets.token_urlsafe(24) for s in session.straps}
        self._sock = _bind(host, port)
        self.port = self._sock.getsockname()[1]
        base = f"http://{_reachable_host(host)}:{self.port}"
        self.urls = {pid: f"{base}/p/{token}/" for pid, token in self.tokens.items()}
        self.pages: list[_Page] = []
        self._clock_rate = float(getattr(session.clock, "speed", 1.0))
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._serving = threading.Event()
        self._task: asyncio.Task | None = None
        self._ended = False
        self.frames_sent = 0

    # -- SessionListener ------------------------------------------------------------------------------------
    def session_started(self, session: LiveSession) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._serve(), name="web-display")
        self._task.add_done_callback(self._served)

    def _served(self, task: asyncio.Task) -> None:
        """A web display that dies says so to the experimenter (terminal line and monitor); the recording goes on."""
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self.session._alert(f"web display stopped ({type(exc).__name__}: {exc}): the participants' pages show "
                                "nothing more; the recording goes on")  # fmt: skip

    def session_ended(self) -> None:
        self._ended = True
        self._push_all()  # "the session has ended" reaches every page before the server goes

    # -- serving --------------------------------------------------------------------------------------------
    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/p/{token}", self._page)
        app.router.add_get("/p/{token}/", self._page)
        app.router.add_get("/p/{token}/ws", self._websocket)
        app.router.add_get("/p/{token}/{name}", self._static)
        app.router.add_route("*", "/{tail:.*}", self._nothing)
        return app

    async def _serve(self) -> None:
        # no access log: the tokens in the URLs never reach a log file
        runner = web.AppRunner(self._app(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
        try:
            await runner.setup()
            self._runner = runner
            await web.SockSite(runner, self._sock).start()
        except Exception as exc:  # the recording goes on without the pages
            self.session._alert(f"web display could not start ({type(exc).__name__}: {exc}); the recording goes on")
            await self.close()
            return
        self._serving.set()
        try:
            while not self._ended:
                self._push_all()
                await asyncio.sleep(1.0 / self.fps)
            await asyncio.sleep(0.2)  # let the senders write the last frame
        finally:
            await self.close()

    async def close(self) -> None:
        """Close every page and stop serving (also done when the session ends)."""
        for page in list(self.pages):  # the last frame ("the session has ended") first, sent at once
            with contextlib.suppress(Exception):
                await asyncio.wait_for(page.ws.send_str(self.frame(page.participant_id)), 0.5)
            with contextlib.suppress(Exception):
                await page.ws.close()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        self._sock.close()

    def close_sync(self) -> None:
        """Release the socket when the session never ran (e.g. the command stopped before it)."""
        if self._task is None:
            self._sock.close()

    def _participant(self, request: web.Request) -> str | None:
        token = request.match_info.get("token", "")
        found = None
        for pid, known in self.tokens.items():  # compare every token, in constant time
            if secrets.compare_digest(token.encode(), known.encode()):
                found = pid
        return found

    async def _nothing(self, request: web.Request) -> web.Response:
        """Any other address: nothing at all."""
        return self._forbidden()

    @staticmethod
    def _forbidden() -> web.Response:
        return web.Response(status=403, headers=_HEADERS)

    async def _page(self, request: web.Request) -> web.StreamResponse:
        if self._participant(request) is None:
            return self._forbidden()
        if not request.path.endswith("/"):  # the page's script and socket are beside it, under the token
            raise web.HTTPFound(request.path + "/", headers=_HEADERS)
        html = resources.files("biofeedback.live").joinpath("web/display.html").read_text(encoding="utf-8")
        return web.Response(text=html, content_type="text/html", headers=_HEADERS)

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if self._participant(request) is None or name not in STATIC_FILES:
            return self._forbidden()
        text = resources.files("biofeedback.live").joinpath(f"web/{name}").read_text(encoding="utf-8")
        return web.Response(text=text, content_type=STATIC_FILES[name], headers=_HEADERS)

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        pid = self._participant(request)
        if pid is None:
            return self._forbidden()
        ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, compress=False, max_msg_size=4096,
                                   writer_limit=WRITER_LIMIT_BYTES)  # fmt: skip
        await ws.prepare(request)
        page = _Page(pid, ws)
        self.pages.append(page)
        sender = asyncio.create_task(self._send(page), name=f"web-display-{pid}")
        self._push(pid)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._on_message(pid, msg.data)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            with contextlib.suppress(ValueError):
                self.pages.remove(page)
        return ws

    async def _send(self, page: _Page) -> None:
        try:
            while not page.ws.closed:
                frame = await page.slot.get()
                await page.ws.send_str(frame)  # waits only for this page's own socket
                self.frames_sent += 1
        except (ConnectionError, RuntimeError) as exc:  # the page went away: it reconnects by itself
            log.info("web display page of %s dropped: %s", page.participant_id, exc)
            with contextlib.suppress(Exception):
                await page.ws.close()

    def _on_message(self, pid: str, data: str) -> None:
        """A page's button: only its own participant's pause, continue or stop; anything else is ignored."""
        try:
            action = json.loads(data).get("action")
        except (ValueError, AttributeError):
            return
        if action not in ACTIONS or self.session.replay or self._ended:
            return
        getattr(self.session, ACTIONS[action])(pid)
        self._push(pid)

    # -- frames ---------------------------------------------------------------------------------------------
    def frame(self, pid: str) -> str:
        """The current frame of participant `pid` as JSON (called in the session's thread)."""
        view = self.session.participant_view(pid)
        phase = self.session.current_phase()
        pacer = None
        if view.pacer_size is not None and phase is not None and phase.pacer is not None:
            t_in_phase = self.session.phase_position(view.t)[0]
            pacer = (phase.pacer, t_in_phase)
        return json.dumps(page_frame(view, pacer, self._clock_rate), separators=(",", ":"))

    def _push(self, pid: str) -> None:
        pages = [p for p in self.pages if p.participant_id == pid]
        if pages:
            try:
                frame = self.frame(pid)
            except Exception:  # a page must never take the session down
                log.exception("web display frame for %s failed", pid)
                return
            for page in pages:
                page.slot.put(frame)

    def _push_all(self) -> None:
        for pid in {p.participant_id for p in self.pages}:
            self._push(pid)

    def connected(self, pid: str) -> int:
        """How many pages of `pid` are open now."""
        return sum(1 for p in self.pages if p.participant_id == pid)

    def drop_pages(self, pid: str | None = None) -> None:
        """Close the websockets of `pid`'s pages (None: everyone's), as a network drop would; thread-safe."""

        async def drop() -> None:
            for page in [p for p in self.pages if pid is None or p.participant_id == pid]:
                with contextlib.suppress(Exception):
                    await page.ws.close()

        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(drop(), self._loop)

    def wait_serving(self, timeout_s: float = 10.0) -> bool:
        """Block (in another thread) until the pages are served; False after `timeout_s`."""
        return self._serving.wait(timeout_s)
