"""RobustDatasetMapper: unusual pixel formats converted, unreadable images raised or skipped."""
import logging
import os
import re
import unittest
from unittest import mock

import numpy as np
import torch
from PIL import Image

import retinafocal  # noqa: F401  (applies retinafocal.compat before detectron2 is imported)
from detectron2.config import get_cfg
from detectron2.data import DatasetMapper, build_detection_train_loader
from detectron2.data import detection_utils
from retinafocal import compat
from retinafocal.config import add_retinafocal_config
from retinafocal.data import load_coco_json_checked
from retinafocal.data.mapper import RobustDatasetMapper, UnreadableImageError, read_image_converted

from .broken_coco import HEIGHT, WIDTH, FreshChecksTest, write_broken_coco

LOGGER = "retinafocal.data.mapper"


def make_cfg(**dataloader):
    cfg = get_cfg()
    add_retinafocal_config(cfg)
    cfg.INPUT.MIN_SIZE_TRAIN = (HEIGHT,)
    cfg.INPUT.MAX_SIZE_TRAIN = WIDTH
    cfg.INPUT.RANDOM_FLIP = "none"
    for key, value in dataloader.items():
        assert key in cfg.DATALOADER, key
        cfg.DATALOADER[key] = value
    return cfg


class _BrokenDatasetTest(FreshChecksTest):
    tmp_prefix = "retinafocal_mapper_"

    def setUp(self):
        super().setUp()
        self.json_file, self.image_root, _ = write_broken_coco(self.root)
        self.dicts = load_coco_json_checked(self.json_file, self.image_root, "mapper_test")
        self.by_id = {d["image_id"]: d for d in self.dicts}
        self.image_dir = self.image_root

    def path(self, name):
        return os.path.join(self.image_dir, name)


class TestReadImageConverted(_BrokenDatasetTest):
    def test_plain_rgb_matches_detectron2(self):
        for fmt in ("BGR", "RGB"):
            ours = read_image_converted(self.path("good2.png"), fmt)
            theirs = detection_utils.read_image(self.path("good2.png"), fmt)
            np.testing.assert_array_equal(ours, theirs)

    def test_grayscale_becomes_three_equal_channels(self):
        gray = np.asarray(Image.open(self.path("gray.png")))
        image = read_image_converted(self.path("gray.png"), "BGR")
        self.assertEqual(image.shape, (HEIGHT, WIDTH, 3))
        for c in range(3):
            np.testing.assert_array_equal(image[..., c], gray)

    def test_alpha_dropped_colour_kept(self):
        rgba = np.asarray(Image.open(self.path("rgba.png")))
        image = read_image_converted(self.path("rgba.png"), "BGR")
        np.testing.assert_array_equal(image, rgba[..., 2::-1])

    def test_16bit_rescaled_not_saturated(self):
        raw = np.asarray(Image.open(self.path("gray16.png"))).astype(np.float64)
        self.assertGreater(raw.max(), 255)
        image = read_image_converted(self.path("gray16.png"), "RGB")
        np.testing.assert_array_equal(image[..., 0], np.rint(raw / 257).astype(np.uint8))
        # detectron2's own reader clips at 255 instead: most pixels come out white.
        saturated = detection_utils.read_image(self.path("gray16.png"), "RGB")
        self.assertGreater((saturated == 255).mean(), 0.9)
        self.assertLess((image == 255).mean(), 0.1)

    def test_float_image_in_unit_range_scaled(self):
        path = os.path.join(self.root, "float.tif")
        Image.fromarray(np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32), mode="F").save(path)
        image = read_image_converted(path, "L")
        np.testing.assert_array_equal(image[..., 0], [[0, 128], [255, 64]])

    def test_palette_with_transparency(self):
        path = os.path.join(self.root, "palette.png")
        im = Image.new("P", (4, 3), 1)
        im.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
        im.save(path, transparency=0)
        image = read_image_converted(path, "RGB")
        self.assertEqual(image.shape, (3, 4, 3))
        np.testing.assert_array_equal(image[0, 0], [200, 100, 50])

    def test_unreadable_raises_naming_file(self):
        for name in ("does_not_exist.jpg", "corrupt.jpg", "truncated.jpg"):
            with self.subTest(name=name), self.assertRaises(UnreadableImageError) as ctx:
                read_image_converted(self.path(name), "BGR")
            self.assertIn(self.path(name), str(ctx.exception))


class TestRobustDatasetMapper(_BrokenDatasetTest):
    def test_from_config_reads_the_switches(self):
        mapper = RobustDatasetMapper(
            make_cfg(ON_UNREADABLE_IMAGE="skip", LOG_SKIPPED_PERIOD=7), is_train=True
        )
        self.assertEqual((mapper.on_unreadable, mapper.log_skipped_period), ("skip", 7))
        self.assertEqual(RobustDatasetMapper(make_cfg()).on_unreadable, "error")
        message = "on_unreadable (DATALOADER.ON_UNREADABLE_IMAGE) must be one of ('error', 'skip')"
        with self.assertRaisesRegex(ValueError, "^" + re.escape(f"{message}, got 'ignore'") + "$"):
            RobustDatasetMapper(make_cfg(ON_UNREADABLE_IMAGE="ignore"))

    def test_same_output_as_detectron2_on_good_images(self):
        cfg = make_cfg()
        ours, theirs = RobustDatasetMapper(cfg, is_train=True), DatasetMapper(cfg, is_train=True)
        for image_id in (1, 8, 10):
            a, b = ours(self.by_id[image_id]), theirs(self.by_id[image_id])
            self.assertTrue(torch.equal(a["image"], b["image"]))
            self.assertTrue(a["instances"].gt_boxes.tensor.equal(b["instances"].gt_boxes.tensor))
            self.assertTrue(a["instances"].gt_classes.equal(b["instances"].gt_classes))
        self.assertEqual(len(ours(self.by_id[8])["instances"]), 0)  # background image

    def test_16bit_image_reaches_the_model_rescaled(self):
        cfg = make_cfg()
        out = RobustDatasetMapper(cfg, is_train=True)(self.by_id[4])  # gray16.png
        expected = read_image_converted(self.path("gray16.png"), "BGR")
        np.testing.assert_array_equal(out["image"].numpy(), expected.transpose(2, 0, 1))
        theirs = DatasetMapper(cfg, is_train=True)(self.by_id[4])
        self.assertTrue(out["instances"].gt_boxes.tensor.equal(theirs["instances"].gt_boxes.tensor))

    def test_error_policy_names_the_file(self):
        mapper = RobustDatasetMapper(make_cfg(), is_train=True)
        for image_id, name in ((5, "does_not_exist.jpg"), (6, "corrupt.jpg"), (9, "small.png")):
            with self.subTest(name=name), self.assertRaises(UnreadableImageError) as ctx:
                mapper(self.by_id[image_id])
            self.assertIn(name, str(ctx.exception))
        self.assertEqual(mapper.num_skipped, 0)

    def test_skip_policy_counts_and_logs(self):
        mapper = RobustDatasetMapper(
            make_cfg(ON_UNREADABLE_IMAGE="skip", LOG_SKIPPED_PERIOD=2), is_train=True
        )
        with self.assertLogs(LOGGER, logging.WARNING) as logs:
            results = {image_id: mapper(d) for image_id, d in sorted(self.by_id.items())}
        skipped = sorted(i for i, r in results.items() if r is None)
        self.assertEqual(skipped, [5, 6, 7, 9])
        self.assertEqual(mapper.num_skipped, 4)
        self.assertIn("does_not_exist.jpg", logs.output[0])  # the first one at once, by name
        # Later ones in periodic summaries carrying the running count.
        text = "\n".join(logs.output)
        self.assertIn("4 unreadable image(s) skipped so far", text)
        for name in ("corrupt.jpg", "truncated.jpg", "small.png"):
            self.assertIn(name, text)

    def test_inference_never_skips(self):
        mapper = RobustDatasetMapper(make_cfg(ON_UNREADABLE_IMAGE="skip"), is_train=False)
        self.assertEqual(mapper.on_unreadable, "error")
        with self.assertRaises(UnreadableImageError):
            mapper(self.by_id[6])

    def test_train_loader_skips_unreadable_images(self):
        cfg = make_cfg(ON_UNREADABLE_IMAGE="skip", LOG_SKIPPED_PERIOD=1)
        mapper = RobustDatasetMapper(cfg, is_train=True)
        loader = build_detection_train_loader(
            cfg, dataset=self.dicts, mapper=mapper, total_batch_size=2, num_workers=0
        )
        seen = []
        with self.assertLogs(LOGGER, logging.WARNING):
            for _, batch in zip(range(6), loader):
                self.assertEqual(len(batch), 2)
                seen += [d["image_id"] for d in batch]
        self.assertGreater(mapper.num_skipped, 0)
        self.assertFalse({5, 6, 7, 9} & set(seen))


class TestEveryImageRejected(unittest.TestCase):
    def test_clear_error_instead_of_an_empty_choice(self):
        """Issue 13, item 7: when the mapper skips every image (all unreadable, which the
        start-up check normally catches first), v0.6's retry loop now says so."""
        from detectron2.data.common import MapDataset

        dataset = MapDataset(["a.jpg", "b.jpg", "c.jpg"], lambda d: None)
        if "map_dataset_retry" in compat.ACTIVE:
            with self.assertRaisesRegex(RuntimeError, "rejected every one of the 3 images"):
                dataset[0]
        else:  # current detectron2's own loop: whatever it raises, it does not hang
            with self.assertRaises(Exception):
                dataset[0]


class TestDatasetMapperCall(_BrokenDatasetTest):
    """compat.dataset_mapper_call: detectron2's own __call__, with an image read elsewhere."""

    def test_same_as_detectron2_given_the_image_it_reads(self):
        mapper = DatasetMapper(make_cfg(), is_train=True)
        d = self.by_id[1]
        before = dict(d)
        image = detection_utils.read_image(d["file_name"], "BGR")
        ours, theirs = compat.dataset_mapper_call(mapper, d, image), mapper(d)
        self.assertEqual(d, before)  # the dataset's dict is not modified
        self.assertTrue(torch.equal(ours["image"], theirs["image"]))
        ours_boxes, theirs_boxes = ours["instances"].gt_boxes, theirs["instances"].gt_boxes
        self.assertTrue(ours_boxes.tensor.equal(theirs_boxes.tensor))

    def test_the_given_image_is_used_not_the_file(self):
        cfg = make_cfg()
        cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = HEIGHT, WIDTH
        image = np.full((HEIGHT, WIDTH, 3), 7, dtype=np.uint8)
        # The file of image 5 does not exist.
        out = compat.dataset_mapper_call(DatasetMapper(cfg, is_train=False), self.by_id[5], image)
        self.assertTrue(torch.equal(out["image"], torch.full((3, HEIGHT, WIDTH), 7).byte()))
        self.assertNotIn("annotations", out)  # detectron2's test-time branch ran

    def test_other_reads_are_detectron2s(self):
        # A semantic-segmentation file named in the dict is read from disk, not replaced.
        seg = os.path.join(self.root, "seg.png")
        labels = np.arange(HEIGHT * WIDTH, dtype=np.uint8).reshape(HEIGHT, WIDTH) % 5
        Image.fromarray(labels, mode="L").save(seg)
        d = dict(self.by_id[1], sem_seg_file_name=seg)
        image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
        out = compat.dataset_mapper_call(DatasetMapper(make_cfg(), is_train=True), d, image)
        np.testing.assert_array_equal(out["sem_seg"].numpy(), labels)

    def test_wrong_size_raises_detectron2s_error(self):
        mapper = DatasetMapper(make_cfg(), is_train=True)
        with self.assertRaises(detection_utils.SizeMismatchError):
            compat.dataset_mapper_call(mapper, self.by_id[1], np.zeros((3, 4, 3), np.uint8))

    def test_unfit_detectron2_is_refused(self):
        self.assertIn("dataset_mapper_call", compat.ACTIVE)
        self.assertIn("DatasetMapper.__call__ given a read image", compat.describe())

        def reads_elsewhere(self, dataset_dict):
            return {"image": np.load(dataset_dict["file_name"])}

        self.assertTrue(hasattr(DatasetMapper, "__call__"))
        with mock.patch.object(DatasetMapper, "__call__", reads_elsewhere):
            with mock.patch.dict(compat.ACTIVE, clear=True):
                compat._check_dataset_mapper_reads_through_utils()
                self.assertNotIn("dataset_mapper_call", compat.ACTIVE)
                with self.assertRaisesRegex(RuntimeError, "dataset_mapper_call"):
                    compat.dataset_mapper_call(None, self.by_id[1], None)
        self.assertIn("dataset_mapper_call", compat.ACTIVE)


if __name__ == "__main__":
    unittest.main()
