"""`edgeprune profile`: what this host (or a --remote one) has, and whether a device can be measured there."""
from __future__ import annotations

import click

from .main import print_json, remote_options


@click.command()
@click.option("--device", default="cpu", show_default=True, help="Device to check this host against.")
@remote_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def profile(device: str, remote: str | None, remote_python: str | None, remote_ssh_options: tuple[str, ...],
            as_json: bool) -> None:
    """Report what this host (or the --remote one) has and whether DEVICE can be measured there."""
    from ..backends import measurable_here
    from ..targets.devices import detect_host, resolve_device

    if remote:
        from ..backends.remote.runner import SshSession

        session = SshSession.open(remote, python=remote_python or "python3", ssh_options=remote_ssh_options)
        try:
            host = session.host
        finally:
            session.close()
    else:
        host = detect_host()
    spec = resolve_device(device, host)
    why = measurable_here(spec, host)
    out = {"device": spec.to_dict(), "host": host.to_dict(), "measurable_here": why is None, "reason": why,
           "remote": remote}
    if as_json:
        print_json(out)
        return
    h = host
    lines = [f"host: {h.hostname} ({h.machine}), {h.cpu_model}, {h.cpu_cores} cores, {h.memory_mb} MB",
             f"python {h.python}, torch {h.torch}, onnxruntime {h.onnxruntime} ({', '.join(h.ort_providers)})",
             f"CUDA: {h.cuda or 'none'}{' on ' + h.gpu if h.gpu else ''}; TensorRT: {h.tensorrt or 'not installed'}; "
             f"trtexec: {h.trtexec or 'not found'}; Jetson: {h.jetson_model or 'no'}",
             f"device {spec.name}: {spec.description}; runner {spec.runner}, precisions {', '.join(spec.precisions)}, "
             f"channel multiple {spec.channel_multiple}",
             f"measurable {'on ' + remote if remote else 'here'}: {'yes' if why is None else 'no: ' + why}"]
    click.echo("\n".join(lines))


