"""The Colab notebook runs end to end (nbclient) on the synthetic dataset and a tiny model."""

import pathlib

import nbformat
from micro import micro_model
from nbclient import NotebookClient

from asanet_jax import checkpointing

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "notebooks" / "eval_colab.ipynb"


def test_eval_notebook_executes(tmp_path, monkeypatch):
    model = micro_model()
    checkpointing.save_model(tmp_path / "model", model)
    env = {
        "ASANET_CHECKPOINT": str(tmp_path / "model"),
        "ASANET_DATA_DIR": str(tmp_path / "data"),  # not built yet: the notebook builds it
        "ASANET_TFDS_CONFIG": "tiny",
        "ASANET_ROBUSTNESS_IMAGES": "2",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "8 images in synthetic_rgb_sar/val" in text
    assert "mIoU" in text and "| clouds |" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 4  # confusion, predictions, robustness plot, corruption examples
    assert not [o for o in outputs if o.output_type == "error"]
