"""What NVML answers on this GPU: each query once, before and after a short burst of work."""
import time

import pynvml as n
import torch

n.nvmlInit()
h = n.nvmlDeviceGetHandleByIndex(0)


def q(name, *args):
    try:
        return getattr(n, name)(h, *args)
    except Exception as e:  # noqa: BLE001
        return f"ERR {type(e).__name__}: {e}"


def dump(tag):
    print("==", tag)
    for name, args in [
        ("nvmlDeviceGetName", ()),
        ("nvmlDeviceGetTotalEnergyConsumption", ()),
        ("nvmlDeviceGetPowerUsage", ()),
        ("nvmlDeviceGetEnforcedPowerLimit", ()),
        ("nvmlDeviceGetPowerManagementLimit", ()),
        ("nvmlDeviceGetPowerManagementDefaultLimit", ()),
        ("nvmlDeviceGetClockInfo", (n.NVML_CLOCK_SM,)),
        ("nvmlDeviceGetClockInfo", (n.NVML_CLOCK_MEM,)),
        ("nvmlDeviceGetMaxClockInfo", (n.NVML_CLOCK_SM,)),
        ("nvmlDeviceGetMaxClockInfo", (n.NVML_CLOCK_MEM,)),
        ("nvmlDeviceGetApplicationsClock", (n.NVML_CLOCK_SM,)),
        ("nvmlDeviceGetApplicationsClock", (n.NVML_CLOCK_MEM,)),
        ("nvmlDeviceGetDefaultApplicationsClock", (n.NVML_CLOCK_SM,)),
        ("nvmlDeviceGetDefaultApplicationsClock", (n.NVML_CLOCK_MEM,)),
        ("nvmlDeviceGetClock", (n.NVML_CLOCK_SM, n.NVML_CLOCK_ID_CURRENT)),
        ("nvmlDeviceGetClock", (n.NVML_CLOCK_SM, n.NVML_CLOCK_ID_APP_CLOCK_TARGET)),
        ("nvmlDeviceGetClock", (n.NVML_CLOCK_SM, n.NVML_CLOCK_ID_APP_CLOCK_DEFAULT)),
        ("nvmlDeviceGetClock", (n.NVML_CLOCK_SM, n.NVML_CLOCK_ID_CUSTOMER_BOOST_MAX)),
        ("nvmlDeviceGetTemperature", (n.NVML_TEMPERATURE_GPU,)),
        ("nvmlDeviceGetUtilizationRates", ()),
        ("nvmlDeviceGetCurrentClocksEventReasons", ()),
        ("nvmlDeviceGetSupportedClocksEventReasons", ()),
        ("nvmlDeviceGetPersistenceMode", ()),
        ("nvmlDeviceGetMemoryInfo", ()),
        ("nvmlDeviceGetPerformanceState", ()),
        ("nvmlDeviceGetAutoBoostedClocksEnabled", ()),
        ("nvmlDeviceGetClockOffsets", ()),
        ("nvmlDeviceGetMinMaxClockOfPState", (0,)),
        ("nvmlDeviceGetComputeRunningProcesses", ()),
    ]:
        v = q(name, *args)
        if hasattr(v, "__dict__") or hasattr(v, "_fields_"):
            try:
                v = {f[0]: getattr(v, f[0]) for f in v._fields_}
            except Exception:  # noqa: BLE001
                pass
        print(name, args, "->", v)


dump("idle")
x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
torch.cuda.synchronize()
t = time.perf_counter()
while time.perf_counter() - t < 3:
    x @ x
dump("busy (queued)")
torch.cuda.synchronize()
print("torch reserved", torch.cuda.memory_reserved(), "allocated", torch.cuda.memory_allocated())
info = n.nvmlDeviceGetMemoryInfo(h)
print("nvml used", info.used, "context+other = used - reserved =", info.used - torch.cuda.memory_reserved())
print("mem_get_info", torch.cuda.mem_get_info())
print("reason constants", {k: getattr(n, k) for k in dir(n) if k.startswith("nvmlClocksEventReason")})
