"""retinafocal's model: the FocalRetinaNet meta-architecture and its swappable parts.

Importing this package registers ``FocalRetinaNet`` in detectron2's ``META_ARCH_REGISTRY``, the
``RetinaFocalHead`` head and the ``ChunkedIoUMatcher`` matcher in retinafocal's registries."""
from .head import RETINAFOCAL_HEAD_REGISTRY, RetinaFocalHead, build_retinafocal_head
from .matcher import ANCHOR_MATCHER_REGISTRY, ChunkedIoUMatcher, build_anchor_matcher
from .retinanet import FocalRetinaNet

# As detectron2.data and detectron2.engine: the public names are those imported above.
__all__ = [k for k in globals().keys() if not k.startswith("_")]
