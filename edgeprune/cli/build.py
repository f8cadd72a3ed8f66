"""`edgeprune build`: prune, export, measure and loop until the budgets are met."""
from __future__ import annotations

import math
from typing import Any

import click

from ..registry import ALLOCATIONS, CRITERIA, POLICIES, choice
from .main import print_json, remote_options
from .progress import progress_for, summary_line


@click.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML file of build options; flags override it.")
@click.option("--model", help="resnet20 | resnet56 | torchvision:NAME | timm:NAME | pkg.module:factory | file.py:factory | model.pt")
@click.option("--weights", type=click.Path(dir_okay=False), help="State dict or checkpoint for --model.")
@click.option("--trust-pickle", is_flag=True, default=None,
              help="Unpickle a whole-module --model .pt file, which runs any code it holds: only for a file you trust.")
@click.option("--input-shape", help="C,H,W of one input, e.g. 3,224,224.")
@click.option("--data", help="digits | imagefolder:PATH | pkg.module:factory (returns train, val datasets)  [default: digits]")
@click.option("--device", help="A device from `edgeprune devices`, 'jetson', or a device YAML.  [default: cpu]")
@click.option("--policy", type=choice(POLICIES, "auto"),
              help="What to optimise; auto picks from the budgets given (none: latency-sensitive at 0.5x).  [default: auto]")
@click.option("--max-accuracy-drop", type=float, help="Accuracy tolerance in points against the unpruned artifact (accuracy-critical default 0.5).")
@click.option("--memory-budget-mb", type=float, help="Memory budget of the deployed artifact in MB.")
@click.option("--memory-metric", type=click.Choice(["weights", "peak"]), help="What the memory budget counts: ONNX weights or the runtime's measured peak.  [default: weights]")
@click.option("--latency-budget", help="Fraction of the unpruned latency ('0.5x') or milliseconds ('2.5ms').  [default: 0.5x]")
@click.option("--latency-budget-ms", type=float, help="Latency budget in milliseconds.")
@click.option("--percentile", type=click.Choice(["p50", "p90", "p99", "mean"]), help="Statistic the budget applies to.  [default: p50]")
@click.option("--batch-size", type=int, help="Batch size of the deployed artifact.  [default: 1]")
@click.option("--threads", type=int, help="Runtime threads (CPU).  [default: the device's]")
@click.option("--criterion", type=choice(CRITERIA), help="Filter importance (how a channel is ranked).  [default: l1]")
@click.option("--allocation", type=choice(ALLOCATIONS), help="Per-layer pruning allocation.  [default: uniform]")
@click.option("--channel-multiple", type=int, help="Round kept widths to this multiple.  [default: the device's]")
@click.option("--distill/--no-distill", default=None, help="Distil from the unpruned model while fine-tuning.  [default: no]")
@click.option("--bn-recalibration/--no-bn-recalibration", default=None, help="Recalibrate BatchNorm statistics after pruning.  [default: yes]")
@click.option("--finetune-epochs", type=int, help="Fine-tuning epochs after each prune.  [default: 5]")
@click.option("--train-epochs", type=int, help="Epochs to train a built-in model (cached).  [default: 10]")
@click.option("--train-device", help="Where fine-tuning runs: auto | cpu | cuda | cuda:N | mps (auto: the best present).  [default: auto]")
@click.option("--amp", type=click.Choice(["auto", "off", "bf16", "fp16"]), help="Mixed precision on a GPU (auto: bf16 where supported, else fp16 with a scaler; off on the CPU).  [default: auto]")
@click.option("--optimizer", type=click.Choice(["sgd", "adamw"]), help="Fine-tuning optimizer.  [default: sgd]")
@click.option("--lr", type=float, help="Peak learning rate of the one-cycle schedule.  [default: sgd 0.03 fine-tuning, 0.05 base training; adamw 5e-4 / 1e-3]")
@click.option("--weight-decay", type=float, help="Weight decay.  [default: 5e-4]")
@click.option("--label-smoothing", type=float, help="Label smoothing of the cross-entropy loss.  [default: 0]")
@click.option("--workers", type=int, help="DataLoader worker processes for training (pinned memory on a GPU).  [default: 0]")
@click.option("--augment", type=click.Choice(["standard", "crop", "none"]), help="ImageFolder training augmentation: random resized crop + flip, crop only, or none.  [default: standard]")
@click.option("--train-fn", help="Your own fine-tuning loop, pkg.module:fn with fn(model, epochs) -> model.")
@click.option("--eval-fn", help="Your own metric, pkg.module:fn with fn(model_or_session) -> float (higher is better); reported as yours.")
@click.option("--max-iterations", type=int, help="Cap on pruning attempts.  [default: 6]")
@click.option("--measure-blocks", type=int, help="Interleaved timing blocks per measurement.  [default: 6]")
@click.option("--measure-iters", type=int, help="Timed runs per block.  [default: 200]")
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "int8"]),
              help="Precision of the shipped graph: auto tries every one the device lists, each measured on the "
                   "target and dropped where slower than fp32 or off in parity.  [default: the device's]")
@click.option("--calibration-method", type=click.Choice(["minmax", "entropy", "percentile"]),
              help="int8 activation calibration.  [default: minmax]")
@click.option("--calibration-images", type=int, help="Training images that calibrate int8.  [default: 256]")
@click.option("--seed", type=int, help="Seed for data split, training and fine-tuning.  [default: 0]")
@click.option("--out", type=click.Path(file_okay=False), help="Output directory.  [default: out]")
@click.option("--resume", is_flag=True, default=None,
              help="Continue the interrupted build of --out from its last finished attempt (same options).")
@click.option("--force", is_flag=True, default=None,
              help="Replace --out even when it holds files edgeprune did not write (never a project, home or "
                   "working directory).")
@remote_options
@click.option("--remote-dir", help="Directory on the far side to work in (a temporary one inside it, removed after).  [default: its temp directory]")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def build(config_file: str | None, latency_budget_ms: float | None, quiet: bool, as_json: bool, **flags: Any) -> None:
    """Prune, export, measure and loop until the budgets are met; write the artifacts to --out."""
    from ..config import BuildConfig, parse_shape
    from ..errors import BudgetNotMet, ConfigError
    from ..pipeline.loop import build as run_build

    if latency_budget_ms is not None:
        if not math.isfinite(latency_budget_ms) or latency_budget_ms <= 0:
            raise ConfigError(f"latency-budget-ms must be a finite number above zero, got {latency_budget_ms}")
        if flags.get("latency_budget"):
            raise ConfigError("give either --latency-budget or --latency-budget-ms, not both")
        flags["latency_budget"] = f"{latency_budget_ms}ms"
    if flags.get("input_shape"):
        flags["input_shape"] = parse_shape(flags["input_shape"])
    given = {k: v for k, v in flags.items() if v is not None and v != ()}
    config = BuildConfig.from_yaml(config_file, **given) if config_file else BuildConfig(**given)
    progress = progress_for(quiet or as_json)
    try:
        with progress:
            result = run_build(config, progress=progress)
    except BudgetNotMet as exc:
        if as_json:
            print_json(exc.result.report)
        raise
    if result is None:  # a torchrun rank other than 0: it fine-tuned; rank 0 writes and reports
        return
    if as_json:
        print_json(result.report)
    elif not quiet:
        click.echo(summary_line(result.report) + f" -> {result.out}")


