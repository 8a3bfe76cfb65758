"""Shared fixtures: a private model cache, composed configs, the tiny model folder."""

import logging
import os
import shutil
import sys

import pytest

# rouge-score imports absl, whose logging handler keeps the sys.stderr of import time. Hydra resets
# logging at each run and closes every handler; absl's close() then closes that stream unless it is the
# current sys.stderr, and under pytest + CliRunner it is pytest's capture file. Outside tests
# sys.stderr never changes, so this is test-only: point absl at the real stderr, which it never closes.
try:
    import absl.logging

    absl.logging.get_absl_handler().python_handler.stream = sys.__stderr__
except ImportError:
    pass


@pytest.fixture(autouse=True)
def log_to_real_stderr():
    """HF libraries bind their log handlers to the sys.stderr of their first use; under CliRunner that
    stream is closed after each invocation, and a later log line would print a logging error."""
    import datasets.utils.logging
    import transformers.utils.logging

    for library in (datasets.utils.logging, transformers.utils.logging):
        library.get_logger()  # configures the library's handler
    for ref in list(logging._handlerList):
        handler = ref()
        if (isinstance(handler, logging.StreamHandler) and type(handler).__module__.startswith(("logging", "hydra"))
                and not isinstance(handler, (logging.FileHandler, logging._StderrHandler))):
            if handler.stream not in (sys.__stderr__, sys.__stdout__):
                handler.stream = sys.__stderr__  # not setStream: it flushes the old, possibly closed, stream
    yield


@pytest.fixture(autouse=True)
def events_go_nowhere():
    """qrtrain.events keeps the files of the run in this process: in-process CLI runs must not inherit them."""
    from qrtrain import events

    events._paths.clear()
    yield
    events._paths.clear()


@pytest.fixture(autouse=True)
def signal_handlers_restored():
    """A published in-process run keeps its signal handlers until the process exits (signals are deferred
    to a 0 exit); in tests the process goes on, so each test hands back the handlers it found."""
    yield
    from qrtrain.training.checkpoints import forget_deferred_signal

    forget_deferred_signal()


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory):
    """Tests build the tiny model into their own cache; the default model keeps the user's cache."""
    if "QRTRAIN_TEST_CACHE" in os.environ:
        os.environ["QRTRAIN_CACHE"] = os.environ["QRTRAIN_TEST_CACHE"]
    else:
        os.environ.setdefault("QRTRAIN_CACHE", str(tmp_path_factory.mktemp("qrtrain-cache")))
    yield os.environ["QRTRAIN_CACHE"]


def compose_cfg(*overrides: str, root=None):
    from qrtrain.config import compose

    extra = [f"artifact.root={root}"] if root is not None else []
    return compose(["model=tiny", *overrides, *extra])


@pytest.fixture(scope="session")
def tiny_folder(model_cache):
    from qrtrain.models.loading import model_folder

    return model_folder(compose_cfg().model)


@pytest.fixture(scope="session")
def tiny_version(tmp_path_factory, model_cache):
    """A tiny version, 3 steps at lr 1e-2 (ROOT/p/v1), for the packaging tests: read it, copy it before changing it."""
    root = tmp_path_factory.mktemp("tiny-version")
    result = invoke("train", "model=tiny", "training.max_steps=3", "training.learning_rate=1e-2",
                    f"artifact.root={root}", "artifact.name=p")
    assert result.exit_code == 0, result.output
    return root / "p" / "v1"


def published_versions(root) -> list[str]:
    """Every v<N> folder under an artifact root."""
    from pathlib import Path

    return sorted(str(p.relative_to(root)) for p in Path(root).glob("*/v*") if p.is_dir())


def invoke(*args):
    """Run the qrtrain CLI in-process (typer's CliRunner); arguments may be paths."""
    from typer.testing import CliRunner

    from qrtrain.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser():
    if not (CHROMIUM and DRIVER):
        pytest.skip("needs chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1300"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=DriverService(DRIVER))
    yield driver
    driver.quit()
