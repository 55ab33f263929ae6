"""The machine serving a local, command or container endpoint: CPU, memory, GPUs, Neuron.

Each source is optional and imported lazily: ``psutil`` (CPU and memory), ``pynvml`` from
``nvidia-ml-py`` (NVIDIA GPUs through NVML), ``neuron-monitor`` on PATH (AWS Neuron devices).
``open_host_sources`` returns the ones that work here and, for the others, why not; the
report names those. Each ``sample()`` returns signal → value and never raises for a device
that stopped answering (that sample just lacks it).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Mapping
from typing import Any, Protocol


class HostSource(Protocol):
    name: str

    def sample(self) -> dict[str, float]: ...

    def close(self) -> None: ...


class PsutilSource:
    """System-wide CPU % (since the previous sample) and memory % of this machine."""

    name = "host"

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        psutil.cpu_percent(None)  # the first call only starts the interval

    def sample(self) -> dict[str, float]:
        return {"host_cpu_percent": float(self._psutil.cpu_percent(None)),
                "host_memory_percent": float(self._psutil.virtual_memory().percent)}

    def close(self) -> None:
        pass


class NvmlSource:
    """NVIDIA GPUs through NVML: utilisation and memory, the mean over the GPUs, and each GPU."""

    name = "nvml"

    def __init__(self) -> None:
        import pynvml

        pynvml.nvmlInit()
        self._nvml = pynvml
        count = pynvml.nvmlDeviceGetCount()
        if count < 1:
            pynvml.nvmlShutdown()
            raise RuntimeError("NVML sees no GPU")
        self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]

    def sample(self) -> dict[str, float]:
        nvml = self._nvml
        out: dict[str, float] = {}
        utilization, memory = [], []
        for index, handle in enumerate(self._handles):
            try:
                rates = nvml.nvmlDeviceGetUtilizationRates(handle)
                info = nvml.nvmlDeviceGetMemoryInfo(handle)
            except nvml.NVMLError:
                continue  # a GPU that stops answering leaves a gap, not an error
            used = 100.0 * float(info.used) / float(info.total) if info.total else 0.0
            out[f"gpu{index}_utilization"] = float(rates.gpu)
            out[f"gpu{index}_memory_percent"] = used
            utilization.append(float(rates.gpu))
            memory.append(used)
        if utilization:
            out["gpu_utilization"] = sum(utilization) / len(utilization)
            out["gpu_memory_percent"] = sum(memory) / len(memory)
        return out

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError:
            pass


def neuron_utilization(report: Mapping[str, Any]) -> dict[str, float]:
    """NeuronCore utilisation (%) from one neuron-monitor report: the mean over the cores in
    use by every Neuron runtime on the machine."""
    cores: list[float] = []
    for runtime in report.get("neuron_runtime_data") or []:
        counters = ((runtime.get("report") or {}).get("neuroncore_counters") or {})
        for core in (counters.get("neuroncores_in_use") or {}).values():
            value = core.get("neuroncore_utilization") if isinstance(core, dict) else None
            if isinstance(value, (int, float)):
                cores.append(float(value))
    return {"neuron_utilization": sum(cores) / len(cores)} if cores else {}


class NeuronMonitorSource:
    """``neuron-monitor`` streams one JSON report per period; the latest one is sampled."""

    name = "neuron"

    def __init__(self, executable: str, period_s: float) -> None:
        config = {"period": f"{max(1, round(period_s))}s",
                  "neuron_runtimes": [{"tag_filter": ".*", "metrics": [{"type": "neuroncore_counters"}]}]}
        handle, self._config_path = tempfile.mkstemp(prefix="fmbench-neuron-", suffix=".json")
        with os.fdopen(handle, "w") as out:
            json.dump(config, out)
        self._process = subprocess.Popen([executable, "-c", self._config_path],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._latest: queue.Queue[dict[str, float]] = queue.Queue(maxsize=1)
        self._reader = threading.Thread(target=self._read, daemon=True, name="fmbench-neuron")
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            try:
                values = neuron_utilization(json.loads(line))
            except (ValueError, AttributeError):
                continue
            if not values:
                continue
            try:
                self._latest.get_nowait()  # keep only the newest report
            except queue.Empty:
                pass
            self._latest.put_nowait(values)

    def sample(self) -> dict[str, float]:
        try:
            return self._latest.get_nowait()
        except queue.Empty:
            return {}

    def close(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(5)
        except subprocess.TimeoutExpired:
            self._process.kill()
        try:
            os.unlink(self._config_path)
        except OSError:
            pass


def open_host_sources(period_s: float) -> tuple[list[HostSource], dict[str, str]]:
    """The host sources that work on this machine, and why the others do not."""
    sources: list[HostSource] = []
    missing: dict[str, str] = {}
    try:
        sources.append(PsutilSource())
    except ImportError:
        missing["host"] = "psutil is not installed (pip install 'pytest-fmbench[telemetry]')"
    try:
        sources.append(NvmlSource())
    except ImportError:
        missing["nvml"] = "nvidia-ml-py is not installed (pip install 'pytest-fmbench[telemetry]')"
    except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound, no driver, no GPU
        missing["nvml"] = f"no NVIDIA GPU through NVML ({type(exc).__name__}: {exc})"
    executable = shutil.which("neuron-monitor")
    if executable is None:
        missing["neuron"] = "neuron-monitor is not on PATH"
    else:
        try:
            sources.append(NeuronMonitorSource(executable, period_s))
        except OSError as exc:
            missing["neuron"] = f"neuron-monitor did not start ({exc})"
    return sources, missing
