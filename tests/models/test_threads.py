"""torch's CPU threads: a number as given, `auto` leaving busy cores to the processes that use them."""

import subprocess
import sys
import time

import pytest

from qrtrain.errors import QrtrainError
from qrtrain.models.threads import busy_cores, choose_threads, set_cpu_threads, usable_cores


def test_a_number_is_used_as_given_and_bad_values_name_their_key():
    assert choose_threads(3) == 3
    for bad in (0, -1, "x", 1.5, True):
        with pytest.raises(QrtrainError, match=r"training.threads=.*expected auto or a whole number above 0"):
            choose_threads(bad, "training.threads")


def test_auto_obeys_omp_num_threads_from_the_environment(monkeypatch):
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    assert choose_threads("auto") is None
    assert set_cpu_threads("auto") == before


def test_auto_leaves_the_cores_that_other_processes_keep_busy(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = usable_cores()
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
    try:
        time.sleep(0.5)
        assert busy_cores() >= cores - 1  # the spinners are runnable (one may be between time slices)
        assert choose_threads("auto") <= max(1, cores - busy_cores() + 1) and choose_threads("auto") >= 1
        if cores <= 2:
            assert choose_threads("auto") == 1
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def test_the_thread_count_does_not_change_which_checkpoints_a_run_resumes(tmp_path):
    from qrtrain.config import compose
    from qrtrain.training.checkpoints import result_config

    one = result_config(compose(["model=tiny", "training.threads=1"]), [])
    auto = result_config(compose(["model=tiny"]), [])
    assert one == auto and "training.threads" not in one
