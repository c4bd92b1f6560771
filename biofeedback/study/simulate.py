"""A simulated weekly group study: sessions on simulated straps plus diaries and pre/post questionnaires.

Each week the attending participants have one *group* session together (one strap each, one stored session per
participant) and fill in the weekly diary. Over the weeks every participant's physiological soothing response grows
(`SimParticipant.soothing_response` rises linearly from a low to a high individual value), their diary's
self-criticism falls and self-soothing rises, with noise. Some weeks are missed (a session, a diary, or both) and
an occasional diary item is skipped; that is normal in a real group and the analysis must cope.

The weekly session uses a SHORT protocol by default (`SHORT_PROTOCOL`: 70 s resting baseline, then 70 s of soothing-
rhythm breathing at 6/min; each just over the 60 s RMSSD/HF minimum); pass `protocol=` for the full 25-minute cmt-
soothing. By default time is virtual (`devices.virtual_time`, discrete-event: as fast as the CPU allows and exact
even on a loaded machine), so a 12-week study of 6 takes about half a minute, bounded by the pure-Python strap
simulator. `speed=X` instead runs on a `ScaledClock` at X times real time; above about ×60 six simulated straps
cannot keep up on a 2-core machine and beats are lost (straps connect late, phases come out short).

Sessions are stored with source `simulated` and answer sets with source `simulated`, so study analyses leave them
out unless asked for. `simulate_study_into` writes a new store of its own (built under a temporary name and renamed
when complete); into an existing store only when told to, after checking that none of the simulated participant
codes has data there, and a simulation that fails part-way deletes everything it wrote.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from biofeedback.live.recorder import build_session, parse_device_specs
from devices.physiology import SimParticipant
from devices.virtual_time import LoopClock, run_virtual
from protocols.instruments import DIARY_NAME, Instrument, get_instrument
from protocols.model import FeedbackMode, Pacer, Phase, PhaseKind, Protocol
from recordings.answers import AnswerStore
from recordings.store import Store, StoreError

T = TypeVar("T")


SHORT_PROTOCOL = Protocol(
    name="cmt-soothing-short",
    description="Simulation-sized cmt-soothing: 70 s resting baseline, 70 s soothing-rhythm breathing at 6/min.",
    version="1",
    phases=(
        Phase(
            "baseline",
            PhaseKind.REST,
            70.0,
            "For a little while there is nothing you need to do.",
            feedback=FeedbackMode.HIDDEN,
        ),
        Phase(
            "soothing-breathing",
            PhaseKind.BREATHING,
            70.0,
            "If you like, follow the circle and let your breath find a slower, soothing rhythm.",
            pacer=Pacer.from_ratio(6.0, 4, 6),
        ),
    ),
)
QUESTIONNAIRE = "example-likert"
NOTES = (
    "Tried the breathing on the bus; it helped a little.",
    "My image was the sea again this week.",
    "A hard week at work, the critical voice was loud.",
    "Found it easier to be kind to myself after the session.",
    "Held the tennis ball when things felt too much.",
)


@dataclass
class SimulatedStudy:
    participants: list[str]
    weeks: int
    sessions: dict[int, list[int]] = field(default_factory=dict)
    """Stored session ids per week."""
    diaries: int = 0
    missed_sessions: list[tuple[str, int]] = field(default_factory=list)
    missed_diaries: list[tuple[str, int]] = field(default_factory=list)


def _ramp(start: float, end: float, week: int, weeks: int) -> float:
    return start + (end - start) * (week - 1) / max(1, weeks - 1)


def _diary_answers(
    inst: Instrument, rng: np.random.Generator, critical: float, soothing: float, skip_p: float
) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for item in inst.items:
        level = critical if "self-criticism" in item.subscales else soothing
        value = int(np.clip(round(level + rng.normal(0, 1.2)), item.scale.min, item.scale.max))
        out[item.id] = None if rng.uniform() < skip_p else value
    return out


def _questionnaire_answers(
    inst: Instrument, rng: np.random.Generator, a_level: float, b_level: float
) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for item in inst.items:
        level = a_level if "A" in item.subscales else b_level
        level = item.scale.max + item.scale.min - level if item.reverse else level
        out[item.id] = int(np.clip(round(level + rng.normal(0, 0.6)), item.scale.min, item.scale.max))
    return out


def simulate_study(
    store: Store,
    *,
    participants: int = 6,
    weeks: int = 12,
    speed: float | None = None,
    seed: int = 0,
    miss_rate: float = 0.1,
    protocol: Protocol = SHORT_PROTOCOL,
    progress: Callable[[str], None] | None = None,
) -> SimulatedStudy:
    """Record a simulated study into `store` (sessions, diaries, pre/post questionnaire) and describe it."""
    if not 1 <= participants <= 99:
        raise ValueError(f"participants must be 1-99, got {participants}")
    if not 2 <= weeks <= 104:
        raise ValueError(f"weeks must be 2-104, got {weeks}")
    if not 0.0 <= miss_rate < 1.0:
        raise ValueError(f"miss rate must be in [0, 1), got {miss_rate}")
    rng = np.random.default_rng(seed)
    pids = [f"P{i:02d}" for i in range(1, participants + 1)]
    taken = [pid for pid in pids if store.sessions(pid) or AnswerStore(store).find(pid)]
    if taken:
        raise StoreError(f"{store.path} already holds data of {', '.join(taken)}: a simulation never mixes with "
                         "them; simulate into a new store")  # fmt: skip
    before_sessions = {s.id for s in store.sessions()}
    before_sets = {a.id for a in AnswerStore(store).find()}
    try:
        return _simulate(store, pids, rng, weeks, speed, seed, miss_rate, protocol, progress)
    except BaseException:
        _remove_new(store, before_sessions, before_sets)
        raise


def _remove_new(store: Store, sessions: set[int], answer_sets: set[int]) -> None:
    """Delete the sessions and answer sets a failed simulation wrote (those not in the sets taken before it)."""
    store.flush()
    answers = AnswerStore(store)
    for aset in answers.find():
        if aset.id not in answer_sets:
            answers.delete(aset.id, by="simulation", reason="simulation failed part-way")
    for info in store.sessions():
        if info.id not in sessions:
            if info.state == "running":
                store.end_session(info.id, "interrupted")
            store.delete_session(info.id, by="simulation", reason="simulation failed part-way")


def _simulate(
    store: Store, pids: list[str], rng: np.random.Generator, weeks: int, speed: float | None, seed: int,
    miss_rate: float, protocol: Protocol, progress: Callable[[str], None] | None,
) -> SimulatedStudy:  # fmt: skip
    answers = AnswerStore(store)
    diary = get_instrument(DIARY_NAME)
    questionnaire = get_instrument(QUESTIONNAIRE)
    people = {
        pid: {
            "soothing": (rng.uniform(0.05, 0.25), rng.uniform(0.65, 0.95)),
            "critical": (rng.uniform(6.0, 9.0), rng.uniform(1.5, 5.0)),
            "soothing_diary": (rng.uniform(0.5, 3.0), rng.uniform(5.0, 8.5)),
            "hr": rng.uniform(62, 82),
            "rsa": rng.uniform(35, 70),
        }
        for pid in pids
    }
    result = SimulatedStudy(pids, weeks)
    by = "simulation"
    for pid in pids:  # pre questionnaire
        a_level, b_level = rng.uniform(2.2, 3.5), rng.uniform(0.5, 1.8)
        values = _questionnaire_answers(questionnaire, rng, a_level, b_level)
        answers.add(questionnaire, pid, "pre", values, by=by, source="simulated")
    for week in range(1, weeks + 1):
        attending = [pid for pid in pids if rng.uniform() >= miss_rate]
        result.missed_sessions += [(pid, week) for pid in pids if pid not in attending]
        sims = {
            pid: SimParticipant(
                seed=seed * 10_000 + week * 100 + i,
                baseline_hr_bpm=people[pid]["hr"],
                rsa_gain=people[pid]["rsa"],
                soothing_response=float(_ramp(*people[pid]["soothing"], week, weeks)),
            )
            for i, pid in enumerate(pids)
            if pid in attending
        }
        session_of: dict[str, int] = {}
        if attending:
            specs = parse_device_specs([f"sim={pid}" for pid in attending], None)
            clock = LoopClock() if speed is None else None
            session = build_session(store, protocol, specs, speed=speed or 1.0, seed=seed + week, clock=clock,
                                    participants=sims, settings={"week": week, "study": "simulated"})  # fmt: skip
            ids = run_virtual(session.run()) if clock else asyncio.run(session.run())
            session_of = dict(zip(attending, ids, strict=True))
            result.sessions[week] = ids
        for pid in pids:
            if rng.uniform() < miss_rate / 2:
                result.missed_diaries.append((pid, week))
                continue
            p = people[pid]
            values = _diary_answers(diary, rng, _ramp(*p["critical"], week, weeks),
                                    _ramp(*p["soothing_diary"], week, weeks), skip_p=0.03)  # fmt: skip
            texts = {"week_notes": str(rng.choice(NOTES))} if rng.uniform() < 0.25 else {}
            answers.add(diary, pid, week, values, texts, session_id=session_of.get(pid), by=by, source="simulated")
            result.diaries += 1
        if progress:
            progress(f"week {week}: {len(attending)} session(s), diaries so far {result.diaries}")
    for pid in pids:  # post questionnaire
        a_level, b_level = rng.uniform(0.8, 2.2), rng.uniform(1.8, 3.2)
        values = _questionnaire_answers(questionnaire, rng, a_level, b_level)
        answers.add(questionnaire, pid, "post", values, by=by, source="simulated")
    return result


SIMULATION_META = ("purpose", "simulation")
"""The meta row that marks a store made by `simulate_study_into`."""


def is_simulation_store(store: Store) -> bool:
    row = store.connection.execute("SELECT value FROM meta WHERE key=?", (SIMULATION_META[0],)).fetchone()
    return row is not None and row[0] == SIMULATION_META[1]


def simulate_study_into(path: Path, *, into_existing: bool = False, **kwargs) -> SimulatedStudy:
    """`simulate_study` into the store at `path`: a new store of its own, or (`into_existing`) an existing one.

    A new store is written under a temporary name beside `path` and renamed when the simulation is complete, so a
    failure leaves nothing behind. An existing store is refused unless `into_existing` (or it is itself a
    simulation's store).
    """
    path = Path(path)
    if path.exists() and path.stat().st_size > 0:
        with Store(path) as store:
            if not (into_existing or is_simulation_store(store)):
                raise StoreError(f"{path} is an existing store: a simulation writes only into a store of its own "
                                 "(name a new file with --store, or add --into-store to add simulated sessions)")
            return simulate_study(store, **kwargs)
    tmp = path.with_name(f".{path.name}.simulating-{os.getpid()}")
    try:
        with Store(tmp) as store:
            store.connection.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", SIMULATION_META)
            result = simulate_study(store, **kwargs)
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
            leftover.unlink(missing_ok=True)
    return result
