"""`import rr FILE.xdf --stream NAME`: one participant's RR/ECG out of an XDF recorded by LabRecorder with several."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import app
from recordings.import_formats import ImportFormatError
from recordings.import_rr import import_rr
from recordings.store import Store

# Two straps streamed the way this recorder's LslOutlets name them (CMT-RR-<pid>, CMT-ECG-<pid>, source ids
# cmt-biofeedback/<device>/rr|ecg) plus a third-party IBI stream, recorded by LabRecorder in a child process.
_RECORD = """
import gc, json, sys, time
import numpy as np, pylsl, labrecorder
tag, xdf = sys.argv[1], sys.argv[2]
outs, ids = {}, []
def outlet(name, kind, n, rate, fmt, sid):
    outs[name] = pylsl.StreamOutlet(pylsl.StreamInfo(name, kind, n, rate, fmt, sid))
    ids.append(sid)
for pid, dev in (("P01", "dev1"), ("P02", "dev2")):
    base = "cmt-biofeedback/" + dev + "-" + tag
    outlet("CMT-RR-" + pid, "RR", 2, pylsl.IRREGULAR_RATE, pylsl.cf_float32, base + "/rr")
    outlet("CMT-ECG-" + pid, "ECG", 1, 130.0, pylsl.cf_float32, base + "/ecg")
outlet("Watch-IBI", "IBI", 1, pylsl.IRREGULAR_RATE, pylsl.cf_float32, "watch-" + tag)
found = [pylsl.resolve_byprop("source_id", sid, timeout=30)[0] for sid in ids]  # returns once found
rec = labrecorder.Recording(xdf, found)
time.sleep(1.0)
t0 = pylsl.local_clock()
sent = {}
for k, name in enumerate(("CMT-RR-P01", "CMT-RR-P02", "Watch-IBI")):
    rr = [700.0 + 100 * k + (i % 5) for i in range(30)]
    beat = t0 + np.cumsum(rr) / 1000
    for v, ts in zip(rr, beat):
        outs[name].push_sample([v, 0.0] if name.startswith("CMT") else [v], ts)
    sent[name] = rr
for k, name in enumerate(("CMT-ECG-P01", "CMT-ECG-P02")):
    ecg = (300 * (k + 1) * np.sin(np.arange(650) / 7.0)).round()
    for i, v in enumerate(ecg):
        outs[name].push_sample([float(v)], t0 + i / 130.0)
    sent[name] = ecg.tolist()
time.sleep(1.0)
rec.stop()
del rec
gc.collect()
print(json.dumps(sent))
"""


@pytest.fixture(scope="module")
def group_xdf(tmp_path_factory):
    pytest.importorskip("labrecorder", reason="pip install 'labrecorder>=1.0.0rc0' to record XDF with LabRecorder")
    xdf = tmp_path_factory.mktemp("xdf") / "group.xdf"
    done = subprocess.run([sys.executable, "-c", _RECORD, f"{os.getpid()}-{id(xdf)}", str(xdf)],
                          capture_output=True, text=True, timeout=180)  # fmt: skip
    if done.returncode != 0:  # say why (a loaded machine once failed this fixture without showing its stderr)
        pytest.fail(f"recording the XDF with LabRecorder failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return xdf, json.loads(done.stdout.strip().splitlines()[-1])


def test_several_rr_streams_are_refused_with_the_candidates_listed(group_xdf, tmp_path, capsys):
    xdf, _ = group_xdf
    store = tmp_path / "s.sqlite"
    code = app.main(["import", "rr", str(xdf), "--participant", "P01", "--store", str(store)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "choose with --stream NAME" in err
    for name in ("CMT-RR-P01", "CMT-RR-P02", "Watch-IBI", "CMT-ECG-P01", "CMT-ECG-P02"):
        assert repr(name) in err
    with Store(store) as st:
        assert st.sessions() == []


def test_stream_picks_one_participant_and_brings_its_strap_ecg(group_xdf, tmp_path, capsys):
    xdf, sent = group_xdf
    store = tmp_path / "s.sqlite"
    assert app.main(["import", "rr", str(xdf), "--participant", "P02", "--stream", "CMT-RR-P02",
                     "--store", str(store)]) == 0  # fmt: skip
    capsys.readouterr()
    with Store(store) as st:
        (info,) = st.sessions()
        beats = st.beats(info.id)
        ecg = np.concatenate([c[3] for c in st.ecg_chunks(info.id)])
    np.testing.assert_array_equal(beats.rr_ms, sent["CMT-RR-P02"])
    np.testing.assert_array_equal(ecg, sent["CMT-ECG-P02"])  # the same strap's ECG (source id), not P01's
    notes = " ".join(info.settings["import_notes"])
    assert "RR from stream 'CMT-RR-P02'" in notes and "ECG from stream 'CMT-ECG-P02'" in notes
    assert "streams not imported: CMT-ECG-P01, CMT-RR-P01, Watch-IBI" in notes


def test_a_third_party_ibi_stream_alone_and_names_that_are_not_there(group_xdf, store_path):
    xdf, sent = group_xdf
    with Store(store_path) as st:
        sid = import_rr(st, xdf, "P03", streams=["Watch-IBI"])
        np.testing.assert_array_equal(st.beats(sid).rr_ms, sent["Watch-IBI"])
        assert st.ecg_chunks(sid) == []  # not one of this recorder's straps: no ECG is guessed for it
        with pytest.raises(ImportFormatError, match=r"no RR or ECG stream named 'CMT-RR-P9'.*'CMT-RR-P01' \(RR"):
            import_rr(st, xdf, "P03", streams=["CMT-RR-P9"])
        with pytest.raises(ImportFormatError, match="names 2 RR streams"):
            import_rr(st, xdf, "P03", streams=["CMT-RR-P01", "Watch-IBI"])
        # an RR and an ECG stream named together: exactly those
        sid = import_rr(st, xdf, "P01", streams=["CMT-RR-P01", "CMT-ECG-P02"])
        np.testing.assert_array_equal(np.concatenate([c[3] for c in st.ecg_chunks(sid)]), sent["CMT-ECG-P02"])
