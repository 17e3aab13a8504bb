"""NVML telemetry: the reduction of samples to row columns (CPU), real readings (CUDA)."""

import time
from types import SimpleNamespace

import pynvml
import pytest
import torch

from harness import telemetry
from harness.telemetry import Sample


def test_throttle_bits_are_nvmls():
    assert telemetry.THROTTLE_REASONS == {
        pynvml.nvmlClocksEventReasonSwPowerCap: "sw_power_cap",
        pynvml.nvmlClocksEventReasonHwSlowdown: "hw_slowdown",
        pynvml.nvmlClocksEventReasonSwThermalSlowdown: "sw_thermal_slowdown",
        pynvml.nvmlClocksEventReasonHwThermalSlowdown: "hw_thermal_slowdown",
        pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown: "hw_power_brake_slowdown",
    }


def test_idle_and_application_clocks_are_not_throttling():
    benign = pynvml.nvmlClocksEventReasonGpuIdle | pynvml.nvmlClocksEventReasonApplicationsClocksSetting
    assert telemetry.throttle_names(benign) == []
    both = pynvml.nvmlClocksEventReasonSwPowerCap | pynvml.nvmlClocksEventReasonHwThermalSlowdown
    assert telemetry.throttle_names(both) == ["sw_power_cap", "hw_thermal_slowdown"]


def test_summary_flags_a_case_throttled_in_any_sample():
    samples = [Sample(1980, 60, 0), Sample(1500, 71, pynvml.nvmlClocksEventReasonSwThermalSlowdown),
               Sample(1740, 65, pynvml.nvmlClocksEventReasonGpuIdle)]
    assert telemetry.summarize(samples) == {"sm_clock_mhz_mean": 1740.0, "temperature_c_max": 71,
                                            "throttled": True, "throttle_reasons": "sw_thermal_slowdown",
                                            "telemetry_reason": None}
    calm = telemetry.summarize(samples[:1])
    assert calm["throttled"] is False and calm["throttle_reasons"] == "" and calm["telemetry_reason"] is None


def test_no_samples_give_null_columns():
    with telemetry.Sampler(None) as sampler:
        pass
    assert sampler.samples == []
    assert set(telemetry.summarize([]).values()) == {None}
    assert set(telemetry.summarize(telemetry.sampler(None).samples).values()) == {None}


def test_sampler_reads_on_entry_on_exit_and_in_between():
    readings = iter(range(10_000))
    read = lambda: Sample(next(readings), 50, 0)  # noqa: E731
    with telemetry.Sampler(read, interval_s=0.001) as sampler:
        for _ in range(5000):  # wait (at most 5 s) for readings of the thread's own
            if len(sampler.samples) >= 3:
                break
            time.sleep(0.001)
    assert len(sampler.samples) >= 4  # entry, >= 2 from the thread, exit
    assert [s.sm_clock_mhz for s in sampler.samples] == list(range(len(sampler.samples)))
    assert not sampler._thread.is_alive()


# --- NVML failures never fail a case: a fake pynvml raising each of the real NVMLError classes ---------

ERROR_CODES = sorted({getattr(pynvml, name) for name in dir(pynvml) if name.startswith("NVML_ERROR_")})


class FakeNvml:
    """The pynvml calls GpuTelemetry makes, with its constants and its real exception classes. `fail`
    maps a function name to the NVML error code it raises."""

    NVML_CLOCK_SM, NVML_TEMPERATURE_GPU = pynvml.NVML_CLOCK_SM, pynvml.NVML_TEMPERATURE_GPU
    NVMLError = pynvml.NVMLError

    def __init__(self, fail=None):
        self.fail, self.calls = dict(fail or {}), []

    def _answer(self, name, value):
        self.calls.append(name)
        if name in self.fail:
            raise pynvml.NVMLError(self.fail[name])  # maps to the NVMLError_* subclass, as pynvml does
        return value

    def nvmlDeviceGetClockInfo(self, handle, clock):
        assert clock == pynvml.NVML_CLOCK_SM
        return self._answer("nvmlDeviceGetClockInfo", 1980)

    def nvmlDeviceGetTemperature(self, handle, sensor):
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return self._answer("nvmlDeviceGetTemperature", 61)

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle):
        return self._answer("nvmlDeviceGetCurrentClocksEventReasons", pynvml.nvmlClocksEventReasonSwPowerCap)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        return self._answer("nvmlDeviceGetTotalEnergyConsumption", 123_456)

    def nvmlDeviceGetMemoryInfo(self, handle):
        return self._answer("nvmlDeviceGetMemoryInfo", SimpleNamespace(used=5, total=80))

    def nvmlShutdown(self):
        return self._answer("nvmlShutdown", None)


QUERIES = {"nvmlDeviceGetClockInfo": ("sm_clock", "sm_clock_mhz_mean"),
           "nvmlDeviceGetTemperature": ("temperature", "temperature_c_max"),
           "nvmlDeviceGetCurrentClocksEventReasons": ("clock_event_reasons", "throttled")}
# The codes after which a query is not asked again (the GPU or driver lacks it); others are retried.
NOT_ASKED_AGAIN = {pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_FUNCTION_NOT_FOUND}


def test_fake_nvml_raises_the_real_classes():
    assert type(pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)) is pynvml.NVMLError_NotSupported
    assert len(ERROR_CODES) > 25


def sample_columns(nvml: FakeNvml) -> dict:
    """The row columns of one sampling window (a reading on entry, any from the thread, one on exit)."""
    gpu = telemetry.GpuTelemetry(nvml, handle=object())
    with telemetry.sampler(gpu) as sampler:
        pass
    return telemetry.summarize(sampler.samples, sampler.reasons)


@pytest.mark.parametrize("code", ERROR_CODES, ids=lambda code: type(pynvml.NVMLError(code)).__name__)
def test_an_nvml_error_never_fails_a_case_and_leaves_a_null_and_its_reason(code):
    """Each NVML query failing with this code, in turn: its column is null, `telemetry_reason` names the
    query and the error class, the other columns are read, and only an unsupported query is not asked
    again. Energy, memory and shutdown failing give nulls and reasons, never an exception."""
    error = type(pynvml.NVMLError(code)).__name__
    for function, (query, column) in QUERIES.items():
        nvml = FakeNvml({function: code})
        columns = sample_columns(nvml)
        assert columns[column] is None, function
        assert f"{query}: " in columns["telemetry_reason"] and error in columns["telemetry_reason"]
        assert all(columns[c] is not None for f, (_, c) in QUERIES.items() if f != function), function
        if code in NOT_ASKED_AGAIN:
            assert nvml.calls.count(function) == 1 and "unsupported" in columns["telemetry_reason"]
        else:
            assert nvml.calls.count(function) >= 2 and "unsupported" not in columns["telemetry_reason"]

    fail = dict.fromkeys(["nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetMemoryInfo", "nvmlShutdown"],
                         code)
    gpu = telemetry.GpuTelemetry(FakeNvml(fail), handle=object())
    assert gpu.energy_mj() is None and gpu.memory() == (None, None)
    gpu.close()
    assert set(gpu.reasons) == {"energy", "memory"} and all(error in r for r in gpu.reasons.values())


def test_healthy_nvml_gives_every_column_and_no_reason():
    """The fake without failures: what the failures above take away is there."""
    nvml = FakeNvml()
    columns = sample_columns(nvml)
    assert columns["sm_clock_mhz_mean"] == 1980 and columns["temperature_c_max"] == 61
    assert columns["throttled"] is True and columns["telemetry_reason"] is None
    assert all(nvml.calls.count(function) >= 2 for function in QUERIES)
    gpu = telemetry.GpuTelemetry(FakeNvml(), handle=object())
    assert gpu.energy_mj() == 123_456 and gpu.memory() == (5, 80) and gpu.reasons == {}


def test_a_sampling_thread_that_fails_is_recorded_and_the_case_goes_on():
    readings = iter([Sample(1900, 60, 0), Sample(1800, 62, 0)])

    def read():
        sample = next(readings, None)
        if sample is None:
            raise RuntimeError("device fell off the bus")
        return sample

    with telemetry.Sampler(read, interval_s=0.001) as sampler:
        for _ in range(5000):
            if "sampler" in sampler.reasons:
                break
            time.sleep(0.001)
    assert [s.sm_clock_mhz for s in sampler.samples] == [1900, 1800]
    columns = telemetry.summarize(sampler.samples, sampler.reasons)
    assert columns["sm_clock_mhz_mean"] == 1850
    assert columns["telemetry_reason"] == "sampler: sampling stopped: RuntimeError: device fell off the bus"


def test_throughput_never_samples_during_the_timed_rounds(monkeypatch):
    """The sampler's window and the timed rounds do not overlap (a reading on a thread can delay a
    launch): checked on the CPU with a fake device reading."""
    from harness import timing
    from harness.context import RunContext
    from suites.throughput import measuring
    from tests.test_throughput import case

    events = []

    class Recorder(telemetry.Sampler):
        def __enter__(self):
            events.append("sampling")
            return super().__enter__()

        def __exit__(self, *exc):
            events.append("sampling done")
            return super().__exit__(*exc)

    context = RunContext()
    measuring.peak_matmul_tflops("cpu", "float32", context)  # once per worker, by the same timing engine
    real_rounds = timing.time_rounds
    monkeypatch.setattr(telemetry, "sampler", lambda gpu: Recorder(lambda: Sample(1, 2, 0)))
    monkeypatch.setattr(timing, "time_rounds", lambda *a: (events.append("timed"), real_rounds(*a))[1])
    row = measuring.run_case(case(), context)
    assert events == ["timed", "sampling", "sampling done"]
    assert row["sm_clock_mhz_mean"] == 1 and row["telemetry_reason"] is None


def test_no_telemetry_on_cpu():
    assert telemetry.GpuTelemetry.open("cpu") is None


@pytest.mark.cuda
@pytest.mark.smoke
def test_nvml_readings_of_the_device_in_use():
    gpu = telemetry.GpuTelemetry.open("cuda")
    assert gpu is not None
    try:
        before = gpu.energy_mj()
        with telemetry.Sampler(gpu.sample) as sampler:
            a = torch.randn(4096, 4096, device="cuda")
            for _ in range(200):
                a = a @ a.T / 4096
            torch.cuda.synchronize()
        after = gpu.energy_mj()
        columns = telemetry.summarize(sampler.samples)
        assert columns["sm_clock_mhz_mean"] > 0 and 0 < columns["temperature_c_max"] < 120
        assert isinstance(columns["throttled"], bool)
        assert before is None or after >= before
        used, total = gpu.memory()
        assert 0 < used <= total
        assert total == pytest.approx(torch.cuda.get_device_properties(0).total_memory, rel=0.05)
    finally:
        gpu.close()
