"""Defect segmentation and nanoparticle-ordering analysis (Qt-free)."""
