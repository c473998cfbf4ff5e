"""Logic behind the user tools in ``tools/``: demo, side-by-side benchmark, export, analysis.

The scripts in ``tools/`` only parse arguments and call into these modules, so that tests can
import and exercise the same code:

* :mod:`.loading` - a ready model from a yacs (``.yaml``) or LazyConfig (``.py``) config;
* :mod:`.demo` - detections on images, folders and videos, drawn and written as COCO json;
* :mod:`.benchmark` - retinafocal against detectron2's and torchvision's RetinaNet, one run;
* :mod:`.export` - TorchScript and ONNX export with a check against the eager model;
* :mod:`.analysis` - parameters and FLOPs per component (backbone, FPN, subnets).

The submodules are not imported here: each pulls in different optional dependencies
(OpenCV, onnx/onnxruntime, torchvision's detection models).
"""


class ToolError(Exception):
    """A problem with what the user asked for (missing file, unreadable image, bad option).

    The scripts print its message, which names the file or option at fault, and exit with a
    non-zero status instead of showing a traceback.
    """
