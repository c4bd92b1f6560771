"""Resonance-frequency assessment: per-rate RSA and LF peak, the named rate, storing it, using it for the pacer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import app
import devices.physiology as physiology
from biofeedback.analysis.resonance import (
    RateResult,
    assess_resonance,
    assess_session,
    choose_resonance,
    curve_smoothness,
    phase_synchrony,
)
from biofeedback.live.recorder import build_session, parse_device_specs
from devices.physiology import BeatModel, GuideSegment, PacerSetting, ScheduledGuide, SimParticipant
from devices.virtual_time import LoopClock, run_virtual
from protocols.library import get_protocol
from recordings.protocol_json import ProtocolJsonError, protocol_from_dict, protocol_to_dict
from recordings.store import Store

RATES = [6.5, 6.0, 5.5, 5.0, 4.5]


def simulated_assessment(participant: SimParticipant) -> tuple[np.ndarray, np.ndarray, list]:
    """Beats of an offline assessment (2 min rest, then 2 min per rate with 1 min rests), from the beat model."""
    segments, phases, t = [GuideSegment(0.0, "rest")], [], 120.0
    for rate in RATES:
        segments.append(GuideSegment(t, "breathing", PacerSetting(rate, 4 / 6)))
        phases.append((f"pace-{rate}", t, t + 120.0, rate))
        segments.append(GuideSegment(t + 120.0, "rest"))
        t += 180.0
    guide, model = ScheduledGuide(tuple(segments)), BeatModel(participant)
    beat_t, rr, now = [], [], 0.0
    while now < t:
        beat = model.next_beat(now, guide)
        beat_t.append(beat.t_beat)
        rr.append(beat.rr_ms)
        now = beat.t_beat
    return np.array(beat_t), np.array(rr), phases


@pytest.mark.parametrize("target", [6.5, 5.0, 4.5])
def test_named_rate_is_the_simulated_participants_resonance(monkeypatch, target):
    # A sharper resonance whose peak falls on `target` (the driven-oscillator peak sits at sqrt(1 - 2 z^2) of
    # RESONANCE_HZ); the Mayer wave, which the model ties to the resonance frequency, is switched off here.
    damping = 0.2
    monkeypatch.setattr(physiology, "RESONANCE_DAMPING", damping)
    monkeypatch.setattr(physiology, "RESONANCE_HZ", target / 60 / math.sqrt(1 - 2 * damping**2))
    gains = {r: physiology.resonance_gain(r / 60) for r in RATES}
    assert max(gains, key=gains.get) == target  # the model really peaks there
    beat_t, rr, phases = simulated_assessment(SimParticipant(seed=11, mayer_amplitude=0.0))
    result = assess_resonance(beat_t, rr, phases)
    assert result.resonance_rate_bpm == target, result.reason
    for row in result.rates:
        assert row.eligible
        assert row.peak_bpm == pytest.approx(row.rate_bpm, abs=0.6)  # the LF peak sits at the paced rate
    rsa = [r.rsa_amplitude_bpm for r in result.rates]
    assert rsa.index(max(rsa)) == RATES.index(target)


def test_a_participant_not_following_the_pacer_gets_no_rate():
    beat_t, rr, phases = simulated_assessment(SimParticipant(seed=5, complies_with_pacer=False))
    result = assess_resonance(beat_t, rr, phases)
    assert result.resonance_rate_bpm is None
    assert "repeat the assessment" in result.reason
    # the Mayer wave (~6/min) can sit by chance near one or two paced rates; the others are flagged
    not_followed = [r for r in result.rates if not r.eligible and any("not followed" in n for n in r.notes)]
    assert len(not_followed) >= 3
    assert all(not r.eligible for r in result.rates if r.peak_bpm is not None and abs(r.peak_bpm - r.rate_bpm) > 0.9)


def _row(rate: float, lf: float, rsa: float, eligible: bool = True, **more) -> RateResult:
    row = RateResult(f"pace-{rate}", rate, 0.0, 120.0, 140, 0.0, rsa, lf, lf * 1.1, rate / 60, eligible)
    for key, value in more.items():
        setattr(row, key, value)
    return row


def test_choice_counts_criteria_and_ties_go_to_the_faster_rate():
    # LF peak and LF power best at 5.0, peak-to-trough, smoothness and a single LF peak at 5.5: 3 votes to 2
    rows = [_row(6.0, 50, 10, smoothness=0.6, n_lf_peaks=2), _row(5.5, 95, 20, smoothness=0.9, n_lf_peaks=1),
            _row(5.0, 100, 14, smoothness=0.7, n_lf_peaks=2), _row(4.5, 60, 9, smoothness=0.5, n_lf_peaks=3)]
    result = choose_resonance(rows)
    assert (result.by_lf_peak_bpm, result.by_rsa_bpm, result.resonance_rate_bpm) == (5.0, 5.5, 5.5)
    assert result.criteria == ["peak-to-trough HR", "LF power", "LF peak", "smoothness", "fewest LF peaks"]
    assert rows[1].votes == ["peak-to-trough HR", "smoothness", "fewest LF peaks"]
    assert rows[2].votes == ["LF power", "LF peak"]
    assert "largest LF peak at 5/min" in result.reason and "best on 3 of 5 criteria" in result.reason
    # with only LF peak, LF power and peak-to-trough HR known, the two spectral criteria outvote the third
    two = choose_resonance([_row(6.0, 50, 10), _row(5.5, 95, 20), _row(5.0, 100, 14), _row(4.5, 60, 9)])
    assert two.resonance_rate_bpm == 5.0 and "phase synchrony" not in two.criteria
    # an exact tie on every criterion: the faster of the tied rates is named, and both are listed as close
    tie = choose_resonance([_row(6.0, 100, 20), _row(5.5, 100, 20), _row(5.0, 40, 8)])
    assert tie.resonance_rate_bpm == 6.0
    assert "tied with 5.5/min" in tie.reason
    assert tie.close_rates_bpm == [6.0, 5.5]
    # as many votes: the higher score decides (5.5 is close behind on LF where 6.0 is far behind on RSA)
    split = choose_resonance([_row(6.0, 100, 10, smoothness=0.5), _row(5.5, 98, 20, lf_ms2=100.0, smoothness=0.9),
                              _row(5.0, 40, 8, smoothness=0.3)])  # fmt: skip
    assert [len(r.votes) for r in split.rates] == [2, 2, 0] and split.resonance_rate_bpm == 5.5
    # ineligible rates take no part, and fewer than three usable rates name nothing
    skipped = choose_resonance([_row(6.0, 900, 90, eligible=False), _row(5.5, 100, 20), _row(5.0, 50, 10)])
    assert skipped.resonance_rate_bpm is None
    assert "only 2 of 3" in skipped.reason


def assessment_breathing_at(breath_bpm: float, labelled: list[float], seed: int = 3):
    """Beats of an assessment whose phases are labelled with `labelled` pacer rates while the participant breathes
    at `breath_bpm` throughout (they follow a pacer at that rate the whole time)."""
    segments, phases, t = [GuideSegment(0.0, "rest")], [], 120.0
    for rate in labelled:
        segments.append(GuideSegment(t, "breathing", PacerSetting(breath_bpm, 4 / 6)))
        phases.append((f"pace-{rate}", t, t + 120.0, rate))
        segments.append(GuideSegment(t + 120.0, "rest"))
        t += 180.0
    guide, model = ScheduledGuide(tuple(segments)), BeatModel(SimParticipant(seed=seed))
    beat_t, rr, now = [], [], 0.0
    while now < t:
        beat = model.next_beat(now, guide)
        beat_t.append(beat.t_beat)
        rr.append(beat.rr_ms)
        now = beat.t_beat
    return np.array(beat_t), np.array(rr), phases


@pytest.mark.parametrize("seed", [3, 8])
def test_breathing_6_per_min_throughout_makes_only_6_eligible(seed):
    beat_t, rr, phases = assessment_breathing_at(6.0, [6.5, 6.0, 5.5], seed=seed)
    result = assess_resonance(beat_t, rr, phases)
    assert [r.rate_bpm for r in result.rates if r.eligible] == [6.0]
    for row in result.rates:
        assert row.peak_bpm == pytest.approx(6.0, abs=0.25)  # the breathing peak is where they breathed
        if row.rate_bpm != 6.0:
            assert any("not nearest the paced" in n for n in row.notes), row.notes
    assert result.resonance_rate_bpm is None and "only 1 of 3" in result.reason


def test_chest_movement_must_agree_with_the_pacer_too():
    beat_t, rr, phases = simulated_assessment(SimParticipant(seed=4))
    followed = assess_resonance(beat_t, rr, phases, acc_rates=[6.4, 6.1, 5.4, 5.1, 4.6])
    assert all(r.eligible for r in followed.rates) and followed.resonance_rate_bpm is not None
    # the heart-rate peaks follow the pacer, but the chest moved at 6/min throughout: only 6.0 is eligible
    stuck = assess_resonance(beat_t, rr, phases, acc_rates=[6.0] * 5)
    assert [r.rate_bpm for r in stuck.rates if r.eligible] == [6.0]
    assert all(any("chest movement shows breathing at 6.0/min" in n for n in r.notes)
               for r in stuck.rates if r.rate_bpm != 6.0)  # fmt: skip
    # no chest-movement rate for a phase (None) is no veto
    partial = assess_resonance(beat_t, rr, phases, acc_rates=[None, 6.0, None, 5.0, None])
    assert all(r.eligible for r in partial.rates)
    with pytest.raises(ValueError, match="acc_rates has 2 values for 5"):
        assess_resonance(beat_t, rr, phases, acc_rates=[6.0, 5.0])


def test_phase_synchrony_and_smoothness_measure_what_they_say():
    fs, f = 4.0, 0.1
    t = np.arange(0, 120, 1 / fs)
    rng = np.random.default_rng(1)
    breath = np.sin(2 * np.pi * f * t)
    locked = 70 + 5 * np.sin(2 * np.pi * f * t + 0.7) + rng.normal(0, 0.5, t.size)
    drifting = 70 + 5 * np.sin(2 * np.pi * (f + 0.02) * t) + rng.normal(0, 0.5, t.size)
    assert phase_synchrony(locked, breath, fs, f) > 0.95
    assert phase_synchrony(drifting, breath, fs, f) < 0.5
    assert phase_synchrony(locked[: int(30 * fs)], breath[: int(30 * fs)], fs, f) is None  # under 60 s
    assert curve_smoothness(70 + 5 * np.sin(2 * np.pi * f * t) + 0.01 * t, fs, f) == pytest.approx(1.0, abs=1e-9)
    noisy = curve_smoothness(locked + rng.normal(0, 5, t.size), fs, f)
    assert 0.1 < noisy < curve_smoothness(locked, fs, f) < 1.0
    assert curve_smoothness(70 + rng.normal(0, 1, t.size), fs, f) < 0.05


def test_stored_protocol_round_trips_and_damage_is_named():
    for name in ("resonance-assessment", "cmt-soothing", "sham-control"):
        protocol = get_protocol(name)
        assert protocol_from_dict(json.loads(json.dumps(protocol_to_dict(protocol)))) == protocol
    broken = protocol_to_dict(get_protocol("rest-5min"))
    del broken["phases"][0]["duration_s"]
    with pytest.raises(ProtocolJsonError, match=r"phase 1: missing field 'duration_s'"):
        protocol_from_dict(broken)
    with pytest.raises(ProtocolJsonError, match="non-empty list"):
        protocol_from_dict({"name": "x", "phases": []})


def sharpen_resonance(monkeypatch: pytest.MonkeyPatch, peak_bpm: float, damping: float = 0.2) -> None:
    """Make the simulated baroreflex resonate sharply with its largest RSA at `peak_bpm` (the driven-oscillator
    peak sits at sqrt(1 - 2 z^2) of RESONANCE_HZ; the Mayer wave follows RESONANCE_HZ)."""
    monkeypatch.setattr(physiology, "RESONANCE_DAMPING", damping)
    monkeypatch.setattr(physiology, "RESONANCE_HZ", peak_bpm / 60 / math.sqrt(1 - 2 * damping**2))


@pytest.fixture(scope="module")
def recorded_assessment(tmp_path_factory):
    """The built-in resonance-assessment (16 min) recorded live (on virtual time) from a simulated participant whose
    resonance is at 5.5/min (Mayer waves and noise as usual)."""
    path = tmp_path_factory.mktemp("resonance") / "store.sqlite"
    store = Store(path)
    with pytest.MonkeyPatch.context() as mp:
        sharpen_resonance(mp, 5.5)
        gains = {r: physiology.resonance_gain(r / 60) for r in RATES}
        session = build_session(  # virtual time: exact whatever the machine's load
            store, get_protocol("resonance-assessment"), parse_device_specs(["sim"], "P07"), seed=7, clock=LoopClock()
        )
        (sid,) = run_virtual(session.run())
    store.close()
    return path, sid, gains


def test_live_recorded_assessment_names_the_participants_resonance(recorded_assessment):
    path, sid, gains = recorded_assessment
    with Store(path) as store:
        result = assess_session(store, sid)
    assert [r.rate_bpm for r in result.rates] == RATES
    assert result.resonance_rate_bpm == max(gains, key=gains.get) == 5.5, result.reason
    rsa = {r.rate_bpm: r.rsa_amplitude_bpm for r in result.rates}
    assert min(rsa, key=rsa.get) == min(gains, key=gains.get)  # the weakest response is found too
    assert all(r.eligible and abs(r.peak_bpm - r.rate_bpm) < 0.6 for r in result.rates)


def test_the_report_of_an_assessment_shows_the_per_rate_table_and_the_named_rate(recorded_assessment, tmp_path):
    from html.parser import HTMLParser

    from biofeedback.analysis.report import write_report

    path, sid, _gains = recorded_assessment
    with Store(path, readonly=True) as store:
        out = write_report(store, sid, tmp_path / "report.html")
        result = assess_session(store, sid)
    page = out.read_text(encoding="utf-8")

    class Cells(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.cells, self._in = [], False

        def handle_starttag(self, tag, attrs):
            self._in = tag == "td"

        def handle_data(self, data):
            if self._in:
                self.cells.append(data.strip())

    section = page[page.index("<h2>Resonance assessment</h2>"):]
    section = section[: section.index("</section>")]
    parser = Cells()
    parser.feed(section)
    assert [c for c in parser.cells if c in {f"{r:g}" for r in RATES}] == [f"{r:g}" for r in RATES]
    assert f"Resonance rate: {result.resonance_rate_bpm:g} breaths/min" in section


def test_an_assessment_with_a_review_uses_the_reviewed_beats(recorded_assessment, tmp_path):
    import shutil

    from recordings import review

    path, sid, _gains = recorded_assessment
    copy = tmp_path / "copy.sqlite"
    shutil.copy(path, copy)
    with Store(copy) as store:
        first = assess_session(store, sid).rates[0]
        review.add_edit(store, sid, "bad-segment", t=first.start_s + 10.0, t_end=first.start_s + 70.0,
                        kind="movement", reviewer="AB", reason="moved")  # fmt: skip
        reviewed, auto = assess_session(store, sid).rates[0], assess_session(store, sid, beats="auto").rates[0]
    assert auto.n_beats == first.n_beats
    assert reviewed.n_beats < auto.n_beats - 40  # a minute of beats left out of the first rate


def test_default_participant_resonates_between_5_and_6_per_min():
    """The unpatched model's curve is broad (all rates 4.5-6/min within 5 % of its peak near 5.2/min): the named
    rate must be one of those, never 6.5/min, whose response is clearly weaker."""
    beat_t, rr, phases = simulated_assessment(SimParticipant(seed=3))
    result = assess_resonance(beat_t, rr, phases)
    gains = {r: physiology.resonance_gain(r / 60) for r in RATES}
    near_peak = {r for r, g in gains.items() if g >= 0.95 * max(gains.values())}
    assert near_peak == {6.0, 5.5, 5.0, 4.5}
    assert result.resonance_rate_bpm in near_peak, result.reason


def test_cli_analyze_shows_saves_and_the_next_session_paces_at_it(recorded_assessment, capsys):
    path, sid, _ = recorded_assessment
    assert app.main(["analyze", str(sid), "--json", "--store", str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    named = out["resonance"]["resonance_rate_bpm"]
    assert named == 5.5
    assert [r["rate_bpm"] for r in out["resonance"]["rates"]] == RATES
    assert app.main(["analyze", str(sid), "--store", str(path)]) == 0
    text = capsys.readouterr().out
    assert "Resonance rate:" in text and "LF peak ms²" in text
    with Store(path) as store:
        assert store.resonance_rate("P07") is None  # analyze alone stores nothing
    assert app.main(["resonance", "save", str(sid), "--store", str(path)]) == 0
    assert f"Saved {named:g} breaths/min" in capsys.readouterr().out
    with Store(path) as store:
        assert store.resonance_rate("P07") == named
    argv = ["session", "run", "--participant", "P07", "--protocol", "cmt-soothing", "--speed", "400", "--headless"]
    assert app.main([*argv, "--store", str(path)]) == 0
    with Store(path) as store:
        latest = store.sessions("P07")[-1]
        paced = [m.detail["pacer_bpm"] for m in store.markers(latest.id) if m.kind == "phase_start"]
    assert latest.protocol_name == "cmt-soothing"
    assert {r for r in paced if r is not None} == {named}


def test_cli_refuses_to_save_from_a_session_that_is_no_assessment(tmp_path, capsys):
    path = tmp_path / "store.sqlite"
    with Store(path) as store:
        sid = store.create_session("P01", "rest-5min", protocol_to_dict(get_protocol("rest-5min")), "sim-1")
    assert app.main(["resonance", "save", str(sid), "--store", str(path)]) == 2
    assert "not a resonance assessment" in capsys.readouterr().err
    assert app.main(["analyze", str(sid), "--save-resonance", "--store", str(path)]) == 2


def test_live_assessment_with_chest_movement_uses_phase_synchrony(tmp_path):
    """The assessment recorded with the strap's accelerometer (--acc): chest-movement rates agree with the pacers,
    HR and breathing are phase-locked at every rate, and all six criteria name the simulated resonance."""
    path = tmp_path / "store.sqlite"
    with pytest.MonkeyPatch.context() as mp, Store(path) as store:
        sharpen_resonance(mp, 5.5)
        session = build_session(store, get_protocol("resonance-assessment"), parse_device_specs(["sim"], "P08"),
                                seed=8, clock=LoopClock(), acc=True)  # fmt: skip
        (sid,) = run_virtual(session.run())
        result = assess_session(store, sid)
    assert result.criteria == ["phase synchrony", "peak-to-trough HR", "LF power", "LF peak", "smoothness",
                               "fewest LF peaks"]  # fmt: skip
    for row in result.rates:
        assert row.eligible, row.notes
        assert row.acc_rate_bpm == pytest.approx(row.rate_bpm, abs=0.25)
        assert row.phase_sync_plv > 0.8 and 0.3 < row.smoothness <= 1.0 and row.n_lf_peaks >= 1
    assert result.resonance_rate_bpm == 5.5, result.reason
    assert app.main(["analyze", str(sid), "--store", str(path)]) == 0
