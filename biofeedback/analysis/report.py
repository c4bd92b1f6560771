"""The session report: one self-contained HTML file a researcher can read at a glance (and archive or e-mail).

Contents: the pseudonymous participant ID, protocol, date and signal quality; heart rate and RR over time with the
phases shaded and markers shown; the per-phase HRV table with its quality notes; breathing rate per phase; the
soothing response (each phase's RMSSD and HF power relative to the baseline phase). Plots are PNG images made with
matplotlib (Agg) and embedded as base64 data URIs; the styling is inline CSS. Nothing is fetched from anywhere, so
the file opens offline and leaks no request. Free-text notes and free-text manual-marker labels (see
`recordings.privacy`) appear only with `include_text=True`.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from biofeedback.analysis.analyze import SessionAnalysis, analyze_session
from biofeedback.analysis.breath_cycles import COMPLIANCE_TOLERANCE
from biofeedback.analysis.hrv import SLOW_BREATHING_BPM, PhaseMetrics, corrected_beats
from biofeedback.analysis.indices import RMSSD_STEP_S, RMSSD_WINDOW_S, rmssd_over_time
from biofeedback.analysis.review import A_ARTIFACT_PCT, A_LOST_PCT, B_ARTIFACT_PCT, B_LOST_PCT, MIN_USABLE_S
from biofeedback.analysis.synchrony import N_SURROGATES, GroupError, group_synchrony
from recordings.files import open_private_for_write
from recordings.privacy import exportable_label, fixed_labels
from recordings.store import Store

REPORT_STEPS = ("analysing", "heart rate plot", "RMSSD plot", "breathing plot", "soothing plot", "writing")
"""The steps `render_report` reports through `on_step` (for a progress bar)."""

KIND_COLOURS = {
    "rest": "#e6edf5",
    "breathing": "#dff0ea",
    "grounding": "#e9f0df",
    "imagery": "#ece7f5",
    "recall": "#f4eee2",
    "refocus": "#e0eff3",
    "recovery": "#eaf1e4",
    "meditation": "#e8e9f6",
    "diary": "#f0f0f0",
    "other": "#f0f0f0",
}
INK = "#2f3a45"
MUTED = "#7b8794"
HR_COLOUR = "#3d6e9e"
RR_COLOUR = "#4a8f7b"
RMSSD_COLOUR = "#4f7fae"
HF_COLOUR = "#86b8a5"
MARKER_KINDS = {"manual", "pause", "resume", "skip", "stop", "participant"}


@dataclass(frozen=True)
class ReportData:
    """Everything the report shows, read from the store once."""

    analysis: SessionAnalysis
    beat_t: np.ndarray
    rr_ms: np.ndarray
    gap_before: np.ndarray
    gaps: list[tuple[float, float]]
    markers: list[tuple[float, str, str]]
    ecg_minutes: float
    notes: list[tuple[float, str]]
    rmssd_t: np.ndarray
    """Centres (s) of the time-varying RMSSD windows (`indices.rmssd_over_time`, corrected beats)."""
    rmssd_ms: np.ndarray


def load_report_data(
    store: Store, session_id: int, *, correction: str = "kubios", include_text: bool = False, beats: str | None = None
) -> ReportData:
    """`beats`: the beat source (`beat_source.select_beats`; None = reviewed when there is a review, else auto)."""
    analysis = analyze_session(store, session_id, correction=correction, beats=beats)
    chosen = analysis.selection.beats if analysis.selection else store.beats(session_id)
    gaps, down = [], None
    for t, _dev, state, _reason in store.link_events(session_id):
        if state == "disconnected" and down is None:
            down = t
        elif state == "connected" and down is not None:
            gaps.append((down, t))
            down = None
    if down is not None and len(chosen.t):
        gaps.append((down, float(chosen.t[-1])))
    review = analysis.selection.review if analysis.selection else None
    gaps += [(s, e) for s, e, _kind in review.segments] if review else []  # left out like gaps: drawn like them
    fixed = fixed_labels(store.protocol_dict(session_id))
    markers = [
        (m.t, m.kind, exportable_label(m.kind, m.label, fixed, include_text))
        for m in store.markers(session_id)
        if m.kind in MARKER_KINDS
    ]  # a free-text manual label only with include_text; the dashed line is drawn either way
    ecg_seconds = sum(len(s) / fs for _t, _ns, fs, s in store.ecg_chunks(session_id))
    tl = analysis.timeline if analysis.timeline is not None else corrected_beats(chosen.t, chosen.rr_ms, correction,
                                                                                   chosen.gap_before)  # fmt: skip
    rmssd_t, rmssd = rmssd_over_time(tl.t, tl.rr, tl.seg, tl.seg_span)
    return ReportData(
        analysis=analysis,
        beat_t=chosen.t,
        rr_ms=chosen.rr_ms,
        gap_before=chosen.gap_before,
        gaps=gaps,
        markers=markers,
        ecg_minutes=ecg_seconds / 60.0,
        notes=store.notes(session_id) if include_text else [],
        rmssd_t=rmssd_t,
        rmssd_ms=rmssd,
    )


# -- figures -------------------------------------------------------------------------------------------------------


def _style(ax) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.spines[["left", "bottom"]].set_color("#c5ccd3")
    ax.tick_params(colors=MUTED, labelsize=9)
    ax.yaxis.label.set_color(INK)
    ax.xaxis.label.set_color(INK)
    ax.grid(axis="y", color="#eceff2", linewidth=0.8)
    ax.set_axisbelow(True)


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", facecolor="white", metadata={"Software": None})
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _broken(t: np.ndarray, y: np.ndarray, gap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Insert NaN before each beat that follows a gap, so lines are never drawn across one."""
    cut = np.flatnonzero(gap[1:]) + 1
    return np.insert(t, cut, np.nan), np.insert(y, cut, np.nan)


def timeline_figure(data: ReportData) -> str:
    fig, (ax_hr, ax_rr) = plt.subplots(2, 1, figsize=(10.5, 5.6), sharex=True, gridspec_kw={"hspace": 0.12})
    t_min = data.beat_t / 60.0
    hr = 60000.0 / data.rr_ms if len(data.rr_ms) else data.rr_ms
    for ax, y, colour, label in ((ax_hr, hr, HR_COLOUR, "heart rate (bpm)"), (ax_rr, data.rr_ms, RR_COLOUR, "RR (ms)")):
        _style(ax)
        for w in data.analysis.windows:
            ax.axvspan(w.start_s / 60, w.end_s / 60, color=KIND_COLOURS.get(w.kind, "#f0f0f0"), linewidth=0)
        for g0, g1 in data.gaps:
            ax.axvspan(g0 / 60, g1 / 60, facecolor="none", edgecolor="#9aa5b1", hatch="////", linewidth=0)
        bt, by = _broken(t_min, y, data.gap_before)
        ax.plot(bt, by, color=colour, linewidth=0.8)
        ax.set_ylabel(label)
        if len(y):
            lo, hi = np.nanpercentile(y, [0.5, 99.5])
            pad = 0.08 * (hi - lo or 1.0)
            ax.set_ylim(lo - pad, hi + pad)
        for t, kind, _label in data.markers:
            ax.axvline(t / 60, color="#56606b", linewidth=0.9, linestyle="--" if kind == "manual" else ":")
    for i, w in enumerate(data.analysis.windows):  # staggered so that short neighbouring phases stay readable
        ax_hr.annotate(
            _wrap(w.name), ((w.start_s + w.end_s) / 120, 1.02 + 0.13 * (i % 2)), xycoords=("data", "axes fraction"),
            ha="center", va="bottom", fontsize=8.5, color=INK,
        )  # fmt: skip
    for t, kind, label in data.markers:
        if kind == "manual" and label:
            ax_rr.annotate(label, (t / 60, 0.02), xycoords=("data", "axes fraction"), rotation=90, fontsize=8,
                           color="#56606b", ha="right", va="bottom",
                           bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1.5})  # fmt: skip
    ax_rr.set_xlabel("time since session start (min)")
    if data.analysis.windows:
        ax_rr.set_xlim(data.analysis.windows[0].start_s / 60, data.analysis.windows[-1].end_s / 60)
    handles = [Patch(facecolor=KIND_COLOURS.get(k, "#f0f0f0"), label=k) for k in _kinds(data)]
    if data.gaps:
        handles.append(Patch(facecolor="white", edgecolor="#9aa5b1", hatch="////", label="signal gap"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=8.5,
               bbox_to_anchor=(0.5, -0.04))  # fmt: skip
    return _png(fig)


def rmssd_figure(data: ReportData) -> str:
    """RMSSD over 60 s windows every 10 s, phases shaded; windows touching a gap are left out (line broken)."""
    fig, ax = plt.subplots(figsize=(10.5, 3.0))
    _style(ax)
    for w in data.analysis.windows:
        ax.axvspan(w.start_s / 60, w.end_s / 60, color=KIND_COLOURS.get(w.kind, "#f0f0f0"), linewidth=0)
    ax.plot(data.rmssd_t / 60.0, data.rmssd_ms, color=RMSSD_COLOUR, linewidth=1.2)
    ax.set_ylabel("RMSSD (ms)")
    ax.set_xlabel("time since session start (min)")
    if np.isfinite(data.rmssd_ms).any():
        ax.set_ylim(0, float(np.nanmax(data.rmssd_ms)) * 1.15)
    if data.analysis.windows:
        ax.set_xlim(data.analysis.windows[0].start_s / 60, data.analysis.windows[-1].end_s / 60)
    return _png(fig)


def _wrap(name: str, width: int = 14) -> str:
    """Break long phase names at hyphens or spaces so that axis labels do not run into each other."""
    if len(name) <= width:
        return name
    parts = name.replace("-", "-\n").replace(" ", "\n").split("\n")
    lines, line = [], ""
    for part in parts:
        if line and len(line) + len(part) > width:
            lines.append(line)
            line = ""
        line += part if not line or line.endswith("-") else " " + part
    lines.append(line)
    return "\n".join(lines)


def _kinds(data: ReportData) -> list[str]:
    return list(dict.fromkeys(w.kind for w in data.analysis.windows))


def breathing_figure(phases: list[PhaseMetrics]) -> str:
    fig, ax = plt.subplots(figsize=(10.5, 3.2))
    _style(ax)
    x = np.arange(len(phases))
    for i, p in enumerate(phases):
        if p.breathing_rate_bpm is None:
            ax.text(i, 0.5, "unknown", ha="center", va="bottom", fontsize=8.5, color=MUTED)
            continue
        paced = p.breathing_rate_source == "pacer"
        ax.bar(i, p.breathing_rate_bpm, width=0.55, color=KIND_COLOURS.get(p.kind, "#f0f0f0"),
               edgecolor="#5f7f99", hatch="" if paced else "..", linewidth=1.0)  # fmt: skip
        ax.text(i, p.breathing_rate_bpm + 0.3, f"{p.breathing_rate_bpm:.1f}", ha="center", va="bottom", fontsize=9,
                color=INK)  # fmt: skip
    slow = ax.axhline(SLOW_BREATHING_BPM, color="#8a6fb0", linewidth=1, linestyle="--",
                      label=f"{SLOW_BREATHING_BPM:g}/min: slower breathing moves RSA into the LF band")  # fmt: skip
    ax.set_xticks(x, [_wrap(p.name) for p in phases], fontsize=9)
    ax.set_ylabel("breaths per minute")
    top = max([p.breathing_rate_bpm or 0 for p in phases] + [SLOW_BREATHING_BPM])
    ax.set_ylim(0, top * 1.3)
    ax.legend(handles=[Patch(facecolor="white", edgecolor="#5f7f99", label="set by the pacer"),
                       Patch(facecolor="white", edgecolor="#5f7f99", hatch="..", label="estimated from RSA"), slow],
              frameon=False, fontsize=8.5, loc="upper left", ncol=3)  # fmt: skip
    return _png(fig)


def baseline_index(phases: list[PhaseMetrics]) -> int | None:
    """The baseline: the first rest phase (else the first phase), when it has an RMSSD."""
    idx = next((i for i, p in enumerate(phases) if p.kind == "rest"), 0 if phases else None)
    return idx


def relative_to_baseline(phases: list[PhaseMetrics], base: int | None) -> list[tuple[float | None, float | None]]:
    """(RMSSD, HF) of each phase as % of the baseline phase; None where either value is missing."""
    out = []
    for p in phases:
        b = phases[base] if base is not None else None
        rmssd = 100 * p.rmssd_ms / b.rmssd_ms if b and p.rmssd_ms and b.rmssd_ms else None
        hf = 100 * p.hf_ms2 / b.hf_ms2 if b and p.hf_ms2 and b.hf_ms2 else None
        out.append((rmssd, hf))
    return out


def soothing_figure(phases: list[PhaseMetrics]) -> str:
    fig, ax = plt.subplots(figsize=(10.5, 3.8))
    _style(ax)
    base = baseline_index(phases)
    shown = [(p, rel) for i, (p, rel) in enumerate(zip(phases, relative_to_baseline(phases, base), strict=True))
             if i != base]  # fmt: skip
    w = 0.36
    for i, (p, (rmssd, hf)) in enumerate(shown):
        slow = p.breathing_rate_bpm is not None and p.breathing_rate_bpm < SLOW_BREATHING_BPM
        bars = ((-w / 2, rmssd, RMSSD_COLOUR, ""), (w / 2, hf, HF_COLOUR, "//" if slow else ""))
        for dx, value, colour, hatch in bars:
            if value is None:
                ax.text(i + dx, 3, "n/a", ha="center", va="bottom", fontsize=8, color=MUTED)
                continue
            ax.bar(i + dx, value, width=w * 0.95, color=colour, hatch=hatch, edgecolor="white", linewidth=0.5)
            ax.text(i + dx, value + 2, f"{value:.0f}%", ha="center", va="bottom", fontsize=8, color=INK)
    ax.axhline(100, color=INK, linewidth=1)
    ax.set_xticks(np.arange(len(shown)), [_wrap(p.name) for p, _ in shown], fontsize=9)
    ax.set_xlim(-0.6, max(len(shown), 1) - 0.4)
    name = phases[base].name if base is not None else "baseline"
    ax.set_ylabel(f"% of {_wrap(name)}")
    values = [v for _, pair in shown for v in pair if v is not None]
    ax.set_ylim(0, max([*values, 100]) * 1.2)
    ax.legend(handles=[Patch(color=RMSSD_COLOUR, label="RMSSD"), Patch(color=HF_COLOUR, label="HF power"),
                       Patch(facecolor=HF_COLOUR, hatch="//", edgecolor="white",
                             label=f"HF while breathing < {SLOW_BREATHING_BPM:g}/min (not vagal)"),
                       ax.get_lines()[0]],
              labels=["RMSSD", "HF power", f"HF while breathing < {SLOW_BREATHING_BPM:g}/min (not vagal)",
                      f"{name} = 100 %"],
              frameon=False, fontsize=8.5, loc="upper left", ncol=4)  # fmt: skip
    return _png(fig)


# -- HTML ----------------------------------------------------------------------------------------------------------

CSS = """
body { font-family: "DejaVu Sans", "Segoe UI", Helvetica, Arial, sans-serif; color: #2f3a45; background: #f6f7f9;
       margin: 0; line-height: 1.45; }
main { max-width: 1180px; margin: 0 auto; padding: 28px 32px 40px; }
header { border-bottom: 3px solid #b9d3e6; padding-bottom: 12px; margin-bottom: 22px; }
h1 { font-weight: 600; font-size: 26px; margin: 0 0 4px; }
h2 { font-weight: 600; font-size: 18px; margin: 0 0 10px; color: #34495e; }
.sub { color: #6b7785; font-size: 14px; }
section { background: #fff; border: 1px solid #e3e7ec; border-radius: 8px; padding: 18px 22px; margin-bottom: 18px; }
dl.facts { display: grid; grid-template-columns: repeat(4, 1fr); gap: 10px 20px; margin: 0; }
dl.facts div { background: #f4f7fa; border-radius: 6px; padding: 8px 12px; }
dt { font-size: 12px; color: #6b7785; text-transform: uppercase; letter-spacing: .04em; }
dd { margin: 2px 0 0; font-size: 17px; font-weight: 600; }
img { width: 100%; height: auto; display: block; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th { text-align: right; font-weight: 600; color: #51606e; border-bottom: 2px solid #d5dce3; padding: 6px 7px; }
td { text-align: right; padding: 6px 7px; border-bottom: 1px solid #edf0f3; font-variant-numeric: tabular-nums; }
th:first-child, td:first-child, th:nth-child(2), td:nth-child(2) { text-align: left; }
td.notes { text-align: left; color: #6b7785; font-size: 12px; max-width: 360px; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px; }
p.method, p.caption { font-size: 12.5px; color: #6b7785; margin: 8px 0 0; }
footer { font-size: 12px; color: #8a96a3; text-align: center; margin-top: 24px; }
"""


def _f(value, spec: str = ".1f") -> str:
    return "–" if value is None else format(value, spec)


def _mmss(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m}:{s:02d}"


def _facts(items: list[tuple[str, str]]) -> str:
    return "".join(f"<div><dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd></div>" for k, v in items)


def overall_corrected_pct(phases: list[PhaseMetrics]) -> float | None:
    weighted = [(p.corrected_pct, p.n_beats) for p in phases if p.corrected_pct is not None and p.n_beats]
    total = sum(n for _, n in weighted)
    return sum(c * n for c, n in weighted) / total if total else None


def phase_table(phases: list[PhaseMetrics], review: list[dict] | None = None) -> str:
    head = ("phase", "kind", "start", "length", "beats", "corrected %", "HR bpm", "RMSSD ms", "SDNN ms", "pNN50 %",
            "LF ms²", "HF ms²", "breaths/min", "grade", "edits", "quality notes")  # fmt: skip
    rows = []
    for i, p in enumerate(phases):
        breathing = _f(p.breathing_rate_bpm)
        if p.breathing_rate_source:
            breathing += f" ({'pacer' if p.breathing_rate_source == 'pacer' else 'RSA'})"
        cells = [p.name, p.kind, _mmss(p.start_s), _mmss(p.end_s - p.start_s), str(p.n_beats), _f(p.corrected_pct),
                 _f(p.mean_hr_bpm), _f(p.rmssd_ms), _f(p.sdnn_ms), _f(p.pnn50_pct), _f(p.lf_ms2, ".0f"),
                 _f(p.hf_ms2, ".0f"), breathing]  # fmt: skip
        r = review[i] if review else None
        cells += [r["grade"], _edits_text(r["edits"])] if r else ["–", "–"]
        swatch = f'<span class="swatch" style="background:{KIND_COLOURS.get(p.kind, "#f0f0f0")}"></span>'
        tds = [f"<td>{swatch}{html.escape(cells[0])}</td>"] + [f"<td>{html.escape(c)}</td>" for c in cells[1:]]
        notes = ([f"grade {r['grade']}: {r['grade_reason']}"] if r else []) + list(p.notes)
        tds.append(f'<td class="notes">{"<br>".join(html.escape(n) for n in notes) or "–"}</td>')
        rows.append("<tr>" + "".join(tds) + "</tr>")
    return (
        "<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead><tbody>"
        + "".join(rows) + "</tbody></table>"
    )  # fmt: skip


def _edits_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {action}" for action, n in sorted(counts.items())) or "none"


def index_table(phases: list[PhaseMetrics]) -> str:
    head = ("phase", "SD1 ms", "SD2 ms", "DFA α1", "SampEn", "stress index", "LF nu", "HF nu", "coherence ratio",
            "coherence index")  # fmt: skip
    rows = []
    for p in phases:
        cells = [p.name, _f(p.sd1_ms), _f(p.sd2_ms), _f(p.dfa_alpha1, ".2f"), _f(p.sample_entropy, ".2f"),
                 _f(p.stress_index, ".0f"), _f(p.lf_nu, ".0f"), _f(p.hf_nu, ".0f"), _f(p.coherence_ratio, ".2f"),
                 _f(p.coherence_index, ".2f")]  # fmt: skip
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return (
        "<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead><tbody>"
        + "".join(rows) + "</tbody></table>"
    )  # fmt: skip


def ecg_agreement_section(analysis: SessionAnalysis) -> str:
    """The per-phase agreement of ECG beats with the strap's beats (empty without ECG)."""
    if analysis.ecg_agreement is None:
        note = analysis.quality.get("ecg_beats")
        return "" if note is None else f"<section><h2>Beats from the ECG</h2><p>{html.escape(note)}</p></section>"
    head = ("phase", "kind", "strap beats", "ECG beats", "matched", "strap only", "ECG only", "intervals",
            "median |ΔRR| ms", "|ΔRR| > 20 ms %", "offset ms")  # fmt: skip
    rows = []
    for a, w in zip(analysis.ecg_agreement, analysis.windows, strict=True):
        cells = [a.phase, w.kind, str(a.strap_beats), str(a.ecg_beats), str(a.matched), str(a.strap_only),
                 str(a.ecg_only), str(a.intervals), _f(a.median_abs_drr_ms), _f(a.over_20ms_pct),
                 _f(a.offset_ms, ".0f")]  # fmt: skip
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    table = ("<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead><tbody>"
             + "".join(rows) + "</tbody></table>")  # fmt: skip
    return f"""<section><h2>Beats from the ECG</h2>{table}
<p class="method">R peaks detected by neurokit2 (ecg_clean, ecg_peaks) on the ECG mapped to the session clock at its
measured sample rate, refined to sub-sample precision by parabolic interpolation; no beat spans an ECG gap. Each strap
beat is paired with the nearest ECG beat after removing the local offset (strap − ECG time, per block of 16 beats);
ΔRR = strap RR − ECG RR over intervals whose two beats are paired in both series. Beats within 1 s of the end of
either recording are not counted as unmatched.</p></section>"""


def resonance_section(store: Store, session_id: int, correction: str, beats: str | None = None) -> str:
    """The per-rate table and the named rate of a resonance assessment (empty for any other protocol)."""
    from biofeedback.analysis.resonance import assess_session, is_resonance_assessment

    if not is_resonance_assessment(store.protocol_dict(session_id)):
        return ""
    a = assess_session(store, session_id, correction, beats)
    head = ("phase", "paced /min", "beats", "RSA bpm", "LF peak ms²", "LF ms²", "peak /min", "ACC /min", "sync",
            "smoothness", "LF peaks", "votes", "score", "usable")  # fmt: skip
    rows = [[r.phase, _f(r.rate_bpm, "g"), str(r.n_beats), _f(r.rsa_amplitude_bpm), _f(r.lf_peak_ms2, ".0f"),
             _f(r.lf_ms2, ".0f"), _f(r.peak_bpm, ".2f"), _f(r.acc_rate_bpm, ".2f"), _f(r.phase_sync_plv, ".2f"),
             _f(r.smoothness, ".2f"), "–" if r.n_lf_peaks is None else str(r.n_lf_peaks),
             str(len(r.votes)) if r.eligible else "–", _f(r.score, ".2f"), "yes" if r.eligible else "no"]
            for r in a.rates]  # fmt: skip
    named = ("not named: " + a.reason) if a.resonance_rate_bpm is None else f"{a.resonance_rate_bpm:g} breaths/min"
    return f"""<section><h2>Resonance assessment</h2>{_table(head, rows)}
<p><strong>Resonance rate: {html.escape(named)}</strong></p>
<p class="method">A rate is usable only when its breathing peak (and, with chest movement, the measured breathing
rate) is nearer its own pacer rate than any other tested rate. Each criterion of Shaffer &amp; Meehan (2020) votes for
its best usable rate (peak-to-trough HR, LF power, LF peak, HR–breathing phase synchrony, smoothness, fewest LF
peaks); most votes wins, then the score, then the faster rate (`biofeedback.analysis.resonance`).</p></section>
"""


def _table(head: tuple[str, ...], rows: list[list[str]]) -> str:
    return (
        "<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead><tbody>"
        + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
        + "</tbody></table>"
    )  # fmt: skip


def breath_section(phases: list[PhaseMetrics]) -> str:
    """Breath by breath from chest movement (ACC): empty when no phase has it."""
    if not any(p.n_breaths is not None for p in phases):
        return ""
    head = ("phase", "pacer /min", "measured /min", "breaths", "breaths on the pacer %", "RSA per breath bpm")
    rows = [[p.name, _f(p.pacer_rate_bpm), _f(p.acc_breathing_rate_bpm), "–" if p.n_breaths is None else
             str(p.n_breaths), _f(p.pacer_compliance_pct, ".0f"), _f(p.rsa_p2t_bpm)] for p in phases]  # fmt: skip
    return f"""<section><h2>Breathing from chest movement</h2>{_table(head, rows)}
<p class="method">From the strap's accelerometer: the chest-movement waveform (principal movement axis, band-pass
0.05–0.7 Hz), its breath cycles from trough to trough. Breaths on the pacer: the share of breaths whose length is within
±{COMPLIANCE_TOLERANCE:.0%} of the pacer's period. RSA per breath: the median over breaths of the highest minus the
lowest heart rate within each breath (peak-to-trough, Grossman et al. 1990).</p></section>
"""


def synchrony_section(store: Store, session_id: int, correction: str) -> str:
    """Group synchrony of the group session this session belongs to: empty for a session recorded alone."""
    try:
        result = group_synchrony(store, session_id, correction=correction)
    except GroupError:
        return ""
    me = store.session(session_id).participant_id
    head = ("phase", "participants", "group mean r", "p (surrogates)", "chance 95% r", f"{me}'s mean r")
    rows = [[ph.name, str(len(ph.participants)), _f(ph.mean_r, ".2f"), _f(ph.p_value, ".3f"),
             _f(ph.surrogate_95_r, ".2f"), _f(ph.participant_r(me) if ph.pairs else None, ".2f")]
            for ph in result.phases]  # fmt: skip
    who = ", ".join(html.escape(p) for p in result.sessions)
    return f"""<section><h2>Group synchrony</h2>{_table(head, rows)}
<p class="method">Recorded together with: {who}. Per phase, the Pearson correlation of every pair's heart rate on the
shared clock (4 Hz, linear trend and components slower than 0.02 Hz removed), their Fisher-z mean, and the one-sided
p of exceeding chance: the share of {N_SURROGATES} surrogate groups, each heart shifted in time by its own random lag
(seed {result.seed}), whose mean reached the observed one. A shared pacer or prompt is a legitimate common cause.</p>
</section>
"""


def render_report(
    store: Store,
    session_id: int,
    *,
    correction: str = "kubios",
    include_text: bool = False,
    on_step: Callable[[str], None] | None = None,
    beats: str | None = None,
) -> str:
    """The report of one session as one HTML document (a string); `beats`: the beat source (`load_report_data`)."""
    step = on_step or (lambda _name: None)
    step(REPORT_STEPS[0])
    data = load_report_data(store, session_id, correction=correction, include_text=include_text, beats=beats)
    a = data.analysis
    info = a.session
    phases = a.phases
    step(REPORT_STEPS[1])
    timeline = timeline_figure(data)
    step(REPORT_STEPS[2])
    rmssd_plot = rmssd_figure(data)
    step(REPORT_STEPS[3])
    breathing = breathing_figure(phases)
    step(REPORT_STEPS[4])
    soothing = soothing_figure(phases)
    step(REPORT_STEPS[5])
    extra_html = (breath_section(phases) + synchrony_section(store, session_id, correction)
                  + resonance_section(store, session_id, correction, beats))
    q = a.quality
    duration = (a.windows[-1].end_s - a.windows[0].start_s) if a.windows else 0.0
    lag = q.get("median_arrival_lag_s")
    session_facts = [
        ("participant", info.participant_id), ("protocol", info.protocol_name), ("date (UTC)", _date(info.started_utc)),
        ("length", f"{duration / 60:.1f} min"), ("session", f"#{info.id} · {info.state}"), ("device", info.device),
        ("source", info.source), ("artifact correction", a.correction), ("beats", a.beats),
    ]  # fmt: skip
    corrected = overall_corrected_pct(phases)
    quality_facts = [
        ("beats", str(q["n_beats"])), ("corrected beats", f"{_f(corrected)} %"), ("gaps", str(q["gaps"])),
        ("disconnects", str(q["disconnects"])), ("malformed packets", f"{q['malformed_packets']} of {q['packets']}"),
        ("median beat lag", "–" if lag is None else f"{lag * 1000:.0f} ms"),
        ("ECG recorded", f"{data.ecg_minutes:.1f} min" if data.ecg_minutes else "no"),
        ("phases completed", f"{sum(w.ended == 'completed' for w in a.windows)} of {len(a.windows)}"),
    ]  # fmt: skip
    notes_html = ""
    if data.notes:
        items = "".join(f"<li><b>{_mmss(t)}</b> {html.escape(text)}</li>" for t, text in data.notes)
        notes_html = f"<section><h2>Experimenter notes</h2><ul>{items}</ul></section>"
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    title = f"Session report · {info.participant_id} · {info.protocol_name}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{CSS}</style></head>
<body><main>
<header><h1>Session report</h1>
<div class="sub">Participant {html.escape(info.participant_id)} · {html.escape(info.protocol_name)} ·
{html.escape(_date(info.started_utc))}</div></header>
<section><h2>Session</h2><dl class="facts">{_facts(session_facts)}</dl></section>
<section><h2>Signal quality</h2><dl class="facts">{_facts(quality_facts)}</dl></section>
<section><h2>Heart rate and RR over time</h2>
<img alt="Heart rate and RR intervals over the session, protocol phases shaded" src="data:image/png;base64,{timeline}">
<p class="caption">Phases are shaded by kind; hatched bands are signal gaps (disconnects) and bad segments marked in
the beat review; dashed lines are manual markers, dotted lines pauses, skips and stops. Lines are never drawn across
a gap.</p></section>
<section><h2>HRV per phase</h2>{phase_table(phases, a.review)}
<p class="method">Beats: {html.escape(a.beats_note)}.
Artifact correction: {html.escape(_correction_text(a.correction))}. RMSSD, SDNN, pNN50 and HF need
at least 60 s of data in a phase, LF at least 120 s; missing values are shown as –. LF/HF in absolute ms² (Welch PSD of
the 4 Hz tachogram). Quality grade: A when artifacts (automatic corrections applied plus beats marked, added or deleted
by the reviewer) are at most {A_ARTIFACT_PCT:g} per 100 recorded beats, at most {A_LOST_PCT:g} % of the phase is lost
to bad segments and gaps, and the beats were reviewed with every correction in the phase accepted or rejected; B
with at most {B_ARTIFACT_PCT:g} % artifacts and {B_LOST_PCT:g} % lost; C otherwise or with less than
{MIN_USABLE_S:.0f} s of usable data.</p></section>
<section><h2>RMSSD over time</h2>
<img alt="RMSSD over time in sliding windows" src="data:image/png;base64,{rmssd_plot}">
<p class="caption">RMSSD of the corrected beats over {RMSSD_WINDOW_S:.0f} s windows every {RMSSD_STEP_S:.0f} s,
plotted at each window's centre; a window that touches a signal gap has no value.</p></section>
<section><h2>Further indices per phase</h2>{index_table(phases)}
<p class="method">SD1/SD2: Poincaré plot of successive NN pairs. DFA α1: boxes of 4–16 beats. Sample entropy: m = 2,
r = 0.2 SD. Stress index: Baevsky's SI (50 ms bins; Kubios shows its square root). LF/HF nu: % of LF + HF.
Coherence ratio: HeartMath's peak / (total − peak) power (peak ± 0.015 Hz around the highest 0.04–0.26 Hz peak, total
0.0033–0.40 Hz), mean over 64 s windows every 5 s (McCraty et al. 2009), beside this project's own coherence index
(peak / total, 0–1). Window rules: SD1/SD2 need 60 s, the stress index 120 s, DFA α1 100 and sample entropy 200
beats in one gap-free stretch, the coherence values one 64 s window; missing values are shown as – with the reason
in the quality notes above.</p></section>
<section><h2>Breathing rate per phase</h2>
<img alt="Breathing rate per phase" src="data:image/png;base64,{breathing}">
<p class="caption">Paced phases show the pacer's rate; other phases the respiratory sinus arrhythmia peak of the HR
spectrum (an estimate: Mayer waves, talking or movement can mislead it).</p></section>
<section><h2>Soothing response</h2>
<img alt="RMSSD and HF power of each phase relative to baseline" src="data:image/png;base64,{soothing}">
<p class="caption">Each phase's RMSSD and HF power as a percentage of the baseline phase (100 %). When breathing is
slower than {SLOW_BREATHING_BPM:g}/min, respiratory sinus arrhythmia moves into the LF band and HF power no longer
reflects vagal activity (hatched).</p></section>
{extra_html}
{ecg_agreement_section(a)}
{notes_html}
<footer>Generated {generated} by cmt-biofeedback · pseudonymous data only · keep this file private</footer>
</main></body></html>
"""


def _date(utc: str) -> str:
    try:
        return datetime.fromisoformat(utc).astimezone(UTC).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return utc


def _correction_text(correction: str) -> str:
    if correction == "kubios":
        return "Lipponen & Tarvainen (2019) detection (neurokit2), correction by biofeedback.analysis.artifacts"
    return "none (raw RR intervals)"


def write_report(
    store: Store,
    session_id: int,
    out: Path,
    *,
    overwrite: bool = False,
    correction: str = "kubios",
    include_text: bool = False,
    on_step: Callable[[str], None] | None = None,
    beats: str | None = None,
) -> Path:
    """Render and write the report to `out`, private to the user; an existing file is kept unless `overwrite`."""
    out = Path(out)
    if out.exists() and not overwrite:  # check before the (slow) rendering; open_private_for_write checks again
        with open_private_for_write(out, overwrite=False):
            pass
    text = render_report(store, session_id, correction=correction, include_text=include_text, on_step=on_step,
                         beats=beats)  # fmt: skip
    with open_private_for_write(out, overwrite=overwrite) as fh:
        fh.write(text)
    return out
