"""One rank of a small DDP fine-tune, run by tests/test_distributed.py under torchrun (not a test module).

Rank 0 fine-tunes through training.fit, which broadcasts the step; the other ranks follow. Each rank writes
what it saw to OUT/rank<N>.json. DISAGREE=1 gives every rank a different seed (a config the ranks disagree on);
FOLLOWER_FAILS=1 makes rank 1's fine-tuning raise in its first step (rank 0 must then fail, not wait forever)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from torch import nn

from edgeprune.config import BuildConfig
from edgeprune.data import load_data
from edgeprune.errors import ConfigError
from edgeprune.training import TrainOptions, accuracy_torch, distributed, fit
from edgeprune.training.distributed import weights_digest


def main(out: Path) -> None:
    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    seed = rank if os.environ.get("DISAGREE") else 0
    config = BuildConfig(train_device="cpu", seed=seed, input_shape=(1, 8, 8))
    seen: dict = {"rank": rank}
    try:
        with distributed.session(config) as group:
            seen["world"] = group.world if group is not None else 1
            if group is None or group.leader:
                data = load_data("digits", (1, 8, 8), seed=seed)
                torch.manual_seed(0)
                model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 10))
                seen["before"] = accuracy_torch(model, data)
                fit(model, data, 3, TrainOptions(device="cpu"), lr=0.05, seed=0)
                seen["after"] = accuracy_torch(model, data)
                seen["digests"] = [weights_digest(model)]
            else:
                if os.environ.get("FOLLOWER_FAILS"):
                    from edgeprune.training import loop

                    def broken(*args, **kwargs):
                        raise RuntimeError("rank 1's data went away")

                    loop.fit_here = broken
                seen["digests"] = distributed.follow(config, group)
    except ConfigError as exc:
        seen["error"] = exc.message
    except RuntimeError as exc:  # written down, then raised: this rank ends as failed
        seen["error"] = str(exc).splitlines()[0]
        (out / f"rank{rank}.json").write_text(json.dumps(seen))
        raise
    (out / f"rank{rank}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
