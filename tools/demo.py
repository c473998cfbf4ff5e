#!/usr/bin/env python
"""Detections on your own images, a folder of images or a video.

    python tools/demo.py --config-file configs/Embedded/retinanet_R18_FPN_shapes.yaml \
        --input photos/ --output demo_out/ --confidence-threshold 0.5 \
        --opts MODEL.WEIGHTS output/model_final.pth
    python tools/demo.py --config-file configs/COCO/retinanet_R50_FPN_1x.py \
        --input clip.mp4 --output demo_out/ --device cuda --opts train.init_checkpoint=model.pth

Writes one PNG per image with its detections drawn by detectron2's ``Visualizer`` (or the
annotated video) and ``results.json`` into ``--output``: a COCO results list of
``{"image_id", "file_name", "category_id", "bbox": [x, y, w, h], "score"}``, with ``frame`` set
for a video. Category ids are the dataset's (see ``coco_results.py``). Image ids: the id of the
image in the dataset's json when its file name is found there, otherwise the position of the
image in the sorted input list (counted after the json's largest id when there is a json, so
that no two images share an id). The weights must fit the config's model; a config without
weights is refused unless ``--random-weights``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

import retinafocal  # noqa: F401  (first: compat for old detectron2)
import config_loading as loading
import detectron2.data.transforms as T
from coco_results import (
    category_id_map,
    coco_json_of,
    drawing_metadata,
    image_id_map,
    instances_to_coco,
)
from config_loading import ToolError
from detectron2.data.detection_utils import read_image
from detectron2.structures import Instances
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import Visualizer
from retinafocal.weights_file import WeightsFileError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".m4v")


class Predictor:
    """One image in, detections out: detectron2's ``DefaultPredictor`` for any config kind.

    It resizes the image with the config's test-time augmentation, runs the model without
    gradients and returns the detections in the coordinates of the original image.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        augmentation: Optional[T.Augmentation],
        input_format: str = "BGR",
    ):
        """
        Args:
            model: a detectron2 meta-architecture in eval mode (takes a list of dicts with
                "image" (C, H, W), "height", "width"; returns a list of {"instances": ...}).
            augmentation: test-time resize; None to feed images at their size.
            input_format: channel order the model expects, "BGR" or "RGB".
        """
        if input_format not in ("BGR", "RGB"):
            raise ValueError(f"input_format must be 'BGR' or 'RGB', got {input_format!r}")
        self.model = model
        self.augmentation = augmentation
        self.input_format = input_format

    @classmethod
    def from_config(
        cls, cfg: Any, *, random_weights: bool = False, trust_weights_file: bool = False
    ) -> "Predictor":
        """The config's model with its weights (see ``config_loading.build_model``)."""
        model = loading.build_model(
            cfg, random_weights=random_weights, trust_weights_file=trust_weights_file
        )
        return cls(
            model,
            augmentation=loading.test_augmentation(cfg),
            input_format=loading.input_format(cfg),
        )

    @torch.no_grad()
    def __call__(self, image_bgr: np.ndarray) -> Instances:
        """
        Args:
            image_bgr: (H, W, 3) uint8 image in BGR order (OpenCV's).

        Returns:
            Instances of image size (H, W) on the CPU with ``pred_boxes`` (D, 4) XYXY in pixels
            of the input image, ``scores`` (D,) and ``pred_classes`` (D,) contiguous class
            indices.
        """
        height, width = image_bgr.shape[:2]
        image = image_bgr[:, :, ::-1] if self.input_format == "RGB" else image_bgr
        if self.augmentation is not None:
            image = self.augmentation.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        outputs = self.model([{"image": tensor, "height": height, "width": width}])
        return outputs[0]["instances"].to("cpu")


@dataclass
class DemoInputs:
    """What ``--input`` named: ``kind`` is "images" (``paths`` sorted) or "video" (one path)."""

    kind: str
    paths: List[str]


def _extension(path: str) -> str:
    return os.path.splitext(path)[1].lower()


def collect_inputs(path: str) -> DemoInputs:
    """Classify ``--input``: one image, a folder of images (not recursive; other files are
    ignored), or one video.

    Raises:
        ToolError: the path does not exist, is a folder without images, or has an extension
            that is neither an image's nor a video's.
    """
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if _extension(n) in IMAGE_EXTENSIONS)
        if not names:
            raise ToolError(
                f"input folder {path!r} contains no images "
                f"(looked for {', '.join(IMAGE_EXTENSIONS)})"
            )
        return DemoInputs("images", [os.path.join(path, n) for n in names])
    if not os.path.exists(path):
        raise ToolError(f"input {path!r} does not exist")
    ext = _extension(path)
    if ext in IMAGE_EXTENSIONS:
        return DemoInputs("images", [path])
    if ext in VIDEO_EXTENSIONS:
        return DemoInputs("video", [path])
    raise ToolError(
        f"input {path!r}: unknown extension {ext!r}; expected an image "
        f"({', '.join(IMAGE_EXTENSIONS)}), a video ({', '.join(VIDEO_EXTENSIONS)}) or a folder"
    )


def _draw(image_bgr: np.ndarray, instances: Instances, metadata) -> np.ndarray:
    """The image (BGR) with ``instances`` drawn on it."""
    vis = Visualizer(image_bgr[:, :, ::-1], metadata)
    return vis.draw_instance_predictions(instances).get_image()[:, :, ::-1]


def _progress(iterable, total: Optional[int], desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="img" if desc == "images" else "frame")


def run_on_images(
    predictor: Predictor,
    paths: Sequence[str],
    output_dir: str,
    metadata,
    *,
    category_ids: Optional[Dict[int, int]] = None,
    image_ids: Optional[Dict[str, int]] = None,
    progress: bool = True,
) -> Tuple[List[Dict[str, Any]], List[str]]:
    """Detect, draw and collect COCO results for every image in ``paths``.

    An image that cannot be read is skipped and reported; the others are still processed.

    Returns:
        (COCO results of all readable images, one message per unreadable image).
    """
    import cv2

    results: List[Dict[str, Any]] = []
    failures: List[str] = []
    used_names: Dict[str, int] = {}
    image_ids = image_ids or {}
    # Images missing from the dataset json are numbered after its ids, so that no two collide.
    first_free_id = max(image_ids.values()) + 1 if image_ids else 0
    for index, path in enumerate(_progress(paths, len(paths), "images", progress)):
        try:
            image = read_image(path, format="BGR")
        except Exception as e:  # PIL raises several types for broken or non-image files
            failures.append(f"{path}: cannot read image ({type(e).__name__}: {e})")
            continue
        instances = predictor(image)
        name = os.path.basename(path)
        image_id = image_ids.get(name, first_free_id + index)
        results.extend(
            instances_to_coco(
                instances, image_id, category_ids=category_ids, extra={"file_name": name}
            )
        )
        # Two inputs may share a base name only when given one by one; keep both drawings.
        stem, _ = os.path.splitext(name)
        count = used_names.get(stem, 0)
        used_names[stem] = count + 1
        out_name = f"{stem}.png" if count == 0 else f"{stem}_{count}.png"
        cv2.imwrite(os.path.join(output_dir, out_name), _draw(image, instances, metadata))
    return results, failures


def _open_video_writer(output_dir: str, stem: str, fps: float, size: Tuple[int, int]):
    """An OpenCV writer for ``size`` = (width, height): MPEG-4 (.mp4) where this OpenCV build
    can write it, else Motion-JPEG (.avi). Returns (writer, path)."""
    import cv2

    for ext, fourcc in ((".mp4", "mp4v"), (".avi", "MJPG")):
        path = os.path.join(output_dir, stem + ext)
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), fps, size)
        if writer.isOpened():
            return writer, path
        writer.release()
    raise ToolError(f"OpenCV cannot write a video to {output_dir!r} (tried mp4v and MJPG)")


def run_on_video(
    predictor: Predictor,
    path: str,
    output_dir: str,
    metadata,
    *,
    category_ids: Optional[Dict[int, int]] = None,
    progress: bool = True,
) -> Tuple[List[Dict[str, Any]], str]:
    """Detect on every frame of the video ``path``; write the annotated video.

    Returns:
        (COCO results with ``image_id`` = frame index and ``frame`` set, annotated video path).

    Raises:
        ToolError: OpenCV cannot open the video or it has no frames.
    """
    import cv2

    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise ToolError(f"cannot open video {path!r} with OpenCV")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    name = os.path.basename(path)
    writer = None
    out_path = ""
    results: List[Dict[str, Any]] = []
    try:
        for frame_index, frame in _progress(_frames(capture), total, "frames", progress):
            instances = predictor(frame)
            results.extend(
                instances_to_coco(
                    instances,
                    frame_index,
                    category_ids=category_ids,
                    extra={"file_name": name, "frame": frame_index},
                )
            )
            if writer is None:
                height, width = frame.shape[:2]
                stem = os.path.splitext(name)[0] + "_detections"
                writer, out_path = _open_video_writer(output_dir, stem, fps, (width, height))
            writer.write(np.ascontiguousarray(_draw(frame, instances, metadata)))
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    if writer is None:
        raise ToolError(f"video {path!r} has no frame that OpenCV can decode")
    return results, out_path


def _frames(capture) -> Iterator[Tuple[int, np.ndarray]]:
    index = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            return
        yield index, frame
        index += 1


def run_demo(
    *,
    config_file: str,
    opts: Sequence[str],
    input_path: str,
    output_dir: str,
    confidence_threshold: float = 0.5,
    device: Optional[str] = None,
    progress: bool = True,
    random_weights: bool = False,
    trust_weights_file: bool = False,
) -> Dict[str, Any]:
    """Everything ``tools/demo.py`` does. Without weights in the config it refuses to run
    unless ``random_weights`` (``--random-weights``).

    Returns:
        {"results_json": path, "num_inputs": int, "num_detections": int,
        "outputs": [written files], "failures": [messages]}. The caller exits non-zero when
        "failures" is not empty.
    """
    inputs = collect_inputs(input_path)
    cfg = loading.load_config(config_file, opts)
    loading.set_score_threshold(cfg, confidence_threshold)
    if device is not None:
        loading.set_device(cfg, device)
    os.makedirs(output_dir, exist_ok=True)
    predictor = Predictor.from_config(
        cfg, random_weights=random_weights, trust_weights_file=trust_weights_file
    )
    dataset_metadata = loading.dataset_metadata(cfg)
    coco_json = coco_json_of(dataset_metadata)
    category_ids = category_id_map(dataset_metadata, coco_json)
    metadata = drawing_metadata(dataset_metadata, coco_json)
    if inputs.kind == "video":
        results, video_path = run_on_video(
            predictor, inputs.paths[0], output_dir, metadata, category_ids=category_ids,
            progress=progress,
        )
        failures: List[str] = []
        outputs = [video_path]
    else:
        results, failures = run_on_images(
            predictor, inputs.paths, output_dir, metadata, category_ids=category_ids,
            image_ids=image_id_map(coco_json), progress=progress,
        )
        outputs = sorted(os.path.join(output_dir, n) for n in os.listdir(output_dir)
                         if n.endswith(".png"))
    results_json = os.path.join(output_dir, "results.json")
    with open(results_json, "w", encoding="utf-8") as f:
        json.dump(results, f)
    return {
        "results_json": results_json,
        "num_inputs": len(inputs.paths),
        "num_detections": len(results),
        "outputs": outputs,
        "failures": failures,
    }


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, help=".yaml (yacs) or .py (LazyConfig)")
    parser.add_argument("--input", required=True, help="an image, a folder of images or a video")
    parser.add_argument("--output", required=True, help="folder for the drawings and results.json")
    parser.add_argument("--confidence-threshold", type=float, default=0.5,
                        help="keep detections scoring above this (default 0.5)")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:1 ... (default: the config's device)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    loading.add_weights_arguments(parser)
    loading.add_overrides_argument(parser)
    return parser


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    setup_logger(name="retinafocal")
    try:
        summary = run_demo(
            config_file=args.config_file,
            opts=args.opts,
            input_path=args.input,
            output_dir=args.output,
            confidence_threshold=args.confidence_threshold,
            device=args.device,
            progress=not args.no_progress,
            random_weights=args.random_weights,
            trust_weights_file=args.trust_weights_file,
        )
    except (ToolError, WeightsFileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logger = logging.getLogger("retinafocal")
    logger.info(
        f"{summary['num_detections']} detections on {summary['num_inputs']} input(s); "
        f"results in {summary['results_json']}"
    )
    for failure in summary["failures"]:
        print(f"error: {failure}", file=sys.stderr)
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
