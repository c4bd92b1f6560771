"""The HTML session report: self-contained, truthful to the analysis, private, and rendered by a real browser."""

from __future__ import annotations

import asyncio
import base64
import io
import shutil
import stat
import subprocess
from html.parser import HTMLParser

import matplotlib.image as mpimg
import numpy as np
import pytest

import app
from biofeedback.analysis.analyze import analyze_session
from biofeedback.analysis.report import relative_to_baseline, render_report, write_report
from biofeedback.live.recorder import build_session, parse_device_specs
from devices.simulator import SimFaults
from devices.virtual_time import LoopClock, run_virtual
from protocols.library import get_protocol
from recordings.files import OutputExistsError
from recordings.store import Store

NOTE = "participant mentioned a difficult week"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """cmt-soothing on virtual time (never at the mercy of a loaded machine) with one disconnect, a burst of
    malformed packets and a manual marker with a note."""
    path = tmp_path_factory.mktemp("report") / "store.sqlite"
    store = Store(path)
    faults = {"P02": SimFaults(disconnects=[(400.0, 8.0)], malformed_bursts=[(700.0, 3.0)])}
    session = build_session(
        store, get_protocol("cmt-soothing"), parse_device_specs(["sim"], "P02"), seed=4, faults=faults,
        clock=LoopClock(),
    )

    async def run():
        async def manual():
            await session.clock.sleep(900.0)
            session.add_marker("door knock", note=NOTE)

        task = asyncio.create_task(manual())
        ids = await session.run()
        await task
        return ids

    (sid,) = run_virtual(run())
    yield store, sid, path
    store.close()


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href", "srcset", "poster", "data", "action"):
                self.refs.append((tag, name, value or ""))

    def handle_data(self, data):
        self.text.append(data)


def _parse(doc: str) -> _Refs:
    parser = _Refs()
    parser.feed(doc)
    return parser


def test_report_is_self_contained_with_real_images(recorded):
    store, sid, _ = recorded
    doc = render_report(store, sid)
    refs = _parse(doc).refs
    assert "http://" not in doc and "https://" not in doc and "url(" not in doc and "@import" not in doc
    images = [v for tag, _n, v in refs if tag == "img"]
    assert len(images) == 4
    assert all(ref.startswith("data:image/png;base64,") for _t, _n, ref in refs)
    for ref in images:
        png = base64.b64decode(ref.split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = mpimg.imread(io.BytesIO(png), format="png")
        assert pixels.shape[0] > 250 and pixels.shape[1] > 900
        assert pixels[..., :3].std() > 0.05  # drawn on, not blank


def test_report_shows_the_analysis_values_and_signal_quality(recorded):
    store, sid, _ = recorded
    text = " ".join(_parse(render_report(store, sid)).text)
    analysis = analyze_session(store, sid)
    assert "P02" in text and "cmt-soothing" in text and store.session(sid).started_utc[:10] in text
    for p in analysis.phases:
        assert p.name in text
        for value in (p.rmssd_ms, p.sdnn_ms, p.mean_hr_bpm):
            assert f"{value:.1f}" in text
        assert f"{p.hf_ms2:.0f}" in text
        assert f"{p.breathing_rate_bpm:.1f}" in text
        for note in p.notes:
            assert note in text
        for value, spec in ((p.sd1_ms, ".1f"), (p.dfa_alpha1, ".2f"), (p.coherence_ratio, ".2f")):
            assert value is None or f"{value:{spec}}" in text
    assert "RMSSD over time" in text and "coherence ratio" in text
    q = analysis.quality
    assert q["disconnects"] == 1 and q["malformed_packets"] > 0
    assert f"{q['malformed_packets']} of {q['packets']}" in text
    assert str(q["n_beats"]) in text


def test_soothing_response_is_relative_to_the_rest_baseline(recorded):
    store, sid, _ = recorded
    phases = analyze_session(store, sid).phases
    rel = relative_to_baseline(phases, 0)
    assert rel[0] == pytest.approx((100.0, 100.0))
    breathing = next(i for i, p in enumerate(phases) if p.kind == "breathing")
    assert rel[breathing][0] == pytest.approx(100 * phases[breathing].rmssd_ms / phases[0].rmssd_ms)
    assert rel[breathing][0] > 130  # slow paced breathing raises RMSSD in the simulated participant


def test_free_text_stays_out_unless_asked_for(recorded):
    store, sid, _ = recorded
    assert NOTE not in render_report(store, sid)
    assert NOTE in render_report(store, sid, include_text=True)


def test_typed_marker_label_is_drawn_only_with_include_text(recorded, monkeypatch):
    """The manual marker typed as "door knock" must not reach the PNG plots without include_text."""
    from matplotlib.axes import Axes

    store, sid, _ = recorded
    drawn: list[str] = []
    real_annotate = Axes.annotate

    def spy(self, text, *args, **kwargs):
        drawn.append(str(text))
        return real_annotate(self, text, *args, **kwargs)

    monkeypatch.setattr(Axes, "annotate", spy)
    doc = render_report(store, sid)
    assert drawn and "door knock" not in drawn and "door knock" not in doc
    drawn.clear()
    render_report(store, sid, include_text=True)
    assert "door knock" in drawn


def test_report_file_is_private_and_never_silently_replaced(recorded, tmp_path):
    store, sid, _ = recorded
    out = tmp_path / "reports" / "s.html"
    write_report(store, sid, out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    out.write_text("keep me")
    with pytest.raises(OutputExistsError):
        write_report(store, sid, out)
    assert out.read_text() == "keep me"
    write_report(store, sid, out, overwrite=True)
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert not list(out.parent.glob(".*partial"))


def test_cli_report_says_where_it_wrote(recorded, tmp_path, capsys):
    _store, sid, path = recorded
    out = tmp_path / "r.html"
    assert app.main(["report", str(sid), "--out", str(out), "--store", str(path)]) == 0
    assert str(out) in capsys.readouterr().out.replace("\n", "")
    assert app.main(["report", str(sid), "--out", str(out), "--store", str(path)]) == 2
    assert "--force" in capsys.readouterr().err
    assert app.main(["report", "999", "--out", str(tmp_path / "x.html"), "--store", str(path)]) == 2
    assert not (tmp_path / "x.html").exists()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium is not installed")
def test_headless_chromium_renders_the_report_with_its_plots(recorded, tmp_path):
    store, sid, _ = recorded
    out = write_report(store, sid, tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    cmd = [
        "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}", "--window-size=1280,2400", out.as_uri(),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    img = mpimg.imread(shot)[..., :3]
    assert img.shape[:2] == (2400, 1280)
    # the page is not blank: a white-ish card layout with plot areas full of colour and detail
    colourful = np.abs(img - img.mean(axis=2, keepdims=True)).sum(axis=2) > 0.08
    assert colourful.mean() > 0.03
    rows_with_ink = (img.std(axis=(1, 2)) > 0.02).mean()
    assert rows_with_ink > 0.3
    # the heart-rate plot (phase shading in pastel colours) sits in the first screen height
    band = img[700:1300]
    assert len(np.unique((band * 16).astype(int).reshape(-1, 3), axis=0)) > 50


def test_rmssd_over_time_follows_the_batch_rmssd_and_breaks_at_the_disconnect(recorded):
    from biofeedback.analysis.report import load_report_data

    store, sid, _ = recorded
    data = load_report_data(store, sid)
    assert np.allclose(np.diff(data.rmssd_t), 10.0)
    assert np.isfinite(data.rmssd_ms).mean() > 0.8
    around_gap = (data.rmssd_t > 400 - 30) & (data.rmssd_t < 408 + 30)
    assert around_gap.any() and not np.isfinite(data.rmssd_ms[around_gap]).any()
    for p in data.analysis.phases:
        inside = (data.rmssd_t - 30 >= p.start_s) & (data.rmssd_t + 30 <= p.end_s) & np.isfinite(data.rmssd_ms)
        if inside.sum() >= 3 and p.rmssd_ms is not None:
            assert np.median(data.rmssd_ms[inside]) == pytest.approx(p.rmssd_ms, rel=0.35)
