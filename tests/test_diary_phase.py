"""Diary phases: the protocol field, the session storing a participant's form answers, and the form on screen.

Sessions run on simulated straps (a scaled clock) in a background thread, as `biofeedback.display.app.run_with_displays`
runs them; the Qt test drives the real windows offscreen and fills the form by clicking its widgets.
"""

from __future__ import annotations

import asyncio
import csv
import json
import threading
import time
from pathlib import Path

import pytest

import app
from biofeedback.live.lsl_outlets import marker_text
from biofeedback.live.recorder import build_session, parse_device_specs
from biofeedback.live.session import DIARY_SKIPPED, DIARY_SUBMITTED, LiveSession, SessionListener
from protocols.instruments import DIARY_NAME, AnswerError, get_instrument, score
from protocols.library import get_protocol
from protocols.loader import ProtocolError, load_protocol, parse_protocol
from protocols.model import Phase, Protocol
from protocols.runner import ProtocolRunner
from recordings.answers import AnswerStore
from recordings.export_bids import export_bids
from recordings.export_csv import export_csv
from recordings.export_edf import edf_annotations
from recordings.protocol_json import protocol_from_dict, protocol_to_dict
from recordings.store import Store

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
SECRET = "my sister's voice, the blue kitchen"
HEADER = 'name = "t"\n'


def _phase(kind: str, extra: str = "", name: str = "p") -> str:
    return f'[[phase]]\nname = "{name}"\nkind = "{kind}"\nduration = "5min"\n{extra}'


# -- protocol field ------------------------------------------------------------------------------------------------


def test_instrument_on_a_diary_phase_by_builtin_name_and_default():
    p = parse_protocol(HEADER + _phase("diary", 'instrument = "example-likert"\n') + _phase("diary", name="q"))
    assert [ph.instrument for ph in p.phases] == ["example-likert", DIARY_NAME]
    assert parse_protocol(HEADER + _phase("rest")).phases[0].instrument is None


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        ("breathing", '"cmt-weekly-diary"', 'field "instrument": expected only on a phase of kind "diary", '
                                            'got it on kind "breathing"'),
        ("diary", '"cmt-weekly-dairy"', '(did you mean "cmt-weekly-diary"?)'),
        ("diary", "3", "expected the name of a built-in instrument (cmt-weekly-diary, example-likert) or the path "
                       "of an instrument TOML file, got 3"),
        ("diary", '""', 'got ""'),
        ("diary", '"forms/missing.toml"', "expected an instrument TOML file, got \"forms/missing.toml\": no such file"),
    ],
)  # fmt: skip
def test_bad_instrument_is_reported_with_file_phase_and_field(kind, value, expected):
    with pytest.raises(ProtocolError) as err:
        parse_protocol(HEADER + _phase(kind, f"instrument = {value}\n", name="look-back"), source="lab.toml")
    (problem,) = err.value.problems
    assert str(problem).startswith('lab.toml: phase 1 ("look-back"): field "instrument": ')
    assert expected in str(problem)


def test_instrument_file_is_found_beside_the_protocol_and_checked(tmp_path):
    forms = tmp_path / "forms"
    forms.mkdir()
    (forms / "mood.toml").write_text('name = "mood"\ntitle = "Mood"\n[scale]\nmin = 1\nmax = 5\n'
                                     '[[item]]\nid = "calm"\ntext = "How calm?"\n')  # fmt: skip
    proto = tmp_path / "study.toml"
    proto.write_text(HEADER + _phase("diary", 'instrument = "forms/mood.toml"\n'))
    phase = load_protocol(proto).phases[0]
    assert Path(phase.instrument) == (forms / "mood.toml").resolve()
    assert get_instrument(phase.instrument).name == "mood"  # usable wherever the session later runs from
    (forms / "mood.toml").write_text('name = "mood"\ntitle = "Mood"\n')  # broken: no scale, no items
    with pytest.raises(ProtocolError) as err:
        load_protocol(proto)
    (problem,) = err.value.problems
    assert 'field "instrument": expected a valid instrument file, got "forms/mood.toml"' in str(problem)
    assert "[scale] table" in str(problem) and "[[item]]" in str(problem)


def test_model_keeps_instruments_to_diary_phases():
    with pytest.raises(ValueError, match="only a diary phase names an instrument"):
        Phase("x", "rest", 60.0, instrument=DIARY_NAME)
    with pytest.raises(ValueError, match="non-empty"):
        Phase("x", "diary", 60.0, instrument=" ")


def test_stored_protocol_and_phase_start_marker_carry_the_instrument():
    proto = get_protocol("cmt-soothing-diary")
    stored = json.loads(json.dumps(protocol_to_dict(proto)))
    assert stored["phases"][0]["instrument"] == DIARY_NAME and "instrument" not in stored["phases"][1]
    assert protocol_from_dict(stored) == proto
    start = next(m for m in ProtocolRunner(proto).start(0.0) if m.kind == "phase_start")
    assert start.detail["instrument"] == DIARY_NAME and start.detail["kind"] == "diary"


def test_builtin_soothing_diary_is_the_weekly_diary_then_cmt_soothing():
    proto, plain = get_protocol("cmt-soothing-diary"), get_protocol("cmt-soothing")
    diary = proto.phases[0]
    assert (diary.kind.value, diary.instrument, diary.feedback.value, diary.duration_s) == (
        "diary", DIARY_NAME, "hidden", 300.0)  # fmt: skip
    assert diary.pacer is None and "no right or wrong" in diary.prompt
    assert proto.phases[1:] == plain.phases


# -- the session ---------------------------------------------------------------------------------------------------

DIARY_THEN_REST = Protocol(
    "diary-test",
    "the weekly diary, then a short rest",
    (
        Phase("weekly-diary", "diary", 600.0, prompt="A short look back over your week.", feedback="hidden",
              instrument=DIARY_NAME),
        Phase("rest", "rest", 20.0, prompt="Rest."),
    ),
)  # fmt: skip
ANSWERS_P01 = {"sc_often": 7, "sc_powerful": 6, "sc_intrusive": 5, "sc_hard_to_dismiss": 4,
               "ss_often": 2, "ss_powerful": 3, "ss_accessible": None, "ss_warm": 1}  # fmt: skip


class MarkerTap(SessionListener):
    """What a listener such as the LSL outlets is handed."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.details: list[dict] = []

    def marker(self, marker) -> None:
        self.texts.append(marker_text(marker))
        self.details.append(dict(marker.detail))


class Background:
    """A session running in its own thread, the way the display app runs it."""

    def __init__(self, session: LiveSession) -> None:
        self.session = session
        self.result: list[int] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.result = asyncio.run(self.session.run())

    def wait_for_phase(self, name: str, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            phase = self.session.runner.state.phase
            if phase is not None and phase.name == name:
                return
            time.sleep(0.01)
        raise AssertionError(f"phase {name!r} did not start")

    def join(self, timeout_s: float = 30.0) -> list[int]:
        self.thread.join(timeout_s)
        assert not self.thread.is_alive()
        return self.result


def _group(store: Store, protocol: Protocol = DIARY_THEN_REST, **settings) -> LiveSession:
    specs = parse_device_specs(["sim=P01", "sim=P02"], None)
    return build_session(store, protocol, specs, speed=20, seed=4, settings=settings)


def test_answers_are_stored_with_session_and_week_and_the_phase_ends_once_everyone_responded(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    session = _group(store, week=3)
    tap = MarkerTap()
    session.add_listener(tap)
    run = Background(session)
    run.wait_for_phase("weekly-diary")
    assert session.participant_view("P01").instrument == DIARY_NAME
    with pytest.raises(AnswerError, match="sc_often"):
        session.submit_answers("P01", {"sc_often": 11})  # off the scale: refused, nothing recorded
    set_id = session.submit_answers("P01", ANSWERS_P01, {"week_notes": SECRET}).result(timeout=10)
    after_one = session.participant_view("P01")
    assert after_one.instrument is None and after_one.message.startswith("Thank you")
    assert session.participant_view("P02").instrument == DIARY_NAME  # still asked
    time.sleep(0.3)
    assert session.runner.state.phase.name == "weekly-diary"  # one of two is not everyone
    with pytest.raises(RuntimeError, match="already responded"):
        session.submit_answers("P01", ANSWERS_P01)
    session.skip_diary("P02")
    run.wait_for_phase("rest", timeout_s=5)
    sid1, sid2 = run.join()

    answers = AnswerStore(store)
    (stored,) = answers.find(include_text=True)
    assert (stored.id, stored.participant_id, stored.session_id) == (set_id, "P01", sid1)
    assert (stored.time_point, stored.week, stored.source) == ("week 3", 3, "form")
    assert stored.values == {k: (None if v is None else float(v)) for k, v in ANSWERS_P01.items()}
    assert stored.texts == {"week_notes": SECRET}
    scores = score(get_instrument(DIARY_NAME), stored.values)
    assert scores["self-criticism"].value == 22 and not scores["self-criticism"].prorated
    assert scores["self-soothing"].value == pytest.approx(6 / 3 * 4) and scores["self-soothing"].prorated

    for sid, label in ((sid1, DIARY_SUBMITTED), (sid2, DIARY_SKIPPED)):
        markers = store.markers(sid)
        (diary,) = [m for m in markers if m.kind == "diary"]
        assert (diary.label, diary.phase_name) == (label, "weekly-diary")
        (end,) = [m for m in markers if m.kind == "phase_end" and m.phase_name == "weekly-diary"]
        (skip,) = [m for m in markers if m.kind == "skip"]
        assert end.detail["ended"] == "skipped" and skip.detail["reason"].startswith("everyone")
        # the phase ended when the last participant responded, long before its planned 600 s
        assert diary.t <= end.t < 60.0 and end.detail["elapsed_s"] < 60.0
    submitted = next(m for m in store.markers(sid1) if m.kind == "diary")
    assert submitted.detail == {"instrument": DIARY_NAME, "time_point": "week 3", "answer_set": set_id}
    assert "diary: diary submitted" in tap.texts and "diary: diary skipped" in tap.texts
    store.close()


def test_answers_never_reach_markers_listeners_or_exports(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    session = _group(store, week=5)
    tap = MarkerTap()
    session.add_listener(tap)
    run = Background(session)
    run.wait_for_phase("weekly-diary")
    session.submit_answers("P01", ANSWERS_P01, {"week_notes": SECRET}).result(timeout=10)
    session.submit_answers("P02", dict.fromkeys(ANSWERS_P01, 9), {"week_notes": SECRET + " (P02)"}).result(10)
    sids = run.join()
    item_ids = set(ANSWERS_P01)
    everything = json.dumps([tap.texts, tap.details])
    for sid in sids:
        for m in store.markers(sid):
            everything += json.dumps([m.label, m.detail])
    for sid in sids:  # even with free text asked for, exports hold no answers: they are not session data
        files = export_csv(store, sid, tmp_path / f"csv{sid}", include_text=True)
        everything += "".join(Path(f).read_text() for f in files)
        everything += json.dumps([a.text for a in edf_annotations(store, sid, include_text=True)])
    export_bids(store, tmp_path / "bids", sids, include_text=True)
    everything += "".join(f.read_text() for f in (tmp_path / "bids").rglob("*") if f.suffix in (".tsv", ".json"))
    assert "sister" not in everything and "kitchen" not in everything
    assert not any(i in everything for i in item_ids)  # not even item ids, so no value travels with them
    with open(tmp_path / f"csv{sids[0]}" / "markers.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["label"] for r in rows if r["kind"] == "diary"] == [DIARY_SUBMITTED]  # the neutral fact stays
    events = next((tmp_path / "bids").rglob(f"sub-P01_ses-{sids[0]}_*_events.tsv")).read_text()
    assert "\tdiary\t" in events  # BIDS events carry the fact too
    assert len(AnswerStore(store).find()) == 2
    store.close()


def test_without_a_week_the_participants_next_week_is_the_time_point(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    first = _group(store)
    run = Background(first)
    run.wait_for_phase("weekly-diary")
    for pid in ("P01", "P02"):
        first.submit_answers(pid, ANSWERS_P01).result(timeout=10)
    sids = run.join()
    assert [store.session(s).week for s in sids] == [1, 1]
    labels = {a.participant_id: (a.time_point, a.session_id) for a in AnswerStore(store).find()}
    assert labels == {"P01": ("week 1", sids[0]), "P02": ("week 1", sids[1])}
    # the next session of the same participants is their week 2
    second = _group(store)
    run = Background(second)
    run.wait_for_phase("weekly-diary")
    set_id = second.submit_answers("P01", ANSWERS_P01).result(timeout=10)
    second.skip_diary("P02")
    (sid_b, _) = run.join()
    again = AnswerStore(store).get(set_id)
    assert (again.time_point, again.week, again.session_id) == ("week 2", 2, sid_b)
    store.close()


def test_no_diary_phase_no_answers(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    plain = Protocol("rest-only", "", (Phase("rest", "rest", 20.0),))
    session = _group(store, plain)
    run = Background(session)
    run.wait_for_phase("rest")
    assert session.participant_view("P01").instrument is None
    with pytest.raises(RuntimeError, match="no diary phase"):
        session.submit_answers("P01", ANSWERS_P01)
    with pytest.raises(KeyError, match="P09"):
        session.skip_diary("P09")
    run.join()
    assert AnswerStore(store).find() == []
    store.close()


def test_headless_run_says_the_diary_phase_just_waits(tmp_path, capsys):
    proto = tmp_path / "short-diary.toml"
    proto.write_text('name = "short-diary"\n' + '[[phase]]\nname = "look-back"\nkind = "diary"\nduration = "20s"\n'
                     + '[[phase]]\nname = "rest"\nkind = "rest"\nduration = "10s"\n')  # fmt: skip
    code = app.main(["session", "run", "--store", str(tmp_path / "s.sqlite"), "--participant", "P01", "--protocol",
                     str(proto), "--speed", "40", "--headless", "--week", "2"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    (line,) = [ln for ln in out.splitlines() if "Diary phase" in ln]
    assert line.startswith("Diary phase look-back (20 s): without windows it just waits")
    assert line.endswith("`diary add --participant P01 --week 2 --session 1`.")
    with Store(tmp_path / "s.sqlite") as store:
        (end,) = [m for m in store.markers(1) if m.kind == "phase_end" and m.phase_name == "look-back"]
        assert end.detail["ended"] == "completed" and end.detail["elapsed_s"] == pytest.approx(20.0)


# -- the form on the participant's screen -------------------------------------------------------------------------


@pytest.mark.slow
def test_form_over_the_participant_windows_during_a_group_session(qtbot, tmp_path):
    from pyqtgraph.Qt import QtCore, QtGui, QtTest, QtWidgets

    from biofeedback.display.app import run_with_displays
    from biofeedback.display.form import InstrumentForm
    from biofeedback.display.participant import ParticipantWindow

    store = Store(tmp_path / "s.sqlite")
    session = _group(store, week=4)
    filled: dict[str, dict] = {}
    shots: list[Path] = []
    typed_pause: list[bool] = []

    def windows() -> dict[str, ParticipantWindow]:
        return {w.participant_id: w for w in QtWidgets.QApplication.topLevelWidgets()
                if isinstance(w, ParticipantWindow) and w.isVisible()}  # fmt: skip

    def drive() -> None:
        """Acts like the participants: answers by clicking the form's own widgets."""
        for pid, window in windows().items():
            form = window.findChild(InstrumentForm)
            if form is None or not form.isVisible() or pid in filled:
                continue
            values = ANSWERS_P01 if pid == "P01" else dict.fromkeys(ANSWERS_P01, 8)
            for item_id, value in values.items():
                if value is not None:
                    form.choice(item_id).group.button(value).click()
            if pid == "P01":
                box = form.text_boxes["week_notes"]
                box.setFocus()
                QtTest.QTest.keyClicks(box, "a calm week")  # typing a space must not pause the session
                typed_pause.append(session.runner.state.paused)
                form.choice("ss_warm").clear()  # changed their mind: left out
                values = {**values, "ss_warm": None}
                # the form covers the window but leaves its Pause and Stop buttons reachable
                assert form.geometry().bottom() < window.pause_button.geometry().top()
                ARTIFACTS.mkdir(exist_ok=True)
                shot = ARTIFACTS / "diary_form_in_session.png"
                assert window.grab().save(str(shot))
                shots.append(shot)
            filled[pid] = values
            form.done_button.click()

    driver = QtCore.QTimer()
    driver.setInterval(50)
    driver.timeout.connect(drive)
    driver.start()
    guard = QtCore.QTimer()
    guard.setSingleShot(True)
    guard.timeout.connect(lambda: session.end_session("test guard"))
    guard.start(60000)
    sids = run_with_displays(session)
    driver.stop()
    guard.stop()  # not left pending for a later test's event loop

    assert set(filled) == {"P01", "P02"} and typed_pause == [False]
    answers = {a.participant_id: a for a in AnswerStore(store).find(include_text=True)}
    assert answers["P01"].texts == {"week_notes": "a calm week"}
    for pid, sid in zip(("P01", "P02"), sids, strict=True):
        a = answers[pid]
        assert (a.session_id, a.time_point, a.source) == (sid, "week 4", "form")
        assert a.values == {k: (None if v is None else float(v)) for k, v in filled[pid].items()}
        markers = store.markers(sid)
        assert [m.label for m in markers if m.kind == "diary"] == [DIARY_SUBMITTED]
        assert not [m for m in markers if m.kind == "manual"]  # no pause, no stop
        (end,) = [m for m in markers if m.kind == "phase_end" and m.phase_name == "weekly-diary"]
        assert end.detail["ended"] == "skipped" and end.t < 120.0  # planned 600 s
        assert store.session(sid).state == "completed"
    assert score(get_instrument(DIARY_NAME), answers["P02"].values)["self-soothing"].value == 32
    (shot,) = shots
    image = QtGui.QImage(str(shot))
    assert image.width() >= 800 and QtGui.QColor(image.pixel(5, 5)).lightness() < 80  # the calm dark form
    store.close()
