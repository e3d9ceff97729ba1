"""The README's Python example runs: a small GPT with flexattn attention trains on the CPU and
its loss falls below half of chance (the script exits non-zero otherwise)."""

import os
import subprocess
import sys

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "python",
                       "gpt_train.py")


def test_gpt_example_trains():
    run = subprocess.run([sys.executable, EXAMPLE, "--steps", "300"], capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "mean loss of the last 20 steps" in run.stdout
