from __future__ import annotations

import dataclasses

import pytest

from edgeprune.errors import ConfigError
from edgeprune.backends import measurable_here
from edgeprune.targets.devices import (DEVICES_DIR, HostInfo, detect_host, device_refusal, list_devices,
                                       load_device_file, read_jetson_model, resolve_device)

EXPECTED = {"cpu", "x86-cuda", "jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin", "jetson-xavier-nx"}
JETSONS = sorted(d for d in EXPECTED if d.startswith("jetson-"))


def fake_host(jetson_model=None, **changes) -> HostInfo:
    base = dict(hostname="test", machine="aarch64" if jetson_model else "x86_64", cpu_model="test cpu", cpu_cores=2,
                memory_mb=8192, python="3.x", onnxruntime="1.0", ort_providers=("CPUExecutionProvider",),
                torch="2.x", cuda=None, gpu=None, tensorrt=None, trtexec=None, jetson_model=jetson_model)
    return HostInfo(**{**base, **changes})


@pytest.fixture(scope="module")
def host():
    return detect_host()


# -- device files ---------------------------------------------------------------------------------------------
def test_all_device_files_load():
    devices = list_devices()
    assert set(devices) == EXPECTED
    for name, spec in devices.items():
        assert (DEVICES_DIR / f"{name}.yaml").is_file()  # the name is the file name
        assert spec.channel_multiple >= 1
        assert spec.default_precision in spec.precisions
        assert spec.kind in ("host", "jetson")
        assert spec.description
        assert isinstance(spec.precisions, tuple) and isinstance(spec.providers, tuple)
        assert spec.to_dict()["name"] == name


@pytest.mark.parametrize("name", JETSONS)
def test_jetson_files(name):
    spec = list_devices()[name]
    assert spec.kind == "jetson"
    assert spec.jetson_model
    assert spec.memory_mb and spec.memory_mb > 0
    assert spec.channel_multiple % 8 == 0  # tensor-core friendly


def test_jetson_model_strings_are_unambiguous():
    models = [list_devices()[n].jetson_model.lower() for n in JETSONS]
    for i, a in enumerate(models):
        for j, b in enumerate(models):
            if i != j:
                assert a not in b, (a, b)  # otherwise detection order would decide between two devices


def test_resolve_by_name():
    for name in EXPECTED:
        assert resolve_device(name).name == name


def test_resolve_by_path(tmp_path):
    spec = resolve_device(str(DEVICES_DIR / "cpu.yaml"))
    assert spec == list_devices()["cpu"]
    custom = tmp_path / "mine.yml"
    custom.write_text((DEVICES_DIR / "cpu.yaml").read_text().replace("name: cpu", "name: mine")
                      .replace("channel_multiple: 4", "channel_multiple: 16"))
    spec = resolve_device(str(custom))
    assert spec.name == "mine" and spec.channel_multiple == 16


def test_unknown_device_lists_known_ones():
    with pytest.raises(ConfigError) as info:
        resolve_device("raspberry-pi")
    msg = info.value.message
    assert "raspberry-pi" in msg
    for name in EXPECTED:
        assert name in msg


@pytest.mark.parametrize("text, fragment", [
    ("name: broken\n", "invalid"),  # required keys missing
    ("name: x\ndescription: d\nkind: host\nrunner: onnxruntime\nprecisions: [fp32]\ndefault_precision: fp32\n"
     "channel_multiple: 4\nbogus_key: 1\n", "unknown key bogus_key"),
    ("name: x\ndescription: d\nkind: host\nrunner: onnxruntime\nprecisions: [fp32]\ndefault_precision: fp32\n"
     "channel_multiple: 0\n", "channel_multiple"),
    ("name: [unclosed\n", "invalid"),
])
def test_invalid_device_file(tmp_path, text, fragment):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        load_device_file(p)


@pytest.mark.parametrize("text", ["", "- cpu\n- gpu\n", "just text\n"])
def test_device_file_not_a_mapping(tmp_path, text):
    p = tmp_path / "odd.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError):
        load_device_file(p)


def test_missing_device_file(tmp_path):
    with pytest.raises(ConfigError, match="invalid"):
        resolve_device(str(tmp_path / "nope.yaml"))


def test_list_devices_of_another_directory(tmp_path):
    (tmp_path / "only.yaml").write_text((DEVICES_DIR / "cpu.yaml").read_text().replace("name: cpu", "name: only"))
    assert set(list_devices(tmp_path)) == {"only"}


# -- 'jetson' ---------------------------------------------------------------------------------------------------
def test_jetson_on_non_jetson_host():
    with pytest.raises(ConfigError) as info:
        resolve_device("jetson", host=fake_host(None))
    assert "Jetson host" in info.value.message
    assert "jetson-orin-nano" in info.value.message  # suggests naming a device instead


@pytest.mark.parametrize("model, expected", [
    ("NVIDIA Jetson AGX Orin Developer Kit", "jetson-agx-orin"),
    ("NVIDIA Jetson Orin Nano Developer Kit", "jetson-orin-nano"),
    ("NVIDIA Jetson Orin NX Engineering Reference Developer Kit", "jetson-orin-nx"),
    ("NVIDIA Jetson Xavier NX Developer Kit", "jetson-xavier-nx"),
    ("nvidia jetson orin nano developer kit super", "jetson-orin-nano"),
])
def test_jetson_resolves_from_host_model(model, expected):
    assert resolve_device("jetson", host=fake_host(model)).name == expected


def test_jetson_unknown_model():
    with pytest.raises(ConfigError, match="Jetson Nano 2GB"):
        resolve_device("jetson", host=fake_host("NVIDIA Jetson Nano 2GB Developer Kit"))


def test_jetson_on_this_host_matches_detection(host):
    if host.jetson_model:
        pytest.skip("this host is a Jetson")
    with pytest.raises(ConfigError):
        resolve_device("jetson")


# -- measurable_here ----------------------------------------------------------------------------------------------
def test_cpu_measurable_here(host):
    assert host.onnxruntime and "CPUExecutionProvider" in host.ort_providers
    assert measurable_here(list_devices()["cpu"], host) is None


@pytest.mark.parametrize("name", JETSONS)
def test_jetson_not_measurable_here(host, name):
    if host.jetson_model:
        pytest.skip("this host is a Jetson")
    why = measurable_here(list_devices()[name], host)
    assert isinstance(why, str) and why
    assert "not a Jetson" in why and name in why


def test_measurable_on_fake_jetson():
    nano = list_devices()["jetson-orin-nano"]
    agx_host = fake_host("NVIDIA Jetson AGX Orin Developer Kit")
    assert "not a jetson-orin-nano" in measurable_here(nano, agx_host)
    nano_host = fake_host("NVIDIA Jetson Orin Nano Developer Kit")
    assert "TensorRT" in measurable_here(nano, nano_host)  # right board, no TensorRT
    assert measurable_here(nano, dataclasses.replace(nano_host, tensorrt="10.3")) is None
    assert measurable_here(nano, dataclasses.replace(nano_host, trtexec="/usr/src/tensorrt/bin/trtexec")) is None


def test_measurable_onnxruntime_needs_providers():
    cpu = list_devices()["cpu"]
    assert measurable_here(cpu, fake_host()) is None
    assert "not installed" in measurable_here(cpu, fake_host(onnxruntime=None, ort_providers=()))
    assert "CPUExecutionProvider" in measurable_here(cpu, fake_host(ort_providers=("CUDAExecutionProvider",)))


def test_host_detection(host):
    assert host.cpu_cores >= 1
    assert host.python and host.torch
    assert host.to_dict()["hostname"] == host.hostname


# -- read_jetson_model ----------------------------------------------------------------------------------------
def test_read_jetson_model(tmp_path):
    p = tmp_path / "model"
    p.write_bytes(b"NVIDIA Jetson Orin Nano Developer Kit\x00")
    assert read_jetson_model(p) == "NVIDIA Jetson Orin Nano Developer Kit"
    assert resolve_device("jetson", host=fake_host(read_jetson_model(p))).name == "jetson-orin-nano"


def test_read_jetson_model_other_board(tmp_path):
    p = tmp_path / "model"
    p.write_bytes(b"Raspberry Pi 4 Model B Rev 1.4\x00")
    assert read_jetson_model(p) is None


def test_read_jetson_model_missing(tmp_path):
    assert read_jetson_model(tmp_path / "absent") is None


@pytest.mark.parametrize("flags, expected", [
    ("fpu sse2 avx avx2 avx512f avx512bw", 16),
    ("fpu sse2 avx avx2 fma", 8),
    ("fpu sse2", 8),
])
def test_host_channel_multiple_follows_simd_width(flags, expected):
    from edgeprune.targets.devices import host_channel_multiple

    multiple, why = host_channel_multiple(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert multiple == expected
    assert why


def test_cpu_device_resolves_auto_multiple_to_a_number():
    spec = list_devices()["cpu"]
    assert isinstance(spec.channel_multiple, int) and spec.channel_multiple in (8, 16)
    assert f"channel multiple {spec.channel_multiple}" in spec.description


# -- device files are untrusted input: every value checked, one line (issue 12 item 12, issue 15 item 5) ----------
HOST_FILE = ("name: x\ndescription: d\nkind: host\nrunner: onnxruntime\nprecisions: [fp32]\n"
             "default_precision: fp32\n")
JETSON_FILE = ("name: j\ndescription: d\nkind: jetson\njetson_model: Orin Nano\nrunner: tensorrt\n"
               "precisions: [fp16]\ndefault_precision: fp16\nchannel_multiple: 8\n")


@pytest.mark.parametrize("value", ["8.5", "0", "-8", "true", "'8'", "[8]", ".nan", ".inf", "eight"])
def test_channel_multiple_must_be_a_whole_number_of_at_least_one(tmp_path, value):
    p = tmp_path / "bad.yaml"
    p.write_text(HOST_FILE + f"channel_multiple: {value}\n")
    with pytest.raises(ConfigError) as err:
        load_device_file(p)
    assert "\n" not in err.value.message
    assert err.value.message.startswith(f"device file {p}: channel_multiple must be a whole number 1 or more")


@pytest.mark.parametrize("value, expected", [("16", 16), ("8.0", 8), ("1", 1)])
def test_channel_multiple_whole_numbers(tmp_path, value, expected):
    p = tmp_path / "ok.yaml"
    p.write_text(HOST_FILE + f"channel_multiple: {value}\n")
    spec = load_device_file(p)
    assert spec.channel_multiple == expected and type(spec.channel_multiple) is int


@pytest.mark.parametrize("extra, fragment", [
    ("dla_cores: -1\n", "dla_cores must be a whole number 0 or more"),
    ("dla_cores: 1.5\n", "dla_cores must be a whole number"),
    ("memory_mb: lots\n", "memory_mb must be a whole number"),
    ("kind2: host\nvalue: 1\n", "unknown keys kind2, value"),
    ("precisions: fp32\n", None),  # duplicate key: the last wins in YAML, then must be a list
    ("jetpack: 6.1\n", "jetpack must map a JetPack release"),
    ("jetpack: {'6.1': 'ten'}\n", "is not a JetPack release and a TensorRT major.minor"),
    ("jetpack: {'6.1': '10.3.0'}\n", "is not a JetPack release and a TensorRT major.minor"),
    ("!!python/object/apply:os.system ['true']\n", "invalid"),  # safe_load refuses Python tags
])
def test_device_file_values_are_checked(tmp_path, extra, fragment):
    p = tmp_path / "bad.yaml"
    p.write_text(HOST_FILE + "channel_multiple: 8\n" + extra)
    with pytest.raises(ConfigError) as err:
        load_device_file(p)
    assert "\n" not in err.value.message
    if fragment:
        assert fragment in err.value.message


def test_default_precision_must_be_one_of_the_precisions(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(HOST_FILE.replace("default_precision: fp32", "default_precision: int8") + "channel_multiple: 8\n")
    with pytest.raises(ConfigError, match="default_precision 'int8' is not one of its precisions"):
        load_device_file(p)


def test_a_jetson_file_must_say_what_tensorrt_its_jetpack_ships(tmp_path):
    p = tmp_path / "j.yaml"
    p.write_text(JETSON_FILE)
    with pytest.raises(ConfigError, match="must say which TensorRT each JetPack release ships"):
        load_device_file(p)
    p.write_text(JETSON_FILE + "jetpack:\n  6.1: 10.3\n  \"5.1\": \"8.5\"\n")  # unquoted YAML floats read too
    spec = load_device_file(p)
    assert spec.jetpack == {"6.1": "10.3", "5.1": "8.5"} and spec.tensorrt_versions == ("10.3", "8.5")


# -- what each board has: TensorRT per JetPack, DLA cores ----------------------------------------------------------
def test_jetson_files_say_which_tensorrt_each_jetpack_ships():
    d = list_devices()
    for name in ("jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin"):
        assert d[name].jetpack["6.1"] == d[name].jetpack["6.2"] == "10.3"
        assert d[name].jetpack["6.0"] == "8.6" and d[name].jetpack["5.1"] == "8.5"
    assert d["jetson-xavier-nx"].tensorrt_versions == ("8.5",)  # JetPack 5 is Xavier's last
    for name in ("jetson-orin-nano", "jetson-orin-nx", "jetson-xavier-nx"):
        assert not any(v.startswith("11.") for v in d[name].tensorrt_versions)
    assert d["cpu"].tensorrt_versions == () and d["x86-cuda"].tensorrt_versions == ()  # any TensorRT on a host


def test_dla_cores_per_board():
    d = list_devices()
    assert d["jetson-orin-nano"].dla_cores == 0
    assert d["jetson-agx-orin"].dla_cores == 2 and d["jetson-orin-nx"].dla_cores == 2
    assert d["x86-cuda"].dla_cores == 0 and d["cpu"].dla_cores == 0


@pytest.mark.parametrize("device, tensorrt, dla_core, fragment", [
    ("jetson-orin-nano", "11.4.0", None, "TensorRT 11.4.0 is not one jetson-orin-nano has"),
    ("jetson-orin-nx", "11.0.0.1", None, "is not one jetson-orin-nx has"),
    ("jetson-xavier-nx", "10.3.0", None, "ship TensorRT 8.5 (JetPack 5.1: 8.5"),
    ("jetson-orin-nano", "10.3.0.30", 0, "jetson-orin-nano has no DLA"),
    ("x86-cuda", "10.13.3.9", 0, "x86-cuda has no DLA"),
    ("jetson-orin-nx", "10.3.0", 2, "DLA core 2 does not exist on jetson-orin-nx: it has 2 (cores 0-1)"),
])
def test_a_plan_asking_a_device_for_what_it_lacks_is_refused(device, tensorrt, dla_core, fragment):
    why = device_refusal(list_devices()[device], tensorrt, dla_core=dla_core)
    assert why and fragment in why and "\n" not in why


@pytest.mark.parametrize("device, tensorrt, dla_core", [
    ("jetson-orin-nano", "10.3.0.30", None), ("jetson-orin-nano", "8.6.2.3", None),
    ("jetson-orin-nx", "10.3.0", 1), ("jetson-agx-orin", "8.5.2.2", 0), ("jetson-agx-orin", "11.4.1", None),
    ("x86-cuda", "11.4.0.106", None), ("x86-cuda", "8.6.1", None), ("cpu", None, None),
])
def test_what_a_device_has_is_not_refused(device, tensorrt, dla_core):
    assert device_refusal(list_devices()[device], tensorrt, dla_core=dla_core) is None


def test_a_jetson_host_with_a_tensorrt_its_jetpack_does_not_ship_cannot_measure():
    nano = list_devices()["jetson-orin-nano"]
    host = fake_host("NVIDIA Jetson Orin Nano Developer Kit", tensorrt="11.4.0.106")
    why = measurable_here(nano, host)
    assert why.startswith("this host's TensorRT 11.4.0.106 is not one jetson-orin-nano has")
    assert measurable_here(nano, dataclasses.replace(host, tensorrt="10.3.0.30")) is None
    assert measurable_here(list_devices()["x86-cuda"], fake_host(tensorrt="11.4.0.106")) is None


@pytest.mark.parametrize("version, options, fragment", [
    ("11.4.0.106", {}, "this host's TensorRT 11.4.0.106 is not one jetson-orin-nano has"),
    ("10.3.0.30", {"precision": "fp16", "dla_core": 0}, "jetson-orin-nano has no DLA"),
])
def test_build_engine_refuses_what_the_device_lacks_before_asking_tensorrt(tmp_path, monkeypatch, version, options,
                                                                           fragment):
    import sys
    import types

    from edgeprune.backends.trt.engine import build_engine
    from edgeprune.backends.trt.plan import BuildOptions

    asked = []

    class Tensorrt(types.ModuleType):  # any use beyond __version__ would be TensorRT being asked something
        def __getattr__(self, name):
            asked.append(name)
            raise AttributeError(name)

    fake = Tensorrt("tensorrt")
    fake.__version__ = version
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    engine = tmp_path / "model.engine"
    with pytest.raises(ConfigError) as err:
        build_engine(tmp_path / "model.onnx", engine, BuildOptions(**options),
                     device=list_devices()["jetson-orin-nano"])
    assert fragment in err.value.message
    assert asked == [] and list(tmp_path.iterdir()) == []


def test_device_specs_stay_hashable_with_their_jetpack_table():
    specs = list(list_devices().values())
    assert len(set(specs)) == len(specs)
