"""Small-n statistics: Wilcoxon signed-rank the SPSS way, and descriptives."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from biofeedback.analysis.hrv import analyze_phases
from biofeedback.study.stats import describe, wilcoxon_spss


def test_hand_worked_case_with_a_zero_difference() -> None:
    before = [10, 20, 30, 40, 50, 60]
    after = [12, 17, 35, 40, 41, 70]
    # differences 2, -3, 5, 0, -9, 10 -> zero dropped; ranks 1, 2, 3, 4, 5; W+ = 1+3+5 = 9, W- = 2+4 = 6
    r = wilcoxon_spss(before, after)
    assert (r.n, r.n_nonzero) == (6, 5)
    assert (r.w_positive, r.w_negative, r.t_stat) == (9.0, 6.0, 6.0)
    z = (6 - 5 * 6 / 4) / math.sqrt(5 * 6 * 11 / 24)  # = -1.5 / sqrt(13.75)
    assert r.z == pytest.approx(z, rel=1e-12)
    assert r.z == pytest.approx(-0.404520, abs=1e-6)
    assert r.p_two_sided == pytest.approx(0.685830, abs=1e-5)
    assert "only 5 non-zero" in r.note
    assert r.mean_before == pytest.approx(35.0) and r.median_after == pytest.approx(37.5)


def test_hand_worked_case_with_ties() -> None:
    d = np.array([1, -1, 2, 2, -3, 4, 5, 6])
    # |d| ranks: 1.5, 1.5, 3.5, 3.5, 5, 6, 7, 8 -> W- = 1.5 + 5 = 6.5, W+ = 29.5
    # variance 8*9*17/24 = 51 minus ties (2^3-2 + 2^3-2)/48 = 0.25 -> 50.75
    r = wilcoxon_spss(np.full(8, 10.0), 10.0 + d)
    assert (r.w_positive, r.w_negative, r.t_stat) == (29.5, 6.5, 6.5)
    assert r.z == pytest.approx(-11.5 / math.sqrt(50.75), rel=1e-12)
    assert r.p_two_sided == pytest.approx(0.10647, abs=2e-5)  # normal table, interpolated
    assert r.note is None


def test_z_is_negative_whichever_direction_the_change_goes() -> None:
    before = [14, 18, 11, 16, 20, 15, 13]
    after = [6, 9, 7, 5, 12, 10, 4]
    down, up = wilcoxon_spss(before, after), wilcoxon_spss(after, before)
    assert down.z < 0 and up.z < 0
    assert down.z == pytest.approx(up.z) and down.p_two_sided == pytest.approx(up.p_two_sided)
    assert (down.w_positive, down.w_negative) == (up.w_negative, up.w_positive) == (0.0, 28.0)


def test_missing_values_drop_the_pair() -> None:
    r = wilcoxon_spss([1.0, None, 3.0, 4.0, np.nan, 6.0, 7.0], [2.0, 5.0, 1.0, 9.0, 4.0, np.nan, 3.0])
    full = wilcoxon_spss([1.0, 3.0, 4.0, 7.0], [2.0, 1.0, 9.0, 3.0])
    assert r.n == 4 and r.n_nonzero == 4
    assert (r.t_stat, r.z, r.p_two_sided) == (full.t_stat, full.z, full.p_two_sided)
    assert r.mean_before == pytest.approx(np.mean([1, 3, 4, 7]))
    assert "3 pair(s) with a missing value dropped" in r.note


def test_all_zero_differences_leave_z_undefined() -> None:
    r = wilcoxon_spss([1, 2, 3], [1, 2, 3])
    assert r.n == 3 and r.n_nonzero == 0 and r.z is None and r.p_two_sided is None
    assert "no non-zero differences" in r.note


@pytest.mark.parametrize("seed", range(8))
def test_matches_scipy_approx_without_continuity_correction(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(8, 25))
    before = rng.integers(0, 12, n).astype(float)  # small integers: ties and zero differences
    after = before + rng.integers(-4, 6, n)
    after[:2] = before[:2]  # always some zero differences
    ref = stats.wilcoxon(before, after, zero_method="wilcox", correction=False, method="approx")
    r = wilcoxon_spss(before, after)
    assert r.n_nonzero == int(np.sum(after != before)) <= n - 2
    assert r.t_stat == pytest.approx(float(ref.statistic))
    assert r.z == pytest.approx(float(ref.zstatistic), rel=1e-10)
    assert r.p_two_sided == pytest.approx(float(ref.pvalue), rel=1e-10)


def test_gudb_rmssd_sitting_vs_maths(shared_data: Path) -> None:
    df = pd.read_csv(shared_data / "gudb_rpeaks_250hz.csv")
    df = df[df["lead"] == "cs"]
    sitting, maths = [], []
    for _, subject in df.groupby("subject"):
        values = {}
        for condition in ("sitting", "maths"):
            rec = subject[subject["condition"] == condition]
            if not rec.empty:
                t = rec["rpeak_sample_250hz"].to_numpy() / 250.0
                (m,) = analyze_phases(t, rec["rr_ms"].to_numpy(), [(condition, "task", 0.0, 1e6, None)])
                values[condition] = m.rmssd_ms
        sitting.append(values.get("sitting"))
        maths.append(values.get("maths"))
    r = wilcoxon_spss(sitting, maths)
    complete = [(s, m) for s, m in zip(sitting, maths, strict=True) if s is not None and m is not None]
    ref = stats.wilcoxon(
        *zip(*complete, strict=True), zero_method="wilcox", correction=False, method="approx"
    )
    assert r.n == len(complete) >= 20
    assert r.p_two_sided == pytest.approx(ref.pvalue, rel=1e-10)
    assert r.p_two_sided < 0.01 and r.median_after < r.median_before
    assert r.w_negative > r.w_positive  # most subjects' RMSSD went down under mental arithmetic


def test_describe_small_sample() -> None:
    d = describe([1, 2, 3, 4, None, 100])
    assert d.n == 5 and d.mean == pytest.approx(22.0) and d.median == 3.0
    assert d.sd == pytest.approx(math.sqrt(7610 / 4))
    assert (d.q1, d.q3, d.iqr) == (2.0, 4.0, 2.0)
    one = describe([7.0])
    assert (one.n, one.mean, one.sd, one.median, one.iqr) == (1, 7.0, None, 7.0, 0.0)
    assert describe([None, np.nan]).n == 0 and describe([]).mean is None


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="before has 3 values but after has 2"):
        wilcoxon_spss([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="after must hold numbers or None"):
        wilcoxon_spss([1, 2], ["a", "b"])
    with pytest.raises(ValueError, match="one-dimensional"):
        describe([[1, 2], [3, 4]])


def _diary_scores(self_soothing: list[int | None]) -> float:
    """The weekly diary's real scoring: four 0-10 items summed, prorated with one left out."""
    from protocols.instruments import get_instrument, score

    diary = get_instrument("cmt-weekly-diary")
    ids = ["ss_often", "ss_powerful", "ss_accessible", "ss_warm"]
    values = {i: (None if v is None else float(v)) for i, v in zip(ids, self_soothing, strict=True)}
    return score(diary, values)["self-soothing"].value


def test_prorated_scores_that_differ_by_the_same_amount_tie() -> None:
    # Prorated sums (three items answered, times 4/3) against complete sums: every difference is ±4/3, but as
    # floats they come out as 1.3333333333333321 ... 1.3333333333333357. The hand-worked answer treats the five
    # as one tie group (rank 3 each): W- = 3 + 3 = 6 = T, W+ = 9 + 6 = 15; N = 6, mean 10.5,
    # variance 6*7*13/24 - (5^3 - 5)/48 = 22.75 - 2.5 = 20.25, so Z = (6 - 10.5) / 4.5 = -1.000, p = .3173.
    sums = [13, 4, 2, 8, 26]  # answered-item sums of the prorated (before) scores
    signs = [-1, -1, 1, 1, 1]
    before, after = [], []
    for s, sign in zip(sums, signs, strict=True):
        items = [min(s, 10), min(max(s - 10, 0), 10), max(s - 20, 0), None]
        b = _diary_scores(items)
        assert b == pytest.approx(s * 4 / 3)
        target = round(b + sign * 4 / 3)  # a whole complete sum
        a = _diary_scores([min(target, 10), min(max(target - 10, 0), 10), min(max(target - 20, 0), 10),
                           max(target - 30, 0)])  # fmt: skip
        before.append(b)
        after.append(a)
    before.append(10.0)
    after.append(20.0)
    raw = np.array(after) - np.array(before)
    assert len(set(np.abs(raw[:5]).tolist())) >= 3  # the floats really differ
    r = wilcoxon_spss(before, after)
    assert (r.n_nonzero, r.w_negative, r.w_positive, r.t_stat) == (6, 6.0, 15.0, 6.0)
    assert r.z == pytest.approx(-1.0, abs=1e-12)
    assert r.p_two_sided == pytest.approx(2 * stats.norm.sf(1.0), rel=1e-12)
    assert round(r.p_two_sided, 4) == 0.3173
    # scipy on the raw floats reproduces the bug (T 3, Z -1.572); on the rounded differences it agrees with us
    naive = stats.wilcoxon(raw, zero_method="wilcox", correction=False, method="approx")
    assert float(naive.statistic) == 3.0 and float(naive.zstatistic) == pytest.approx(-1.572, abs=1e-3)
    ref = stats.wilcoxon(np.round(raw, 9), zero_method="wilcox", correction=False, method="approx")
    assert (float(ref.statistic), float(ref.zstatistic)) == (r.t_stat, pytest.approx(r.z, rel=1e-12))
    assert float(ref.pvalue) == pytest.approx(r.p_two_sided, rel=1e-12)


def test_differences_below_the_precision_are_zero() -> None:
    before = [0.1 + 0.2, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    after = [0.3, 2.0, 4.0, 5.0, 7.0, 9.0, 11.0]
    r = wilcoxon_spss(before, after)
    assert 0.1 + 0.2 != 0.3 and r.n_nonzero == 6 and r.n == 7
