"""Data-parallel processes on one node (torchrun): joining their process group, who is who, and the few
collectives the library needs besides DP-SGD's gradient all-reduce (which Opacus' distributed optimizers do).

torchrun starts N copies of a command and describes the group to each through the environment (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). `init` joins it: gloo on CPU, NCCL when the processes train
on GPUs (one GPU each, `cuda:LOCAL_RANK`). Outside a process group every helper answers as the only process:
rank 0 of 1, `barrier` returns at once and `broadcast` returns its argument.
"""

from __future__ import annotations

import datetime
import os
from typing import Any, Callable, Sequence, TypeVar

import numpy as np
import torch
import torch.distributed as dist

T = TypeVar("T")
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# The other ranks wait in a broadcast while rank 0 alone builds a stage without collectives (pretraining or
# distillation: hours for the paper's models) or waits for another job's build of the same artifact (the store's
# file lock): far longer than torch's default of 30 minutes.
TIMEOUT = datetime.timedelta(hours=24)


def launched_world_size() -> int:
    """How many processes torchrun started (WORLD_SIZE); 1 when this process was not started by torchrun."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"WORLD_SIZE={value!r} is not a number of processes; launch with torchrun") from None


def check_world_size(world_size: int) -> None:
    """Raise if `world_size` (the setting) differs from the number of processes launched, naming the fix."""
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise ValueError(f"world_size={world_size!r}; it is a number of processes, 1 or more")
    launched = launched_world_size()
    if launched == world_size:
        return
    if launched == 1:
        raise ValueError(
            f"world_size={world_size} but this process was not launched as one of {world_size}; start it with "
            f"torchrun --nproc_per_node {world_size} (or set world_size to 1)"
        )
    raise ValueError(
        f"world_size={world_size} but torchrun launched WORLD_SIZE={launched} processes; pass --world-size "
        f"{launched} (world_size: {launched}) or launch with torchrun --nproc_per_node {world_size}"
    )


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def init(world_size: int, device: torch.device | None = None) -> str | None:
    """Join the group of `world_size` processes that torchrun launched (no-op for 1). The backend follows the
    device: NCCL for CUDA (which must then be this process's own GPU, see `rank_device`), gloo otherwise.
    Returns the backend, None for a single process."""
    check_world_size(world_size)
    if world_size == 1:
        return None
    if is_initialized():
        if dist.get_world_size() != world_size:
            raise ValueError(f"a process group of {dist.get_world_size()} is already running, not {world_size}")
        return dist.get_backend()
    missing = [name for name in TORCHRUN_ENV if name not in os.environ]
    if missing:
        raise ValueError(f"{missing} not set: start the processes with torchrun, which sets {list(TORCHRUN_ENV)}")
    cuda = device is not None and device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)  # NCCL's collectives (and broadcast's objects) go through this GPU
    dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    return dist.get_backend()


def rank_device(device: torch.device) -> torch.device:
    """This process's device: on a node with several GPUs each rank takes its own (cuda:LOCAL_RANK)."""
    if device.type == "cuda" and device.index is None and launched_world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def backend() -> str | None:
    return dist.get_backend() if is_initialized() else None


def barrier() -> None:
    """Wait until every process gets here."""
    if is_initialized():
        dist.barrier()


def broadcast(value: T) -> T:
    """Rank 0's `value` on every process (any picklable object; other ranks' arguments are ignored)."""
    if not is_initialized():
        return value
    box = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def run_on_main(fn: Callable[[], T]) -> T:
    """`fn()` run on rank 0 only, its result on every process: one draw of randomness that all must share."""
    return broadcast(fn() if is_main() else None)


def sum_over_ranks(values: Sequence[float]) -> list[float]:
    """Each value summed over the processes."""
    if not is_initialized():
        return [float(v) for v in values]
    device = torch.device("cuda", torch.cuda.current_device()) if backend() == "nccl" else torch.device("cpu")
    total = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()


def rank_seed(seed: int, rank: int) -> int:
    """A seed of process `rank`'s own: `seed` itself on rank 0 (so one process draws what it always drew), an
    independent one derived from (seed, rank) on the others."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def describe() -> dict[str, Any]:
    """What a manifest records of the processes that built it."""
    return {"world_size": world_size(), "backend": backend()}
