"""Whether a loaded weights file fits the model (detectron2 only logs what does not), under
:func:`check_fit`'s rules. **Exact** (evaluation, demo, export, ``--resume``): every tensor of
the model and of the file matches, except ``pixel_mean`` / ``pixel_std`` (config),
``num_batches_tracked`` and what detectron2 itself excuses (old ``anchor_generator.cell_anchors``).
**Initial** (``MODEL.WEIGHTS``): partial loads are the point (an ImageNet backbone, another class
count) and are only logged, but a file of which no tensor fits is an error."""
from __future__ import annotations

from typing import Iterable, Sequence, Tuple

from .weights_file import WeightsFileError

__all__ = ["WeightsMismatchError", "MissingWeightsError", "check_fit"]

#: How many names of each kind a mismatch error lists.
MAX_LISTED = 10
#: Model tensors that need not come from a file (the config sets them).
_FROM_CONFIG = ("pixel_mean", "pixel_std")


class WeightsMismatchError(WeightsFileError):
    """The weights file does not fit the model; the message lists the mismatches."""


class MissingWeightsError(WeightsFileError):
    """No weights where a trained model is needed; the message names the key and the flag."""


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    more = len(names) - MAX_LISTED
    return shown + (f" (and {more} more)" if more > 0 else "")


def _shape(shape: Iterable[int]) -> str:
    return repr(tuple(int(s) for s in shape))


def _excused(key: str) -> bool:
    # Older detectron2 versions saved pixel_mean/pixel_std as buffers: unused, not a misfit.
    return key.endswith("num_batches_tracked") or key in _FROM_CONFIG


def check_fit(
    path: str,
    model_keys: Iterable[str],
    missing_keys: Sequence[str],
    unexpected_keys: Sequence[str],
    incorrect_shapes: Sequence[Tuple[str, Tuple[int, ...], Tuple[int, ...]]],
    *,
    exact: bool,
) -> None:
    """Raise :class:`WeightsMismatchError` if ``path`` does not fit the model under the rule
    ``exact`` chooses. ``model_keys``: the model's ``state_dict`` names; the rest is fvcore's
    ``_IncompatibleKeys`` (shapes are (key, file shape, model shape), keys also missing)."""
    wrong_shape = {key for key, _, _ in incorrect_shapes}
    missing = [k for k in missing_keys if k not in wrong_shape]
    if not exact:
        fitted = set(model_keys) - set(missing_keys) - wrong_shape - set(_FROM_CONFIG)
        if not fitted and (missing or incorrect_shapes):
            raise WeightsMismatchError(
                f"None of the model's parameters and buffers is in {path} with its shape, so "
                "the file holds weights of another kind of model. The model needs e.g. "
                f"{_listed(sorted(missing))}"
                + (f"; the file has {_listed(sorted(unexpected_keys))}" if unexpected_keys else "")
                + ". Check the initial weights (MODEL.WEIGHTS / train.init_checkpoint)."
            )
        return
    missing = [k for k in missing if not _excused(k)]
    unexpected = [k for k in unexpected_keys if not _excused(k)]
    shapes = [
        f"{key} {_shape(file_shape)} in the file, {_shape(model_shape)} in the model"
        for key, file_shape, model_shape in sorted(incorrect_shapes)
    ]
    problems = [
        f"{len(names)} {what}: {_listed(names)}"
        for what, names in (
            ("with another shape", shapes),
            ("of the model's missing from the file", sorted(missing)),
            ("in the file that the model does not have", sorted(unexpected)),
        )
        if names
    ]
    if problems:
        raise WeightsMismatchError(
            f"{path} does not fit the model: parameters and buffers "
            + "; ".join(problems)
            + ". Use the config of the run that wrote the file (same backbone depth, "
            "MODEL.RETINANET.NUM_CLASSES, head and FPN sizes), or weights trained for this config."
        )
