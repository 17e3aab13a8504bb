"""NVML telemetry: the reduction of samples to row columns (CPU), real readings (CUDA)."""

import time

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
                                            "throttled": True, "throttle_reasons": "sw_thermal_slowdown"}
    calm = telemetry.summarize(samples[:1])
    assert calm["throttled"] is False and calm["throttle_reasons"] == ""


def test_no_samples_give_null_columns():
    with telemetry.Sampler(None) as sampler:
        pass
    assert sampler.samples == []
    assert set(telemetry.summarize([]).values()) == {None}


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


def test_no_telemetry_on_cpu():
    assert telemetry.GpuTelemetry.open("cpu") is None


@pytest.mark.cuda
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
