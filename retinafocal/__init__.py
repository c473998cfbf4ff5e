"""retinafocal: RetinaNet and the focal loss (Lin et al., ICCV 2017) as a detectron2 plugin.
``import retinafocal`` (before ``detectron2.modeling`` on the pure-Python v0.6 build) applies
:mod:`retinafocal.compat` and registers the meta-architecture, heads, matchers and losses."""
from . import compat

compat.apply()

from . import data, losses, modeling  # noqa: E402  (register datasets and model parts)
from .config import add_retinafocal_config  # noqa: E402

__version__ = "0.1.0"

__all__ = ["add_retinafocal_config", "compat", "losses", "modeling", "__version__"]
