"""Fine-tuning across processes with torch.distributed: `torchrun --nproc-per-node N -m edgeprune build ...`.

Rank 0 runs the whole build (pruning decisions, export, measurement, the artifacts); every other rank only
trains. Whenever rank 0 trains, it broadcasts the step (the model as pruned, its teacher, the epochs, the rate,
the seed) and every rank runs the same loop under DistributedDataParallel, each on its share of every batch
(DistributedSampler); DDP starts every replica from rank 0's weights and averages the gradients, so rank 0's model
is the one trained. NCCL on GPUs, gloo on CPUs; the ranks must be given the same build options."""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from typing import Any, Iterator

import torch
from torch import distributed as dist
from torch import nn

from ..errors import ConfigError

log = logging.getLogger(__name__)

_GROUP: "Group | None" = None


def launched() -> bool:
    """True in a process that torchrun (or another env:// launcher) started as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def current() -> "Group | None":
    return _GROUP


def world_size() -> int:
    """Processes training together now: the torchrun world inside a build's session, else 1."""
    return _GROUP.world if _GROUP is not None else 1


class Group:
    def __init__(self, rank: int, world: int, backend: str):
        self.rank, self.world, self.backend = rank, world, backend

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict[str, Any]:
        return {"world_size": self.world, "backend": self.backend}

    def command(self, kind: str, **payload: Any) -> None:
        """Rank 0: tell the other ranks what to do next (pickled by torch.distributed)."""
        dist.broadcast_object_list([(kind, payload)], src=0)

    def receive(self) -> tuple[str, dict[str, Any]]:
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    def mean(self, total: float, n: int) -> float:
        """The mean loss over every rank's images."""
        t = torch.tensor([total, float(n)], dtype=torch.float64,
                         device="cuda" if self.backend == "nccl" else "cpu")
        dist.all_reduce(t)
        return float(t[0] / max(float(t[1]), 1.0))


@contextlib.contextmanager
def session(config, user_loop: bool = False) -> Iterator[Group | None]:
    """Under torchrun: the process group, up for the build and down after it, once every rank is shown to hold the
    same config. Rank 0 leaving (finished or failed) tells the others to stop. Outside torchrun: None."""
    global _GROUP
    if not launched():
        yield None
        return
    if user_loop:
        raise ConfigError("a user's train_fn runs its own loop: launch the build without torchrun (or run "
                          "DistributedDataParallel inside train_fn)")
    backend = _backend(config)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    group = Group(dist.get_rank(), dist.get_world_size(), backend)
    try:
        check_same_config(config, group)
    except BaseException:
        _close()
        raise
    _GROUP = group
    log.info("rank %d of %d (%s)", group.rank, group.world, backend)
    failed = False
    try:
        yield group
    except BaseException:
        failed = True
        raise
    finally:
        try:
            if group.leader:
                group.command("stop")
        finally:
            _GROUP = None
            _close(meet=not failed)


def _close(meet: bool = True) -> None:
    """Take the group down; when this rank ends normally, first meet every other rank at a barrier. Without it,
    rank 0 could tear down its gloo pairs while another rank was still reading the last broadcast: seen here as
    rank 0 aborting with "terminate called without an active exception" in 2 of 25 two-rank runs of
    tests/ddp_worker.py, and in 1 of 115 with the barrier. A rank that failed does not wait (the others may be
    inside another collective, which a barrier would not match: they get a closed connection instead), and a
    barrier that fails because a peer is gone still ends in the teardown."""
    try:
        if meet:
            dist.barrier()
    except Exception as exc:  # the other side is gone: nothing left to wait for
        log.debug("barrier before teardown failed: %s", exc)
    finally:
        dist.destroy_process_group()


def check_same_config(config, group: Group) -> None:
    """ConfigError (on every rank) unless every rank's config hashes the same."""
    mine = config_digest(config)
    every: list[Any] = [None] * group.world
    dist.all_gather_object(every, mine)
    differ = [rank for rank, digest in enumerate(every) if digest != every[0]]
    if differ:
        raise ConfigError(f"the ranks of this torchrun job disagree on the build options (rank(s) "
                          f"{', '.join(map(str, differ))} differ from rank 0): launch every rank with the same "
                          "options and config file")


def config_digest(config) -> str:
    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True, default=str).encode()).hexdigest()


def follow(config, group: Group) -> list[str]:
    """A rank other than 0: train whenever rank 0 says so, until it says stop. Returns a digest of the parameters
    each step left this rank's replica with (DDP keeps them equal to rank 0's; BatchNorm's running statistics
    are each rank's own after the last batch, and rank 0's are the ones shipped)."""
    from ..data import load_data
    from .loop import fit_here

    datasets: dict[tuple, Any] = {}
    digests: list[str] = []
    while True:
        kind, step = group.receive()
        if kind == "stop":
            return digests
        if kind != "fit":  # pragma: no cover - the two ranks run the same edgeprune
            raise RuntimeError(f"rank {group.rank}: unknown command {kind!r} from rank 0")
        key = (config.data, tuple(step["shape"]))
        if key not in datasets:
            datasets[key] = load_data(config.data, tuple(step["shape"]), seed=config.seed)
        model = fit_here(step["model"], datasets[key], step["epochs"], step["options"], step["lr"], step["seed"],
                         None, step["teacher"], step["temperature"], step["alpha"], group)
        digests.append(weights_digest(model))


def weights_digest(model: nn.Module) -> str:
    return hashlib.sha256(b"".join(p.detach().cpu().numpy().tobytes() for p in model.parameters())).hexdigest()[:16]


def _backend(config) -> str:
    from .options import resolve_device

    return "nccl" if resolve_device(config.train_device).type == "cuda" and dist.is_nccl_available() else "gloo"
