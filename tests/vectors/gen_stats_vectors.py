#!/usr/bin/env python3
"""Generates tests/vectors/stats_vectors.json: reference results from scipy
for `chaos analyze`. Run from the repo root:

    python3 -m venv .venv && .venv/bin/pip install scipy
    .venv/bin/python tests/vectors/gen_stats_vectors.py

Mann-Whitney: scipy.stats.mannwhitneyu(method="asymptotic",
use_continuity=True). Welch: ttest_ind(equal_var=False). Fisher:
fisher_exact on [[E_err, E_ok], [C_err, C_ok]]. Pooled z and Newcombe
(method 10, Wilson score bounds) are computed from their formulas with
scipy's normal distribution. Hypothesis cases check the p-values of the
rescaled-control tests the verdict engine runs ("latency <= +10%" is
Mann-Whitney of E against 1.1*C; "throughput >= -5%" is Welch of E
against 0.95*C).
"""
import json
import math
import os

import numpy as np
import scipy
from scipy import stats

rng = np.random.default_rng(20261123)
cases = []
ALTS = ["two-sided", "greater", "less"]


def r4(x):
    """Round to 4 decimals so the committed JSON stays small; values are
    then exactly representable as written."""
    return [float(v) for v in np.round(np.asarray(x, dtype=float), 4)]


def add_mwu(name, e, c, alt):
    e, c = r4(e), r4(c)
    res = stats.mannwhitneyu(e, c, alternative=alt, method="asymptotic", use_continuity=True)
    cases.append(dict(name=name, kind="test", test="mann-whitney", alternative=alt,
                      experiment=e, control=c,
                      expect=dict(statistic=float(res.statistic), p_value=float(res.pvalue))))


def add_welch(name, e, c, alt):
    e, c = r4(e), r4(c)
    res = stats.ttest_ind(e, c, equal_var=False, alternative=alt)
    cases.append(dict(name=name, kind="test", test="welch", alternative=alt,
                      experiment=e, control=c,
                      expect=dict(statistic=float(res.statistic), p_value=float(res.pvalue))))


def add_fisher(name, e, c, alt):
    table = [[e[0], e[1] - e[0]], [c[0], c[1] - c[0]]]
    res = stats.fisher_exact(table, alternative=alt)
    stat = float(res.statistic)
    expect = dict(p_value=float(res.pvalue))
    if math.isfinite(stat):
        expect["statistic"] = stat
    else:
        expect["statistic"] = None
        expect["statistic_text"] = "inf" if stat > 0 else "nan"
    cases.append(dict(name=name, kind="test", test="fisher", alternative=alt,
                      experiment=f"{e[0]}/{e[1]}", control=f"{c[0]}/{c[1]}", expect=expect))


def add_z(name, e, c, alt):
    (x1, n1), (x2, n2) = e, c
    pbar = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pbar * (1 - pbar) * (1 / n1 + 1 / n2))
    z = (x1 / n1 - x2 / n2) / se
    p = {"greater": stats.norm.sf(z), "less": stats.norm.cdf(z),
         "two-sided": min(1.0, 2 * stats.norm.sf(abs(z)))}[alt]
    cases.append(dict(name=name, kind="test", test="two-proportion", alternative=alt,
                      experiment=f"{x1}/{n1}", control=f"{x2}/{n2}",
                      expect=dict(statistic=float(z), p_value=float(p))))


def wilson(x, n, z):
    p = x / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    d = 1 + z * z / n
    return max(0.0, (centre - half) / d), min(1.0, (centre + half) / d)


def add_newcombe(name, e, c, confidence):
    (x1, n1), (x2, n2) = e, c
    z = stats.norm.ppf(0.5 + confidence / 2)
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson(x1, n1, z)
    l2, u2 = wilson(x2, n2, z)
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    cases.append(dict(name=name, kind="test", test="newcombe", alternative="two-sided",
                      confidence=confidence, experiment=f"{x1}/{n1}", control=f"{x2}/{n2}",
                      expect=dict(statistic=d, ci_low=low, ci_high=high)))


def add_mwu_hypothesis(name, e, c, r_percent):
    e, c = r4(e), r4(c)
    factor = 1.0 + r_percent / 100.0
    scaled = [v * factor for v in c]
    rej = stats.mannwhitneyu(e, scaled, alternative="greater", method="asymptotic")
    acc = stats.mannwhitneyu(e, scaled, alternative="less", method="asymptotic")
    cases.append(dict(name=name, kind="hypothesis", hypothesis=f"latency <= +{r_percent}%",
                      experiment=e, control=c,
                      expect=dict(p_reject=float(rej.pvalue), p_accept=float(acc.pvalue))))


def add_throughput_hypothesis(name, e, c, r_percent):
    e, c = r4(e), r4(c)
    factor = 1.0 - r_percent / 100.0
    scaled = [v * factor for v in c]
    rej = stats.ttest_ind(e, scaled, equal_var=False, alternative="less")
    acc = stats.ttest_ind(e, scaled, equal_var=False, alternative="greater")
    cases.append(dict(name=name, kind="hypothesis", hypothesis=f"throughput >= -{r_percent}%",
                      experiment=e, control=c,
                      expect=dict(p_reject=float(rej.pvalue), p_accept=float(acc.pvalue))))


lognorm = lambda n, mu=3.0, s=0.5: rng.lognormal(mu, s, n)

# Mann-Whitney: sizes 5..5000 either side, heavy ties, all-equal, tiny p.
for alt in ALTS:
    add_mwu(f"mwu small 5 vs 7 {alt}", lognorm(5), lognorm(7, 3.2), alt)
    add_mwu(f"mwu heavy ties 0..3 {alt}", rng.integers(0, 4, 300), rng.integers(0, 4, 250) , alt)
    add_mwu(f"mwu 5 vs 5000 {alt}", lognorm(5, 3.3), lognorm(5000), alt)
    add_mwu(f"mwu 5000 vs 20 {alt}", lognorm(5000, 3.05), lognorm(20), alt)
add_mwu("mwu all equal two-sided", [7.0] * 40, [7.0] * 35, "two-sided")
add_mwu("mwu all equal greater", [7.0] * 40, [7.0] * 35, "greater")
add_mwu("mwu one tie group across cohorts", [1.0] * 30 + [2.0] * 5, [1.0] * 28 + [2.0] * 2, "greater")
add_mwu("mwu p below 1e-50 greater", rng.normal(10, 1, 800), rng.normal(7, 1, 800), "greater")
add_mwu("mwu p below 1e-50 less", rng.normal(7, 1, 700), rng.normal(9.5, 1, 900), "less")
add_mwu("mwu p below 1e-100 two-sided", rng.normal(9.5, 1, 1500), rng.normal(8, 1, 1500), "two-sided")
add_mwu("mwu 2000 vs 2000 small shift", lognorm(2000, 3.02), lognorm(2000), "greater")
add_mwu("mwu integer ms ties 1000 vs 1200", np.round(lognorm(1000, 2.0)), np.round(lognorm(1200, 2.0)), "two-sided")

# Welch.
for alt in ALTS:
    add_welch(f"welch 10 windows {alt}", rng.normal(950, 40, 10), rng.normal(1000, 60, 12), alt)
    add_welch(f"welch 5 vs 5000 {alt}", rng.normal(3, 2, 5), rng.normal(2, 1, 5000), alt)
add_welch("welch p below 1e-50", rng.normal(10, 1, 3000), rng.normal(9.5, 1, 3000), "greater")
add_welch("welch unequal variances 40 vs 300", rng.normal(5, 3, 40), rng.normal(5.5, 0.5, 300), "two-sided")
add_welch("welch heavy ties", rng.integers(0, 3, 200), rng.integers(0, 3, 180), "less")

# Fisher (one- and two-sided, scipy's two-sided rule).
fisher_tables = [
    ("tea", (3, 4), (1, 4)),
    ("rare errors", (7, 1000), (1, 1000)),
    ("zero control events", (5, 100), (0, 100)),
    ("equal small", (2, 50), (2, 50)),
    ("large counts", (130, 10000), (100, 10000)),
    ("unbalanced totals", (12, 300), (40, 5000)),
    ("p below 1e-50", (300, 1000), (20, 1000)),
]
for label, e, c in fisher_tables:
    for alt in ALTS:
        add_fisher(f"fisher {label} {alt}", e, c, alt)
add_fisher("fisher no events anywhere", (0, 100), (0, 120), "two-sided")

# Pooled z.
for alt in ALTS:
    add_z(f"z 1% vs 1.3% {alt}", (130, 10000), (100, 10000), alt)
add_z("z p below 1e-50", (2000, 20000), (1000, 20000), "greater")
add_z("z unequal n", (45, 3000), (300, 25000), "two-sided")

# Newcombe.
add_newcombe("newcombe 3% vs 1.2% 95%", (30, 1000), (12, 1000), 0.95)
add_newcombe("newcombe zero events 95%", (0, 500), (0, 800), 0.95)
add_newcombe("newcombe one zero 90%", (4, 200), (0, 300), 0.90)
add_newcombe("newcombe large 99%", (520, 100000), (480, 100000), 0.99)
add_newcombe("newcombe all errors 95%", (50, 50), (45, 50), 0.95)

# Hypotheses through the rescaled-control tests.
add_mwu_hypothesis("latency +10% on 400 vs 400", lognorm(400, 3.05), lognorm(400), 10)
add_mwu_hypothesis("latency +10% clearly worse", lognorm(600, 3.5), lognorm(600), 10)
add_mwu_hypothesis("latency +25% integer ms", np.round(lognorm(500, 2.0)), np.round(lognorm(500, 2.0)), 25)
add_throughput_hypothesis("throughput -5% 30 windows", rng.normal(980, 30, 30), rng.normal(1000, 30, 30), 5)
add_throughput_hypothesis("throughput -5% halved", rng.normal(500, 30, 20), rng.normal(1000, 30, 20), 5)

out = dict(
    generator="tests/vectors/gen_stats_vectors.py",
    scipy_version=scipy.__version__,
    numpy_version=np.__version__,
    cases=cases,
)
path = os.path.join(os.path.dirname(__file__), "stats_vectors.json")
with open(path, "w") as f:
    json.dump(out, f, separators=(",", ":"))
    f.write("\n")
tiny = sum(1 for c in cases if 0 < c["expect"].get("p_value", 1) < 1e-50)
print(f"{len(cases)} cases ({tiny} with 0 < p < 1e-50) written to {path}")
