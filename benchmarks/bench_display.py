"""Frame-time benchmark of the displays, offscreen: 60 s of 130 Hz ECG, a tachogram and the pacer updating.

Run: `python benchmarks/bench_display.py [--seconds 10] [--straps 1] [--monitor-fps 60]`. Prints first the
unthrottled cost of one full frame of each window (pull + update + synchronous repaint), then, for the
participant window and the monitor running together on their timers, achieved frames per second and CPU
use (process_time / wall time, in cores).
Uses the real Polar H10 ECG from ../shared/data when present, else a synthetic ECG-like wave.

Then the web display figure (`--web-seconds 0` leaves it out): a real recording of six simulated straps in the
soothing-breathing phase, its CPU (process_time over wall time, all threads of this process) measured three ways:
recording alone, recording while serving six participants' pages to headless Chromium (the browser's own processes
are not counted: they run on the tablets), and recording with one Qt participant window. It prints the extra CPU
of the six pages and of the one window over the recording alone, and their ratio (goal: below 1).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from pyqtgraph.Qt import QtCore, QtWidgets

from biofeedback.display.monitor import MonitorWindow
from biofeedback.display.participant import ParticipantWindow
from biofeedback.live.view_model import MonitorView, ParticipantView, StrapView

FS = 130.0
PHASES = [("Settling in", "baseline", 0.0, 600.0), ("Soothing rhythm", "breathing", 600.0, 1200.0)]


def load_ecg() -> tuple[np.ndarray, str]:
    for parent in Path(__file__).resolve().parents:
        f = parent / "shared" / "data" / "polar_h10_detectpvc_ecg130hz_rr.csv"
        if f.exists():
            import pandas as pd

            return pd.read_csv(f, usecols=["ecg"]).ecg.to_numpy(float) * 1000, "real Polar H10 ECG"
    t = np.arange(0, 600, 1 / FS)
    beat = np.exp(-(((t % 0.9) - 0.3) ** 2) / 2e-4) * 1000 - 100 * np.sin(2 * np.pi * t / 0.9)
    return beat + np.random.default_rng(0).normal(0, 20, len(t)), "synthetic ECG"


class BenchSource:
    """A session stand-in: wall-clock time from t0 = 300 s, ECG and beats up to now, a 6/min pacer."""

    def __init__(self, n_straps: int) -> None:
        self.ecg, self.kind = load_ecg()
        self.t0 = time.perf_counter()
        rng = np.random.default_rng(1)
        rr = 1000 + 80 * np.sin(2 * np.pi * 0.1 * np.arange(2000)) + rng.normal(0, 15, 2000)
        self.rr_ms = rr
        self.rr_t = 1e-3 * np.cumsum(rr)
        self.corrected = rng.random(2000) < 0.01
        self.n_straps = n_straps

    def now(self) -> float:
        return 300.0 + (time.perf_counter() - self.t0)

    def participant_view(self, participant_id: str | None) -> ParticipantView:
        t = self.now()
        phase = (t % 10.0) / 10.0
        return ParticipantView(
            t,
            "Soothing rhythm",
            "breathing",
            "Let your breath find a soothing rhythm.",
            900 - t,
            0.5 - 0.5 * math.cos(2 * math.pi * phase),
            "breathe in" if phase < 0.5 else "breathe out",
            "live",
            0.5 + 0.3 * math.sin(t / 7),
        )

    def _strap(self, i: int, t: float) -> StrapView:
        n = int(t * FS) % len(self.ecg)
        lo = max(0, n - int(60 * FS))
        ecg_t = np.arange(lo, n) / FS + (t - n / FS)
        k = int(np.searchsorted(self.rr_t, t))
        j = int(np.searchsorted(self.rr_t, t - 300))
        return StrapView(
            f"H10-{i:02d}",
            f"P{i + 1:02d}",
            "connected",
            "ok",
            62.0,
            41.0,
            0.5,
            3,
            self.rr_t[j:k],
            self.rr_ms[j:k],
            self.corrected[j:k],
            [(120.0, 131.0)],
            ecg_t,
            self.ecg[lo:n],
        )

    def monitor_view(self) -> MonitorView:
        t = self.now()
        return MonitorView(
            t,
            "bench",
            PHASES,
            0,
            600 - t,
            False,
            [self._strap(i, t) for i in range(self.n_straps)],
            [(200.0, "note")],
        )

    def add_marker(self, label: str, note: str) -> None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def skip_phase(self) -> None: ...
    def end_session(self) -> None: ...
    def participant_pause(self, participant_id: str | None) -> None: ...
    def participant_resume(self, participant_id: str | None) -> None: ...
    def participant_stop(self, participant_id: str | None) -> None: ...


class PaintCounter(QtCore.QObject):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def eventFilter(self, obj: QtCore.QObject, event: QtCore.QEvent) -> bool:
        if event.type() == QtCore.QEvent.Type.Paint:
            self.count += 1
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--straps", type=int, default=1)
    ap.add_argument("--fps", type=float, default=60.0, help="participant frame rate")
    ap.add_argument("--monitor-fps", type=float, default=60.0, help="monitor frame rate")
    ap.add_argument("--web-seconds", type=float, default=15.0,
                    help="seconds of each web display measurement (0: leave the web display figure out)")
    args = ap.parse_args()
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    source = BenchSource(args.straps)
    part = ParticipantWindow(source, fps=args.fps)
    part.resize(1280, 720)
    mon = MonitorWindow(source, source, fps=args.monitor_fps)
    mon.resize(1280, 800)
    part.show()
    mon.show()
    p_paints, m_paints = PaintCounter(), PaintCounter()
    part.installEventFilter(p_paints)
    first = next(iter(mon.panels.values()))
    first.plots.viewport().installEventFilter(m_paints)
    calls = {"p": 0, "m": 0}
    part.timer.timeout.connect(lambda: calls.__setitem__("p", calls["p"] + 1))
    mon.timer.timeout.connect(lambda: calls.__setitem__("m", calls["m"] + 1))
    for _ in range(30):  # warm up
        app.processEvents()
    print(
        f"{source.kind}, {int(60 * FS)} ECG samples per strap in view, {args.straps} strap(s), "
        f"target {args.fps:.0f} fps participant / {args.monitor_fps:.0f} fps monitor, "
        f"Qt platform {app.platformName()}"
    )

    part.timer.stop()
    mon.timer.stop()
    for name, win in (("participant", part), ("monitor", mon)):
        times = []
        for _ in range(120):
            t0 = time.perf_counter()
            win.refresh()
            win.repaint()  # the whole window, synchronously: the worst case
            app.processEvents()
            times.append(time.perf_counter() - t0)
        ms = sorted(1000 * x for x in times[10:])
        print(
            f"{name:12s} full frame: median {statistics.median(ms):5.2f} ms,"
            f" p95 {ms[int(0.95 * len(ms))]:5.2f} ms"
            f" -> at most {1000 / statistics.median(ms):5.0f} fps alone"
        )

    part.timer.start()
    mon.timer.start()
    calls.update(p=0, m=0)
    p_paints.count = m_paints.count = 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    QtCore.QTimer.singleShot(round(args.seconds * 1000), app.quit)
    app.exec()  # the real Qt event loop, as in the app
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    print(
        f"both windows live for {wall:.0f} s: participant {calls['p'] / wall:5.1f} pulls/s,"
        f" {p_paints.count / wall:5.1f} paints/s;"
        f" monitor {calls['m'] / wall:5.1f} pulls/s, {m_paints.count / wall:5.1f} plot paints/s;"
        f" CPU {cpu / wall:.2f} cores ({100 * cpu / wall:.0f}% of one core)"
    )
    for win in (part, mon):  # closed: they must not run beside the web display figure
        win.timer.stop()
        win.close()
    if args.web_seconds > 0:
        web_figure(args.web_seconds)


def _breathing_session(tmp: Path):
    """Six simulated straps on real time, in cmt-soothing's paced breathing phase from the start."""
    from biofeedback.live.recorder import build_session, parse_device_specs
    from protocols.library import get_protocol
    from protocols.model import Protocol
    from recordings.store import Store

    base = get_protocol("cmt-soothing")
    protocol = Protocol("bench-web", "", tuple(ph for ph in base.phases if ph.pacer is not None))
    store = Store(tmp / f"bench-{time.monotonic_ns()}.sqlite")
    specs = parse_device_specs([f"sim=P{i:02d}" for i in range(1, 7)], None)
    return store, build_session(store, protocol, specs, seed=5)


def _cpu_during(seconds: float, wait) -> float:
    """Cores used by this process over `seconds` of wall time, spent in `wait(seconds)`."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    wait(seconds)
    return (time.process_time() - cpu0) / (time.perf_counter() - wall0)


def _recording(tmp: Path, seconds: float, mode: str) -> float:
    """CPU (cores) of this process while a six-strap recording runs with `mode`: none, web (six pages) or qt."""
    import asyncio
    import threading

    store, session = _breathing_session(tmp)
    web = None
    if mode == "web":
        from biofeedback.live.web_display import WebDisplay

        web = WebDisplay(session, "127.0.0.1", 0)
        session.add_listener(web)
    worker = threading.Thread(target=lambda: asyncio.run(session.run()), daemon=True)
    worker.start()
    try:
        time.sleep(2.0)  # the straps connect and the first beats arrive
        if mode == "none":
            return _cpu_during(seconds, time.sleep)
        if mode == "qt":
            app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
            window = ParticipantWindow(session, "P01", controls=session)
            window.resize(1280, 720)
            window.show()

            def qt_wait(s: float) -> None:
                QtCore.QTimer.singleShot(round(s * 1000), app.quit)
                app.exec()

            cpu = _cpu_during(seconds, qt_wait)
            window.timer.stop()
            window.close()
            return cpu
        from playwright.sync_api import sync_playwright

        assert web is not None and web.wait_serving(10)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=os.environ.get("CMT_CHROMIUM", "/usr/bin/chromium"))
            pages = []
            for url in web.urls.values():
                page = browser.new_page(viewport={"width": 820, "height": 1180})
                page.goto(url)
                pages.append(page)
            for page in pages:
                page.wait_for_function("() => document.body.dataset.connected === '1'")
            assert sum(web.connected(pid) for pid in web.urls) == 6
            sent0 = web.frames_sent
            cpu = _cpu_during(seconds, time.sleep)  # Playwright's client is idle: only the server works
            print(f"  six pages: {(web.frames_sent - sent0) / seconds:.1f} frames/s sent in all")
            browser.close()
        return cpu
    finally:
        session.end_session()
        worker.join(timeout=20)
        store.close()


def web_figure(seconds: float) -> None:
    import shutil
    import tempfile

    try:
        import aiohttp  # noqa: F401
        import playwright  # noqa: F401
    except ImportError as exc:
        print(f"web display figure left out: {exc} (pip install -e '.[test]')")
        return
    if not shutil.which(os.environ.get("CMT_CHROMIUM", "/usr/bin/chromium")):
        print("web display figure left out: no Chromium (apt install chromium)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        alone = _recording(Path(tmp), seconds, "none")
        web = _recording(Path(tmp), seconds, "web")
        qt = _recording(Path(tmp), seconds, "qt")
    web_extra, qt_extra = max(web - alone, 0.0), max(qt - alone, 1e-6)
    print(f"recording six straps for {seconds:.0f} s each: alone {alone:.3f} cores; serving six web pages "
          f"{web:.3f} (+{web_extra:.3f}); one Qt participant window at 60 fps {qt:.3f} (+{qt_extra:.3f})")
    print(f"six web pages cost {web_extra / qt_extra:.2f}× one Qt participant window "
          f"({'below' if web_extra < qt_extra else 'NOT below'} the goal of 1)")


if __name__ == "__main__":
    main()
