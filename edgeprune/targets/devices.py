"""Target devices (edgeprune/targets/devices/*.yaml) and what this host really has."""
from __future__ import annotations

import functools
import os
import platform
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

DEVICES_DIR = Path(os.environ.get("EDGEPRUNE_DEVICES_DIR", Path(__file__).resolve().parent / "devices"))
JETSON_MODEL_FILE = Path("/proc/device-tree/model")
TRTEXEC_PATHS = ("/usr/src/tensorrt/bin/trtexec", "/usr/local/tensorrt/bin/trtexec")


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    description: str
    kind: str  # "host" | "jetson"
    runner: str
    precisions: tuple[str, ...]
    default_precision: str
    channel_multiple: int
    providers: tuple[str, ...] = ()
    fallback_runners: tuple[str, ...] = ()
    memory_mb: int | None = None
    threads: int | None = None
    jetson_model: str | None = None
    compute_capability: str | None = None
    dla_cores: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@functools.lru_cache(maxsize=None)
def list_devices(directory: Path = DEVICES_DIR) -> dict[str, DeviceSpec]:
    specs = {}
    for path in sorted(Path(directory).glob("*.yaml")):
        spec = load_device_file(path)
        specs[spec.name] = spec
    return specs


def load_device_file(path: Path) -> DeviceSpec:
    try:
        raw = yaml.safe_load(Path(path).read_text())
        if not isinstance(raw, dict):
            raise TypeError("it must hold a mapping of key: value")
        for key in ("precisions", "providers", "fallback_runners"):
            raw[key] = tuple(raw.get(key) or ())
        if raw.get("channel_multiple") == "auto":
            raw["channel_multiple"], why = host_channel_multiple()
            raw["description"] = f"{raw.get('description', '')} (channel multiple {raw['channel_multiple']}: {why})"
        spec = DeviceSpec(**raw)
    except (OSError, yaml.YAMLError, TypeError) as exc:
        raise ConfigError(f"device file {path} is invalid ({exc}); see edgeprune/targets/devices/cpu.yaml for the keys") from None
    if spec.channel_multiple < 1:
        raise ConfigError(f"device file {path}: channel_multiple must be at least 1")
    return spec


def resolve_device(name: str, host: "HostInfo | None" = None) -> DeviceSpec:
    """A device name, a path to a device YAML, or 'jetson' (the Jetson this host is)."""
    if name.endswith((".yaml", ".yml")):
        return load_device_file(Path(name))
    devices = list_devices()
    if name == "jetson":
        host = host or detect_host()
        if not host.jetson_model:
            raise ConfigError("--device jetson needs a Jetson host (no /proc/device-tree/model here): name a "
                              "device such as jetson-orin-nano, or measure on one with --remote user@host")
        for spec in devices.values():
            if spec.jetson_model and spec.jetson_model.lower() in host.jetson_model.lower():
                return spec
        raise ConfigError(f"this host is a {host.jetson_model!r}, which no edgeprune/targets/devices/*.yaml describes: "
                          "add a device file for it")
    if name not in devices:
        raise ConfigError(f"unknown device {name!r}: known devices are {', '.join(devices)} (see `edgeprune devices`)")
    return devices[name]


@dataclass(frozen=True)
class HostInfo:
    """What this machine has, read at run time."""

    hostname: str
    machine: str
    cpu_model: str
    cpu_cores: int
    memory_mb: int | None
    python: str
    onnxruntime: str | None
    ort_providers: tuple[str, ...]
    torch: str | None
    cuda: str | None  # CUDA runtime torch sees, when a GPU is present
    gpu: str | None
    tensorrt: str | None
    trtexec: str | None
    jetson_model: str | None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def detect_host() -> HostInfo:
    ort_version, providers = None, ()
    try:
        import onnxruntime as ort

        ort_version, providers = ort.__version__, tuple(ort.get_available_providers())
    except Exception:
        pass
    torch_version = cuda = gpu = None
    try:
        import torch

        torch_version = torch.__version__
        if torch.cuda.is_available():
            cuda, gpu = torch.version.cuda, torch.cuda.get_device_name(0)
    except Exception:
        pass
    trt_version = None
    try:
        import tensorrt

        trt_version = tensorrt.__version__
    except Exception:
        pass
    trtexec = shutil.which("trtexec") or next((p for p in TRTEXEC_PATHS if os.access(p, os.X_OK)), None)
    return HostInfo(
        hostname=platform.node(), machine=platform.machine(), cpu_model=_cpu_model(), cpu_cores=os.cpu_count() or 1,
        memory_mb=_memory_mb(), python=platform.python_version(), onnxruntime=ort_version, ort_providers=providers,
        torch=torch_version, cuda=cuda, gpu=gpu, tensorrt=trt_version, trtexec=trtexec,
        jetson_model=read_jetson_model())


def read_jetson_model(path: Path = JETSON_MODEL_FILE) -> str | None:
    try:
        text = path.read_bytes().rstrip(b"\x00").decode(errors="replace").strip()
    except OSError:
        return None
    return text if "jetson" in text.lower() or "orin" in text.lower() or "xavier" in text.lower() else None


def host_channel_multiple(cpuinfo: str | None = None) -> tuple[int, str]:
    """The channel count ONNX Runtime's CPU convolutions (MLAS NCHWc) block by on this host: its SIMD width in
    floats. A width that is not a multiple is padded up, so pruning to it saves MACs but no time: measured here
    on an AVX-512 host, ResNet-56 at widths 12/28/60 ran 5% slower than at 16/32/64, and at 16/16/48 34% faster."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
            break
    if "avx512f" in flags:
        return 16, "AVX-512 host"
    if "avx2" in flags or "avx" in flags:
        return 8, "AVX2 host"
    return 8, "no AVX-512/AVX2 flags found; 8 as a safe default"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_mb() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None
