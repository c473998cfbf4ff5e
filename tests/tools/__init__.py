"""Tests of the scripts in ``tools/``.

A script there imports its sibling modules by plain name, since Python puts the script's folder
first on ``sys.path``; the tests import the same modules, so that folder goes on the path here
(at its end: nothing installed is shadowed).
"""
import os
import sys

TOOLS_DIR = os.path.normpath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "tools"))
if TOOLS_DIR not in sys.path:
    sys.path.append(TOOLS_DIR)
