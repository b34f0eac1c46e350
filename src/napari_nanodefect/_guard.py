"""Keep Triton out of the napari process.

PyTorch imports ``triton`` (when installed, as with the CUDA wheels) the first time
``torch._dynamo`` loads, which segmentation-models-pytorch triggers. Triton bundles its
own LLVM; once napari has created an OpenGL context on a Mesa driver (llvmpipe under
xvfb, radeonsi/iris on many Linux desktops), which loads the system LLVM, importing
Triton crashes the process with a segmentation fault. We never compile kernels in the
viewer (eager inference; training runs in a child process), so inside napari we make
``import triton`` fail cleanly and torch treats Triton as absent.

Set ``NANODEFECT_ALLOW_TRITON=1`` to opt out (e.g. on a workstation with NVIDIA's GL).
"""

from __future__ import annotations

import os
import sys


def block_triton() -> bool:
    """Make ``import triton`` raise ImportError in this process unless it is already
    imported or the user opted out. Returns True when Triton is blocked."""
    if os.environ.get("NANODEFECT_ALLOW_TRITON", "").strip() in ("1", "true", "yes"):
        return False
    if sys.modules.get("triton") is not None:
        return False  # already loaded (before any GL context): nothing to protect
    sys.modules["triton"] = None  # type: ignore[assignment]
    return True
