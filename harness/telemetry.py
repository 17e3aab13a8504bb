"""GPU telemetry from NVML (nvidia-ml-py, module `pynvml`): energy, clocks, temperature, throttling.

`GpuTelemetry.open(device)` finds the NVML handle of a torch CUDA device by UUID (so that
CUDA_VISIBLE_DEVICES is respected) and returns None where NVML cannot be used: every figure is then
null, never an error. No NVML call can fail a case: each query is guarded, and one that NVML refuses
gives a null column and a reason (`telemetry_reason`). Energy is NVML's total-energy counter read
before and after the energy phase (the timed call, back to back). A `Sampler` polls clocks,
temperature and clock-event reasons on a thread during that phase only, never in the timed rounds
(a reading on another thread can delay a launch); `summarize` reduces the samples to the row's
columns.
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
    """One reading; a field is None where NVML could not give it (the reason is kept beside)."""

    sm_clock_mhz: int | None
    temperature_c: int | None
    event_reasons: int | None  # bit mask of NVML clock-event reasons


def throttle_names(event_reasons: int) -> list[str]:
    return [name for bit, name in THROTTLE_REASONS.items() if event_reasons & bit]


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def summarize(samples: list[Sample], reasons: dict[str, str] | None = None) -> dict[str, Any]:
    """Columns of a case from its samples: a column is null where no sample holds its reading, and
    `telemetry_reason` says why (per query: "temperature: NVMLError_NotSupported: Not Supported")."""
    values = {name: [getattr(s, name) for s in samples if getattr(s, name) is not None]
              for name in ("sm_clock_mhz", "temperature_c", "event_reasons")}
    clocks, temperatures, events = values["sm_clock_mhz"], values["temperature_c"], values["event_reasons"]
    throttles = sorted({name for bits in events for name in throttle_names(bits)})
    return {
        "sm_clock_mhz_mean": sum(clocks) / len(clocks) if clocks else None,
        "temperature_c_max": max(temperatures) if temperatures else None,
        "throttled": bool(throttles) if events else None,
        "throttle_reasons": ",".join(throttles) if events else None,
        "telemetry_reason": "; ".join(f"{k}: {v}" for k, v in sorted((reasons or {}).items())) or None,
    }


class Sampler:
    """Calls `read()` now, every `interval_s` on a thread, and once more on exit.

    A failure never reaches the case: a read that raises ends the sampling, and `reasons["sampler"]`
    says why. Use it around untimed work only (a reading on another thread can delay a launch)."""

    def __init__(self, read: Callable[[], Sample] | None, interval_s: float = SAMPLE_INTERVAL_S,
                 reasons: dict[str, str] | None = None):
        self.read, self.interval_s = read, interval_s
        self.samples: list[Sample] = []
        self.reasons = reasons if reasons is not None else {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _take(self) -> bool:
        try:
            self.samples.append(self.read())
            return True
        except Exception as e:  # telemetry must not fail a case
            self.reasons["sampler"] = f"sampling stopped: {one_line(e)}"
            return False

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s) and self._take():
            pass

    def __enter__(self) -> Sampler:
        if self.read is not None and self._take():
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
            self._take()


class GpuTelemetry:
    """NVML's view of one CUDA device. Every NVML call is guarded: a query that fails gives None, and
    `reasons` keeps why (a query NVML does not support is not asked again)."""

    def __init__(self, nvml, handle):
        self.nvml, self.handle = nvml, handle
        self.reasons: dict[str, str] = {}

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
            cls._shutdown(pynvml)
            return None

    @staticmethod
    def _shutdown(nvml) -> None:
        try:
            nvml.nvmlShutdown()
        except Exception:  # nothing to do about it, nothing the case needs
            pass

    def close(self) -> None:
        self._shutdown(self.nvml)

    def query(self, name: str, call: Callable[[], Any]) -> Any:
        """call() or None; a failure is kept in `reasons[name]`, never raised."""
        if self.reasons.get(name, "").startswith(UNSUPPORTED):
            return None
        try:
            return call()
        except Exception as e:  # NVMLError_* of any kind, or a missing function
            unsupported = type(e).__name__ in ("NVMLError_NotSupported", "NVMLError_FunctionNotFound")
            self.reasons[name] = (UNSUPPORTED if unsupported else "") + one_line(e)
            return None

    def _event_reasons(self) -> int:
        read = getattr(self.nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
            self.nvml.nvmlDeviceGetCurrentClocksThrottleReasons
        return int(read(self.handle))

    def sample(self) -> Sample:
        nvml, handle = self.nvml, self.handle
        clock = lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM)  # noqa: E731
        temperature = lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)  # noqa: E731
        return Sample(sm_clock_mhz=self.query("sm_clock", clock),
                      temperature_c=self.query("temperature", temperature),
                      event_reasons=self.query("clock_event_reasons", self._event_reasons))

    def energy_mj(self) -> int | None:
        """Total energy since the driver loaded, in millijoules (None where the GPU lacks the counter)."""
        return self.query("energy", lambda: int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)))

    def memory(self) -> tuple[int | None, int | None]:
        """(used, total) device memory in bytes, every process included (None, None where unknown)."""
        info = self.query("memory", lambda: self.nvml.nvmlDeviceGetMemoryInfo(self.handle))
        return (int(info.used), int(info.total)) if info is not None else (None, None)


UNSUPPORTED = "unsupported: "


def sampler(gpu: GpuTelemetry | None) -> Sampler:
    """The Sampler of a device (none: no readings, null columns)."""
    return Sampler(gpu.sample, reasons=gpu.reasons) if gpu else Sampler(None)
