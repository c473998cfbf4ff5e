import contextlib
import io
import json
import os
import tempfile
import unittest

import torch

import retinafocal  # noqa: F401
import config_loading as loading
from config_loading import ToolError
from torchvision_retinanet import torchvision_retinanet

from .common import load_script, write_tiny_config

#: tools/analyze_model.py as a module (the script holds the analysis).
analysis = load_script("analyze_model")
COMPONENTS, analyze_model, component_modules = (
    analysis.COMPONENTS, analysis.analyze_model, analysis.component_modules
)

# A 64 x 64 image gives P3..P7 maps of 8x8, 4x4, 2x2, 1x1, 1x1 (strides 8..128, rounded up).
LEVEL_AREAS_64 = (64, 16, 4, 1, 1)


def subnet_costs(channels, num_convs, outputs, areas=LEVEL_AREAS_64):
    """Hand count of a RetinaNet subnet shared over levels: ``num_convs`` 3x3 convs
    channels -> channels and a 3x3 conv channels -> outputs, at every level.
    Returns (params, multiply-adds)."""
    params = num_convs * (9 * channels * channels + channels) + 9 * channels * outputs + outputs
    macs = sum(areas) * (num_convs * 9 * channels * channels + 9 * channels * outputs)
    return params, macs


class TestAnalysis(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.config = write_tiny_config(os.path.join(cls.tmp.name, "tiny.yaml"))
        cfg = loading.load_config(cls.config)
        cls.model = loading.build_model(cfg, load_weights=False)
        image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0)) * 255
        costs, cls.by_operator = analyze_model(cls.model, image)
        cls.costs = {c.name: c for c in costs}

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_subnets_match_hand_count(self):
        # FPN width 32, 4 convs (Base-RetinaNet), 9 anchors, 3 classes.
        params, macs = subnet_costs(32, 4, 9 * 3)
        self.assertEqual(self.costs["class subnet"].params, params)
        self.assertEqual(self.costs["class subnet"].flops, macs)
        params, macs = subnet_costs(32, 4, 9 * 4)
        self.assertEqual(self.costs["box subnet"].params, params)
        self.assertEqual(self.costs["box subnet"].flops, macs)

    def test_components_add_up_to_the_total(self):
        total = self.costs["total"]
        self.assertEqual(sum(self.costs[n].flops for n in COMPONENTS), total.flops)
        self.assertEqual(sum(self.costs[n].params for n in COMPONENTS), total.params)
        self.assertEqual(total.params, sum(p.numel() for p in self.model.parameters()))
        self.assertEqual((self.costs["other"].flops, self.costs["other"].params), (0, 0))
        self.assertEqual(sum(self.by_operator.values()), total.flops)

    def test_backbone_and_fpn_split(self):
        bottom_up = self.model.backbone.bottom_up
        self.assertEqual(self.costs["backbone (bottom-up)"].params,
                         sum(p.numel() for p in bottom_up.parameters()))
        # P6 is a 3x3 stride-2 conv on C5 (512 channels for R18) on a 1x1 map, P7 one on P6.
        fpn = self.costs["FPN"]
        p6_p7 = 9 * 512 * 32 + 9 * 32 * 32
        self.assertGreater(fpn.flops, p6_p7)
        self.assertEqual(fpn.params, sum(p.numel() for p in self.model.backbone.parameters())
                         - self.costs["backbone (bottom-up)"].params)

    def test_torchvision_layout(self):
        model = torchvision_retinanet(num_classes=5, min_size=64, max_size=64).eval()
        image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
        costs = {c.name: c for c in analyze_model(model, image)[0]}
        self.assertEqual(costs["class subnet"].flops, subnet_costs(256, 4, 9 * 5)[1])
        self.assertEqual(costs["box subnet"].flops, subnet_costs(256, 4, 9 * 4)[1])
        self.assertEqual(sum(costs[n].flops for n in COMPONENTS) + costs["other"].flops,
                         costs["total"].flops)

    def test_unknown_layout_is_an_error(self):
        with self.assertRaisesRegex(ToolError, "neither a detectron2 RetinaNet layout"):
            component_modules(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1)))

    def test_script_prints_table_and_json(self):
        script = analysis
        out = io.StringIO()
        path = os.path.join(self.tmp.name, "analysis.json")
        with contextlib.redirect_stdout(out):
            code = script.main(["--config-file", self.config, "--size", "64", "64",
                                "--json", path])
        self.assertEqual(code, 0)
        self.assertIn("| class subnet", out.getvalue())
        with open(path) as f:
            report = json.load(f)
        by_name = {c["name"]: c for c in report["components"]}
        self.assertEqual(by_name["class subnet"]["flops"], subnet_costs(32, 4, 27)[1])


if __name__ == "__main__":
    unittest.main()
