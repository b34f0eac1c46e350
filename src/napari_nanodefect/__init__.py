"""napari-nanodefect: count, measure and map nanoparticles and defects in micrographs.

The Qt-free engine lives in :mod:`napari_nanodefect.core`; the most used entry points
are re-exported here so a script can do::

    from napari_nanodefect import read_image
    m = read_image("particles.tif")
    print(m.pixel_size_nm, m.pixel_size_source)
"""

__version__ = "0.1.0"

from .core.errors import NanodefectError
from .core.micrograph import Micrograph
from .core.io import read_image

__all__ = ["NanodefectError", "Micrograph", "read_image", "__version__"]
