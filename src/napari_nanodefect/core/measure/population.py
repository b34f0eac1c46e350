"""Population statistics of a particle table (Qt-free).

:func:`summarize` turns the table of :func:`~.particles.measure_particles` into the numbers
of a results section: count, analysed area, number density, area fraction, mean/std/SEM,
d10/d50/d90 of the equivalent circular diameter, a log-normal fit with its goodness of fit
— overall and per class.

Edge correction
---------------
A particle cut by the border of the analysed region is only partly seen, and large
particles are cut more often than small ones. With ``edge_correction="miles-lantuejoul"``
(default) the cut particles are left out of counts-based numbers and every interior
particle is weighted by ``A / ((W - w)(H - h))`` — region area over the area of the
positions its bounding box (``w`` x ``h``) could take without touching the border
(Miles 1978; Lantuéjoul 1980). The weighted count is an unbiased estimate of the number
of particles in the region, so the density and the size distribution (weighted quantiles,
mean, fit) are unbiased. ``"exclude"`` drops the cut particles without weights;
``"none"`` uses every particle as it is. The area fraction (coverage) always uses every
particle's visible pixels: it needs no correction.

Quantiles: with equal weights ``np.percentile`` (linear interpolation) — so ``d50_nm`` is
exactly ``numpy.median`` of the diameters used; with Miles–Lantuéjoul weights, the
weighted quantile of the cumulative weight at bin mid-points.

Log-normal fit: maximum likelihood (weighted), ``mu`` and ``sigma`` of ln(D/nm); goodness
of fit: the Kolmogorov–Smirnov distance between the diameters used and the fitted
distribution, with its p-value (approximate: the parameters were fitted from the same data,
which makes the test lenient).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

__all__ = ["EDGE_CORRECTIONS", "lognormal_fit", "summarize", "weighted_quantiles"]

EDGE_CORRECTIONS = ("miles-lantuejoul", "exclude", "none")


def weighted_quantiles(values: np.ndarray, qs: Sequence[float], weights: np.ndarray | None = None) -> list[float]:
    """Quantiles ``qs`` (0..1) of ``values``; numpy's linear rule when unweighted."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return [float("nan")] * len(qs)
    if weights is None or np.allclose(weights, weights[0]):
        return [float(x) for x in np.percentile(v, [100 * q for q in qs])]
    w = np.asarray(weights, np.float64)
    order = np.argsort(v)
    v, w = v[order], w[order]
    cum = (np.cumsum(w) - 0.5 * w) / w.sum()
    return [float(np.interp(q, cum, v)) for q in qs]


def lognormal_fit(d: np.ndarray, weights: np.ndarray | None = None) -> dict[str, Any]:
    """Weighted maximum-likelihood log-normal fit of diameters ``d`` (> 0) and its KS
    goodness of fit. ``None`` values when fewer than 3 diameters."""
    from scipy import stats

    d = np.asarray(d, np.float64)
    d = d[np.isfinite(d) & (d > 0)] if weights is None else d
    out = {"mu": None, "sigma": None, "median_nm": None, "mode_nm": None, "ks_statistic": None, "ks_pvalue": None, "n": int(d.size)}
    if d.size < 3:
        return out
    w = np.ones_like(d) if weights is None else np.asarray(weights, np.float64)
    ln = np.log(d)
    mu = float(np.sum(w * ln) / w.sum())
    sigma = float(np.sqrt(np.sum(w * (ln - mu) ** 2) / w.sum()))
    if not sigma > 0:
        return out | {"mu": mu, "sigma": 0.0, "median_nm": float(np.exp(mu)), "mode_nm": float(np.exp(mu))}
    ks = stats.kstest(d, "lognorm", args=(sigma, 0, np.exp(mu)))
    return out | {"mu": mu, "sigma": sigma, "median_nm": float(np.exp(mu)), "mode_nm": float(np.exp(mu - sigma ** 2)),
                  "ks_statistic": float(ks.statistic), "ks_pvalue": float(ks.pvalue)}


def _num(x: Any) -> Any:
    if x is None:
        return None
    x = float(x)
    return None if not np.isfinite(x) else x


def _ml_weights(t: pd.DataFrame, regions: Sequence[tuple[int, int, int, int]]) -> np.ndarray:
    """A_region / ((W - w)(H - h)) for each row (NaN when the box fills the region)."""
    out = np.full(len(t), np.nan)
    reg = t["region"].to_numpy()
    bw = (t["bbox_x1"] - t["bbox_x0"]).to_numpy(np.float64)
    bh = (t["bbox_y1"] - t["bbox_y0"]).to_numpy(np.float64)
    for i, (y0, x0, y1, x1) in enumerate(regions):
        m = reg == i
        W, H = float(x1 - x0), float(y1 - y0)
        free = (W - bw[m]) * (H - bh[m])
        out[m] = np.where(free > 0, W * H / np.maximum(free, 1e-12), np.nan)
    return out


def _stats(t: pd.DataFrame, w: np.ndarray, use: np.ndarray, area_px: float, ps: float | None,
           correction: str) -> dict[str, Any]:
    """Statistics of one group of rows (all classes or one class)."""
    n_all = len(t)
    edge = t["touches_edge"].to_numpy(bool) if n_all else np.zeros(0, bool)
    d = t["ecd_nm"].to_numpy(np.float64)[use] if ps else np.full(int(use.sum()), np.nan)
    ww = w[use]
    est = float(np.nansum(ww)) if correction == "miles-lantuejoul" else float(use.sum())
    area_um2 = area_px * ps * ps * 1e-6 if ps else None
    covered = float(t["area_px"].sum()) / area_px if area_px > 0 else None
    res: dict[str, Any] = {
        "count": int(n_all),
        "count_edge_touching": int(edge.sum()),
        "count_used": int(use.sum()),
        "count_estimated": est,
        "density_per_um2": (est / area_um2) if area_um2 else None,
        "area_fraction": covered,
    }
    if ps and d.size:
        mean = float(np.average(d, weights=ww))
        std = float(np.sqrt(np.average((d - mean) ** 2, weights=ww))) if d.size > 1 else 0.0
        if d.size > 1 and correction != "miles-lantuejoul":
            std = float(np.std(d, ddof=1))
        q = weighted_quantiles(d, (0.1, 0.5, 0.9), None if correction != "miles-lantuejoul" else ww)
        res.update(mean_nm=mean, std_nm=std, sem_nm=std / np.sqrt(d.size) if d.size > 1 else None,
                   d10_nm=q[0], d50_nm=q[1], d90_nm=q[2], min_nm=float(d.min()), max_nm=float(d.max()))
        res["lognormal"] = lognormal_fit(d, ww if correction == "miles-lantuejoul" else None)
    else:
        res.update(mean_nm=None, std_nm=None, sem_nm=None, d10_nm=None, d50_nm=None, d90_nm=None,
                   min_nm=None, max_nm=None, lognormal=lognormal_fit(np.zeros(0)))
    return {k: (_num(v) if isinstance(v, (float, np.floating)) else v) for k, v in res.items()}


def summarize(
    table: pd.DataFrame,
    pixel_size_nm: float | None,
    regions: Sequence[tuple[int, int, int, int]],
    edge_correction: str = "miles-lantuejoul",
    excluded_px: float = 0.0,
) -> dict[str, Any]:
    """Population statistics of ``table`` (from :func:`measure_particles` with the same
    ``regions``) — see the module docstring. Keys include ``count``, ``d10_nm``,
    ``d50_nm``, ``d90_nm``, ``density_per_um2``, ``area_fraction``, ``analysed_area_um2``,
    ``lognormal`` and ``per_class``. ``excluded_px``: pixels inside the regions that were
    not analysed (masked out); they are subtracted from the area."""
    if edge_correction not in EDGE_CORRECTIONS:
        raise ValueError(f"edge_correction must be one of {EDGE_CORRECTIONS}, got {edge_correction!r}")
    ps = float(pixel_size_nm) if pixel_size_nm else None
    area_px = float(sum((y1 - y0) * (x1 - x0) for y0, x0, y1, x1 in regions)) - float(excluded_px)
    t = table[table["region"] >= 0] if len(table) else table
    n = len(t)
    edge = t["touches_edge"].to_numpy(bool) if n else np.zeros(0, bool)
    if edge_correction == "none":
        use, w = np.ones(n, bool), np.ones(n)
    else:
        w = _ml_weights(t, regions) if edge_correction == "miles-lantuejoul" else np.ones(n)
        use = ~edge & np.isfinite(w)
        w = np.where(np.isfinite(w), w, 0.0)
    out = {
        "pixel_size_nm": ps,
        "analysed_area_px": area_px,
        "analysed_area_um2": area_px * ps * ps * 1e-6 if ps else None,
        "n_regions": len(regions),
        "edge_correction": edge_correction,
    }
    out.update(_stats(t, w, use, area_px, ps, edge_correction))
    per_class = {}
    if n:
        cls = t["class"].astype(str).to_numpy()
        for name in sorted(set(cls)):
            m = cls == name
            per_class[name] = _stats(t[m], w[m], use[m], area_px, ps, edge_correction)
    out["per_class"] = per_class
    return out
