"""A stage that cannot finish inside a short cap, for the gpu_check dry run (tests/benchmark/
test_gpu_check.py names this file explicitly; its name keeps pytest from collecting it otherwise)."""

import time


def test_outlasts_its_stage():
    time.sleep(120)
