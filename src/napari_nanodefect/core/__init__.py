"""Qt-free engine of napari-nanodefect (I/O, calibration, annotations, training, measurement).

Nothing under this package may import Qt, napari or magicgui.
"""
