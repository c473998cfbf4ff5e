"""retinafocal: RetinaNet and the focal loss (Lin et al., ICCV 2017) as a detectron2 plugin.

``import retinafocal`` is all a user needs: it makes the installed detectron2 usable
(:mod:`retinafocal.compat`), then registers the ``FocalRetinaNet`` meta-architecture and
retinafocal's heads, anchor matchers and classification losses in their registries.
Import it before ``detectron2.modeling`` when running on the pure-Python detectron2 v0.6 build.
"""
from . import compat

compat.apply()

from . import data, losses, modeling  # noqa: E402  (register datasets and model parts)
from .config import add_retinafocal_config  # noqa: E402

__version__ = "0.1.0"

__all__ = ["add_retinafocal_config", "compat", "losses", "modeling", "__version__"]
