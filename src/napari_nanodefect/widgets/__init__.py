"""Thin Qt docks: they translate between napari layers and :mod:`napari_nanodefect.core` calls."""
