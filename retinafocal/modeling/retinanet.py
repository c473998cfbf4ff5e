"""The FocalRetinaNet meta-architecture."""
from __future__ import annotations

import math
from typing import Dict, List, Tuple

import torch
from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec, batched_nms, cat
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_anchor_generator, build_backbone
from detectron2.modeling.box_regression import Box2BoxTransform, _dense_box_regression_loss
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import get_event_storage

from ..losses import build_classification_loss
from .diagnostics import imbalance_statistics
from .frozen_bn import fold_frozen_batchnorm
from .head import build_retinafocal_head
from .matcher import build_anchor_matcher
from .precision import PrecisionDenseDetector

__all__ = ["FocalRetinaNet"]


@META_ARCH_REGISTRY.register()
class FocalRetinaNet(PrecisionDenseDetector):
    """RetinaNet (:paper:`RetinaNet`, Lin et al., ICCV 2017) with swappable head, anchor matcher
    and classification loss. It reads ``cfg.MODEL.RETINANET.*`` with detectron2's meaning plus
    ``cfg.MODEL.RETINAFOCAL.*``; its parameters are detectron2 ``RetinaNet``'s (checkpoints load
    with ``strict=True``)."""

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head: nn.Module,
        head_in_features: List[str],
        anchor_generator: nn.Module,
        box2box_transform: Box2BoxTransform,
        anchor_matcher: nn.Module,
        classification_loss: nn.Module,
        num_classes: int,
        smooth_l1_beta: float = 0.1,
        box_reg_loss_type: str = "smooth_l1",
        loss_normalizer: str = "num_pos",
        loss_normalizer_momentum: float = 0.9,
        test_score_thresh: float = 0.05,
        test_topk_candidates: int = 1000,
        test_nms_thresh: float = 0.5,
        max_detections_per_image: int = 100,
        pixel_mean: Tuple[float, ...],
        pixel_std: Tuple[float, ...],
        diagnostics_period: int = 0,
        vis_period: int = 0,
        input_format: str = "BGR",
        memory_format: str = "NCHW",
        precision: str = "fp32",
        fold_frozen_bn: bool = False,
    ):
        """Arguments not listed mean what they mean in detectron2's ``RetinaNet`` (inference
        defaults are the paper's); ``box_reg_loss_type`` also takes "l1" (smooth L1, beta 0).
        ``head``, ``anchor_matcher``, ``classification_loss``: members of retinafocal's head,
        matcher and loss registries; ``num_classes``: K; ``loss_normalizer``: divide both losses
        by "num_pos" (foreground anchors in the batch, the paper) or "ema" (detectron2's moving
        average of it, from 100, with ``loss_normalizer_momentum``); ``diagnostics_period``: log
        imbalance diagnostics every this many iterations (0: off); ``memory_format``: the 4-d
        weights' layout, "NCHW" (detectron2's results exactly) or "NHWC" (channels-last, which
        oneDNN and cuDNN convolve without reordering; equal up to rounding); ``precision``,
        ``fold_frozen_bn``: see :mod:`.precision` and :mod:`.frozen_bn`."""
        super().__init__(
            backbone,
            head,
            head_in_features,
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
            precision=precision,
        )
        for name, value, choices in (
            ("box_reg_loss_type", box_reg_loss_type, ("smooth_l1", "l1", "giou", "diou", "ciou")),
            ("loss_normalizer", loss_normalizer, ("num_pos", "ema")),
            ("memory_format (MODEL.RETINAFOCAL.MEMORY_FORMAT)", memory_format, ("NCHW", "NHWC")),
        ):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        self.num_classes = num_classes
        self.anchor_generator = anchor_generator
        self.box2box_transform = box2box_transform
        self.anchor_matcher = anchor_matcher
        self.classification_loss = classification_loss
        # L1 is smooth L1 with beta = 0 (detectron2's smooth_l1_loss switches to |x| there).
        self.box_reg_loss_type = "smooth_l1" if box_reg_loss_type == "l1" else box_reg_loss_type
        self.smooth_l1_beta = 0.0 if box_reg_loss_type == "l1" else smooth_l1_beta
        self.loss_normalizer_type = loss_normalizer
        self.loss_normalizer_momentum = loss_normalizer_momentum
        self.test_score_thresh = test_score_thresh
        self.test_topk_candidates = test_topk_candidates
        self.test_nms_thresh = test_nms_thresh
        self.max_detections_per_image = max_detections_per_image
        self.diagnostics_period = diagnostics_period
        self.vis_period = vis_period
        self.input_format = input_format
        self.memory_format = memory_format
        self.fold_frozen_bn = fold_frozen_bn
        if fold_frozen_bn:
            fold_frozen_batchnorm(self.backbone)
        if memory_format == "NHWC":
            # Parameters keep this layout through .to(device) and load_state_dict (both
            # preserve strides), so converting once here is enough.
            self.to(memory_format=torch.channels_last)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        backbone_shape = backbone.output_shape()
        in_features = cfg.MODEL.RETINANET.IN_FEATURES
        missing = [f for f in in_features if f not in backbone_shape]
        if missing:
            raise ValueError(
                f"MODEL.RETINANET.IN_FEATURES names {missing}, which the backbone does not "
                f"produce (it produces {sorted(backbone_shape)})"
            )
        feature_shapes: List[ShapeSpec] = [backbone_shape[f] for f in in_features]
        return {
            "backbone": backbone,
            "head": build_retinafocal_head(cfg, feature_shapes),
            "head_in_features": in_features,
            "anchor_generator": build_anchor_generator(cfg, feature_shapes),
            "box2box_transform": Box2BoxTransform(weights=cfg.MODEL.RETINANET.BBOX_REG_WEIGHTS),
            "anchor_matcher": build_anchor_matcher(cfg),
            "classification_loss": build_classification_loss(cfg),
            "num_classes": cfg.MODEL.RETINANET.NUM_CLASSES,
            "smooth_l1_beta": cfg.MODEL.RETINANET.SMOOTH_L1_LOSS_BETA,
            "box_reg_loss_type": cfg.MODEL.RETINANET.BBOX_REG_LOSS_TYPE,
            "loss_normalizer": cfg.MODEL.RETINAFOCAL.LOSS_NORMALIZER,
            "loss_normalizer_momentum": cfg.MODEL.RETINAFOCAL.LOSS_NORMALIZER_MOMENTUM,
            "test_score_thresh": cfg.MODEL.RETINANET.SCORE_THRESH_TEST,
            "test_topk_candidates": cfg.MODEL.RETINANET.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": cfg.MODEL.RETINANET.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "diagnostics_period": cfg.MODEL.RETINAFOCAL.DIAGNOSTICS_PERIOD,
            "vis_period": cfg.VIS_PERIOD,
            "input_format": cfg.INPUT.FORMAT,
            "memory_format": cfg.MODEL.RETINAFOCAL.MEMORY_FORMAT,
            "precision": cfg.MODEL.RETINAFOCAL.PRECISION,
            "fold_frozen_bn": cfg.MODEL.RETINAFOCAL.FOLD_FROZEN_BN,
        }

    def forward_training(
        self,
        images: ImageList,
        features: List[Tensor],
        predictions: List[List[Tensor]],
        gt_instances: List[Instances],
    ) -> Dict[str, Tensor]:
        self._check_gt_classes(gt_instances)
        pred_logits, pred_deltas = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4]
        )
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        losses = self.losses(anchors, pred_logits, gt_labels, pred_deltas, gt_boxes)
        if self.vis_period > 0 and get_event_storage().iter % self.vis_period == 0:
            with torch.no_grad():
                results = self.forward_inference(images, features, predictions)
            self.visualize_training(self._inputs_for_visualization(images, gt_instances), results)
        return losses

    def _inputs_for_visualization(
        self, images: ImageList, gt_instances: List[Instances]
    ) -> List[Dict[str, object]]:
        """The inputs ``visualize_training`` reads (``image``: (C, H, W) uint8, ``instances``),
        rebuilt from the padded batch so that the model keeps no reference to its inputs."""
        inputs: List[Dict[str, object]] = []
        for i, (height, width) in enumerate(images.image_sizes):
            image = images.tensor[i, :, :height, :width] * self.pixel_std + self.pixel_mean
            image = image.round().clamp(0, 255).to(torch.uint8).cpu()
            inputs.append({"image": image, "instances": gt_instances[i]})
        return inputs

    def _check_gt_classes(self, gt_instances: List[Instances]) -> None:
        """Refuse class indices >= K: K would train silently as background. (One host sync per
        batch, like the loss's positive-anchor count.)"""
        classes = torch.cat([x.gt_classes for x in gt_instances])
        if not classes.numel() or int(classes.max()) < self.num_classes:
            return
        top = int(classes.max())
        i = next(i for i, x in enumerate(gt_instances) if bool((x.gt_classes == top).any()))
        raise ValueError(
            f"An object of class index {top} (image {i} of the batch) reached "
            f"a model of {self.num_classes} classes (indices 0..{self.num_classes - 1}; "
            "MODEL.RETINANET.NUM_CLASSES, LazyConfig model.num_classes). Set it to the "
            "dataset's number of categories, or MODEL.RETINAFOCAL.NUM_CLASSES_FROM_DATASET "
            "True to take it from the training datasets."
        )

    @torch.no_grad()
    def label_anchors(
        self, anchors: List[Boxes], gt_instances: List[Instances]
    ) -> Tuple[List[Tensor], List[Tensor]]:
        """For ``anchors`` (one Boxes of Ri anchors per level, R = sum of Ri) and one Instances
        per image, return per image (R,) int64 ``gt_labels`` ([0, K) = class of the matched
        object, K = background, -1 = ignored) and (R, 4) ``matched_gt_boxes`` (meaningful for
        foreground anchors only)."""
        all_anchors = Boxes.cat(anchors).tensor  # (R, 4)
        gt_labels, matched_gt_boxes = [], []
        for gt_per_image in gt_instances:
            gt_box_tensor = gt_per_image.gt_boxes.tensor
            matched_idxs, match_labels = self.anchor_matcher(gt_box_tensor, all_anchors)
            if len(gt_per_image) > 0:
                labels = gt_per_image.gt_classes[matched_idxs]
                labels[match_labels == 0] = self.num_classes
                boxes = gt_box_tensor[matched_idxs]
            else:
                labels = torch.full_like(matched_idxs, self.num_classes)
                boxes = torch.zeros_like(all_anchors)
            labels[match_labels == -1] = -1
            gt_labels.append(labels)
            matched_gt_boxes.append(boxes)
        return gt_labels, matched_gt_boxes

    def losses(
        self,
        anchors: List[Boxes],
        pred_logits: List[Tensor],
        gt_labels: List[Tensor],
        pred_deltas: List[Tensor],
        gt_boxes: List[Tensor],
    ) -> Dict[str, Tensor]:
        """Takes one Boxes per level, per level (N, Ri, K) logits and (N, Ri, 4) deltas, and per
        image the (R,) labels and (R, 4) boxes of :meth:`label_anchors`. Returns the scalars
        ``loss_cls`` and ``loss_box_reg`` divided by the normaliser (``loss_cls`` not, when the
        loss is ``self_normalizing``)."""
        labels = torch.stack(gt_labels)  # (N, R)
        pos_mask = (labels >= 0) & (labels != self.num_classes)
        num_pos = int(pos_mask.sum().item())
        storage = get_event_storage()
        storage.put_scalar("num_pos_anchors", num_pos / len(gt_labels))
        normalizer = max(num_pos, 1)
        if self.loss_normalizer_type == "ema":
            normalizer = self._ema_update(
                "loss_normalizer", normalizer, 100, self.loss_normalizer_momentum
            )

        logits = cat(pred_logits, dim=1)  # (N, R, K)
        anchor_boxes = Boxes.cat(anchors).tensor  # (R, 4)
        loss_cls = self.classification_loss(logits, labels, anchor_boxes=anchor_boxes)
        if not self.classification_loss.self_normalizing:  # a registry member's attribute
            loss_cls = loss_cls / normalizer
        loss_box_reg = _dense_box_regression_loss(
            anchors,
            self.box2box_transform,
            pred_deltas,
            gt_boxes,
            pos_mask,
            box_reg_loss_type=self.box_reg_loss_type,
            smooth_l1_beta=self.smooth_l1_beta,
        )
        if self.diagnostics_period > 0 and storage.iter % self.diagnostics_period == 0:
            # From the loss that trains, so the diagnostics follow its own parameters.
            logits = logits.detach()
            element_losses = self.classification_loss.elementwise_losses(
                logits, labels, anchor_boxes=anchor_boxes
            )
            stats = imbalance_statistics(element_losses, logits, labels)
            storage.put_scalars(**{f"imbalance/{k}": v for k, v in stats.items()})
        return {"loss_cls": loss_cls, "loss_box_reg": loss_box_reg / normalizer}

    def forward_inference(
        self, images: ImageList, features: List[Tensor], predictions: List[List[Tensor]]
    ) -> List[Instances]:
        pred_logits, pred_deltas = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4]
        )
        anchors = self.anchor_generator(features)
        return [
            self.inference_single_image(
                anchors,
                [x[i] for x in pred_logits],
                [x[i] for x in pred_deltas],
                image_size,
            )
            for i, image_size in enumerate(images.image_sizes)
        ]

    def inference_single_image(
        self,
        anchors: List[Boxes],
        logits: List[Tensor],
        deltas: List[Tensor],
        image_size: Tuple[int, int],
    ) -> Instances:
        """:meth:`_decode_level` on each level, then class-wise NMS over all levels. Takes per level
        Ri anchors, this image's (Ri, K) logits and (Ri, 4) deltas, and its unpadded (height,
        width); returns Instances with ``pred_boxes`` (D, 4), ``scores`` (D,), ``pred_classes``
        (D,), sorted by score, D <= max_detections_per_image."""
        per_level = [
            self._decode_level(anchors_i.tensor, logits_i, deltas_i)
            for anchors_i, logits_i, deltas_i in zip(anchors, logits, deltas)
        ]
        boxes = cat([p[0] for p in per_level])
        scores = cat([p[1] for p in per_level])
        classes = cat([p[2] for p in per_level])
        keep = batched_nms(boxes, scores, classes, self.test_nms_thresh)
        keep = keep[: self.max_detections_per_image]
        result = Instances(image_size)
        result.pred_boxes = Boxes(boxes[keep])
        result.scores = scores[keep]
        result.pred_classes = classes[keep]
        return result

    def _decode_level(
        self, anchors: Tensor, logits: Tensor, deltas: Tensor
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """Anchors (Ri, 4), logits (Ri, K), deltas (Ri, 4) -> boxes (C, 4), scores (C,), classes
        (C,) int64 of the ``test_topk_candidates`` best pairs above ``test_score_thresh``, which
        is applied to the logits first (sigmoid is monotonic): only those pass through sigmoid."""
        flat = logits.reshape(-1)
        thresh = self.test_score_thresh
        if thresh <= 0:
            candidates = torch.arange(flat.numel(), device=flat.device)
        else:
            # The margin keeps rounding from dropping a candidate that passes the sigmoid test.
            logit_thresh = math.log(thresh / (1 - thresh)) - 1e-4 if thresh < 1 else math.inf
            candidates = torch.nonzero(flat > logit_thresh).squeeze(1)
        scores = flat[candidates].sigmoid()
        passing = scores > thresh
        scores, candidates = scores[passing], candidates[passing]
        num_topk = min(self.test_topk_candidates, scores.numel())
        scores, order = scores.topk(num_topk)
        candidates = candidates[order]
        anchor_idxs = torch.div(candidates, self.num_classes, rounding_mode="floor")
        classes = candidates % self.num_classes
        boxes = self.box2box_transform.apply_deltas(deltas[anchor_idxs], anchors[anchor_idxs])
        return boxes, scores, classes
