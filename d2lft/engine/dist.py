"""Data-parallel training across processes, backend-neutral: the job a worker belongs
to, how every epoch's batches are sharded, and the environment of the two launchers.

A backend joins a job with its framework's own engine (torch.distributed with gloo or
nccl; MXNet's parameter server, ``kvstore='dist_sync'``) and returns a :class:`Job`.
Every rank draws the same epoch permutation (from the run's seed) and, in the fast
pipeline, the same crops for the whole global batch (the book pipeline's per-image
transforms draw from a stream of each rank's own: `d2lft.data.shards.rank_seed`),
then keeps its shard of each global batch, so that one global step sees the same
examples whatever the number of workers (a run resumed with another world size goes on
with the same batches). Shards follow MXNet's ``split_and_load``: the first ``W - 1``
ranks get ``b // W`` examples, the last the rest, so a W-worker job computes what one
process splitting each batch over W devices computes (BatchNorm statistics per shard,
as in the book's multi-device training).
"""

from __future__ import annotations

import abc
import dataclasses
import os

from ..data.shards import shard, shard_bounds, sharded_batches

#: environment variables that torchrun sets for its workers
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: environment variables of MXNet's parameter server (ps-lite)
DMLC_ENV = (
    "DMLC_ROLE",
    "DMLC_PS_ROOT_URI",
    "DMLC_PS_ROOT_PORT",
    "DMLC_NUM_SERVER",
    "DMLC_NUM_WORKER",
)
#: how long a collective waits for a lost worker before the job fails (seconds)
DEFAULT_TIMEOUT = 300.0


def torchrun_world() -> int | None:
    """The world size of the torchrun job this process was started in, else None."""
    if not all(v in os.environ for v in ("RANK", "WORLD_SIZE")):
        return None
    return int(os.environ["WORLD_SIZE"])


def dmlc_role() -> str | None:
    """'worker', 'server' or 'scheduler' when MXNet's parameter server started this
    process (the DMLC_* variables), else None."""
    return os.environ.get("DMLC_ROLE") or None


def global_batch_size(num_examples: int, batch_size: int, step: int) -> int:
    """How many examples global step `step` of an epoch holds (the last may be smaller)."""
    return min(batch_size, num_examples - step * batch_size)


def check_shards(batch_size: int, num_train: int, num_test: int, world: int) -> None:
    """Refuse a job whose workers would get an empty shard (a collective would then wait
    forever): every global batch, the last included, and the test set need at least one
    example per worker."""
    if world <= 1:
        return
    last = num_train % batch_size or batch_size
    problems = []
    if batch_size < world:
        problems.append(f"the batch size {batch_size} is smaller than the {world} workers")
    elif last < world:
        problems.append(
            f"the last batch of each epoch holds {last} example(s) "
            f"({num_train} training images in batches of {batch_size}), fewer "
            f"than the {world} workers"
        )
    if num_test < world:
        problems.append(f"the test set has {num_test} image(s), fewer than the workers")
    if problems:
        raise ValueError(
            f"cannot split this run over {world} workers: "
            + "; ".join(problems)
            + ". Use fewer workers (--nproc), or a batch "
            "size and data that give every worker at least one example"
        )


@dataclasses.dataclass
class Job(abc.ABC):
    """One worker's view of a data-parallel job: its rank (0 is the one that prints and
    writes files), the world size, and the collectives the loop needs."""

    rank: int
    world_size: int
    engine: str

    @abc.abstractmethod
    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """The sum of `values` over all workers (each worker passes its own)."""

    def broadcast_int(self, value: int) -> int:
        """Rank 0's `value` on every worker."""
        out = self.all_reduce_sum([float(value) if self.rank == 0 else 0.0])[0]
        return int(round(out))


__all__ = [
    "DEFAULT_TIMEOUT",
    "DMLC_ENV",
    "TORCHRUN_ENV",
    "Job",
    "check_shards",
    "dmlc_role",
    "global_batch_size",
    "shard",
    "shard_bounds",
    "sharded_batches",
    "torchrun_world",
]
