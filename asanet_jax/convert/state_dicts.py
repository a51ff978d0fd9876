"""Reading and writing PyTorch (.pth/.pt/.bin) and safetensors checkpoints as numpy arrays."""

from __future__ import annotations

import pathlib

import numpy as np

from asanet_jax import files
from asanet_jax.weights import CheckpointError


def _tensor_to_numpy(key: str, value, path) -> np.ndarray:
    import torch

    if not isinstance(value, torch.Tensor):
        raise CheckpointError(
            f"{path}: state_dict entry {key!r} is a {type(value).__name__}, expected a tensor"
        )
    value = value.detach().cpu()
    if value.dtype == torch.bfloat16:  # numpy's own dtypes lack it; ml_dtypes (JAX's) has it
        import ml_dtypes

        return value.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return value.numpy()


def _unwrap(obj, path) -> dict:
    """The state_dict inside an mmengine / FAIR / plain checkpoint object."""
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{path}: holds a {type(obj).__name__}, expected a state_dict or a dict with "
            "'state_dict' (mmengine) or 'model' (FAIR release)"
        )
    for wrapper in ("state_dict", "model"):
        if wrapper in obj and isinstance(obj[wrapper], dict):
            return obj[wrapper]
    return obj


def read_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """Every tensor of a checkpoint file as numpy, keyed by its state_dict name.

    ``.safetensors`` files are read without torch. Anything else is opened with
    ``torch.load(..., weights_only=True)``, which refuses to run pickled code.

    Raises:
      CheckpointError: the file is missing, unreadable, or holds no state_dict.
    """
    path = pathlib.Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"{path}: is a folder; expected a checkpoint file (.pth, .pt, .bin or .safetensors)"
        )
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{path}: reading PyTorch checkpoints needs torch "
            "(pip install 'asanet-jax[torch]'), or give a .safetensors file"
        ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (expected a torch.save file or "
            f".safetensors; torch.load said: {first})"
        ) from None
    state = _unwrap(obj, path)
    if not state:
        raise CheckpointError(f"{path}: the state_dict is empty")
    return {k: _tensor_to_numpy(k, v, path) for k, v in state.items()}


def write_state_dict(state: dict[str, np.ndarray], path, meta: dict) -> None:
    """Atomically write ``{'meta': ..., 'state_dict': ...}`` (.pth) or a .safetensors file."""
    path = pathlib.Path(path)
    path.absolute().parent.mkdir(parents=True, exist_ok=True)
    # The tensors plus the container's overhead; refused up front rather than half-written.
    files.check_free_space(path.absolute().parent, sum(v.nbytes for v in state.values()) + 2**20)
    with files.atomic_output(path) as tmp, files.disk_errors_as_oserror(path):
        if path.suffix == ".safetensors":
            from safetensors.numpy import save_file

            save_file({k: np.array(v, order="C", copy=True) for k, v in state.items()}, str(tmp))
        else:
            import torch

            # np.array copies: writable, contiguous, and 0-d counters stay 0-d.
            tensors = {
                k: torch.from_numpy(np.array(v, order="C", copy=True)) for k, v in state.items()
            }
            torch.save({"meta": meta, "state_dict": tensors}, tmp)
