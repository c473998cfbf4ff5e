"""The paper's numbers: Table 1 of Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017
(arXiv:1708.02002), the ablations of RetinaNet on COCO minival.

Every value here is the paper's; every number the reproduction measures lives in the run
results. Keys are the ablated parameter of each sub-table, so a grid row looks its reference up by
what it varies (alpha, gamma, anchor counts, OHEM setting, input scale).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

__all__ = [
    "PaperAP",
    "CITATION",
    "SECTION_SETTINGS",
    "TABLE_1A",
    "TABLE_1B",
    "TABLE_1C",
    "TABLE_1D",
    "TABLE_1E",
    "INIT_STATEMENT",
    "FIGURE4_STATEMENT",
    "cite",
]

#: How every reference is cited in the report.
CITATION = "Lin et al. 2017 (arXiv:1708.02002)"


@dataclass(frozen=True)
class PaperAP:
    """One row of a paper table: COCO AP, AP50, AP75 (percent) and, for Table 1e, the inference
    time in ms per image (on the paper's Nvidia M40 GPU)."""

    ap: float
    ap50: float
    ap75: float
    time_ms: Optional[float] = None


def cite(section: str) -> str:
    """The citation of a Table 1 sub-table, e.g. ``cite("1a")`` -> "... Table 1a"."""
    return f"{CITATION}, Table {section}"


#: What the paper's numbers of each sub-table were measured on (from the table captions and
#: Sec. 5.1), so that the report says next to each table what it is compared with.
SECTION_SETTINGS: Dict[str, str] = {
    "1a": "ResNet-50-FPN, 600 px, COCO minival; cross-entropy with alpha-balancing (gamma = 0)",
    "1b": "ResNet-50-FPN, 600 px, COCO minival; focal loss, the best alpha for each gamma",
    "1c": "ResNet-50-FPN, 600 px, COCO minival; focal loss, #scales x #aspect ratios per location",
    "1d": "ResNet-101-FPN, 600 px, COCO minival; OHEM with plain CE versus FL",
    "1e": "ResNet-50-FPN trained and tested at each scale, COCO minival; time on an Nvidia M40",
}

#: Table 1a: alpha -> AP (gamma = 0, i.e. alpha-balanced CE).
TABLE_1A: Dict[float, PaperAP] = {
    0.10: PaperAP(0.0, 0.0, 0.0),
    0.25: PaperAP(10.8, 16.0, 11.7),
    0.50: PaperAP(30.2, 46.7, 32.8),
    0.75: PaperAP(31.1, 49.4, 33.0),
    0.90: PaperAP(30.8, 49.7, 32.3),
    0.99: PaperAP(28.7, 47.4, 29.9),
    0.999: PaperAP(25.1, 41.7, 26.1),
}

#: Table 1b: gamma -> (the paper's best alpha for it, AP).
TABLE_1B: Dict[float, Tuple[float, PaperAP]] = {
    0.0: (0.75, PaperAP(31.1, 49.4, 33.0)),
    0.1: (0.75, PaperAP(31.4, 49.9, 33.1)),
    0.2: (0.75, PaperAP(31.9, 50.7, 33.4)),
    0.5: (0.50, PaperAP(32.9, 51.7, 35.2)),
    1.0: (0.25, PaperAP(33.7, 52.0, 36.2)),
    2.0: (0.25, PaperAP(34.0, 52.5, 36.5)),
    5.0: (0.25, PaperAP(32.2, 49.6, 34.8)),
}

#: Table 1c: (#scales per octave, #aspect ratios) -> AP.
TABLE_1C: Dict[Tuple[int, int], PaperAP] = {
    (1, 1): PaperAP(30.3, 49.0, 31.8),
    (2, 1): PaperAP(31.9, 50.0, 34.0),
    (3, 1): PaperAP(31.8, 49.4, 33.7),
    (1, 3): PaperAP(32.4, 52.3, 33.9),
    (2, 3): PaperAP(34.2, 53.1, 36.5),
    (3, 3): PaperAP(34.0, 52.5, 36.5),
    (4, 3): PaperAP(33.8, 52.1, 36.2),
}

#: Table 1d: (method, OHEM batch size per image, NMS threshold) -> AP. "OHEM" picks by loss
#: alone, "OHEM 1:3" keeps one positive per three negatives; "FL" has no batch and no NMS.
TABLE_1D: Dict[Tuple[str, Optional[int], Optional[float]], PaperAP] = {
    ("OHEM", 128, 0.7): PaperAP(31.1, 47.2, 33.2),
    ("OHEM", 256, 0.7): PaperAP(31.8, 48.8, 33.9),
    ("OHEM", 512, 0.7): PaperAP(30.6, 47.0, 32.6),
    ("OHEM", 128, 0.5): PaperAP(32.8, 50.3, 35.1),
    ("OHEM", 256, 0.5): PaperAP(31.0, 47.4, 33.0),
    ("OHEM", 512, 0.5): PaperAP(27.6, 42.0, 29.2),
    ("OHEM 1:3", 128, 0.5): PaperAP(31.1, 47.2, 33.2),
    ("OHEM 1:3", 256, 0.5): PaperAP(28.3, 42.4, 30.3),
    ("OHEM 1:3", 512, 0.5): PaperAP(24.0, 35.5, 25.8),
    ("FL", None, None): PaperAP(36.0, 54.9, 38.7),
}

#: Table 1e, ResNet-50-FPN rows: shorter image side (px) -> AP and ms per image.
TABLE_1E: Dict[int, PaperAP] = {
    400: PaperAP(30.5, 47.8, 32.7, 64.0),
    500: PaperAP(32.5, 50.9, 34.8, 72.0),
    600: PaperAP(34.3, 53.2, 36.9, 98.0),
    700: PaperAP(35.1, 54.2, 37.7, 121.0),
    800: PaperAP(35.7, 55.0, 38.5, 153.0),
}

#: What the paper reports about the prior initialisation (Sec. 5.1), in our words. The paper
#: gives no AP for the run without it; its CE-with-prior number is the alpha = .5 row of 1a.
INIT_STATEMENT = (
    "Trained with standard cross-entropy and no change to the initialisation, RetinaNet fails "
    "quickly: the network diverges during training. Initialising the last classification layer "
    "so that every anchor starts with foreground probability pi = 0.01 makes training work "
    f"({CITATION}, Sec. 5.1; CE with that prior: 30.2 AP, the alpha = .5 row of Table 1a)."
)

#: What the paper reports about Figure 4, in our words.
FIGURE4_STATEMENT = (
    "For a converged ResNet-101 model, the normalised loss of positives changes little with "
    "gamma, while for negatives at gamma = 2 almost all of the loss comes from a small fraction "
    f"of the samples: the focal loss discounts the many easy negatives ({CITATION}, Sec. 5.1, "
    "Figure 4)."
)
