"""--lsl-in: other apps' LSL streams (numeric and markers) recorded raw into the session, on the session clock."""

from __future__ import annotations

import asyncio
import csv
import threading
import time
import uuid

import mne
import numpy as np
import pytest

from biofeedback.live.recorder import build_session, parse_device_specs
from protocols.model import Phase, PhaseKind, Protocol
from recordings.export_csv import export_csv
from recordings.export_edf import export_edf
from recordings.store import Store

SHORT = Protocol("lsl-in", "", (Phase("baseline", PhaseKind.REST, 10.0), Phase("recovery", PhaseKind.REST, 6.0)))


class _Sender(threading.Thread):
    """A skin-conductance device (2 channels, 32 Hz) and a PsychoPy marker stream, stamped with local_clock()."""

    def __init__(self, tag: str, clock) -> None:
        import pylsl

        super().__init__(daemon=True)
        self.clock = clock
        eda = pylsl.StreamInfo(f"EDA-{tag}", "EDA", 2, 32.0, pylsl.cf_float32, f"eda-{tag}")
        chans = eda.desc().append_child("channels")
        for label in ("SCL", "SCR"):
            chans.append_child("channel").append_child_value("label", label)
        self.eda = pylsl.StreamOutlet(eda)
        self.psy = pylsl.StreamOutlet(
            pylsl.StreamInfo(f"PsychoPy-{tag}", "Markers", 1, 0.0, pylsl.cf_string, f"psy-{tag}")
        )
        self.stop = threading.Event()
        self.sent: list[tuple[float, float, list[float]]] = []  # (LSL stamp, session clock at push, values)
        self.markers: list[tuple[float, str]] = []

    def run(self) -> None:
        import pylsl

        k = 0
        while not self.stop.is_set():
            stamp, now = pylsl.local_clock(), self.clock.now()
            values = [1.0 + 0.01 * k, float(k % 7)]
            self.eda.push_sample(values, stamp)
            self.sent.append((stamp, now, values))
            if k % 20 == 5:
                text = f"trial {k // 20} onset"
                self.psy.push_sample([text], stamp)
                self.markers.append((now, text))
            k += 1
            time.sleep(1 / 32)


def test_streams_are_recorded_raw_on_the_session_clock_and_exported(tmp_path):
    from biofeedback.live.lsl_inlets import LslInlets

    tag = uuid.uuid4().hex[:8]
    speed = 5.0
    with Store(tmp_path / "s.sqlite") as store:
        session = build_session(store, SHORT, parse_device_specs(["sim"], "P09"), speed=speed, seed=3)
        sender = _Sender(tag, session.clock)
        inlets = LslInlets(session, [f"EDA-{tag}", f"PsychoPy-{tag}"])
        session.add_listener(inlets)
        sender.start()
        (sid,) = asyncio.run(session.run())
        sender.stop.set()
        sender.join()
        eda, psy = store.lsl_streams(sid)
        assert (eda.name, eda.type, eda.channel_count, eda.nominal_srate) == (f"EDA-{tag}", "EDA", 2, 32.0)
        assert (psy.type, psy.rate) == ("Markers", speed)
        got = store.lsl_samples(eda)
        sent = [s for s in sender.sent if s[0] <= got.lsl_t[-1]]  # pushed after the last pull: not in the session
        assert len(got.t) == len(sent) > 60
        np.testing.assert_allclose(got.lsl_t, [s[0] for s in sent], atol=1e-9)  # the raw stamps, unchanged
        np.testing.assert_allclose(np.asarray(got.values), [s[2] for s in sent], rtol=1e-6)
        # the session time of each sample is what the session clock read when it was pushed (one machine); a
        # sample pushed before the clock started is kept, at a negative session time
        started = got.t > 0.05
        np.testing.assert_allclose(got.t[started], np.array([s[1] for s in sent])[started], atol=0.01 * speed)
        assert got.t[0] < 0.5 and got.t[-1] > SHORT.total_duration_s - 1.0  # from the start to the end
        marks = store.lsl_samples(psy)
        texts = [v[0] for v in marks.values]
        assert texts == [m[1] for m in sender.markers][: len(texts)] and len(texts) >= 3
        np.testing.assert_allclose(marks.t, [m[0] for m in sender.markers][: len(texts)], atol=0.01 * speed)
        files = export_csv(store, sid, tmp_path / "csv")
        edf = mne.io.read_raw_edf(export_edf(store, sid, tmp_path / "s.edf"), verbose="error")
    psychopy = [(o, d) for o, d in zip(edf.annotations.onset, edf.annotations.description, strict=True)
                if d.startswith(f"PsychoPy-{tag}: ")]  # fmt: skip
    assert [d for _, d in psychopy] == [f"PsychoPy-{tag}: {t}" for t in texts]
    np.testing.assert_allclose([o for o, _ in psychopy], marks.t, atol=0.01)
    by_name = {p.name: p for p in files}
    with by_name[f"lsl_EDA-{tag}.csv"].open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["participant_id", "session_id", "t_s", "lsl_time_s", "SCL", "SCR"]
    assert len(rows) == len(got.t) and float(rows[3]["SCL"]) == pytest.approx(got.values[3][0], rel=1e-6)
    assert float(rows[3]["t_s"]) == pytest.approx(got.t[3], abs=1e-6)
    with by_name[f"lsl_PsychoPy-{tag}.csv"].open() as fh:
        assert [r["ch1"] for r in csv.DictReader(fh)] == texts


def test_cli_refuses_a_stream_that_is_not_there_in_one_line(tmp_path, capsys):
    import app

    store = tmp_path / "s.sqlite"
    name = f"absent-{uuid.uuid4().hex[:8]}"
    code = app.main(["session", "run", "--participant", "P01", "--protocol", "cmt-soothing", "--device", "sim",
                     "--speed", "100", "--headless", "--lsl-in", name, "--store", str(store)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert f"no LSL stream named '{name}' found within 5 s" in err and "Traceback" not in err
    with Store(store) as st:
        assert [s.state for s in st.sessions()] == ["stopped"]


def test_a_failing_pull_is_alerted_and_a_store_failure_stops_the_recording():
    import asyncio

    from biofeedback.live.lsl_inlets import LslInlets
    from recordings.store import StoreFullError

    class FakeSession:
        def __init__(self) -> None:
            self.alerts: list[str] = []
            self.failed: list[Exception] = []

        def _alert(self, line: str) -> None:
            self.alerts.append(line)

        def _store_failed(self, exc: Exception) -> None:
            self.failed.append(exc)

    inlets = LslInlets.__new__(LslInlets)  # no streams to resolve: only the pump's failure handling
    inlets._session, inlets.poll_s, inlets.streams = FakeSession(), 0.0, []
    failures = iter([OSError("inlet lost"), OSError("inlet lost"), StoreFullError("disk full")])

    def pull() -> int:
        raise next(failures)

    inlets._pull_all = pull
    asyncio.run(asyncio.wait_for(inlets._pump(), timeout=5.0))  # returns: it never dies silently nor loops on
    assert len(inlets._session.alerts) == 1 and "inlet lost" in inlets._session.alerts[0]
    assert [str(e) for e in inlets._session.failed] == ["disk full"]
