"""Size histogram figure (matplotlib, no GUI backend): ECD in nm, per class, log-normal fit."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["histogram_bins", "plot_histogram", "save_histogram"]


def histogram_bins(values: np.ndarray, bins: int | str = "auto") -> np.ndarray:
    """Bin edges: ``bins`` a count or a numpy rule name ('auto', 'fd', 'sturges', ...)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return np.linspace(0, 1, 11)
    if isinstance(bins, str) and bins.isdigit():
        bins = int(bins)
    if isinstance(bins, (int, np.integer)):
        if bins < 1:
            raise ValueError("the number of bins must be at least 1")
        lo, hi = float(v.min()), float(v.max())
        return np.linspace(lo, hi if hi > lo else lo + 1, int(bins) + 1)
    return np.histogram_bin_edges(v, bins=bins)


def plot_histogram(table: pd.DataFrame, summary: dict[str, Any], bins: int | str = "auto", ax: Any = None,
                   title: str | None = None, colors: dict[str, str] | None = None) -> Any:
    """Draw the ECD histogram of the particles used by ``summary`` (interior particles
    under an edge correction) on ``ax`` (a new figure when None), one colour per class
    (``colors``: class -> colour, e.g. the napari layer's; else a fixed palette), with
    each class's fitted log-normal density scaled to counts. Returns the figure."""
    from matplotlib.figure import Figure

    if ax is None:
        fig = Figure(figsize=(6, 4), dpi=100)
        ax = fig.add_subplot(111)
    else:
        fig = ax.figure
    nm = summary.get("pixel_size_nm") is not None
    col = "ecd_nm" if nm else "ecd_px"
    unit = "nm" if nm else "px"
    t = table[table["region"] >= 0] if len(table) else table
    if summary.get("edge_correction", "none") != "none" and len(t):
        t = t[~t["touches_edge"].to_numpy(bool)]
    values = t[col].to_numpy(np.float64) if len(t) else np.zeros(0)
    edges = histogram_bins(values, bins)
    classes = sorted(set(t["class"].astype(str))) if len(t) else []
    per_class = summary.get("per_class", {})
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
    colours = [(colors or {}).get(c, palette[i % len(palette)]) for i, c in enumerate(classes)]
    data = [t.loc[t["class"].astype(str) == c, col].to_numpy(np.float64) for c in classes]
    labels = [f"{c} (n = {len(d)})" for c, d in zip(classes, data)]
    if data:
        ax.hist(data, bins=edges, stacked=len(data) > 1, color=colours,
                label=labels, alpha=0.85, edgecolor="white", linewidth=0.5)
    xs = np.linspace(max(edges[0], 1e-9), edges[-1], 400)
    width = float(edges[1] - edges[0]) if edges.size > 1 else 1.0
    for i, (c, d) in enumerate(zip(classes, data)):
        fit = per_class.get(c, {}).get("lognormal") or {}
        if nm and fit.get("sigma"):
            mu, s = fit["mu"], fit["sigma"]
            pdf = np.exp(-((np.log(xs) - mu) ** 2) / (2 * s * s)) / (xs * s * np.sqrt(2 * np.pi))
            ax.plot(xs, pdf * len(d) * width, color=colours[i % len(colours)], lw=1.8,
                    label=f"log-normal fit {c}: median {np.exp(mu):.3g} nm, σ {s:.2f}")
    ax.set_xlabel(f"equivalent circular diameter D ({unit})")
    ax.set_ylabel("particles per bin")
    n_used = int(sum(len(d) for d in data))
    ax.set_title(title or f"n = {n_used}" + (f" (+{summary.get('count_edge_touching', 0)} at the edge, excluded)"
                                             if summary.get("edge_correction", "none") != "none"
                                             and summary.get("count_edge_touching") else ""))
    if data:
        ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def save_histogram(path: str | os.PathLike, table: pd.DataFrame, summary: dict[str, Any], bins: int | str = "auto",
                   title: str | None = None) -> str:
    """Write the histogram as PNG or SVG (by extension), atomically. Returns the path."""
    from ..atomic import atomic_write_with

    fig = plot_histogram(table, summary, bins=bins, title=title)
    fmt = os.path.splitext(str(path))[1].lstrip(".").lower() or "png"
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format=fmt))
    return str(path)
