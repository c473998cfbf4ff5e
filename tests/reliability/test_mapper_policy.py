"""RobustDatasetMapper's policy for bad images, message by message, and the pixel conversions of
read_image_converted that the broken dataset does not reach (EXIF rotation, float images above
1, 16-bit images that fit in 8 bits, the edge values of both, grey images with alpha, palettes
with transparency)."""
import logging
import os
import shutil
import tempfile
import unittest
import warnings

import numpy as np
from PIL import Image

import retinafocal  # noqa: F401  (applies retinafocal.compat before detectron2 is imported)
from detectron2.config import get_cfg
from detectron2.data import detection_utils
from retinafocal.config import add_retinafocal_config
from retinafocal.data.mapper import RobustDatasetMapper, UnreadableImageError, read_image_converted

LOGGER = "retinafocal.data.mapper"


def mapper(on_unreadable: str = "skip", period: int = 3) -> RobustDatasetMapper:
    cfg = get_cfg()
    add_retinafocal_config(cfg)
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.DATALOADER.ON_UNREADABLE_IMAGE = on_unreadable
    cfg.DATALOADER.LOG_SKIPPED_PERIOD = period
    return RobustDatasetMapper(cfg, is_train=True)


class TestSkipPolicyMessages(unittest.TestCase):
    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="retinafocal_policy_")
        self.addCleanup(shutil.rmtree, self.root, ignore_errors=True)
        Image.new("RGB", (32, 24), (9, 9, 9)).save(os.path.join(self.root, "good.png"))

    def bad(self, i: int) -> dict:
        return {"file_name": os.path.join(self.root, f"missing_{i}.jpg"), "height": 24,
                "width": 32, "image_id": i, "annotations": []}  # fmt: skip

    def good(self) -> dict:
        return {"file_name": os.path.join(self.root, "good.png"), "height": 24, "width": 32,
                "image_id": 0, "annotations": []}  # fmt: skip

    def test_first_skip_at_once_then_summaries_every_period(self):
        """Period 3: the first unreadable image is named at once; the next summary comes when 3
        images have been mapped since, and lists what was skipped in between."""
        m = mapper(period=3)
        sequence = [self.bad(1), self.good(), self.bad(2), self.bad(3), self.good(), self.bad(4)]
        with self.assertLogs(LOGGER, logging.WARNING) as logs:
            results = [m(d) for d in sequence]
        self.assertEqual([r is None for r in results], [True, False, True, True, False, True])
        self.assertEqual(m.num_skipped, 4)
        self.assertEqual(len(logs.records), 2, logs.output)
        first, summary = (r.getMessage() for r in logs.records)
        # The reason shown is the file system's (the cause), not our wrapper's restatement.
        missing = self.bad(1)["file_name"]
        self.assertEqual(first, (
            f"Skipped unreadable image {missing} ([Errno 2] No such file or directory: "
            f"'{missing}'). DATALOADER.ON_UNREADABLE_IMAGE is 'skip': training goes on with "
            "other images; the count is logged at most every 3 images."
        ))  # fmt: skip
        # Mapped 4 images when due (1 at the first skip + 3): bad 2 and 3 since the first.
        self.assertEqual(summary, (
            "3 unreadable image(s) skipped so far by this data loader process (out of 4 "
            f"mapped); since the last report: {self.bad(2)['file_name']}, "
            f"{self.bad(3)['file_name']}"
        ))  # fmt: skip

    def test_long_lists_are_shortened(self):
        m = mapper(period=8)
        with self.assertLogs(LOGGER, logging.WARNING) as logs:
            for i in range(9):
                self.assertIsNone(m(self.bad(i)))
        summary = logs.records[-1].getMessage()
        self.assertTrue(summary.startswith("9 unreadable image(s) skipped so far by this data "
                                           "loader process (out of 9 mapped)"))  # fmt: skip
        names = ", ".join(self.bad(i)["file_name"] for i in range(1, 6))
        self.assertTrue(summary.endswith(f"since the last report: {names} and 3 more"), summary)

    def test_five_names_in_full_six_shortened(self):
        for count, tail in ((5, ""), (6, " and 1 more")):
            m = mapper(period=count)
            with self.assertLogs(LOGGER, logging.WARNING) as logs:
                for i in range(count + 1):  # the first is named at once, the others summed up
                    m(self.bad(i))
            names = ", ".join(self.bad(i)["file_name"] for i in range(1, min(count, 5) + 1))
            summary = logs.records[-1].getMessage()
            self.assertTrue(summary.endswith(f"since the last report: {names}{tail}"), summary)

    def test_from_config_defaults_to_training(self):
        cfg = get_cfg()
        add_retinafocal_config(cfg)
        cfg.DATALOADER.ON_UNREADABLE_IMAGE = "skip"
        m = RobustDatasetMapper(cfg)  # no is_train: a training mapper, which may skip
        self.assertTrue(m.is_train)
        with self.assertLogs(LOGGER, logging.WARNING):
            self.assertIsNone(m(self.bad(1)))

    def test_no_summary_without_new_skips(self):
        m = mapper(period=1)
        with self.assertLogs(LOGGER, logging.WARNING) as logs:
            m(self.bad(1))
            for _ in range(3):
                m(self.good())
        self.assertEqual(len(logs.records), 1)

    def test_error_policy_for_a_size_mismatch(self):
        d = dict(self.good(), height=20)
        with self.assertRaises(UnreadableImageError) as ctx:
            mapper("error")(d)
        self.assertTrue(str(ctx.exception).startswith(
            f"Image {d['file_name']} does not match its annotation: "))  # fmt: skip
        self.assertIsInstance(ctx.exception.__cause__, detection_utils.SizeMismatchError)
        self.assertIsNone(mapper("skip")(d))

    def test_unreadable_message_names_file_cause_and_switch(self):
        path = self.bad(7)["file_name"]
        with self.assertRaises(UnreadableImageError) as ctx:
            read_image_converted(path, "BGR")
        self.assertTrue(str(ctx.exception).startswith(
            f"Cannot read image {path}: FileNotFoundError: [Errno 2] No such file"))  # fmt: skip
        # The mapper adds what to do, never suggesting the policy that is already set.
        with self.assertRaises(UnreadableImageError) as ctx:
            mapper("error")(self.bad(7))
        self.assertTrue(str(ctx.exception).startswith(f"Cannot read image {path}: "))
        self.assertTrue(str(ctx.exception).endswith(
            ". Fix or remove it (tools/validate_dataset.py decodes every image and lists all such "
            "files), or set DATALOADER.ON_UNREADABLE_IMAGE to 'skip' to go on without unreadable "
            "images."))  # fmt: skip
        cfg = get_cfg()
        add_retinafocal_config(cfg)
        cfg.DATALOADER.ON_UNREADABLE_IMAGE = "skip"
        with self.assertRaises(UnreadableImageError) as ctx:
            RobustDatasetMapper(cfg, is_train=False)(self.bad(7))
        self.assertTrue(str(ctx.exception).endswith(
            ". DATALOADER.ON_UNREADABLE_IMAGE is 'skip', but an evaluation cannot leave out an "
            "image once it has started (the images that the start-up check finds are left out "
            "before). Fix or remove it; tools/validate_dataset.py decodes every image and lists "
            "all such files."))  # fmt: skip
        self.assertNotIn("to 'skip'", str(ctx.exception))


class TestPixelConversions(unittest.TestCase):
    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="retinafocal_pixels_")
        self.addCleanup(shutil.rmtree, self.root, ignore_errors=True)

    def save(self, image: Image.Image, name: str, **kwargs) -> str:
        path = os.path.join(self.root, name)
        image.save(path, **kwargs)
        return path

    def test_exif_orientation_applied_as_detectron2_does(self):
        pixels = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 3
        exif = Image.Exif()
        exif[0x0112] = 6  # rotated 90 degrees
        path = self.save(Image.fromarray(pixels), "rotated.png", exif=exif)
        ours = read_image_converted(path, "RGB")
        self.assertEqual(ours.shape, (6, 4, 3))
        np.testing.assert_array_equal(ours, detection_utils.read_image(path, "RGB"))

    def test_float_image_above_one_is_clipped_not_scaled(self):
        values = np.array([[0.0, 1.5], [300.7, 254.4]], dtype=np.float32)
        path = self.save(Image.fromarray(values, mode="F"), "f.tif")
        np.testing.assert_array_equal(read_image_converted(path, "L")[..., 0],
                                      [[0, 2], [255, 254]])  # fmt: skip

    def test_float_edges(self):
        """A maximum of 1 still means [0, 1] (x 255, not 256); just above 1 means [0, 255];
        negative values are clipped to 0, not wrapped around."""
        for values, expected in (
            ([[0.0, 0.75], [1.0, -0.5]], [[0, 191], [255, 0]]),
            ([[0.0, 1.5], [-3.0, 0.75]], [[0, 2], [0, 1]]),
        ):
            path = self.save(Image.fromarray(np.array(values, np.float32), mode="F"), "f.tif")
            np.testing.assert_array_equal(read_image_converted(path, "L")[..., 0], expected)

    def test_16bit_image_just_above_8_bits_is_rescaled(self):
        path = self.save(Image.fromarray(np.array([[0, 256]], dtype=np.uint16)), "i256.png")
        np.testing.assert_array_equal(read_image_converted(path, "L")[..., 0], [[0, 1]])
        # Without a format: the 8-bit grey image, as uint8.
        image = read_image_converted(path)
        self.assertEqual(image.dtype, np.uint8)
        np.testing.assert_array_equal(image, [[0, 1]])

    def test_palette_with_byte_transparency_converts_without_warning(self):
        """Pillow warns when such an image goes straight to RGB; through RGBA it does not. The
        colours are the palette's, alpha dropped; format None keeps the palette indices."""
        image = Image.fromarray(np.array([[0, 1, 2]], dtype=np.uint8), mode="P")
        image.putpalette([0, 0, 0, 200, 100, 50, 10, 250, 30])
        path = self.save(image, "p.png", transparency=b"\x00\x80\xff")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            np.testing.assert_array_equal(read_image_converted(path, "BGR")[0],
                                          [[0, 0, 0], [50, 100, 200], [30, 250, 10]])  # fmt: skip
            np.testing.assert_array_equal(read_image_converted(path, "L")[0, :, 0], [0, 124, 153])
        np.testing.assert_array_equal(read_image_converted(path), [[0, 1, 2]])

    def test_16bit_image_within_8_bits_keeps_its_values(self):
        values = np.array([[0, 17], [200, 255]], dtype=np.uint16)
        path = self.save(Image.fromarray(values), "i16.png")
        self.assertTrue(Image.open(path).mode.startswith("I"))
        np.testing.assert_array_equal(read_image_converted(path, "L")[..., 0], values)
        values[1, 1] = 65535
        path = self.save(Image.fromarray(values), "i16b.png")
        np.testing.assert_array_equal(read_image_converted(path, "L")[..., 0],
                                      [[0, 0], [1, 255]])  # fmt: skip

    def test_grey_with_alpha_keeps_its_grey(self):
        la = Image.fromarray(np.array([[[10, 0], [200, 255]]], dtype=np.uint8), mode="LA")
        path = self.save(la, "la.png")
        np.testing.assert_array_equal(read_image_converted(path, "L")[..., 0], [[10, 200]])
        np.testing.assert_array_equal(read_image_converted(path, "BGR")[0],
                                      [[10, 10, 10], [200, 200, 200]])  # fmt: skip

    def test_format_none_keeps_the_files_mode(self):
        path = self.save(Image.new("L", (3, 2), 7), "gray.png")
        image = read_image_converted(path)
        self.assertEqual(image.shape, (2, 3))
        self.assertTrue((image == 7).all())


if __name__ == "__main__":
    unittest.main()
