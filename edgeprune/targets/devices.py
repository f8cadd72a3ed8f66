"""Target devices (edgeprune/targets/devices/*.yaml) and what this host really has."""
from __future__ import annotations

import functools
import math
import os
import platform
import re
import shutil
from dataclasses import MISSING, asdict, dataclass, field, fields
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
    # JetPack release -> the TensorRT (major.minor) it ships, for a Jetson: the only TensorRT such a board can
    # have (pip wheels do not run there). Empty on a host device: any TensorRT edgeprune supports.
    jetpack: dict[str, str] = field(default_factory=dict, hash=False)  # a dict: left out of hash()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def tensorrt_versions(self) -> tuple[str, ...]:
        """The TensorRT versions (major.minor) this device's JetPack releases ship; () = not limited."""
        return tuple(dict.fromkeys(self.jetpack.values()))


_FIELDS = {f.name: f for f in fields(DeviceSpec)}
_REQUIRED = [name for name, f in _FIELDS.items() if f.default is MISSING and f.default_factory is MISSING]


@functools.lru_cache(maxsize=None)
def list_devices(directory: Path = DEVICES_DIR) -> dict[str, DeviceSpec]:
    specs = {}
    for path in sorted(Path(directory).glob("*.yaml")):
        spec = load_device_file(path)
        specs[spec.name] = spec
    return specs


def load_device_file(path: Path) -> DeviceSpec:
    """A device YAML, validated key by key: device files are untrusted input (a pull request's, a user's), so
    they are read with yaml.safe_load only, and a key or value edgeprune does not know is one line."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"device file {path} is invalid ({_one_line(exc)}); see edgeprune/targets/devices/cpu.yaml "
                          "for the keys") from None
    try:
        spec = DeviceSpec(**_validated(raw))
    except ValueError as exc:
        raise ConfigError(f"device file {path}: {exc}") from None
    return spec


def _validated(raw: Any) -> dict[str, Any]:
    """The keyword arguments of a DeviceSpec from a device file's mapping; ValueError names the first bad key."""
    if not isinstance(raw, dict):
        raise ValueError("it is invalid: it must hold a mapping of key: value")
    unknown = sorted(str(k) for k in raw if k not in _FIELDS)
    if unknown:
        raise ValueError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} (known keys: "
                         f"{', '.join(_FIELDS)})")
    missing = [k for k in _REQUIRED if raw.get(k) is None]
    if missing:
        raise ValueError(f"it is invalid: missing {', '.join(missing)}")
    out = dict(raw)
    for key in ("name", "description", "kind", "runner", "default_precision"):
        if not isinstance(out[key], str) or not out[key].strip():
            raise ValueError(f"{key} must be a non-empty string (got {out[key]!r})")
    if out["kind"] not in ("host", "jetson"):
        raise ValueError(f"kind must be host or jetson (got {out['kind']!r})")
    for key in ("precisions", "providers", "fallback_runners"):
        value = out.get(key) or ()
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{key} must be a list of names (got {value!r})")
        out[key] = tuple(value)
    if out["default_precision"] not in out["precisions"]:
        raise ValueError(f"default_precision {out['default_precision']!r} is not one of its precisions "
                         f"{list(out['precisions'])}")
    if out["channel_multiple"] == "auto":
        out["channel_multiple"], why = host_channel_multiple()
        out["description"] = f"{out['description']} (channel multiple {out['channel_multiple']}: {why})"
    out["channel_multiple"] = _whole("channel_multiple", out["channel_multiple"], 1, "or auto")
    out["dla_cores"] = _whole("dla_cores", out.get("dla_cores", 0), 0)
    for key in ("memory_mb", "threads"):
        if out.get(key) is not None:
            out[key] = _whole(key, out[key], 1)
    for key in ("jetson_model", "compute_capability"):
        if out.get(key) is not None and not isinstance(out[key], str):
            raise ValueError(f"{key} must be a string in quotes (got {out[key]!r})")
    out["jetpack"] = _jetpack(out.get("jetpack"))
    if out["kind"] == "jetson" and not out["jetpack"]:
        raise ValueError("a jetson device must say which TensorRT each JetPack release ships (jetpack: "
                         "{\"6.1\": \"10.3\"})")
    return out


def _whole(key: str, value: Any, least: int, also: str = "") -> int:
    """`value` as a whole number >= least; YAML's 8.0 counts, 8.5, true, "8" and NaN do not."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value, ok = int(value), True
    if not ok or value < least:
        raise ValueError(f"{key} must be a whole number {least} or more{' ' + also if also else ''} "
                         f"(got {value!r})")
    return int(value)


def _jetpack(value: Any) -> dict[str, str]:
    """{JetPack release: TensorRT major.minor}, both as strings "6.1" (YAML reads 6.1 as a float, so either)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"jetpack must map a JetPack release to the TensorRT it ships, as \"6.1\": \"10.3\" "
                         f"(got {value!r})")
    out = {}
    for release, trt in value.items():
        r, t = str(release).strip(), str(trt).strip()
        if not _VERSION.fullmatch(r) or not _VERSION.fullmatch(t) or isinstance(trt, bool):
            raise ValueError(f"jetpack: {release!r}: {trt!r} is not a JetPack release and a TensorRT "
                             "major.minor version such as \"6.1\": \"10.3\"")
        out[r] = t
    return out


_VERSION = re.compile(r"\d+\.\d+")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


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


def device_refusal(spec: DeviceSpec, tensorrt: str | None = None, *, dla_core: int | None = None,
                   whose: str = "the plan's") -> str | None:
    """Why a plan cannot run on device `spec` (one line), or None: a TensorRT version none of the device's
    JetPack releases ships (so TensorRT 11 on a Jetson whose file does not list it), or a DLA core the board does
    not have. Pure: the version is the host's (`whose` says so in the line) or the one a plan was made for."""
    if tensorrt:
        found = re.match(r"\s*(\d+)\.(\d+)", str(tensorrt))
        have = f"{found.group(1)}.{found.group(2)}" if found else str(tensorrt)
        shipped = spec.tensorrt_versions
        if shipped and have not in shipped:
            releases = ", ".join(f"JetPack {r}: {v}" for r, v in spec.jetpack.items())
            return (f"{whose} TensorRT {tensorrt} is not one {spec.name} has: its JetPack releases ship TensorRT "
                    f"{', '.join(shipped)} ({releases}; its device file's jetpack key); use the TensorRT of the "
                    "board's JetPack")
    if dla_core is not None:
        if spec.dla_cores < 1:
            return (f"DLA core {dla_core} was asked for, but {spec.name} has no DLA (dla_cores: 0 in its device "
                    "file): drop dla_core")
        if not 0 <= int(dla_core) < spec.dla_cores:
            return (f"DLA core {dla_core} does not exist on {spec.name}: it has {spec.dla_cores} (cores 0-"
                    f"{spec.dla_cores - 1})")
    return None


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
