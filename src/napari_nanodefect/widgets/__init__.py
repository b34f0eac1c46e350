"""napari docks (Qt): thin wiring between layers and the core. See :mod:`._common`."""

from .._guard import block_triton

block_triton()
