"""The web display in a real headless browser (Playwright, the system Chromium): each participant's own page, the
pacer following the protocol's rate and ratio, their Pause landing in their session only, a wrong token getting
nothing, reconnecting after a drop; and the frames a page draws (hidden, sham, paused) without a browser."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("aiohttp", reason="the web display needs the web extra (pip install -e '.[web]')")

import app
from biofeedback.live.recorder import build_session, parse_device_specs
from biofeedback.live.view_model import ParticipantView
from biofeedback.live.web_display import FrameSlot, WebDisplay, WebDisplayError, _Page, page_frame
from devices.clock import ScaledClock
from protocols.model import Pacer, Phase, Protocol
from protocols.pacer import pacer_size
from recordings.store import Store

CHROMIUM = os.environ.get("CMT_CHROMIUM", "/usr/bin/chromium")
SPEED = 4.0
PACER = Pacer(rate_bpm=6.0, inhale_fraction=0.4)  # 10 s breaths, 4 s in and 6 s out: 2.5 s a breath at ×4
PROTOCOL = Protocol("web test", "", (
    Phase("breathe", "breathing", 900.0, prompt="Let your breath find its own soothing rhythm.", pacer=PACER),
    Phase("image", "imagery", 900.0, prompt="Let an image of warmth and kindness come to mind, however faint.",
          feedback="sham"),
))  # fmt: skip
GROUP = ("P01", "P02", "P03", "P04")
SHOTS = Path("/tmp/webshots")


def _chromium_or_skip() -> str:
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt install chromium; CMT_CHROMIUM names another)")
    pytest.importorskip("playwright", reason="Playwright for Python is missing (pip install -e '.[test]')")
    return CHROMIUM


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Three participants on a ×4 scaled clock, their pages served on loopback while the session runs."""
    store = Store(tmp_path_factory.mktemp("web") / "store.sqlite")
    specs = parse_device_specs([f"sim={p}" for p in GROUP], None)
    session = build_session(store, PROTOCOL, specs, seed=2, clock=ScaledClock(SPEED))
    web = WebDisplay(session, "127.0.0.1", 0)
    session.add_listener(web)
    thread = threading.Thread(target=lambda: asyncio.run(session.run()), name="session", daemon=True)
    thread.start()
    assert web.wait_serving(10), "the web display did not start"
    yield session, web, store
    session.end_session()
    thread.join(timeout=15)
    store.close()


@pytest.fixture(scope="module")
def browser():
    executable = _chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=executable, headless=True)
        yield b
        b.close()


def _open(browser, url: str, size: tuple[int, int] = (390, 844)):
    page = browser.new_page(viewport={"width": size[0], "height": size[1]})
    page.goto(url)
    page.wait_for_function("() => document.body.dataset.connected === '1' && !document.getElementById('pacer').hidden")
    return page


def _in_thread(coro):
    """Run a coroutine on an event loop of its own thread (Playwright's sync API holds this thread's loop)."""
    out: dict = {}

    def run() -> None:
        try:
            out["result"] = asyncio.run(coro)
        except BaseException as exc:
            out["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(timeout=30)
    if "error" in out:
        raise out["error"]
    assert "result" in out, "the coroutine did not finish"
    return out["result"]


def _wait(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _own_markers(store: Store, session, pid: str) -> list[tuple[str, str]]:
    sid = next(s.session_id for s in session.straps if s.binding.participant_id == pid)
    return [(m.label, m.detail.get("by")) for m in store.markers(sid) if m.kind == "participant"]


SAMPLE_JS = """(ms) => new Promise(done => {
    const el = document.getElementById('pacer'), out = [], end = performance.now() + ms;
    function step(now) {
        out.push([performance.timeOrigin + now, el.getBoundingClientRect().width]);
        if (now < end) requestAnimationFrame(step); else done(out);
    }
    requestAnimationFrame(step);
})"""


def test_the_pacer_on_the_page_follows_the_protocols_rate_and_ratio(served, browser):
    session, web, _store = served
    page = _open(browser, web.urls["P01"])
    samples = np.array(page.evaluate(SAMPLE_JS, 7000))  # about 2.8 breaths at ×4
    now_t, now_wall = session.clock.now(), time.time()
    in_phase = session.phase_position(now_t)[0]
    page.close()
    wall, width = samples[:, 0] / 1000.0, samples[:, 1]
    assert len(wall) > 200, "the page should animate every frame"
    size = (width / width.max() - 0.386) / (1 - 0.386)  # back to 0..1 (the smallest disc is 0.386 of the largest)

    # the period and the inhale share, from the waveform's turning points between its rising mid-crossings
    ups = [i for i in range(1, len(size)) if size[i - 1] < 0.5 <= size[i]]
    assert len(ups) >= 2, "at least one whole breath"
    period_session_s = float(np.median(np.diff(wall[ups]))) * SPEED
    assert period_session_s == pytest.approx(PACER.period_s, rel=0.03)  # 6 breaths a minute
    assert width.min() / width.max() == pytest.approx(0.386, abs=0.02)

    # and at each moment the page shows the pacer waveform at that session time (the clocks mapped), a few frames
    # late at most: the best-fitting lag is below 0.3 session seconds (75 ms here) and the error about it small
    t_in_phase = in_phase + (wall - now_wall) * SPEED

    def rms(lag: float, pacer: Pacer = PACER) -> float:
        return float(np.sqrt(np.mean((size - np.array([pacer_size(t - lag, pacer) for t in t_in_phase])) ** 2)))

    lags = np.arange(-0.5, 0.51, 0.025)
    errors = [rms(lag) for lag in lags]
    best = int(np.argmin(errors))
    assert abs(lags[best]) <= 0.3 and errors[best] < 0.04, (lags[best], errors[best])

    # the inhale share that fits the page's whole waveform best (every frame counts, so frames a loaded machine
    # dropped at a turning point cannot move it, as they moved the turning points themselves: 0.46 once)
    shares = np.round(np.arange(0.25, 0.551, 0.01), 2)
    fits = [min(rms(lag, Pacer(PACER.rate_bpm, float(f))) for lag in lags[::2]) for f in shares]
    assert float(shares[int(np.argmin(fits))]) == pytest.approx(PACER.inhale_fraction, abs=0.03)  # 4 in, 6 out


def test_pause_on_the_page_lands_in_that_participants_session_only(served, browser):
    session, web, store = served
    page = _open(browser, web.urls["P02"])
    other = _open(browser, web.urls["P01"])
    page.click("#pause")
    page.wait_for_function("() => document.getElementById('pause').textContent === 'Continue'")
    assert page.is_hidden("#pacer") and "let know" in page.inner_text("#message")
    assert not other.is_hidden("#pacer") and other.inner_text("#pause") == "Pause"  # P01 goes on
    assert session.participant_view("P02").self_paused and not session.participant_view("P01").paused
    page.click("#pause")  # Continue
    page.wait_for_function("() => document.getElementById('pause').textContent === 'Pause'")
    _wait(lambda: len(_own_markers(store, session, "P02")) == 2)
    assert _own_markers(store, session, "P02") == [("paused", "P02"), ("continued", "P02")]
    assert _own_markers(store, session, "P01") == [] and _own_markers(store, session, "P03") == []
    assert not re.search(r"\d", page.inner_text("body")), "the participant's page shows no numbers"
    page.close()
    other.close()


def test_a_wrong_token_gets_nothing(served, browser):
    session, web, store = served
    base = web.urls["P01"].split("/p/")[0]
    token = web.tokens["P01"]
    for path in ("/p/not-a-token/", f"/p/{token[:-1]}/", f"/p/{token}x/display.js", "/p/not-a-token/ws", "/"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + path, timeout=5)
        assert err.value.code == 403 and err.value.read() == b""
    page = browser.new_page()
    page.goto(web.urls["P01"])  # any origin: the socket is refused on its token alone
    got = page.evaluate("""(url) => new Promise(done => {
        const ws = new WebSocket(url), got = [];
        ws.onmessage = (e) => got.push(e.data);
        ws.onopen = () => ws.send(JSON.stringify({action: 'pause'}));
        ws.onclose = () => done({opened: ws.readyState, got});
        setTimeout(() => done({timeout: true, got}), 3000);
    })""", base.replace("http", "ws") + "/p/not-a-token/ws")
    page.close()
    assert got["got"] == [] and not got.get("timeout")
    assert all(_own_markers(store, session, p) == [] for p in ("P01", "P03"))


def test_the_page_reconnects_by_itself_after_the_server_drops_it(served, browser):
    session, web, store = served
    page = _open(browser, web.urls["P03"])
    _wait(lambda: web.connected("P03") == 1)
    web.drop_pages("P03")
    page.wait_for_function("() => document.body.dataset.connected === '0'", timeout=5000)
    page.wait_for_function("() => document.body.dataset.connected === '1'", timeout=8000)
    _wait(lambda: web.connected("P03") == 1)
    page.click("#stop")  # the reconnected page still acts, for P03 only
    page.wait_for_function("() => document.getElementById('message').textContent.includes('stopped')")
    _wait(lambda: _own_markers(store, session, "P03") == [("stopped", "P03")])
    assert session.participant_view("P03").self_paused and not session.participant_view("P01").paused
    page.click("#pause")  # Continue after the stop
    _wait(lambda: len(_own_markers(store, session, "P03")) == 2)
    page.close()


def test_screenshots_at_phone_and_tablet_size(served, browser):
    """Runs last of the browser tests: it moves the group on to the sham phase."""
    session, web, _store = served
    SHOTS.mkdir(parents=True, exist_ok=True)

    def shot(name: str, size: tuple[int, int], pid: str = "P04", then=None) -> None:
        page = _open(browser, web.urls[pid], size)
        if then is not None:
            then(page)
        page.wait_for_timeout(400)  # the first prompt shows at once; the glow settles
        page.screenshot(path=str(SHOTS / f"{name}.png"))
        box = page.eval_on_selector("#buttons", "e => e.getBoundingClientRect().toJSON()")
        assert box["right"] <= size[0] and box["bottom"] <= size[1]  # the buttons are on the screen
        for sel in ("#pause", "#stop"):  # and their words are never clipped
            assert page.eval_on_selector(sel, "e => e.scrollWidth <= e.clientWidth")
        assert not re.search(r"\d", page.inner_text("body"))
        page.close()

    shot("phone", (390, 844))
    shot("tablet", (820, 1180))
    shot("phone-paused", (390, 844), then=lambda page: (page.click("#pause"), page.wait_for_function(
        "() => document.getElementById('pause').textContent === 'Continue'")))
    session.participant_resume("P04")
    session.skip_phase()  # the sham phase: no pacer, a glow drawn exactly like live feedback
    _wait(lambda: session.participant_view("P04").phase_name == "image")
    page = browser.new_page(viewport={"width": 820, "height": 1180})
    page.goto(web.urls["P04"])
    page.wait_for_function("() => document.body.dataset.connected === '1'")
    page.wait_for_timeout(1000)
    page.screenshot(path=str(SHOTS / "tablet-sham.png"))
    assert page.is_hidden("#pacer") and "warmth" in page.inner_text("#prompt")
    level = session.participant_view("P04").soothing_level
    assert level is not None and "rgba(96, 160, 178" not in page.eval_on_selector("#glow", "e => e.style.background")
    page.close()


class _StuckSocket:
    """A page whose socket never takes another byte (frozen tab, dead network)."""

    closed = False

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.release = asyncio.Event()

    async def send_str(self, data: str) -> None:
        self.sent.append(data)
        await self.release.wait()

    async def close(self) -> None:
        self.closed = True


def test_a_frozen_page_never_holds_the_session_back_and_gets_only_the_latest_frame(tmp_path):
    store = Store(tmp_path / "store.sqlite")
    session = build_session(store, PROTOCOL, parse_device_specs(["sim=P01"], None), seed=1, clock=ScaledClock(1.0))
    web = WebDisplay(session, "127.0.0.1", 0)
    frames = iter(range(1000))
    web.frame = lambda pid: json.dumps({"n": next(frames)})  # type: ignore[method-assign]

    async def main() -> None:
        stuck = _StuckSocket()
        page = _Page("P01", stuck)  # type: ignore[arg-type]
        web.pages.append(page)
        sender = asyncio.create_task(web._send(page))
        web._push_all()
        await asyncio.sleep(0.01)
        assert [json.loads(f) for f in stuck.sent] == [{"n": 0}]  # sent, and now stuck in the socket
        t0 = time.perf_counter()
        for _ in range(200):  # the ticker goes on at once, however stuck the page
            web._push_all()
        assert time.perf_counter() - t0 < 0.5
        assert len(stuck.sent) == 1 and page.slot.dropped == 199
        stuck.release.set()
        await asyncio.sleep(0.01)
        assert [json.loads(f) for f in stuck.sent] == [{"n": 0}, {"n": 200}]  # the newest frame, not a backlog
        sender.cancel()

    _in_thread(main())
    web.close_sync()
    store.close()


def test_a_web_display_that_dies_tells_the_experimenter_and_the_recording_goes_on(tmp_path):
    store = Store(tmp_path / "store.sqlite")
    session = build_session(store, PROTOCOL, parse_device_specs(["sim=P01"], None), seed=1, clock=ScaledClock(1.0))
    alerts: list[str] = []
    session.on_alert = alerts.append
    web = WebDisplay(session, "127.0.0.1", 0)

    def broken() -> None:
        raise RuntimeError("page server broke")

    web._push_all = broken  # type: ignore[method-assign]

    async def main() -> None:
        web.session_started(session)
        await asyncio.sleep(0.5)

    _in_thread(main())
    web.close_sync()
    store.close()
    assert any("web display stopped (RuntimeError: page server broke)" in a for a in alerts), alerts


def test_a_slot_keeps_only_the_newest_frame():
    async def main() -> list[str]:
        slot = FrameSlot()
        for i in range(5):
            slot.put(str(i))
        return [await slot.get(), str(slot.dropped)]

    assert _in_thread(main()) == ["4", "4"]


def _view(**kw) -> ParticipantView:
    base = dict(t=30.0, phase_name="breathe", phase_kind="breathing", prompt="Breathe gently.",
                phase_time_left_s=60.0, pacer_size=pacer_size(13.0, PACER), pacer_label="breathe in",
                feedback="live", soothing_level=0.7)  # fmt: skip
    base.update(kw)
    return ParticipantView(**base)


def test_frames_draw_what_the_view_model_says():
    live = page_frame(_view(), (PACER, 13.0), 4.0)
    assert live["pacer"] == {"period_s": 10.0, "inhale_fraction": 0.4, "cycle": pytest.approx(0.3),
                             "size": pytest.approx(pacer_size(13.0, PACER))}  # fmt: skip
    assert live["glow"] == 0.7 and live["feedback"] and live["rate"] == 4.0
    sham = page_frame(_view(feedback="sham", soothing_level=0.4), (PACER, 13.0), 1.0)
    assert sham["glow"] == 0.4 and sham["feedback"]  # drawn exactly like live feedback
    hidden = page_frame(_view(feedback="hidden", soothing_level=0.9), (PACER, 13.0), 1.0)
    assert hidden["glow"] == 0.0 and not hidden["feedback"]  # neutral, whatever the level
    paused = page_frame(_view(pacer_size=None, pacer_label=None, paused=True, self_paused=True,
                              message="Paused."), None, 1.0)  # fmt: skip
    assert paused["pacer"] is None and paused["self_paused"] and paused["message"] == "Paused."
    ended = page_frame(ParticipantView(50.0, "", "", "", 0.0, finished=True, message="Thank you."), None, 1.0)
    assert ended["finished"] and ended["pacer"] is None and ended["message"] == "Thank you."


def test_a_taken_port_is_one_clear_error(tmp_path):
    store = Store(tmp_path / "store.sqlite")
    session = build_session(store, PROTOCOL, parse_device_specs(["sim=P01"], None), seed=1)
    first = WebDisplay(session, "127.0.0.1", 0)
    with pytest.raises(WebDisplayError, match="already in use: choose another --web-port"):
        WebDisplay(session, "127.0.0.1", first.port)
    with pytest.raises(WebDisplayError, match="not an address"):
        WebDisplay(session, "no-such-host.invalid", 0)
    first.close_sync()
    store.close()


def _cli(capsys, *args: str, store: Path) -> tuple[int, str, str]:
    """The real command, in a thread of its own (Playwright's sync API holds this thread's event loop)."""
    argv = ["--store", str(store), "session", "run", "--device", "sim=P01", "--device", "sim=P02", "--headless", *args]
    out: dict = {}
    worker = threading.Thread(target=lambda: out.setdefault("code", app.main(argv)))
    worker.start()
    worker.join(timeout=120)
    captured = capsys.readouterr()
    return out["code"], captured.out, captured.err


def test_the_command_prints_each_participants_own_url_and_refuses_a_taken_port_in_one_line(tmp_path, capsys):
    store = tmp_path / "store.sqlite"
    code, out, err = _cli(capsys, "--protocol", "rest-5min", "--speed", "300", "--web-display", "--web-port", "0",
                          store=store)  # fmt: skip
    assert code == 0, err
    urls = dict(re.findall(r"^  (P0[12]): (http://127\.0\.0\.1:\d+/p/[\w-]{32}/)$", out, re.M))
    assert set(urls) == {"P01", "P02"} and urls["P01"] != urls["P02"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        code, out, err = _cli(capsys, "--web-display", "--web-port", str(taken.getsockname()[1]), store=store)
    assert code == 2 and err.strip().count("\n") == 0 and "already in use" in err and "Nothing was recorded" in err
    code, out, err = _cli(capsys, "--web-host", "0.0.0.0", store=store)
    assert code == 2 and err.strip() == "error: --web-host and --web-port need --web-display"
    with Store(store, readonly=True) as s:
        assert sorted(x.state for x in s.sessions()) == ["completed", "completed", "stopped", "stopped"]


def test_the_monitor_shows_each_participants_page_as_a_qr_code_that_encodes_their_url(qtbot):
    segno = pytest.importorskip("segno")
    from pyqtgraph.Qt import QtWidgets

    from biofeedback.display.monitor import add_participant_links

    links = {"P01": "http://192.168.1.20:8765/p/abc-token-1/", "P02": "http://192.168.1.20:8765/p/xyz-token-2/"}
    window = QtWidgets.QMainWindow()
    qtbot.addWidget(window)
    dock = add_participant_links(window, links)
    assert set(dock.codes) == set(links)
    for pid, url in links.items():
        image = dock.codes[pid].pixmap().toImage()
        matrix = segno.make(url, error="m").matrix
        scale, border = 4, 4
        assert image.width() == (len(matrix) + 2 * border) * scale
        drawn = [[image.pixelColor((x + border) * scale + 2, (y + border) * scale + 2).lightness() < 128
                  for x in range(len(matrix))] for y in range(len(matrix))]  # fmt: skip
        assert drawn == [[bool(v) for v in row] for row in matrix], f"{pid}'s QR code is not their URL"
    texts = [w.text() for w in dock.findChildren(QtWidgets.QLabel)]
    assert all(url in texts for url in links.values())


def test_with_windows_the_monitor_shows_the_codes_and_no_participant_window_opens(qtbot, tmp_path):
    pytest.importorskip("segno")
    from pyqtgraph.Qt import QtCore, QtWidgets

    from biofeedback.display.app import run_with_displays
    from biofeedback.display.monitor import MonitorWindow, ParticipantLinks
    from biofeedback.display.participant import ParticipantWindow
    from protocols.library import get_protocol

    store = Store(tmp_path / "store.sqlite")
    session = build_session(store, get_protocol("rest-5min"), parse_device_specs(["sim=P01", "sim=P02"], None),
                            speed=100.0)  # fmt: skip
    web = WebDisplay(session, "127.0.0.1", 0)
    session.add_listener(web)
    seen: dict = {}

    def look() -> None:  # while the session runs
        widgets = QtWidgets.QApplication.topLevelWidgets()
        seen["participant windows"] = [w for w in widgets if isinstance(w, ParticipantWindow) and w.isVisible()]
        monitor = next(w for w in widgets if isinstance(w, MonitorWindow))
        seen["codes"] = sorted(monitor.findChild(ParticipantLinks).codes)
        with urllib.request.urlopen(web.urls["P02"], timeout=5) as page:  # served from the session's thread
            seen["page"] = page.status

    QtCore.QTimer.singleShot(1000, look)
    ids = run_with_displays(session, participant_windows=False, web_links=web.urls)
    assert seen == {"participant windows": [], "codes": ["P01", "P02"], "page": 200}
    assert [store.session(i).state for i in ids] == ["completed", "completed"]
    store.close()
