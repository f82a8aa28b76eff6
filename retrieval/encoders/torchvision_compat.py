"""Make `import torchvision` survive next to a CPU-only torch.

PyPI ships torchvision wheels built for CUDA torch only. Next to our CPU torch (2.13.0+cpu, the
build that installs offline) their C++ ops library fails to load, and torchvision's import then
dies registering fake kernels for `nms` / `qnms`, operators that were never declared. Because
transformers' vision code and sentence-transformers import torchvision whenever it is installed,
one such wheel (pulled in by open_clip) would break every model. The registry calls
`allow_torchvision_without_ops` before loading any family.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

import torch


def allow_torchvision_without_ops() -> None:
    """Let `import torchvision` succeed when its compiled ops cannot load against this torch build.

    PyPI ships torchvision wheels built for CUDA torch only. Next to our CPU torch their C++ ops
    library fails to load, and torchvision's import then dies registering fake kernels for `nms` and
    `qnms`, operators that were never declared ("operator torchvision::nms does not exist"); through
    it every transformers vision model and open_clip fail to import. open_clip and transformers
    only use torchvision's Python transforms, so in that case we declare the two schemas without
    kernels (torchvision.ops.nms still raises its own "ops not available" error). A no-op when
    torchvision is absent, already imported, or its ops load.
    """
    if "torchvision" in sys.modules:
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    if hasattr(torch.ops.torchvision, "nms"):
        return
    package = Path(next(iter(spec.submodule_search_locations)))
    libraries = [package / f"_C{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES]
    library = next((p for p in libraries if p.is_file()), None)
    if library is None:
        return
    try:
        torch.ops.load_library(str(library))  # torchvision loads the same file again later: a no-op
        return
    except OSError:  # built against libraries this torch lacks (libtorch_cuda.so)
        pass
    for op in ("nms", "qnms"):
        torch.library.define(f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
