"""Suite-wide set-up: nothing a test runs writes into the user's home.

The dataset validator keeps its report cache under ``$RETINAFOCAL_CACHE_DIR`` (default
``~/.cache/retinafocal``); for the whole session it points into pytest's temporary directory,
which subprocesses inherit through the environment.
"""
import os

import pytest

CACHE_ENV = "RETINAFOCAL_CACHE_DIR"


@pytest.fixture(scope="session", autouse=True)
def cache_outside_home(tmp_path_factory: pytest.TempPathFactory):
    previous = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("retinafocal_cache"))
    yield os.environ[CACHE_ENV]
    if previous is None:
        del os.environ[CACHE_ENV]
    else:
        os.environ[CACHE_ENV] = previous
