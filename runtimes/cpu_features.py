"""What this CPU computes natively, read at run time (never assumed): the matrix/dot-product extensions that decide
which precision is fastest on it.

    features = cpu_features()      # CpuFeatures(amx_bf16=False, amx_int8=False, avx512_bf16=True, vnni=True, ...)
    features.describe()            # "AMD EPYC: AVX512-BF16, AVX512-VNNI (no AMX)"

Linux reads ``/proc/cpuinfo`` flags; elsewhere every feature reads as absent (fp32 everywhere: slower, never wrong).
``M2F_CPU_FLAGS`` (a space-separated flag list) replaces the machine's own flags, for tests and for planning a
deployment on another CPU.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path

# flag (a CpuFeatures field) -> how it is written for people
FEATURE_NAMES: dict[str, str] = {
    "amx_bf16": "AMX-BF16",
    "amx_int8": "AMX-INT8",
    "avx512_bf16": "AVX512-BF16",
    "vnni": "VNNI",
}


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU's name and the extensions that matter for inference precision."""

    name: str
    amx_bf16: bool  # Intel AMX tiles with bf16 (Sapphire Rapids and later)
    amx_int8: bool  # Intel AMX tiles with int8
    avx512_bf16: bool  # VDPBF16PS (Cooper Lake, Zen 4 and later)
    vnni: bool  # AVX512-VNNI or AVX-VNNI: u8 x s8 dot products without int16 saturation
    avx512: bool  # AVX512F
    flags: frozenset[str]

    @property
    def native_bf16(self) -> bool:
        return self.amx_bf16 or self.avx512_bf16

    def has(self, flag: str) -> bool:
        """Whether the CPU has the extension named by ``flag`` (a field above; "" needs none): a speed order's test."""
        return not flag or bool(getattr(self, flag))

    def describe(self) -> str:
        """E.g. "AMD EPYC: AVX512-BF16, AVX512-VNNI (no AMX)"."""
        names = [label for flag, label in FEATURE_NAMES.items() if getattr(self, flag)]
        if not names:
            names = ["AVX-512" if self.avx512 else "no AVX-512", "no BF16", "no VNNI"]
        elif not (self.amx_bf16 or self.amx_int8):
            names.append("no AMX")
        return f"{self.name}: {', '.join(names)}"


def _cpuinfo() -> tuple[str, set[str]]:
    name, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return name, flags
    for line in text.splitlines():
        if line.startswith("model name") and ":" in line:
            name = line.split(":", 1)[1].strip()
        elif line.startswith("flags") and ":" in line and not flags:
            flags = set(line.split(":", 1)[1].split())
    return name, flags


@functools.cache
def _read(override: str | None) -> CpuFeatures:
    name, flags = _cpuinfo()
    if override is not None:
        flags = set(override.split())
    return CpuFeatures(
        name=name,
        amx_bf16="amx_bf16" in flags,
        amx_int8="amx_int8" in flags,
        avx512_bf16="avx512_bf16" in flags,
        vnni=bool({"avx512_vnni", "avx_vnni"} & flags),
        avx512="avx512f" in flags,
        flags=frozenset(flags),
    )


def cpu_features() -> CpuFeatures:
    """This machine's CPU features (``M2F_CPU_FLAGS`` replaces its flags when set)."""
    return _read(os.environ.get("M2F_CPU_FLAGS"))
