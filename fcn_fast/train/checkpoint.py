"""Training checkpoints: written atomically (a temporary file in the same directory, then
os.replace), read with torch.load(weights_only=True); RNG states of every process."""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

FORMAT = "fcn_fast.train/1"


def is_checkpoint(state) -> bool:
    return isinstance(state, dict) and state.get("format") == FORMAT


def save(path, state: dict) -> None:
    """torch.save to a temporary file beside `path`, then rename it over `path`: a crash
    leaves the previous checkpoint or the new one, never a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path}: no such file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not is_checkpoint(state):
        raise ValueError(
            f"{path} is not an fcn-fast training checkpoint (no format {FORMAT!r}); "
            "a plain state_dict can start a run with --init"
        )
    return state


def rng_state() -> dict:
    """This process's RNG states (python, numpy, torch CPU, CUDA) as weights_only types."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(states: list, rank: int, world: int, seed: int, iteration: int) -> None:
    """Restore this process's RNG states; with another process count than the saved
    run, reseed from (seed, iteration, rank) instead (data order and augmentation do not
    depend on it, dropout masks do)."""
    if len(states) != world:
        warnings.warn(
            f"the checkpoint was written by {len(states)} processes, this run has {world}: "
            "RNG streams (dropout) are reseeded, so the continuation is not bit-exact",
            stacklevel=2,
        )
        random.seed(seed + iteration + rank)
        np.random.seed((seed + iteration + rank) % 2**32)
        torch.manual_seed(seed + iteration + 1_000_003 * rank)
        return
    state = states[rank]
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
