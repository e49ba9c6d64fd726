"""Compute precision: ``auto`` picks bfloat16 mixed precision where the hardware runs it fast, float32 elsewhere.

Measured (DESIGN.md, issue 12): on a Zen3 CPU without AVX512_BF16, mixed bfloat16 was 4-14x *slower* than float32;
on CPUs with AVX512_BF16 or AMX-BF16 (oneDNN uses them), SSD-ResNet34 trained 1.6x faster in bfloat16. So ``auto``
detects the instruction set (never guesses): a GPU of compute capability >= 8.0, or a CPU whose flags list
``amx_bf16`` or ``avx512_bf16`` -> ``bf16``; anything else -> ``fp32``. Variables, optimizer state, losses, box
decoding and post-processing stay float32 in every mode (the tasks cast model outputs to float32).
"""
from __future__ import annotations

import os
import platform

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16")


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set:
    """The CPU feature flags the kernel reports (empty where /proc/cpuinfo does not exist)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_summary() -> dict:
    """CPU model, core count and the ISA flags that decide convolution speed, for benchmark records."""
    flags = cpu_flags()
    return {"cpu_model": cpu_model(), "cpus": os.cpu_count(), **{f: f in flags for f in ISA_FLAGS}}


def _gpu_bf16():
    """(True, reason) when a visible GPU runs bfloat16 natively (compute capability >= 8.0)."""
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        cc = details.get("compute_capability")
        name = details.get("device_name", gpu.name)
        if cc and tuple(cc) >= (8, 0):
            return True, f"GPU {name} (compute capability {cc[0]}.{cc[1]}) runs bfloat16 natively"
        return False, f"GPU {name} (compute capability {cc}) has no fast bfloat16"
    return None, ""


def resolve_precision(requested: str, flags: set | None = None, check_gpu: bool = True) -> tuple[str, str]:
    """(fp32 | bf16 | fp16, why) for a requested precision (fp32 | bf16 | fp16 | auto)."""
    if requested != "auto":
        return requested, f"--precision={requested} was asked for"
    if check_gpu:
        fast, reason = _gpu_bf16()
        if fast is not None:
            return ("bf16" if fast else "fp32"), reason
    flags = cpu_flags() if flags is None else flags
    found = [f for f in BF16_CPU_FLAGS if f in flags]
    if found:
        return "bf16", f"the CPU has {' and '.join(found)} (oneDNN runs bfloat16 convolutions natively)"
    return "fp32", "the CPU has neither amx_bf16 nor avx512_bf16 (bfloat16 would be emulated and slow)"
