"""Weights files never run code unless the user opts out, and benign files load as before."""
import copy
import os
import pickle
import shutil
import tempfile
import unittest
import zipfile
from unittest import mock

import numpy as np
import torch

import retinafocal  # noqa: F401  (compat before detectron2)
from detectron2.checkpoint import DetectionCheckpointer
from retinafocal import compat, weights_file
from retinafocal.checkpoint import (
    AtomicDetectionCheckpointer,
    CorruptCheckpointError,
    load_inference_weights,
)
from retinafocal.weights_file import (
    TorchScriptWeightsError,
    UnsafeWeightsFileError,
    read_weights_file,
)

from ..tools.common import write_tiny_config  # first: puts tools/ on sys.path
import config_loading as loading  # noqa: E402  (tools/config_loading.py)
from .files import (
    TrustedNote,
    as_numpy,
    malicious_pkl,
    malicious_pth,
    marker_path,
    write_bytes,
    zoo_pkl,
)


def tiny_detector(folder: str):
    """The tools tests' narrow R18-FPN FocalRetinaNet (3 classes), random weights."""
    cfg = loading.load_config(write_tiny_config(os.path.join(folder, "tiny.yaml")))
    return loading.build_model(cfg, load_weights=False)


def perturbed(weights, seed=0):
    """Other values of the same names, shapes and dtypes (floats only; integers kept)."""
    rng = np.random.default_rng(seed)
    return {
        k: rng.standard_normal(v.shape).astype(v.dtype) if v.dtype.kind == "f" else v
        for k, v in weights.items()
    }


class _TmpDir(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="rf_weights_")
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.marker = marker_path(self.dir)

    def path(self, name):
        return os.path.join(self.dir, name)


class TestMaliciousFilesRefused(_TmpDir):
    def assert_refused(self, path, load):
        with self.assertRaises(UnsafeWeightsFileError) as ctx:
            load(path)
        self.assertEqual(ctx.exception.global_name, "io.open")
        message = str(ctx.exception)
        self.assertIn(path, message)
        self.assertIn("io.open", message)
        self.assertIn("--trust-weights-file", message)
        self.assertFalse(os.path.exists(self.marker), "the file's code ran")

    def test_pkl_of_every_pickle_protocol(self):
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            with self.subTest(protocol=protocol):
                path = malicious_pkl(self.path(f"evil{protocol}.pkl"), self.marker, protocol)
                self.assert_refused(path, read_weights_file)

    def test_pth_from_torch_save_and_plain_pickles(self):
        self.assert_refused(malicious_pth(self.path("evil.pth"), self.marker), read_weights_file)
        # A plain pickle named .pth: torch refuses protocol 4/5 by opcode; the name still shows.
        for protocol in (2, 4, 5):
            with self.subTest(protocol=protocol):
                path = malicious_pkl(self.path(f"plain{protocol}.pth"), self.marker, protocol)
                self.assert_refused(path, read_weights_file)

    def test_checkpointer_load_and_resume_refuse_them(self):
        model = torch.nn.Linear(2, 2)
        checkpointer = AtomicDetectionCheckpointer(model, self.dir)
        for name in ("evil.pkl", "evil.pth"):
            path = self.path(name)
            if name.endswith(".pkl"):
                malicious_pkl(path, self.marker)
            else:
                malicious_pth(path, self.marker, model)
            self.assert_refused(path, checkpointer.load)
            self.assert_refused(path, lambda p: checkpointer.resume_or_load(p, resume=False))
        # A malicious last checkpoint is not "damaged": resuming stops instead of falling back.
        checkpointer.save("model_0000001")
        malicious_pth(self.path("model_0000002.pth"), self.marker, model)
        checkpointer.tag_last_checkpoint("model_0000002.pth")
        self.assert_refused(self.path("model_0000002.pth"),
                            lambda _: checkpointer.resume_or_load("", resume=True))

    def test_pth_is_always_read_with_weights_only(self):
        # Pinned here rather than left to torch's default, which is False before torch 2.6.
        model = torch.nn.Linear(2, 2)
        AtomicDetectionCheckpointer(model, self.dir).save("model")
        self.assertTrue(hasattr(weights_file.torch, "load"))
        real_load = torch.load
        calls = []

        def recording_load(*args, **kwargs):
            calls.append(kwargs.get("weights_only"))
            return real_load(*args, **kwargs)

        with mock.patch.object(weights_file.torch, "load", recording_load):
            AtomicDetectionCheckpointer(model).load(self.path("model.pth"))
        self.assertEqual(calls, [True])


class TestModelZooFiles(_TmpDir):
    """Benign model-zoo ``.pkl`` files give the weights detectron2's own loader gives."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="rf_zoo_")
        cls.model = tiny_detector(cls.tmp)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def load_both(self, path, *, resume_or_load=False):
        """(state after detectron2's DetectionCheckpointer, state after ours), same start."""
        states = []
        for cls in (DetectionCheckpointer, AtomicDetectionCheckpointer):
            model = copy.deepcopy(self.model)
            checkpointer = cls(model)
            if resume_or_load:
                checkpointer.resume_or_load(path, resume=False)
            else:
                checkpointer.load(path)
            states.append(model.state_dict())
        return states

    def assert_same(self, a, b):
        self.assertEqual(list(a), list(b))
        for k in a:
            self.assertTrue(torch.equal(a[k], b[k]), k)

    def test_detectron2_zoo_format(self):
        weights = perturbed(as_numpy(self.model))
        # numpy 1's module paths as in the zoo's files; numpy 2's at protocols 4 and 5.
        for protocol, numpy1 in ((2, True), (4, False), (5, False)):
            with self.subTest(protocol=protocol, numpy1=numpy1):
                path = zoo_pkl(self.path(f"zoo{protocol}{numpy1}.pkl"), weights,
                               numpy1=numpy1, protocol=protocol)
                if numpy1:
                    with open(path, "rb") as f:
                        self.assertIn(b"numpy.core.multiarray", f.read())
                ref, ours = self.load_both(path)
                self.assert_same(ref, ours)
                for k, v in weights.items():
                    np.testing.assert_array_equal(ours[k].numpy(), v, err_msg=k)

    def test_backbone_with_matching_heuristics_for_training(self):
        # As detectron2's convert-torchvision-to-d2.py writes an ImageNet backbone: names
        # without the model's prefix, matched by suffix; no FPN, no head.
        prefix = "backbone.bottom_up."
        weights = {k[len(prefix):]: v for k, v in perturbed(as_numpy(self.model), 1).items()
                   if k.startswith(prefix)}
        path = zoo_pkl(self.path("backbone.pkl"), weights, protocol=4,
                       matching_heuristics=True)
        ref, ours = self.load_both(path, resume_or_load=True)
        self.assert_same(ref, ours)
        np.testing.assert_array_equal(ours[prefix + "stem.conv1.weight"].numpy(),
                                      weights["stem.conv1.weight"])
        self.assertTrue(torch.equal(ours["head.cls_score.weight"],
                                    self.model.state_dict()["head.cls_score.weight"]))

    def test_caffe2_blobs(self):
        rng = np.random.default_rng(2)
        blobs = {
            "conv1_w": rng.standard_normal((64, 3, 7, 7)).astype(np.float32),
            "res_conv1_bn_s": rng.standard_normal(64).astype(np.float32),
            "res_conv1_bn_b": rng.standard_normal(64).astype(np.float32),
            "conv1_w_momentum": np.zeros((64, 3, 7, 7), np.float32),  # dropped
            "fc1000_w": np.zeros((1000, 512), np.float32),  # the ImageNet classifier: unused
        }
        path = self.path("c2.pkl")
        with open(path, "wb") as f:
            pickle.dump({"blobs": blobs}, f, protocol=2)
        ref, ours = self.load_both(path, resume_or_load=True)
        self.assert_same(ref, ours)
        np.testing.assert_array_equal(ours["backbone.bottom_up.stem.conv1.weight"].numpy(),
                                      blobs["conv1_w"])


class TestOwnCheckpoints(_TmpDir):
    def test_pth_with_optimizer_and_scheduler_resumes(self):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        model(torch.randn(5, 4)).sum().backward()
        optimizer.step()
        scheduler.step()
        AtomicDetectionCheckpointer(
            model, self.dir, optimizer=optimizer, scheduler=scheduler
        ).save("model_0000007", iteration=7)

        model2 = torch.nn.Linear(4, 3)
        optimizer2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
        scheduler2 = torch.optim.lr_scheduler.StepLR(optimizer2, step_size=1, gamma=0.5)
        extra = AtomicDetectionCheckpointer(
            model2, self.dir, optimizer=optimizer2, scheduler=scheduler2
        ).resume_or_load("", resume=True)
        self.assertEqual(extra, {"iteration": 7})
        self.assertTrue(torch.equal(model2.weight, model.weight))
        self.assertEqual(scheduler2.last_epoch, 1)
        self.assertAlmostEqual(optimizer2.param_groups[0]["lr"], 0.05)
        momentum = optimizer.state[model.weight]["momentum_buffer"]
        self.assertTrue(torch.equal(optimizer2.state[model2.weight]["momentum_buffer"], momentum))

    def test_torchscript_archive_is_named_as_such(self):
        traced = torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2))
        for name in ("model.ts", "model.pth"):
            path = self.path(name)
            traced.save(path)
            with self.assertRaises(TorchScriptWeightsError) as ctx:
                AtomicDetectionCheckpointer(torch.nn.Linear(2, 2)).load(path)
            message = str(ctx.exception)
            self.assertIn(f"{path} is a TorchScript archive", message)
            self.assertIn("torch.jit.load", message)
            self.assertNotIn("corrupt", message)

    def test_damaged_files_are_still_called_damaged(self):
        model = torch.nn.Linear(2, 2)
        zoo_pkl(self.path("zoo.pkl"), as_numpy(model))
        with open(self.path("zoo.pkl"), "rb") as f:
            write_bytes(self.path("cut.pkl"), f.read()[:100])
        write_bytes(self.path("noise.pth"), b"not a checkpoint")
        for name in ("cut.pkl", "noise.pth"):
            with self.assertRaisesRegex(CorruptCheckpointError, "truncated or corrupt"):
                AtomicDetectionCheckpointer(model).load(self.path(name))

    def test_an_intact_archive_torch_cannot_read_is_not_called_damaged(self):
        """A whole zip named .pth that is no torch archive: torch's own error, as it is."""
        with zipfile.ZipFile(self.path("notes.pth"), "w") as archive:
            archive.writestr("notes.txt", "hello")
        with self.assertRaises(RuntimeError) as ctx:
            AtomicDetectionCheckpointer(torch.nn.Linear(2, 2)).load(self.path("notes.pth"))
        self.assertNotIsInstance(ctx.exception, CorruptCheckpointError)
        self.assertNotIn("truncated or corrupt", str(ctx.exception))


class TestUrlOptions(_TmpDir):
    """Current detectron2 reads ``?matching_heuristics=True`` from the weights URL; v0.6 does
    not. Files read by our checkpointer keep whichever behaviour is installed."""

    def test_same_as_detectron2s_loader(self):
        source = torch.nn.Sequential(torch.nn.Linear(2, 3))
        # Names without the model's "0." prefix: they load only through matching heuristics.
        weights = {k.split(".", 1)[1]: v for k, v in perturbed(as_numpy(source)).items()}
        torch.save({"model": {k: torch.from_numpy(v) for k, v in weights.items()}},
                   self.path("w.pth"))
        url = self.path("w.pth") + "?matching_heuristics=True"
        outcomes = []
        for cls in (DetectionCheckpointer, AtomicDetectionCheckpointer):
            model = torch.nn.Sequential(torch.nn.Linear(2, 3))
            try:
                cls(model).load(url, checkpointables=[])
                outcomes.append(model[0].weight.detach().numpy().tolist())
            except Exception as e:  # v0.6: the query is part of a file name that does not exist
                outcomes.append(type(e).__name__)
        self.assertEqual(outcomes[0], outcomes[1])
        if "checkpoint_load_state" in compat.ACTIVE:
            self.assertEqual(outcomes[1], weights["weight"].tolist())

    def test_options_follow_the_installed_version(self):
        from urllib.parse import urlparse

        loading = mock.Mock(_parsed_url_during_load=urlparse("w.pkl?matching_heuristics=True"))
        with mock.patch.dict(compat.ACTIVE, clear=True):
            self.assertEqual(compat.checkpoint_url_options(loading), {})
        with mock.patch.dict(compat.ACTIVE, checkpoint_load_state="on"):
            self.assertEqual(compat.checkpoint_url_options(loading),
                             {"matching_heuristics": True})
            loading._parsed_url_during_load = urlparse("w.pkl?other=1")
            with self.assertRaisesRegex(ValueError, "other"):
                compat.checkpoint_url_options(loading)

    def test_url_options_reach_torch_checkpoints_only(self):
        """What current detectron2 reads from the URL query goes into ``.pth`` checkpoints; the
        model-zoo formats (``.pkl``, pycls ``.pyth``) come with their own loading options."""
        model = torch.nn.Linear(2, 2)
        torch.save({"model": model.state_dict()}, self.path("w.pth"))
        torch.save({"model_state": model.state_dict()}, self.path("w.pyth"))
        zoo_pkl(self.path("w.pkl"), as_numpy(model))
        checkpointer = AtomicDetectionCheckpointer(model)
        marker = {"url_option": "from the query"}  # made up, so that it shows where it went
        with mock.patch.object(compat, "checkpoint_url_options", return_value=marker) as options:
            loaded = {name: checkpointer._load_file(self.path(name))
                      for name in ("w.pth", "w.pyth", "w.pkl")}  # fmt: skip
        options.assert_called_once_with(checkpointer)
        self.assertEqual(loaded["w.pth"]["url_option"], "from the query")
        self.assertNotIn("url_option", loaded["w.pyth"])
        self.assertNotIn("url_option", loaded["w.pkl"])


class TestTrustOptOut(_TmpDir):
    def test_trusted_file_with_a_custom_class_loads_with_a_warning(self):
        model = torch.nn.Linear(2, 2)
        weights = perturbed(as_numpy(model))
        path = zoo_pkl(self.path("mine.pkl"), weights, protocol=4, note=TrustedNote("hi"))
        with self.assertRaises(UnsafeWeightsFileError) as ctx:
            AtomicDetectionCheckpointer(model).load(path)
        self.assertTrue(ctx.exception.global_name.endswith("files.TrustedNote"))

        checkpointer = AtomicDetectionCheckpointer(model, trust_weights_file=True)
        with self.assertLogs("retinafocal.weights_file", "WARNING") as logs:
            extra = checkpointer.load(path)
        self.assertIn(path, "\n".join(logs.output))
        self.assertEqual(extra["note"].text, "hi")
        np.testing.assert_array_equal(model.weight.detach().numpy(), weights["weight"])

    def test_inference_weights_are_refused_unless_trusted(self):
        model = torch.nn.Linear(2, 2)
        weights = perturbed(as_numpy(model))
        path = zoo_pkl(self.path("mine.pkl"), weights, protocol=4, note=TrustedNote("hi"))
        with self.assertRaises(UnsafeWeightsFileError):
            load_inference_weights(model, path, weights_key="MODEL.WEIGHTS")
        with self.assertLogs("retinafocal.weights_file", "WARNING"):
            extra = load_inference_weights(model, path, weights_key="MODEL.WEIGHTS",
                                           trust_weights_file=True)  # fmt: skip
        self.assertEqual(extra["note"].text, "hi")
        np.testing.assert_array_equal(model.weight.detach().numpy(), weights["weight"])

    def test_trust_really_is_full_unpickling(self):
        path = malicious_pth(self.path("evil.pth"), self.marker, torch.nn.Linear(2, 2))
        with self.assertLogs("retinafocal.weights_file", "WARNING"):
            AtomicDetectionCheckpointer(torch.nn.Linear(2, 2), trust_weights_file=True).load(path)
        self.assertTrue(os.path.exists(self.marker))


if __name__ == "__main__":
    unittest.main()
