"""scripts/gpu_check.py runs at tiny sizes on a CPU without TransformerLens, papermill or plotly, so it cannot rot."""

import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"
ABSENT = ("transformer_lens", "papermill", "plotly", "nbformat", "jupyter_book", "submitit", "sklearn", "scipy")  # the script needs none
TINY = ["--device", "cpu", "--scale", "tiny", "--facts", "4", "--steps", "2", "--relearn-steps", "2",
        "--soft-prompt-steps", "2", "--timing-steps", "1"]


def test_gpu_check_runs_tiny_on_a_cpu_without_the_book_packages(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHUNLEARN_RESULTS", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny matrices: threads only wait on each other
    out = tmp_path / "gpu_check.json"
    block = f"import sys, runpy; sys.modules.update(dict.fromkeys({ABSENT!r})); sys.argv = {[str(SCRIPT), *TINY, '--out', str(out)]!r}; "
    done = subprocess.run([sys.executable, "-c", block + f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(a) the same tiny edit" in done.stdout and "(c) the gpu profile's sweep and grid" in done.stdout
    tables = json.loads(out.read_text())
    parity = {row["metric"]: row for row in tables["parity"]}
    assert {"after.edit_accuracy", "after.general_loss", "attack.relearn_error_lora", "attack.relearn_error_full",
            "attack.soft_prompt_error"} <= set(parity)
    assert max(row["difference"] for row in tables["parity"]) < 0.05  # bf16 weights vs float32, tiny model
    timing = tables["timing"]
    assert {row["model"] for row in timing} == {"gemma-7b", "gemma-2-9b"} and len(timing) == 10
    assert all(row["seconds"] > 0 for row in timing)
    hours = {row["model"]: row for row in tables["gpu_hours"]}
    assert hours["gemma-7b"]["sweep runs"] == 2 * 8 * 4 * 3 and hours["gemma-7b"]["grid runs"] == 8 * (5 + 3 + 3)
    assert all(row["grid GPU-hours"] > 0 for row in hours.values())


def test_paper_shapes_are_refused_on_a_cpu(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--device", "cpu", "--scale", "paper"])
    with pytest.raises(SystemExit):
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert "use --device cuda" in capsys.readouterr().err
