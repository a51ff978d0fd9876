"""The Colab notebook runs end to end (nbclient) with nothing on disk but the package: an
official .pth fetched by URL, or, with no checkpoint, a short demo training first."""

import pathlib

import nbformat
import pytest
from conftest import GOLDEN
from nbclient import NotebookClient

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "notebooks" / "eval_colab.ipynb"


def run_notebook(tmp_path, monkeypatch, env: dict) -> tuple[str, list]:
    env = {
        "ASANET_DATA_DIR": str(tmp_path / "data"),  # not built yet: the notebook builds it
        "ASANET_ROBUSTNESS_IMAGES": "2",
        "ASANET_WORKDIR": str(tmp_path / "run"),
        **env,
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=None, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    return text, outputs


@pytest.mark.parametrize("source", ["official_pth_by_url", "demo_training"])
def test_eval_notebook_executes(tmp_path, monkeypatch, source):
    if source == "official_pth_by_url":
        # An official file records no dataset: the notebook is told which.
        env = {
            "ASANET_CHECKPOINT": (GOLDEN / "checkpoint.pth").as_uri(),
            "ASANET_DATASET": "synthetic_rgb_sar",
            "ASANET_TFDS_CONFIG": "tiny",
        }
    else:
        # The demo model directory records its dataset (the tiny synthetic one).
        env = {"ASANET_CHECKPOINT": "", "ASANET_DEMO_VARIANT": "runlocal"}
    text, outputs = run_notebook(tmp_path, monkeypatch, env)
    assert "backend cpu, devices [CpuDevice(id=0)]" in text
    if source == "official_pth_by_url":
        assert (tmp_path / "checkpoints" / "checkpoint.pth").is_file()  # downloaded
    else:
        assert "training the demo model for 4 steps" in text
        assert (tmp_path / "run" / "model" / "model.json").is_file()
    assert "8 images in synthetic_rgb_sar/val" in text
    assert "mIoU" in text and "| clouds |" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 4  # confusion, predictions, robustness plot, corruption examples
