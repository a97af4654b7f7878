"""Statistics of a validation study, as in the CrypTFlow2 CheXpert study (Rathee et al., CCS 2020):
bootstrap confidence intervals with cases resampled, a paired Wilcoxon signed-rank test and a
two-sample Kolmogorov-Smirnov test of secure against plaintext scores, and Bland-Altman limits of
agreement (Bland & Altman, Lancet 1986) for lesion volume.

Every function returns plain JSON-ready dicts; a statistic that is undefined on the given data
(too few cases, every difference zero) comes back as ``None`` with a ``note`` saying why.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 9999
SEED = 20201109  # fixed, so a report can be reproduced figure for figure


def _f(v: float) -> float | None:
    v = float(v)
    return v if np.isfinite(v) else None


def bootstrap_mean_ci(
    values: Sequence[float], *, confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = SEED
) -> dict:
    """Mean of per-case values with its bootstrap confidence interval (cases resampled, BCa)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    out: dict = {
        "n": int(v.size),
        "mean": _f(v.mean()) if v.size else None,
        "low": None,
        "high": None,
        "confidence": confidence,
        "method": "BCa bootstrap, cases resampled",
        "resamples": resamples,
    }
    if v.size < 2:
        out["note"] = "fewer than two cases: no confidence interval"
        return out
    if np.ptp(v) == 0:
        out.update(low=float(v[0]), high=float(v[0]), note="every case has the same value: the interval is that value")
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BCa warns (and gives NaN) on near-degenerate samples; handled below

        def boot(method: str) -> object:
            return stats.bootstrap(
                (v,),
                np.mean,
                confidence_level=confidence,
                n_resamples=resamples,
                method=method,
                rng=np.random.default_rng(seed),
            ).confidence_interval

        ci = boot("BCa")
        if not (np.isfinite(ci.low) and np.isfinite(ci.high)):
            ci = boot("percentile")
            out["method"] = "percentile bootstrap, cases resampled (BCa undefined on these values)"
    out.update(low=float(ci.low), high=float(ci.high))
    return out


def paired_tests(a: Sequence[float], b: Sequence[float]) -> dict:
    """Paired Wilcoxon signed-rank test and two-sample KS test between per-case scores a and b."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError("paired tests need the same cases on both sides")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    d = x - y
    nonzero = int(np.count_nonzero(d))
    w: dict = {
        "test": "Wilcoxon signed-rank, paired, two-sided (zero differences dropped)",
        "n": int(x.size),
        "nonzero_differences": nonzero,
        "statistic": None,
        "p_value": None,
    }
    if nonzero == 0:
        w["note"] = "undefined: the two scores are equal on every case (no difference to rank)"
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = stats.wilcoxon(x, y, zero_method="wilcox", alternative="two-sided")
        w.update(statistic=_f(r.statistic), p_value=_f(r.pvalue))
        if nonzero < 6:
            w["note"] = f"only {nonzero} non-zero differences: the test has little power"
    k: dict = {"test": "two-sample Kolmogorov-Smirnov, two-sided", "n": int(x.size), "statistic": None, "p_value": None}
    if x.size == 0:
        k["note"] = "no cases"
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # falls back from the exact to the asymptotic p-value with a warning
            r = stats.ks_2samp(x, y)
        k.update(statistic=_f(r.statistic), p_value=_f(r.pvalue))
    return {"wilcoxon": w, "ks_2samp": k}


def bland_altman(a: Sequence[float], b: Sequence[float]) -> dict:
    """Bias (mean of a - b) and 95% limits of agreement (bias +- 1.96 SD of the differences)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    d = x - y
    out: dict = {
        "n": int(d.size),
        "bias": _f(d.mean()) if d.size else None,
        "sd": None,
        "loa_low": None,
        "loa_high": None,
    }
    if d.size < 2:
        out["note"] = "fewer than two cases: no limits of agreement"
        return out
    sd = float(d.std(ddof=1))
    out.update(sd=sd, loa_low=float(d.mean() - 1.96 * sd), loa_high=float(d.mean() + 1.96 * sd))
    return out
