"""Beat review: pure replay of edits, the quality grade's boundaries, the audited store layer, the command line and
the Qt review window driven by real clicks and keys (offscreen), on a simulated session with ECG and ectopic beats."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

import app
from biofeedback.analysis import artifacts
from biofeedback.analysis.analyze import analyze_session
from biofeedback.analysis.beat_source import ECG_UNAVAILABLE, record_edit, select_beats
from biofeedback.analysis.review import apply_edits, quality_grade
from biofeedback.live.recorder import build_session, parse_device_specs
from devices.physiology import SimParticipant
from devices.virtual_time import LoopClock, run_virtual
from protocols.model import Phase, PhaseKind, Protocol
from recordings.review import ReviewEdit, ReviewError, add_edit, edits, has_review, undo_last
from recordings.store import Beats, Store

PROTOCOL = Protocol("review-test", "two phases", (Phase("baseline", PhaseKind.REST, 120.0),
                                                  Phase("breathing", PhaseKind.BREATHING, 120.0)))  # fmt: skip
SHOTS = Path("/tmp/reviewshots")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """A 4-minute simulated session with ECG and 2 % ectopic beats, recorded in virtual time (a closed store file)."""
    path = tmp_path_factory.mktemp("review") / "store.sqlite"
    store = Store(path)
    session = build_session(store, PROTOCOL, parse_device_specs(["sim"], "P01"), clock=LoopClock(), ecg=True,
                            participants={"P01": SimParticipant(seed=3, ectopic_rate=0.02)})  # fmt: skip
    run_virtual(session.run())
    store.close()
    return path


@pytest.fixture
def store(recorded, tmp_path):
    path = tmp_path / "store.sqlite"
    shutil.copy(recorded, path)
    with Store(path) as s:
        yield s


def _sid(store: Store) -> int:
    return store.sessions()[0].id


def _raw_and_decoded(store: Store, sid: int) -> str:
    """A digest of the session's raw packets and decoded beat rows, byte for byte."""
    h = hashlib.sha256()
    for table, order in (("packets", "id"), ("beats", "rowid"), ("ecg_chunks", "rowid")):
        for row in store.connection.execute(f"SELECT * FROM {table} WHERE session_id=? ORDER BY {order}", (sid,)):
            h.update(repr(row).encode())
    return h.hexdigest()


def _edit(id_: int, action: str, t: float, t_end=None, kind=None) -> ReviewEdit:
    return ReviewEdit(id_, 1, "", "AB", action, t, t_end, kind, "")


# -- pure replay ---------------------------------------------------------------------------------------------------


def _beats() -> Beats:
    rr = np.array([800.0, 810, 790, 805, 795, 800, 820, 780, 800, 810])
    t = 10.0 + np.cumsum(rr) / 1000.0
    return Beats(t, rr, np.array([True] + [False] * 9), np.zeros(10))


def test_delete_merges_the_intervals_and_add_splits_one_exactly():
    b = _beats()
    out = apply_edits(b, [_edit(1, "delete", b.t[4])]).beats
    assert len(out.t) == 9 and out.rr_ms[4] == b.rr_ms[4] + b.rr_ms[5]
    np.testing.assert_allclose(np.sum(out.rr_ms), np.sum(b.rr_ms))
    mid = b.t[5] - 0.3
    out = apply_edits(b, [_edit(1, "add", mid)]).beats
    assert len(out.t) == 11 and out.t[5] == mid
    np.testing.assert_allclose(out.rr_ms[5:7], [b.rr_ms[5] - 300.0, 300.0])
    with pytest.raises(ReviewError, match="at least 200 ms"):
        apply_edits(b, [_edit(1, "add", b.t[5] - 0.1)], strict=True)


def test_a_mark_leaves_out_both_intervals_touching_the_beat_like_a_gap():
    b = _beats()
    r = apply_edits(b, [_edit(1, "mark", b.t[4] + 0.02)])
    assert set(np.round(r.excluded_t, 6)) == {round(b.t[4], 6), round(b.t[5], 6)}
    assert len(r.beats.t) == 8 and r.beats.gap_before[4]  # beat 6 starts a stretch, its RR (5 → 6) counts
    assert np.all(np.isfinite(r.beats.rr_ms))
    back = apply_edits(b, [_edit(1, "mark", b.t[4]), _edit(2, "unmark", b.t[4])])
    np.testing.assert_array_equal(back.beats.t, b.t)


def test_a_bad_segment_leaves_out_every_interval_overlapping_it():
    b = _beats()
    r = apply_edits(b, [_edit(1, "bad-segment", b.t[3] + 0.1, b.t[5] - 0.1, "movement")])
    # intervals ending at beats 4 and 5 overlap it, and 6's starts at 5; beat 6 then starts a stretch
    np.testing.assert_allclose(r.excluded_t, b.t[4:6])
    assert r.beats.gap_before[list(r.beats.t).index(b.t[6])]


def test_revert_events_gives_back_the_recorded_intervals():
    rng = np.random.default_rng(1)
    rr = 800 + rng.normal(0, 15, 200)
    bad, _ = artifacts.inject(rr, "ectopic", 0.02, rng)
    fix = artifacts.correct_rr(bad)
    assert fix.n_events >= 1
    kept = artifacts.revert_events(bad, fix, fix.events[:1])
    assert kept.n_events == fix.n_events - 1
    e = fix.events[0]
    pos = {int(s): k for k, s in enumerate(kept.beat_source) if s >= 0}
    np.testing.assert_array_equal(kept.rr[pos[e.first]:pos[e.last]], bad[e.first:e.last])
    np.testing.assert_allclose(np.sum(kept.rr), np.sum(bad))


# -- the grade -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("artifact", "bad", "gap", "reviewed", "usable", "grade"), [
    (1.0, 2.0, 3.0, True, 120, "A"),
    (1.01, 0.0, 0.0, True, 120, "B"),
    (0.0, 2.5, 2.51, True, 120, "B"),
    (0.0, 0.0, 0.0, False, 120, "B"),
    (5.0, 10.0, 10.0, False, 120, "B"),
    (5.01, 0.0, 0.0, True, 120, "C"),
    (0.0, 10.0, 10.01, True, 120, "C"),
    (0.0, 0.0, 0.0, True, 59.9, "C"),
])  # fmt: skip
def test_quality_grade_boundaries(artifact, bad, gap, reviewed, usable, grade):
    got, why = quality_grade(artifact, bad, gap, reviewed=reviewed, usable_s=usable)
    assert got == grade and why


def test_an_undecided_correction_keeps_a_reviewed_phase_at_b():
    assert quality_grade(0.5, 0, 0, reviewed=True, usable_s=120, undecided=1) == (
        "B", "1 correction not yet accepted or rejected")


# -- store ---------------------------------------------------------------------------------------------------------


def test_edits_are_appended_undo_is_audited_and_codes_are_checked(store):
    sid = _sid(store)
    with pytest.raises(ReviewError, match="reviewer 'Anna'"):
        add_edit(store, sid, "mark", reviewer="Anna", t=10.0)
    with pytest.raises(ReviewError, match="kind"):
        add_edit(store, sid, "bad-segment", reviewer="AB", t=10.0, t_end=20.0, kind="sneeze")
    a = add_edit(store, sid, "bad-segment", reviewer="AB", t=10.0, t_end=20.0, kind="noise", reason="cough")
    b = add_edit(store, sid, "mark", reviewer="R01", t=30.0)
    assert undo_last(store, sid, reviewer="AB").id == b.id
    assert undo_last(store, sid, reviewer="AB").id == a.id
    with pytest.raises(ReviewError, match="no review edit to undo"):
        undo_last(store, sid, reviewer="AB")
    rows = edits(store, sid)
    assert [r.action for r in rows] == ["bad-segment", "mark", "undo", "undo"]
    assert [r.undone_by for r in rows[:2]] == [rows[3].id, rows[2].id] and not has_review(store, sid)
    assert rows[0].reason == "cough" and rows[0].utc.endswith("+00:00")


def test_an_older_store_gets_the_table_and_deleting_a_reviewed_session_works(store):
    sid = _sid(store)
    add_edit(store, sid, "mark", reviewer="AB", t=30.0)
    path = store.path
    store.close()
    raw = sqlite3.connect(path)
    raw.execute("DROP TABLE review_edits")
    raw.execute("UPDATE meta SET value='3' WHERE key='schema_version'")
    raw.commit()
    raw.close()
    with Store(path, readonly=True) as ro:
        assert edits(ro, sid) == [] and select_beats(ro, sid).source == "auto"
    with Store(path) as s:
        assert edits(s, sid) == []
        add_edit(s, sid, "mark", reviewer="AB", t=30.0)
        s.delete_session(sid, by="AB")
        assert s.connection.execute("SELECT COUNT(*) FROM review_edits").fetchone()[0] == 0


# -- analysis, command line, exports -------------------------------------------------------------------------------


def test_cli_edits_change_the_analysis_and_every_export_says_which_beats(store, tmp_path, capsys):
    sid = _sid(store)
    path = str(store.path)
    before = _raw_and_decoded(store, sid)
    auto = analyze_session(store, sid)
    assert auto.beats == "auto" and [r["grade"] for r in auto.review] == ["B", "B"]
    store.close()
    assert app.main(["review", str(sid), "--mark-bad", "20", "50", "--kind", "movement", "--reviewer", "AB",
                     "--reason", "moved", "--store", path]) == 0  # fmt: skip
    assert app.main(["review", str(sid), "--mark", "5", "--store", path]) == 2
    assert "--reviewer CODE" in capsys.readouterr().err
    with Store(path, readonly=True) as s:
        reviewed = analyze_session(s, sid)
        assert reviewed.beats == "reviewed" and reviewed.review[0]["edits"] == {"bad-segment": 1}
        assert reviewed.review[0]["bad_segment_pct"] == pytest.approx(25.0)
        chosen = reviewed.selection.beats.t
        assert not np.any((chosen >= 20) & (chosen <= 50))
        assert reviewed.phases[0].n_beats < auto.phases[0].n_beats
        assert analyze_session(s, sid, beats="auto").phases[0].rmssd_ms == auto.phases[0].rmssd_ms
        assert analyze_session(s, sid, beats="strap").correction == "none"
    assert app.main(["review", str(sid), "--list", "--store", path]) == 0
    out = capsys.readouterr().out
    assert "bad segment (movement) 20.000-50.000 s" in out and "1 bad-segment" in out
    for fmt in ("csv", "kubios", "edf", "bids", "table"):
        dest = tmp_path / fmt
        sel = ["--all", "--source", "simulated"] if fmt in ("bids", "table") else [str(sid)]
        assert app.main(["export", *sel, "--format", fmt, "--out", str(dest), "--beats", "reviewed",
                         "--store", path]) == 0, fmt  # fmt: skip
        out = capsys.readouterr().out
        assert "reviewed beats (1 edits in force by AB)" in " ".join(out.split()), fmt
    rows = (tmp_path / "kubios").glob("*_rr.txt")
    n_rr = max(len(p.read_text().split()) for p in rows)
    with Store(path, readonly=True) as s:
        assert n_rr == len(select_beats(s, sid).beats.t) < len(s.beats(sid).t)
        assert _raw_and_decoded(s, sid) == before
    if importlib.util.find_spec("biofeedback.analysis.ecg_beats") is None:
        assert app.main(["analyze", str(sid), "--beats", "ecg", "--store", path]) == 2
        assert capsys.readouterr().err.strip() == f"error: {ECG_UNAVAILABLE}"


def test_reject_keeps_the_recorded_beats_and_accept_keeps_the_correction(store):
    sid = _sid(store)
    auto = analyze_session(store, sid)
    events = auto.timeline.event_t
    assert len(events) >= 2
    record_edit(store, sid, "reject", reviewer="AB", t=float(events[0]) + 0.02)
    record_edit(store, sid, "accept", reviewer="AB", t=float(events[1]))
    with pytest.raises(ReviewError, match="no automatic correction"):
        record_edit(store, sid, "accept", reviewer="AB", t=float(events[0]) + 5.0)
    after = analyze_session(store, sid)
    assert len(after.timeline.event_t) == len(events) - 1
    np.testing.assert_allclose(after.timeline.rejected_t, events[:1])
    assert sum(p.corrected_pct for p in after.phases) < sum(p.corrected_pct for p in auto.phases)


# -- the window ----------------------------------------------------------------------------------------------------


def _click(qtbot, win, plot, x: float, y: float, shift: bool = False) -> None:
    from PySide6 import QtCore

    pos = win.plots.mapFromScene(plot.vb.mapViewToScene(QtCore.QPointF(x, y)))
    mods = QtCore.Qt.KeyboardModifier.ShiftModifier if shift else QtCore.Qt.KeyboardModifier.NoModifier
    qtbot.mouseClick(win.plots.viewport(), QtCore.Qt.MouseButton.LeftButton, mods, pos)


def _drag(win, plot, x0: float, x1: float, y: float) -> None:
    from PySide6 import QtCore, QtGui, QtWidgets

    vp = win.plots.viewport()
    shift = QtCore.Qt.KeyboardModifier.ShiftModifier
    left = QtCore.Qt.MouseButton.LeftButton

    def send(kind, x, buttons, button=QtCore.Qt.MouseButton.NoButton):
        p = QtCore.QPointF(win.plots.mapFromScene(plot.vb.mapViewToScene(QtCore.QPointF(x, y))))
        ev = QtGui.QMouseEvent(kind, p, QtCore.QPointF(vp.mapToGlobal(p.toPoint())), button, buttons, shift)
        QtWidgets.QApplication.sendEvent(vp, ev)

    send(QtCore.QEvent.Type.MouseButtonPress, x0, left, left)
    for x in np.linspace(x0, x1, 8)[1:]:
        send(QtCore.QEvent.Type.MouseMove, float(x), left)
    send(QtCore.QEvent.Type.MouseButtonRelease, x1, QtCore.Qt.MouseButton.NoButton, left)


def _key(qtbot, win, key, mod=None) -> None:
    from PySide6 import QtCore

    qtbot.keyClick(win.plots, key, mod or QtCore.Qt.KeyboardModifier.NoModifier)


def test_review_window_edits_by_click_and_key_change_the_analysis(store, qtbot):
    from PySide6 import QtCore, QtWidgets

    from biofeedback.analysis.review_session import ReviewSession
    from biofeedback.display.review import ReviewWindow

    K = QtCore.Qt.Key
    sid = _sid(store)
    before = _raw_and_decoded(store, sid)
    win = ReviewWindow(ReviewSession(store, sid), reviewer="AB")
    qtbot.addWidget(win)
    win.resize(1400, 860)
    win.show()
    qtbot.waitExposed(win)
    win.activateWindow()
    qtbot.waitUntil(lambda: QtWidgets.QApplication.activeWindow() is win)
    win.rr_plot.setXRange(30, 60, padding=0)
    qtbot.wait(50)
    base = win.analysis.phases[0]
    strap = store.beats(sid)
    clean = [i for i in range(40, 120) if not np.any(np.abs(win.corrections - strap.t[i]) < 3)]
    i = clean[0]
    win.rr_plot.setXRange(strap.t[i] - 10, strap.t[i] + 10, padding=0)
    qtbot.wait(20)

    # mark: click the beat's dot, press M
    _click(qtbot, win, win.rr_plot, strap.t[i], strap.rr_ms[i])
    assert win.sel_t == pytest.approx(strap.t[i])
    _key(qtbot, win, K.Key_M)
    marked = win.analysis.phases[0]
    assert marked.n_beats == base.n_beats - 2 and marked.rmssd_ms != base.rmssd_ms
    # unmark (the button, clicked)
    qtbot.mouseClick(win.buttons["unmark"], QtCore.Qt.MouseButton.LeftButton)
    assert win.analysis.phases[0].rmssd_ms == base.rmssd_ms and win.analysis.phases[0].n_beats == base.n_beats

    # delete on the ECG: click the beat's tick, press D
    j = clean[3]
    win.rr_plot.setXRange(strap.t[j] - 5, strap.t[j] + 5, padding=0)
    qtbot.wait(20)
    _click(qtbot, win, win.ecg_plot, strap.t[j], float(win._ecg_at(np.array([strap.t[j]]))[0]))
    assert win.sel_t == pytest.approx(strap.t[j])
    _key(qtbot, win, K.Key_D)
    deleted = win.analysis.phases[0]
    assert len(win.analysis.selection.beats.t) == len(strap.t) - 1 and deleted.rmssd_ms != base.rmssd_ms
    # the long interval left behind is a missed beat to the automatic correction, which fills it
    assert deleted.corrected_pct > base.corrected_pct
    # add it back on the ECG: click 30 ms off its R-peak (the click snaps to the peak), press B
    near = np.flatnonzero(np.abs(win.ecg.t - strap.t[j]) < 0.1)
    r_peak = float(win.ecg.t[near[np.argmax(win.ecg.uv[near])]])
    _click(qtbot, win, win.ecg_plot, r_peak + 0.03, 0.0)
    _key(qtbot, win, K.Key_B)
    added = win.state.added_t
    assert len(added) == 1 and added[0] == pytest.approx(r_peak, abs=0.008)  # one ECG sample
    assert abs(added[0] - strap.t[j]) < 0.08  # the strap's beat time of the same heartbeat
    assert len(win.analysis.selection.beats.t) == len(strap.t)
    assert win.analysis.phases[0].corrected_pct == base.corrected_pct
    rb = win.analysis.selection.beats
    k = int(np.argmin(np.abs(rb.t - added[0])))
    assert rb.rr_ms[k] + rb.rr_ms[k + 1] == pytest.approx(strap.rr_ms[j] + strap.rr_ms[j + 1])  # sums stay exact
    assert win.analysis.phases[0].rmssd_ms != deleted.rmssd_ms

    # bad segment: Shift-drag across 150-170 s on the tachogram, choose movement, press S
    win.rr_plot.setXRange(140, 180, padding=0)
    qtbot.wait(20)
    win.kind_combo.setCurrentText("movement")
    _drag(win, win.rr_plot, 150.0, 170.0, float(np.median(strap.rr_ms)))
    assert win.span is not None and win.span[0] == pytest.approx(150, abs=0.3) and win.span[1] == pytest.approx(
        170, abs=0.3)
    before_bad = win.analysis.phases[1].n_beats
    _key(qtbot, win, K.Key_S)
    row = win.analysis.review[1]
    assert row["edits"] == {"bad-segment": 1} and row["bad_segment_pct"] == pytest.approx(100 * 20 / 120, abs=0.5)
    chosen = win.analysis.selection.beats.t
    assert not np.any((chosen > win.state.segments[0][0]) & (chosen < win.state.segments[0][1]))
    assert win.analysis.phases[1].n_beats < before_bad - 15
    SHOTS.mkdir(parents=True, exist_ok=True)
    win.rr_plot.setXRange(120, 200, padding=0)
    qtbot.wait(50)
    win.grab().save(str(SHOTS / "review-window.png"))

    # undo (Ctrl+Z) takes the segment back
    _key(qtbot, win, K.Key_Z, QtCore.Qt.KeyboardModifier.ControlModifier)
    assert win.analysis.phases[1].n_beats == before_bad and win.state.segments == []

    # the audit lists every edit, undone ones included; raw and decoded rows never changed
    rows = edits(store, sid)
    assert [r.action for r in rows] == ["mark", "unmark", "delete", "add", "bad-segment", "undo"]
    assert rows[4].undone_by == rows[5].id and all(r.reviewer == "AB" for r in rows)
    assert win.audit_list.count() == len(rows) and "undone by" in win.audit_list.item(4).text()
    assert _raw_and_decoded(store, sid) == before


def test_review_window_refuses_an_edit_without_a_valid_reviewer(store, qtbot):
    from PySide6 import QtCore, QtWidgets

    from biofeedback.analysis.review_session import ReviewSession
    from biofeedback.display.review import ReviewWindow

    sid = _sid(store)
    win = ReviewWindow(ReviewSession(store, sid), reviewer="")
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    win.activateWindow()
    qtbot.waitUntil(lambda: QtWidgets.QApplication.activeWindow() is win)
    qtbot.keyClick(win.plots, QtCore.Qt.Key.Key_M)
    assert "not stored" in win.message.text() and "reviewer" in win.message.text()
    assert edits(store, sid) == []
    win.reviewer_edit.setText("AB")
    qtbot.keyClick(win.plots, QtCore.Qt.Key.Key_N)  # next automatic correction
    qtbot.keyClick(win.plots, QtCore.Qt.Key.Key_R)
    assert [e.action for e in edits(store, sid)] == ["reject"]
    assert len(win.analysis.timeline.rejected_t) == 1


def test_the_review_command_opens_the_window_on_the_session(store, monkeypatch):
    from PySide6 import QtWidgets

    from biofeedback.display.review import ReviewWindow

    sid = _sid(store)
    path = str(store.path)
    store.close()
    seen = []

    def fake_exec(_app=None):
        (win,) = [w for w in QtWidgets.QApplication.topLevelWidgets() if isinstance(w, ReviewWindow) and w.isVisible()]
        seen.append((win.windowTitle(), win.reviewer_edit.text(), win.phase_table.rowCount()))
        win.close()
        return 0

    monkeypatch.setattr(QtWidgets.QApplication, "exec", fake_exec)
    assert app.main(["review", str(sid), "--reviewer", "AB", "--store", path]) == 0
    assert seen == [(f"Beat review · session {sid} · P01", "AB", 2)]


def test_ecg_beats_are_imported_only_when_asked_and_become_gapped_beats(store, monkeypatch):
    import sys
    import types

    t = np.array([1.0, 1.8, 2.6, 3.4, 8.0, 8.8, 9.6])  # a 4.6 s pause: no interval across it
    b = __import__("biofeedback.analysis.beat_source", fromlist=["beats_from_times"]).beats_from_times(t)
    np.testing.assert_allclose(b.t, [1.8, 2.6, 3.4, 8.8, 9.6])
    np.testing.assert_allclose(b.rr_ms, [800, 800, 800, 800, 800])
    assert b.gap_before.tolist() == [True, False, False, True, False]
    fake = types.ModuleType("biofeedback.analysis.ecg_beats")
    strap = store.beats(_sid(store))
    fake.ecg_beat_times = lambda _store, _sid: strap.t[::2]  # every other beat: a distinct series
    monkeypatch.setitem(sys.modules, "biofeedback.analysis.ecg_beats", fake)
    ecg = analyze_session(store, _sid(store), beats="ecg")
    assert ecg.beats == "ecg" and "ECG" in ecg.beats_note
    assert ecg.phases[0].mean_hr_bpm == pytest.approx(analyze_session(store, _sid(store)).phases[0].mean_hr_bpm / 2,
                                                      rel=0.05)  # fmt: skip


def test_the_report_shows_the_beats_used_the_edits_and_the_grade_per_phase(store, tmp_path):
    from biofeedback.analysis.report import render_report

    sid = _sid(store)
    record_edit(store, sid, "bad-segment", reviewer="AB", t=130.0, t_end=140.0, kind="noise")
    text = render_report(store, sid)
    assert "reviewed beats (1 edits in force by AB)" in text and "1 bad-segment" in text
    assert "<th>grade</th>" in text and "Quality grade: A when artifacts" in text
    strap = render_report(store, sid, beats="strap")
    assert "the strap&#x27;s beats as recorded (no correction)" in strap
