"""Tests of the paper reproduction (``paper/``, run as ``python -m paper`` from the repository
root). ``python -m pytest`` from the root finds it there; the root is added here for other ways
of starting pytest."""
import os
import sys

REPO_ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))
if REPO_ROOT not in sys.path:
    sys.path.append(REPO_ROOT)
