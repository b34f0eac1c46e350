"""Optional 2-D Gaussian contour refinement for STM height maps (Qt-free).

After Okunev, Mashukov, Nartova & Matveev, *Nanoparticle Recognition on Scanning Probe
Microscopy Images Using Computer Vision and Deep Learning*, Nanomaterials 10 (2020) 1285
(the ParticlesNN paper, section 3.3 "Refining Predicted Contours"): every detected
particle is refined by fitting a 2-D Gaussian surface to the height data around it and
taking its contour from the fitted Gaussian.

**Our reading of eq. 2–5.** We could not obtain the text of the paper's equations 2–5
(only the abstract, "predicted contour refining with 2D Gaussian function was a proposed
option", and the section title were reachable), so the model and the contour level below
are our own, documented choice, not a transcription:

* model (rotated elliptical Gaussian on a planar background)::

      z(x, y) = B + bx·(x − xc) + by·(y − yc) + A·exp(−q/2)
      q = a·dx² + 2·b·dx·dy + c·dy²,   dx = x − x0,  dy = y − y0

  where ``[[a, b], [b, c]]`` is the inverse covariance (precision) matrix of the Gaussian;
  σ_major, σ_minor and the angle are its eigen-decomposition.  ``background="constant"``
  drops the plane (bx = by = 0).
* refined contour: the ellipse where the Gaussian has fallen to ``level`` × its amplitude,
  ``q = −2·ln(level)``; semi-axes ``σ·sqrt(−2·ln level)``.  The default ``level=0.5`` is
  the FWHM contour.

Coordinates: ``x`` is the column index, ``y`` the row index, pixel centres at integer
coordinates (as in ``skimage.measure.regionprops``).  ``angle_deg`` is the direction of
the major axis measured from +x towards +y (i.e. clockwise on screen, origin top-left),
in (−90, 90].

See ``docs/refine.md`` for the failure rules and the accuracy measured in the tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.optimize import least_squares
from scipy.spatial import cKDTree

from ..errors import NanodefectError

__all__ = ["PARAM_COLUMNS", "RefineResult", "refine_gaussian"]

#: Columns of :attr:`RefineResult.params`, in order.
PARAM_COLUMNS = (
    "label", "x0_px", "y0_px", "sigma_major_px", "sigma_minor_px", "angle_deg",
    "amplitude", "background", "rms_residual", "n_neighbours", "success", "reason",
    "refined_area_px", "diameter_px", "drawn_area_px",
    "sigma_major_nm", "sigma_minor_nm", "refined_area_nm2", "diameter_nm",
)

_MIN_SIGMA_PX = 0.3
_MIN_PAD_PX = 3
_MAX_GROW = 3.0          # the automatic re-fit window grows at most this much per axis
_NEIGHBOUR_FRACTION = 0.01   # joint fit with neighbours reaching > 1 % of the amplitude ...
_MAX_JOINT = 2               # ... only when it has at most this many (touching pairs/triplets)


@dataclass
class RefineResult:
    """Outcome of :func:`refine_gaussian` (see there for the meaning of every column)."""

    labels: np.ndarray
    params: pd.DataFrame
    n_fitted: int
    n_failed: int
    failed_labels: list[int] = field(default_factory=list)
    level: float = 0.5

    @property
    def n_particles(self) -> int:
        return self.n_fitted + self.n_failed

    def summary(self) -> str:
        """One line for logs/CLI, e.g. ``"Gaussian refinement: 998 of 1000 particles
        fitted, 2 fits failed (labels 5, 17; originals kept)"``."""
        if self.n_particles == 0:
            return "Gaussian refinement: no particles"
        s = f"Gaussian refinement: {self.n_fitted} of {self.n_particles} particles fitted"
        if self.n_failed:
            shown = ", ".join(str(v) for v in self.failed_labels[:10])
            more = ", …" if self.n_failed > 10 else ""
            s += f", {self.n_failed} fits failed (labels {shown}{more}; originals kept)"
        return s


# --------------------------------------------------------------------------- validation

def _check_inputs(heights, labels, pixel_size_nm, level, margin, max_iter, background, polarity, min_snr,
                  joint):
    if not isinstance(heights, np.ndarray) or not isinstance(labels, np.ndarray):
        raise NanodefectError("refine_gaussian: heights and labels must be numpy arrays "
                              f"(got {type(heights).__name__} and {type(labels).__name__})")
    if heights.ndim != 2:
        raise NanodefectError(f"refine_gaussian: heights must be a 2-D image, got shape {heights.shape}")
    if labels.ndim != 2:
        raise NanodefectError(f"refine_gaussian: labels must be a 2-D label image, got shape {labels.shape}")
    if heights.shape != labels.shape:
        raise NanodefectError(f"refine_gaussian: heights {heights.shape} and labels {labels.shape} "
                              "must have the same shape")
    if heights.dtype == bool or not (np.issubdtype(heights.dtype, np.integer)
                                     or np.issubdtype(heights.dtype, np.floating)):
        raise NanodefectError(f"refine_gaussian: heights must be a real numeric array, got dtype {heights.dtype}")
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        raise NanodefectError(f"refine_gaussian: labels must be an integer instance label image "
                              f"(0 = background), got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise NanodefectError("refine_gaussian: labels must not be negative (0 = background)")
    if pixel_size_nm is not None:
        try:
            ok = math.isfinite(float(pixel_size_nm)) and float(pixel_size_nm) > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise NanodefectError(f"refine_gaussian: pixel_size_nm must be a positive number or None, "
                                  f"got {pixel_size_nm!r}")
    if not (isinstance(level, (int, float)) and 0.0 < float(level) < 1.0):
        raise NanodefectError(f"refine_gaussian: level must be between 0 and 1 (exclusive), got {level!r}")
    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin >= 0):
        raise NanodefectError(f"refine_gaussian: margin must be a number >= 0, got {margin!r}")
    if not (isinstance(max_iter, (int, np.integer)) and max_iter >= 1):
        raise NanodefectError(f"refine_gaussian: max_iter must be a positive integer, got {max_iter!r}")
    if background not in ("plane", "constant"):
        raise NanodefectError(f"refine_gaussian: background must be 'plane' or 'constant', got {background!r}")
    if polarity not in ("bright", "dark"):
        raise NanodefectError(f"refine_gaussian: polarity must be 'bright' or 'dark', got {polarity!r}")
    if not (isinstance(min_snr, (int, float)) and math.isfinite(min_snr) and min_snr >= 0):
        raise NanodefectError(f"refine_gaussian: min_snr must be a number >= 0, got {min_snr!r}")
    if not isinstance(joint, (bool, np.bool_)):
        raise NanodefectError(f"refine_gaussian: joint must be True or False, got {joint!r}")


def _global_noise(z: np.ndarray) -> float:
    """White-noise estimate of the whole image: robust std of neighbour differences along
    the fast-scan (row) direction / sqrt(2).  Insensitive to smooth particles and to
    line-to-line offsets of STM scans."""
    if z.shape[1] < 2:
        return 0.0
    d = np.diff(z, axis=1).ravel()
    d = d[np.isfinite(d)]
    if d.size < 10:
        return 0.0
    med = np.median(d)
    return float(1.4826 * np.median(np.abs(d - med)) / math.sqrt(2.0))


# --------------------------------------------------------------------------- the model

class _Problem:
    """Residuals and analytic Jacobian of the Gaussian-on-plane model for one window
    (all pixels evaluated at once)."""

    def __init__(self, x, y, z, xc, yc, plane):
        self.x, self.y, self.z = x, y, z
        self.xr, self.yr = x - xc, y - yc
        self.plane = plane
        self._p = None

    def _eval(self, p):
        if self._p is None or not np.array_equal(p, self._p):
            x0, y0, a, b, c = p[:5]
            dx, dy = self.x - x0, self.y - y0
            q = a * dx * dx + 2.0 * b * dx * dy + c * dy * dy
            g = np.exp(-0.5 * np.clip(q, -50.0, 700.0))
            self._p = p.copy()
            self._cache = dx, dy, g
        return self._cache

    def model(self, p):
        _, _, g = self._eval(p)
        m = p[6] + p[5] * g
        if self.plane:
            m = m + p[7] * self.xr + p[8] * self.yr
        return m

    def residuals(self, p):
        return self.model(p) - self.z

    def jacobian(self, p):
        dx, dy = self._eval(p)[:2]
        g = self._cache[2]
        a, b, c, A = p[2:6]
        Ag = A * g
        cols = [
            Ag * (a * dx + b * dy),        # d/dx0
            Ag * (b * dx + c * dy),        # d/dy0
            -0.5 * Ag * dx * dx,           # d/da
            -Ag * dx * dy,                 # d/db
            -0.5 * Ag * dy * dy,           # d/dc
            g,                             # d/dA
            np.ones_like(g),               # d/dB
        ]
        if self.plane:
            cols += [self.xr, self.yr]
        return np.stack(cols, axis=1)


class _JointProblem:
    """k Gaussians on one common plane/constant background: parameters are k rows of
    (x0, y0, a, b, c, A) followed by B (and bx, by)."""

    def __init__(self, x, y, z, xc, yc, k, plane):
        self.x, self.y, self.z, self.k, self.plane = x[:, None], y[:, None], z, k, plane
        self.xr, self.yr = x - xc, y - yc
        self._p = None

    def _eval(self, p):
        if self._p is None or not np.array_equal(p, self._p):
            g6 = p[: 6 * self.k].reshape(self.k, 6)
            dx, dy = self.x - g6[:, 0], self.y - g6[:, 1]
            q = g6[:, 2] * dx * dx + 2.0 * g6[:, 3] * dx * dy + g6[:, 4] * dy * dy
            g = np.exp(-0.5 * np.clip(q, -50.0, 700.0))
            self._p = p.copy()
            self._cache = g6, dx, dy, g
        return self._cache

    def residuals(self, p):
        g6, _, _, g = self._eval(p)
        n = 6 * self.k
        m = p[n] + g @ g6[:, 5]
        if self.plane:
            m = m + p[n + 1] * self.xr + p[n + 2] * self.yr
        return m - self.z

    def jacobian(self, p):
        g6, dx, dy, g = self._eval(p)
        a, b, c, A = g6[:, 2], g6[:, 3], g6[:, 4], g6[:, 5]
        Ag = A * g
        J = np.stack([Ag * (a * dx + b * dy), Ag * (b * dx + c * dy), -0.5 * Ag * dx * dx,
                      -Ag * dx * dy, -0.5 * Ag * dy * dy, g], axis=2).reshape(g.shape[0], -1)
        cols = [np.ones((g.shape[0], 1))]
        if self.plane:
            cols += [self.xr[:, None], self.yr[:, None]]
        return np.concatenate([J] + cols, axis=1)


def _axes(a, b, c):
    """(sigma_major, sigma_minor, angle_deg) of the precision matrix [[a, b], [b, c]];
    None when it is not positive definite."""
    det = a * c - b * b
    if not (a > 0 and c > 0 and det > 0 and math.isfinite(det)):
        return None
    # covariance = inverse precision
    sxx, syy, sxy = c / det, a / det, -b / det
    mean = 0.5 * (sxx + syy)
    rad = math.hypot(0.5 * (sxx - syy), sxy)
    lmax, lmin = mean + rad, mean - rad
    if lmin <= 0:
        return None
    ang = 0.5 * math.degrees(math.atan2(2.0 * sxy, sxx - syy))
    if ang <= -90.0:
        ang += 180.0
    return math.sqrt(lmax), math.sqrt(lmin), ang


# --------------------------------------------------------------------------- one particle

def _window(bbox, shape, pad_r, pad_c):
    r0 = max(bbox[0].start - pad_r, 0)
    r1 = min(bbox[0].stop + pad_r, shape[0])
    c0 = max(bbox[1].start - pad_c, 0)
    c1 = min(bbox[1].stop + pad_c, shape[1])
    return r0, r1, c0, c1


def _initial_guess(zw, own, usable, r0, c0):
    """Initial parameters from the region's moments and the heights along its border."""
    ys, xs = np.nonzero(own)
    n = ys.size
    others_bg = usable & ~own
    if np.count_nonzero(others_bg) >= 5:
        bg = float(np.median(zw[others_bg]))
    else:
        bg = float(np.percentile(zw[usable], 10))
    zz = zw - bg
    vals = zz[ys, xs]
    vals_f = np.where(np.isfinite(vals), vals, 0.0)
    A0 = float(np.max(vals_f)) if n else 0.0
    w = np.clip(vals_f, 0.0, None)
    if w.sum() > 0:
        cy, cx = float((ys * w).sum() / w.sum()), float((xs * w).sum() / w.sum())
    else:
        cy, cx = float(ys.mean()), float(xs.mean())
    # shape from the mask's second moments (+1/12: a pixel is a unit square)
    my, mx = ys.mean(), xs.mean()
    cxx = float(((xs - mx) ** 2).mean()) + 1 / 12
    cyy = float(((ys - my) ** 2).mean()) + 1 / 12
    cxy = float(((xs - mx) * (ys - my)).mean())
    det = cxx * cyy - cxy * cxy
    # size: the mask edge sits at a fraction f of the peak; for a Gaussian the edge radius
    # is sigma*sqrt(-2 ln f).  Works for masks that are too small and too large.
    r_eq = math.sqrt(n / math.pi)
    inner = ndi.binary_erosion(own)
    edge = own & ~inner
    if A0 > 0 and edge.any():
        f = float(np.nanmean(zz[edge])) / A0
    else:
        f = 0.5
    f = min(max(f, 0.05), 0.9)
    sigma0 = max(r_eq / math.sqrt(-2.0 * math.log(f)), 0.7)
    if det > 1e-6:
        scale = sigma0 ** 2 / math.sqrt(det)
        cxx, cyy, cxy = cxx * scale, cyy * scale, cxy * scale
        det = cxx * cyy - cxy * cxy
        a, b, c = cyy / det, -cxy / det, cxx / det
    else:
        a = c = 1.0 / sigma0 ** 2
        b = 0.0
    if A0 <= 0:
        A0 = max(float(np.nanstd(zw[usable])), 1e-12)
    return np.array([cx + c0, cy + r0, a, b, c, A0, bg], float)


def _fit_window(z, labels, zone, lab, r0, r1, c0, c1, p_start, plane, max_iter):
    """Fit in window [r0:r1, c0:c1].  Returns (result or None, problem, npix)."""
    zw = z[r0:r1, c0:c1]
    lw = labels[r0:r1, c0:c1]
    own = lw == lab
    # zone of influence: only the pixels whose nearest labelled pixel is this label's, so
    # that a neighbour's flank does not pull the fit (a Voronoi split of the image)
    usable = np.isfinite(zw) & (zone[r0:r1, c0:c1] == lab)
    if p_start is None:
        p_start = _initial_guess(zw, own, usable, r0, c0)
    ys, xs = np.nonzero(usable)
    npar = 9 if plane else 7
    if ys.size < 2 * npar:
        return None, None, ys.size
    x = (xs + c0).astype(float)
    y = (ys + r0).astype(float)
    xc, yc = 0.5 * (c0 + c1 - 1), 0.5 * (r0 + r1 - 1)
    prob = _Problem(x, y, zw[ys, xs].astype(float), xc, yc, plane)
    p0 = np.zeros(npar)
    p0[: min(npar, p_start.size)] = p_start[:npar]
    try:
        res = least_squares(prob.residuals, p0, jac=prob.jacobian, method="lm",
                            x_scale="jac", max_nfev=int(max_iter))
    except (ValueError, np.linalg.LinAlgError, FloatingPointError) as exc:   # pragma: no cover
        res = _Failed(str(exc), p0)
    return res, prob, ys.size


def _grown_window(win, x0, y0, sigma_major, shape):
    """The window enlarged to cover +-(3 sigma_major + 1) px around (x0, y0), grown at most
    _MAX_GROW x per axis and never shrunk; ``win`` itself when it is already big enough."""
    H, W = shape
    r0, r1, c0, c1 = win
    need = math.ceil(3.0 * sigma_major) + 1
    want = (max(math.floor(y0) - need, 0), min(math.ceil(y0) + need + 1, H),
            max(math.floor(x0) - need, 0), min(math.ceil(x0) + need + 1, W))
    if want[0] >= r0 and want[1] <= r1 and want[2] >= c0 and want[3] <= c1:
        return win
    gr, gc = 0.5 * _MAX_GROW * (r1 - r0), 0.5 * _MAX_GROW * (c1 - c0)
    cy, cx = 0.5 * (r0 + r1), 0.5 * (c0 + c1)
    lim = (max(int(cy - gr), 0), min(math.ceil(cy + gr), H),
           max(int(cx - gc), 0), min(math.ceil(cx + gc), W))
    return (min(r0, max(want[0], lim[0])), max(r1, min(want[1], lim[1])),
            min(c0, max(want[2], lim[2])), max(c1, min(want[3], lim[3])))


class _Failed:
    def __init__(self, message, x):
        self.status, self.message, self.x, self.success = -1, message, x, False


def _fit_particle(z, labels, zone, lab, win, p_start, plane, max_iter, noise, min_snr):
    """Fit one particle (with the automatic bigger-window re-fit).
    Returns (params or None, rms, final window, reason, converged)."""
    shape = labels.shape
    res, prob, npix = _fit_window(z, labels, zone, lab, *win, p_start, plane, max_iter)
    if res is None:
        return None, np.nan, win, f"too_few_pixels: only {npix} usable pixels in the fit window", False
    p = res.x
    rms = _rms(prob, p)
    # a plausible peak in a window smaller than +-3 sigma: fit once more, bigger
    ax = _axes(*p[2:5]) if res.success and np.all(np.isfinite(p)) and p[5] > 0 else None
    if ax is not None:
        win2 = _grown_window(win, p[0], p[1], ax[0], shape)
        if win2 != win:
            res2, prob2, _ = _fit_window(z, labels, zone, lab, *win2, p, plane, max_iter)
            if res2 is not None and res2.success:
                res, p, rms, win = res2, res2.x, _rms(prob2, res2.x), win2
    reason = _check(p, rms, win, noise, min_snr, res, labels, lab)
    return p, rms, win, reason, bool(res.success)


def _check(p, rms, win, noise, min_snr, res, labels, lab):
    """Return '' when the fit is acceptable, else the failure reason."""
    r0, r1, c0, c1 = win
    if not res.success:
        return f"not_converged: {res.message}".strip()
    if not np.all(np.isfinite(p)) or not math.isfinite(rms):
        return "non_finite: the fit produced non-finite parameters"
    x0, y0, a, b, c, A = p[:6]
    ax = _axes(a, b, c)
    if ax is None:
        return "sigma_not_positive: the fitted Gaussian is not a peak (covariance not positive definite)"
    smaj, smin, _ = ax
    if A <= 0:
        return f"wrong_sign: amplitude {A:.4g} has the wrong sign for the particle polarity"
    if not (c0 - 0.5 <= x0 <= c1 - 0.5 and r0 - 0.5 <= y0 <= r1 - 0.5):
        return f"centre_outside_window: centre ({x0:.1f}, {y0:.1f}) left the fit window"
    r, cc = round(y0), round(x0)
    if 0 <= r < labels.shape[0] and 0 <= cc < labels.shape[1] and labels[r, cc] not in (0, lab):
        return (f"centre_on_other_label: the fit converged onto label {int(labels[r, cc])} "
                f"at ({x0:.1f}, {y0:.1f})")
    if smin < _MIN_SIGMA_PX:
        return f"sigma_too_small: sigma_minor {smin:.3g} px < {_MIN_SIGMA_PX} px"
    if smaj > 0.5 * max(r1 - r0, c1 - c0):
        return (f"sigma_too_large: sigma_major {smaj:.3g} px is larger than half the "
                f"{r1 - r0}x{c1 - c0} px fit window")
    nz = max(rms, noise)
    if A < min_snr * nz:
        return f"amplitude_below_noise: amplitude {A:.4g} < {min_snr:g} x noise {nz:.4g}"
    # matched-filter significance: the peak's "volume" against the noise.  Catches needle
    # fits to single noisy pixels (sub-pixel sigma, amplitude just above min_snr x noise).
    snr = A * math.sqrt(math.pi * smaj * smin) / nz if nz > 0 else math.inf
    if snr < 2.0 * min_snr:
        return (f"not_significant: A*sqrt(pi*sigma_major*sigma_minor)/noise = {snr:.3g} "
                f"< {2 * min_snr:g}")
    return ""


def _neighbours(ids, fits):
    """For every well-fitted particle, its well-fitted neighbours whose Gaussian exceeds
    _NEIGHBOUR_FRACTION of the particle's amplitude somewhere on its FWHM contour
    (strongest first).  Candidate pairs come from a KD-tree, so memory stays O(pairs)."""
    good = [lab for lab in ids if not fits[lab][3]]
    if len(good) < 2:
        return {}
    P = np.array([fits[lab][0][:6] for lab in good])
    smaj = np.array([_axes(*p[2:5])[0] for p in P])
    A = P[:, 5]
    # no pair farther apart than this can pass the threshold
    reach = smaj.max() * (1.1774 + math.sqrt(2.0 * math.log(A.max() / (_NEIGHBOUR_FRACTION * A.min()))))
    pairs = cKDTree(P[:, :2]).query_pairs(reach, output_type="ndarray")
    if not len(pairs):
        return {}
    i = np.concatenate([pairs[:, 0], pairs[:, 1]])
    j = np.concatenate([pairs[:, 1], pairs[:, 0]])
    d = np.hypot(P[i, 0] - P[j, 0], P[i, 1] - P[j, 1])
    # j's Gaussian at i's FWHM rim (conservative: both major axes)
    rim = np.maximum(d - 1.1774 * smaj[i], 0.0)
    contrib = A[j] * np.exp(-0.5 * (rim / smaj[j]) ** 2)
    keep = contrib > _NEIGHBOUR_FRACTION * A[i]
    i, j, contrib = i[keep], j[keep], contrib[keep]
    out = {}
    for k in np.lexsort((-contrib, i)):
        out.setdefault(good[i[k]], []).append(good[j[k]])
    return out


def _joint_refits(z, labels, zone, ids, fits, neigh, plane, max_iter, noise, min_snr):
    """Re-fit particles with 1.._MAX_JOINT significant neighbours together with them (sum of
    Gaussians on one background, in the particle's own window and zone-of-influence of the
    group); keep the particle's own parameters.  Crowded particles keep their single fit."""
    new = dict(fits)
    for lab, nbs in neigh.items():
        if len(nbs) > _MAX_JOINT:
            continue
        group = [lab] + nbs
        r0, r1, c0, c1 = fits[lab][2]
        zw = z[r0:r1, c0:c1]
        usable = np.isfinite(zw) & np.isin(zone[r0:r1, c0:c1], group)
        ys, xs = np.nonzero(usable)
        k = len(group)
        nbg = 3 if plane else 1
        if ys.size < 2 * (6 * k + nbg):
            continue
        xc, yc = 0.5 * (c0 + c1 - 1), 0.5 * (r0 + r1 - 1)
        prob = _JointProblem((xs + c0).astype(float), (ys + r0).astype(float),
                             zw[ys, xs].astype(float), xc, yc, k, plane)
        # start: the single fits; background from the particle's own fit (same window)
        p0 = np.concatenate([np.concatenate([fits[g][0][:6] for g in group]), fits[lab][0][6:]])
        try:
            res = least_squares(prob.residuals, p0, jac=prob.jacobian, method="lm",
                                x_scale="jac", max_nfev=int(max_iter))
        except (ValueError, np.linalg.LinAlgError, FloatingPointError):   # pragma: no cover
            continue
        if not res.success:
            continue                   # keep the single fit
        pj = np.concatenate([res.x[:6], res.x[6 * k:]])
        rms = float(np.sqrt(np.mean(res.fun ** 2)))
        win = (r0, r1, c0, c1)
        new[lab] = (pj, rms, win, _check(pj, rms, win, noise, min_snr, res, labels, lab))
    return new


# --------------------------------------------------------------------------- public API

def refine_gaussian(
    heights: np.ndarray,
    labels: np.ndarray,
    pixel_size_nm: float | None = None,
    level: float = 0.5,
    margin: float = 1.0,
    max_iter: int = 200,
    *,
    background: str = "plane",
    polarity: str = "bright",
    min_snr: float = 3.0,
    joint: bool = True,
) -> RefineResult:
    """Refine every labelled particle by a 2-D Gaussian fit to the height map.

    Parameters
    ----------
    heights
        2-D real array: STM heights (any unit) or image intensity.  Non-finite pixels are
        ignored.  Integer arrays are converted to float.
    labels
        2-D integer instance label image of the same shape, 0 = background.
    pixel_size_nm
        Pixel size; when given the ``*_nm`` columns are filled, otherwise they are NaN.
    level
        Contour level as a fraction of the fitted amplitude, 0 < level < 1; 0.5 = FWHM.
    margin
        The fit window is the label's bounding box enlarged on every side by
        ``margin`` × the box's height (rows) / width (columns), at least 3 px.  When the
        first fit shows the window is smaller than ±3 σ around the fitted centre, the
        particle is fitted once more in a window of ±(3 σ_major + 1) px (grown at most
        3× per axis).  Only the window pixels in the particle's zone of influence are
        fitted: pixels whose nearest labelled pixel belongs to another label (including
        that label's own pixels) are left out, so a neighbour's flank does not pull the fit.
    max_iter
        Maximum number of model evaluations of ``scipy.optimize.least_squares``
        (Levenberg–Marquardt, analytic Jacobian).  Not converging within it = failure.
    background
        ``"plane"`` (default, a tilted plane — usual for STM) or ``"constant"``.
    polarity
        ``"bright"`` (default: particles are protrusions / bright) or ``"dark"``
        (particles darker than the background, e.g. bright-field TEM).  For ``"dark"``
        the reported ``amplitude`` is negative.
    min_snr
        A fit fails when its amplitude is below ``min_snr`` × noise, noise = the larger of
        the fit's rms residual and the image's white-noise level (robust std of
        neighbour differences along rows / √2).
    joint
        Touching particles: after the single fits, a particle whose fitted neighbours
        reach into it (a neighbour's Gaussian > 1 % of its amplitude on its FWHM contour)
        and that has at most 2 such neighbours is fitted again *together* with them (sum
        of Gaussians on one background, its own window, the group's zones of influence);
        only its own parameters are kept.  Particles with 3 or more such neighbours
        (crowded monolayers) keep their single fit — see ``n_neighbours``.
        ``joint=False`` skips this step.

    Failure rules (a failed particle keeps its original mask, unchanged, and is counted in
    ``n_failed``; nothing is dropped).  ``reason`` is ``"<code>: <details>"``; the codes,
    checked in this order:

    - ``too_few_pixels``: fewer than 2 × (number of parameters) usable pixels in the window;
    - ``not_converged``: ``least_squares`` stopped without converging (e.g. ``max_iter``);
    - ``non_finite``: non-finite parameters or residual;
    - ``sigma_not_positive``: the fitted covariance is not positive definite (a σ ≤ 0);
    - ``wrong_sign``: amplitude ≤ 0 for the given ``polarity``;
    - ``centre_outside_window``: the fitted centre left the fit window;
    - ``centre_on_other_label``: the fitted centre lies on another label's pixels (the fit
      slid onto a neighbouring particle — it would be a duplicate);
    - ``sigma_too_small``: σ_minor < 0.3 px;
    - ``sigma_too_large``: σ_major > half the longer side of the (final) window;
    - ``amplitude_below_noise``: amplitude < ``min_snr`` × noise;
    - ``not_significant``: matched-filter SNR amplitude·√(π σ_major σ_minor)/noise
      < 2 × ``min_snr`` (rejects needle fits to single noisy pixels).

    Returns
    -------
    RefineResult
        ``labels``: refined instance labels (same shape and dtype, same label ids).  A
        fitted particle is drawn as its filled contour ellipse at ``level`` (pixels whose
        centres lie inside), clipped to the image; where refined ellipses overlap, a pixel
        goes to the particle in whose ellipse it lies deepest (smallest normalised
        elliptical distance q/q_level — for equal round particles that is the nearest
        centre); an ellipse too small to contain a pixel centre gets the pixel at its
        centre.  Failed particles keep their original pixels, which take precedence over
        refined ellipses.  Pixels of a fitted particle's original mask outside its ellipse
        become background.

        ``params``: one row per label present in ``labels``, sorted by label, with the
        columns of :data:`PARAM_COLUMNS` (pixel coordinates: x = column, y = row, pixel
        centres at integers):

        - ``label`` — the label id (join key for the particle table);
        - ``x0_px``, ``y0_px`` — fitted centre, sub-pixel;
        - ``sigma_major_px``, ``sigma_minor_px`` — Gaussian standard deviations along
          the ellipse axes;
        - ``angle_deg`` — major-axis direction from +x towards +y, in (−90, 90];
        - ``amplitude`` — fitted peak height above the local background (height units;
          for STM this is the particle height; negative with ``polarity="dark"``);
        - ``background`` — background (plane) height under the fitted centre;
        - ``rms_residual`` — rms of (data − model) over the fitted pixels; filled
          whenever a fit ran, also for most failures;
        - ``n_neighbours`` — fitted neighbours reaching > 1 % of this particle's amplitude
          on its FWHM contour; 1–2: fitted jointly with them; ≥ 3: crowded, single fit
          kept, expect biased sizes (see docs/refine.md);
        - ``success`` — bool; ``reason`` — ``""`` when success, else
          ``"<code>: <details>"`` (codes above);
        - ``refined_area_px`` — area of the contour ellipse at ``level``, π·a·b with
          a, b = σ·√(−2 ln level) (analytic, sub-pixel);
        - ``diameter_px`` — ECD of that ellipse, 2·√(a·b);
        - ``drawn_area_px`` — pixels the label has in the returned ``labels`` (the
          ellipse after clipping/overlap; the original mask when the fit failed);
        - ``sigma_major_nm``, ``sigma_minor_nm``, ``refined_area_nm2``,
          ``diameter_nm`` — the same in nm / nm² (NaN without ``pixel_size_nm``).

        Fit-derived columns (``x0_px`` … ``background``, ``refined_area_px``,
        ``diameter_px`` and their nm versions) are NaN for failed particles.
        ``n_fitted`` / ``n_failed`` count rows with success True / False;
        ``failed_labels`` lists the failed label ids (ascending); ``summary()`` gives a
        one-line report; ``level`` echoes the contour level.

        Suggested particle-table mapping: ``diameter_nm`` (or ``diameter_px``) → refined
        ECD, ``refined_area_nm2`` → refined area, ``amplitude`` → height,
        ``sigma_major/minor`` ×2√(−2 ln level) → refined major/minor axis lengths,
        ``angle_deg`` → orientation, ``success``/``reason`` → refinement status; for
        failed particles keep the measurements of the unchanged original mask.

    Raises
    ------
    NanodefectError
        wrong shapes, dtypes or parameter values.
    """
    _check_inputs(heights, labels, pixel_size_nm, level, margin, max_iter, background, polarity, min_snr,
                  joint)
    level = float(level)
    q_level = -2.0 * math.log(level)
    plane = background == "plane"
    z = np.asarray(heights, dtype=float)
    if polarity == "dark":
        z = -z
    out = np.zeros_like(labels)
    slices = ndi.find_objects(labels) if labels.size else []
    ids = [i + 1 for i, s in enumerate(slices) if s is not None]
    if not ids:
        return RefineResult(labels.copy(), _empty_frame(), 0, 0, [], level)

    noise = _global_noise(z)
    # nearest label of every pixel (one distance transform for the whole image)
    ir, ic = ndi.distance_transform_edt(labels == 0, return_distances=False, return_indices=True)
    zone = labels[ir, ic]
    del ir, ic
    H, W = labels.shape
    fits = {}            # label -> (params or None, rms, window, reason)
    win0 = {}
    for lab in ids:
        bbox = slices[lab - 1]
        h = bbox[0].stop - bbox[0].start
        w = bbox[1].stop - bbox[1].start
        pad_r = max(_MIN_PAD_PX, math.ceil(margin * h))
        pad_c = max(_MIN_PAD_PX, math.ceil(margin * w))
        win0[lab] = _window(bbox, (H, W), pad_r, pad_c)
        fits[lab] = _fit_particle(z, labels, zone, lab, win0[lab], None, plane, max_iter,
                                  noise, min_snr)[:4]

    # touching particles: fit each particle together with the neighbours whose Gaussians
    # reach into it, keep only its own parameters
    neigh = _neighbours(ids, fits)
    if joint and neigh:
        fits = _joint_refits(z, labels, zone, ids, fits, neigh, plane, max_iter, noise, min_snr)

    rows = []
    fitted = []          # (lab, x0, y0, a, b, c)
    failed = []
    for lab in ids:
        p, rms, win, reason = fits[lab]
        row = dict.fromkeys(PARAM_COLUMNS, np.nan)
        row["label"] = lab
        row["rms_residual"] = rms
        row["n_neighbours"] = len(neigh.get(lab, ()))
        row["success"] = not reason
        row["reason"] = reason
        if not reason:
            x0, y0, a, b, c, A, B = p[:7]
            smaj, smin, ang = _axes(a, b, c)
            if plane:
                r0, r1, c0, c1 = win
                B = B + p[7] * (x0 - 0.5 * (c0 + c1 - 1)) + p[8] * (y0 - 0.5 * (r0 + r1 - 1))
            sign = -1.0 if polarity == "dark" else 1.0
            ax_major, ax_minor = smaj * math.sqrt(q_level), smin * math.sqrt(q_level)
            row.update(x0_px=x0, y0_px=y0, sigma_major_px=smaj, sigma_minor_px=smin,
                       angle_deg=ang, amplitude=sign * A, background=sign * B,
                       refined_area_px=math.pi * ax_major * ax_minor,
                       diameter_px=2.0 * math.sqrt(ax_major * ax_minor))
            fitted.append((lab, x0, y0, a, b, c))
        else:
            failed.append(lab)
        rows.append(row)

    # ---- draw: failed originals first (locked), then refined ellipses by depth
    locked = np.isin(labels, failed) if failed else np.zeros(labels.shape, bool)
    out[locked] = labels[locked]
    depth = np.full(labels.shape, np.inf)
    for lab, x0, y0, a, b, c in fitted:
        det = a * c - b * b
        ex = math.sqrt(q_level * c / det)      # half-extent along x: sqrt(qL * cov_xx)
        ey = math.sqrt(q_level * a / det)
        ra, rb = max(math.ceil(y0 - ey), 0), min(math.floor(y0 + ey) + 1, H)
        ca, cb = max(math.ceil(x0 - ex), 0), min(math.floor(x0 + ex) + 1, W)
        if ra < rb and ca < cb:
            dy = np.arange(ra, rb, dtype=float)[:, None] - y0
            dx = np.arange(ca, cb, dtype=float)[None, :] - x0
            qn = (a * dx * dx + 2 * b * dx * dy + c * dy * dy) / q_level
            dsub = depth[ra:rb, ca:cb]
            take = (qn <= 1.0) & (qn < dsub) & ~locked[ra:rb, ca:cb]
            if take.any():
                dsub[take] = qn[take]
                out[ra:rb, ca:cb][take] = lab
                continue
        # too small to cover a pixel centre: give it the pixel at its centre
        r, cc = round(y0), round(x0)
        if 0 <= r < H and 0 <= cc < W and not locked[r, cc] and depth[r, cc] > 0:
            depth[r, cc] = 0.0
            out[r, cc] = lab

    counts = np.bincount(out.ravel().astype(np.int64), minlength=max(ids) + 1)
    df = pd.DataFrame(rows, columns=list(PARAM_COLUMNS))
    df["drawn_area_px"] = counts[df["label"].to_numpy()].astype(np.int64)
    if pixel_size_nm is not None:
        ps = float(pixel_size_nm)
        df["sigma_major_nm"] = df["sigma_major_px"] * ps
        df["sigma_minor_nm"] = df["sigma_minor_px"] * ps
        df["refined_area_nm2"] = df["refined_area_px"] * ps * ps
        df["diameter_nm"] = df["diameter_px"] * ps
    df = _fix_dtypes(df)
    return RefineResult(out, df, len(fitted), len(failed), failed, level)


def _rms(prob, p):
    if prob is None:
        return np.nan
    r = prob.residuals(p)
    v = float(np.sqrt(np.mean(r * r)))
    return v if math.isfinite(v) else np.nan


def _fix_dtypes(df: pd.DataFrame) -> pd.DataFrame:
    df["label"] = df["label"].astype(np.int64)
    df["success"] = df["success"].astype(bool)
    df["reason"] = df["reason"].astype(str)
    df["drawn_area_px"] = df["drawn_area_px"].astype(np.int64)
    df["n_neighbours"] = df["n_neighbours"].fillna(0).astype(np.int64)
    for col in PARAM_COLUMNS:
        if col not in ("label", "success", "reason", "drawn_area_px", "n_neighbours"):
            df[col] = df[col].astype(float)
    return df.reset_index(drop=True)


def _empty_frame() -> pd.DataFrame:
    return _fix_dtypes(pd.DataFrame({c: [] for c in PARAM_COLUMNS}))
