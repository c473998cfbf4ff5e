"""Whether a loaded weights file fits the model, and what happens when it does not.

detectron2's checkpointer loads whatever names and shapes match and only logs the rest ("Skip
loading parameter ...", "Some model parameters or buffers are not found in the checkpoint"),
so evaluating a checkpoint of another depth or class count gives an AP and exit status 0.
:func:`check_fit` applies one of two rules to what the checkpointer could not load:

- **exact** (evaluation, the demo, export, ``--resume``): every tensor of the model must come
  from the file with its shape, and every tensor of the file must belong to the model. Only
  what detectron2 itself does not expect in a file is excused: ``pixel_mean`` / ``pixel_std``
  (set by the config), BatchNorm's ``num_batches_tracked`` step counters (they do not change
  outputs) and the old ``anchor_generator.cell_anchors`` buffers.
- **initial** (training from ``MODEL.WEIGHTS`` / ``train.init_checkpoint``): loading part of
  a model is the point (an ImageNet backbone has no FPN and no head; a detector fine-tuned to
  another class count has a class layer of another shape), so gaps and shape differences are
  only logged. A file of which not one tensor fits is an error: it holds another kind of model.
"""
from __future__ import annotations

from typing import Iterable, List, Sequence, Tuple

from .weights_file import WeightsFileError

__all__ = ["WeightsMismatchError", "MissingWeightsError", "check_fit"]

#: How many names of each kind a mismatch error lists.
MAX_LISTED = 10
#: Model tensors that need not come from a file (the config sets them).
_FROM_CONFIG = ("pixel_mean", "pixel_std")


class WeightsMismatchError(WeightsFileError):
    """The weights file does not fit the model; the message lists the mismatches."""


class MissingWeightsError(WeightsFileError):
    """No weights were given where a trained model is needed; the message names the config key
    and the flag that runs a random model on purpose."""


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    more = len(names) - MAX_LISTED
    return shown + (f" (and {more} more)" if more > 0 else "")


def _shape(shape: Iterable[int]) -> str:
    return repr(tuple(int(s) for s in shape))


def check_fit(
    path: str,
    model_keys: Iterable[str],
    missing_keys: Sequence[str],
    unexpected_keys: Sequence[str],
    incorrect_shapes: Sequence[Tuple[str, Tuple[int, ...], Tuple[int, ...]]],
    *,
    exact: bool,
) -> None:
    """Raise :class:`WeightsMismatchError` if the file ``path`` does not fit the model under
    the rule chosen by ``exact`` (see the module docstring).

    Args:
        model_keys: names of the model's ``state_dict``.
        missing_keys, unexpected_keys, incorrect_shapes: what fvcore's ``Checkpointer``
            reports after loading (``_IncompatibleKeys``); shapes are (key, shape in the file,
            shape in the model). A key with the wrong shape is also among ``missing_keys``.
    """
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
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    unexpected = [k for k in unexpected_keys if not k.endswith("num_batches_tracked")]
    if not (missing or unexpected or incorrect_shapes):
        return
    problems: List[str] = []
    if incorrect_shapes:
        shapes = [
            f"{key} {_shape(file_shape)} in the file, {_shape(model_shape)} in the model"
            for key, file_shape, model_shape in sorted(incorrect_shapes)
        ]
        problems.append(f"{len(shapes)} with another shape: {_listed(shapes)}")
    if missing:
        problems.append(f"{len(missing)} of the model's missing from the file: "
                        f"{_listed(sorted(missing))}")
    if unexpected:
        problems.append(f"{len(unexpected)} in the file that the model does not have: "
                        f"{_listed(sorted(unexpected))}")
    raise WeightsMismatchError(
        f"{path} does not fit the model: parameters and buffers "
        + "; ".join(problems)
        + ". Use the config of the run that wrote the file (same backbone depth, "
        "MODEL.RETINANET.NUM_CLASSES, head and FPN sizes), or weights trained for this config."
    )
