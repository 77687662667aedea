#!/usr/bin/env python3
"""Generates tests/vectors/cluster_vectors.json: reference per-key
(cluster-robust) variances for `stats::cluster` (issue 15). Run from the
repo root:

    python3 -m venv .venv && .venv/bin/pip install statsmodels scipy
    .venv/bin/python tests/vectors/gen_cluster_vectors.py

For each case, the per-request values y (0/1 errors or ln latencies) with
their key labels are fitted as OLS `y ~ 1` in statsmodels:

- var_key: the squared standard error of the intercept with
  cov_type="cluster", groups=labels (CR1: G/(G-1) * (N-1)/(N-1) * sandwich,
  the delta-method variance of the ratio sum(y)/N over keys);
- var_key_cr2: Bell-McCaffrey CR2, computed from the general sandwich
  (X'X)^-1 sum_g X_g' A_g e_g e_g' A_g X_g (X'X)^-1 with A_g = (I - H_gg)^-1/2
  by an eigendecomposition of each cluster's block of the hat matrix (an
  independent route to the closed form the Rust code uses);
- var_request: the squared standard error of the plain fit (s^2 / N).

The design effect is var_key_cr2 / var_request (before clamping at 1).
df_bm: Bell-McCaffrey degrees of freedom of the CR2 variance under
independent requests, (tr DC)^2 / tr((DC)^2) with C the covariance of the
per-key residual sums and D the CR2 weights, by matrix algebra.
"""
import json

import numpy as np
import statsmodels
import statsmodels.api as sm

rng = np.random.default_rng(20261201)
cases = []


def zipf_users(n, users, s):
    w = 1.0 / np.arange(1, users + 1) ** s
    return rng.choice(users, size=n, p=w / w.sum())


def cr2(x, e, labels):
    xtx_inv = np.linalg.inv(x.T @ x)
    meat = np.zeros((x.shape[1], x.shape[1]))
    for g in np.unique(labels):
        idx = labels == g
        xg, eg = x[idx], np.asarray(e)[idx]
        h = xg @ xtx_inv @ xg.T
        w, v = np.linalg.eigh(np.eye(len(eg)) - h)
        a = v @ np.diag(1.0 / np.sqrt(np.clip(w, 1e-300, None))) @ v.T
        u = xg.T @ a @ eg
        meat += np.outer(u, u)
    return float((xtx_inv @ meat @ xtx_inv)[0, 0])


def bm_df(labels):
    _, n = np.unique(labels, return_counts=True)
    n = n.astype(float)
    total = n.sum()
    c = np.diag(n) - np.outer(n, n) / total
    d = np.diag(1.0 / ((1.0 - n / total) * total**2))
    dc = d @ c
    return float(np.trace(dc) ** 2 / np.trace(dc @ dc))


def add(name, y, labels):
    y = np.round(np.asarray(y, dtype=float), 4)
    labels = np.asarray(labels, dtype=np.int64)
    x = np.ones((len(y), 1))
    robust = sm.OLS(y, x).fit(cov_type="cluster", cov_kwds={"groups": labels})
    plain = sm.OLS(y, x).fit()
    var_key = float(robust.bse[0] ** 2)
    var_request = float(plain.bse[0] ** 2)
    var_cr2 = cr2(x, y - plain.fittedvalues, labels)
    cases.append(dict(
        name=name,
        values=[float(v) for v in y],
        labels=[int(v) for v in labels],
        expect=dict(
            mean=float(robust.params[0]),
            var_key_cr1=var_key,
            var_key_cr2=var_cr2,
            var_request=var_request,
            keys=int(len(np.unique(labels))),
            design_effect_raw=var_cr2 / var_request,
            df_bm=bm_df(labels),
        ),
    ))


# Errors from Zipf users, three of whom fail every request.
u = zipf_users(1500, 300, 1.1)
fail = np.isin(u, [2, 17, 40])
add("errors, zipf 1.1, three users always failing",
    (fail | (rng.random(len(u)) < 0.02)).astype(float), u)

# Errors without any per-user effect: design effect near 1.
u = zipf_users(1200, 200, 1.1)
add("errors, zipf 1.1, independent", (rng.random(len(u)) < 0.05).astype(float), u)

# ln latency with per-user offsets.
u = zipf_users(1000, 150, 1.1)
offset = rng.normal(0.0, 0.3, 150)
add("log latency, zipf 1.1, user offsets sigma 0.3",
    3.0 + offset[u] + rng.normal(0.0, 0.5, len(u)), u)

# Every key once: the per-key variance is the per-request one.
add("log latency, unique keys", rng.normal(3.0, 0.5, 400), np.arange(400) * 7 + 3)

# Pairs of requests per key.
add("errors, two requests per key", (rng.random(600) < 0.1).astype(float),
    np.repeat(np.arange(300), 2))

# Few heavy keys.
u = zipf_users(800, 12, 1.5)
add("log latency, 12 keys", 2.0 + rng.normal(0, 0.4, 12)[u] + rng.normal(0, 0.3, len(u)), u)

out = dict(
    generator="tests/vectors/gen_cluster_vectors.py",
    statsmodels=statsmodels.__version__,
    numpy=np.__version__,
    cases=cases,
)
with open("tests/vectors/cluster_vectors.json", "w") as f:
    json.dump(out, f, separators=(",", ":"))
    f.write("\n")
print(f"{len(cases)} cases")
