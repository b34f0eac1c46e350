"""Measurements in physical units (Qt-free).

- :mod:`.particles` — one row per particle (area, ECD, Feret, ellipse, perimeter, …) as a
  ``pandas.DataFrame`` that can be used directly as a napari ``layer.features`` table,
  and fast re-measurement of changed labels.
- :mod:`.population` — count, density, coverage, d10/d50/d90, log-normal fit, edge correction.
- :mod:`.skeleton` — line-defect skeleton lengths (skan graph, sub-pixel length).
- :mod:`.refine` — optional 2-D Gaussian contour refinement for STM height maps.

Sub-modules are imported on demand (``from napari_nanodefect.core.measure.particles import
measure_particles``) so that importing this package stays cheap.
"""
