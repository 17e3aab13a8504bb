"""GPU telemetry from NVML (nvidia-ml-py, module `pynvml`): energy, clocks, temperature, throttling.

`GpuTelemetry.open(device)` finds the NVML handle of a torch CUDA device by UUID (so that
CUDA_VISIBLE_DEVICES is respected) and returns None where NVML cannot be used: every figure is then
null, never an error. A `Sampler` polls clocks, temperature and clock-event reasons on a thread while
a case runs; `summarize` reduces the samples to the row's columns.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

# Bits of nvmlDeviceGetCurrentClocksEventReasons (formerly ...ClocksThrottleReasons) that mean the
# clocks were held below what the workload asked for. Idle, application clocks, sync boost and the
# display clock are not throttling.
THROTTLE_REASONS = {
    0x04: "sw_power_cap",
    0x08: "hw_slowdown",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
}
SAMPLE_INTERVAL_S = 0.01


@dataclass(frozen=True)
class Sample:
    sm_clock_mhz: int
    temperature_c: int
    event_reasons: int  # bit mask of NVML clock-event reasons


def throttle_names(event_reasons: int) -> list[str]:
    return [name for bit, name in THROTTLE_REASONS.items() if event_reasons & bit]


def summarize(samples: list[Sample]) -> dict[str, Any]:
    """Columns of a case from its samples; nulls when there are none (no NVML)."""
    if not samples:
        return {"sm_clock_mhz_mean": None, "temperature_c_max": None, "throttled": None,
                "throttle_reasons": None}
    reasons = sorted({name for s in samples for name in throttle_names(s.event_reasons)})
    return {
        "sm_clock_mhz_mean": sum(s.sm_clock_mhz for s in samples) / len(samples),
        "temperature_c_max": max(s.temperature_c for s in samples),
        "throttled": bool(reasons),
        "throttle_reasons": ",".join(reasons),
    }


class Sampler:
    """Calls `read()` now, every `interval_s` on a thread, and once more on exit."""

    def __init__(self, read: Callable[[], Sample] | None, interval_s: float = SAMPLE_INTERVAL_S):
        self.read, self.interval_s = read, interval_s
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.samples.append(self.read())

    def __enter__(self) -> Sampler:
        if self.read is not None:
            self.samples.append(self.read())
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.read is not None:
            self._stop.set()
            self._thread.join()
            self.samples.append(self.read())


class GpuTelemetry:
    """NVML's view of one CUDA device."""

    def __init__(self, nvml, handle):
        self.nvml, self.handle = nvml, handle

    @classmethod
    def open(cls, device: str) -> GpuTelemetry | None:
        if torch.device(device).type != "cuda" or not torch.cuda.is_available():
            return None
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception:  # no NVML library, no driver access: telemetry is optional
            return None
        try:
            uuid = torch.cuda.get_device_properties(torch.device(device)).uuid
            return cls(pynvml, pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}"))
        except Exception:  # e.g. a MIG slice, whose NVML UUID differs
            pynvml.nvmlShutdown()
            return None

    def close(self) -> None:
        self.nvml.nvmlShutdown()

    def _event_reasons(self) -> int:
        read = getattr(self.nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
            self.nvml.nvmlDeviceGetCurrentClocksThrottleReasons
        return int(read(self.handle))

    def sample(self) -> Sample:
        return Sample(
            sm_clock_mhz=self.nvml.nvmlDeviceGetClockInfo(self.handle, self.nvml.NVML_CLOCK_SM),
            temperature_c=self.nvml.nvmlDeviceGetTemperature(self.handle, self.nvml.NVML_TEMPERATURE_GPU),
            event_reasons=self._event_reasons(),
        )

    def energy_mj(self) -> int | None:
        """Total energy since the driver loaded, in millijoules (None where the GPU lacks the counter)."""
        try:
            return int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))
        except self.nvml.NVMLError:
            return None

    def memory(self) -> tuple[int, int]:
        """(used, total) device memory in bytes, every process included."""
        info = self.nvml.nvmlDeviceGetMemoryInfo(self.handle)
        return int(info.used), int(info.total)
