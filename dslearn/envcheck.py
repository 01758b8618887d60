"""``dslearn check``: an [OK]/[WARN]/[FAIL] report on what this machine offers the course."""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import sys
from dataclasses import dataclass

REQUIRED = ("torch", "matplotlib", "ipywidgets", "tqdm", "safetensors")
OPTIONAL = ("jupyter_core", "nbval", "transformers")


@dataclass
class Check:
    status: str  # "OK", "WARN" or "FAIL"
    name: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.status}] {self.name}: {self.detail}"


def _version(module: str) -> str | None:
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except Exception:  # a broken install counts as missing
        return None


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def run_checks() -> list[Check]:
    checks = []
    py_ok = sys.version_info >= (3, 10)
    checks.append(Check("OK" if py_ok else "FAIL", "python", f"{platform.python_version()} (3.10+ needed)"))
    for mod in REQUIRED:
        v = _version(mod)
        checks.append(Check("OK" if v else "FAIL", mod, v or f"missing: pip install {mod}"))
    for mod in OPTIONAL:
        v = _version(mod)
        checks.append(Check("OK" if v else "WARN", mod, v or "not installed (only needed for tests/notebooks)"))
    interp = os.environ.get("TRITON_INTERPRET") == "1"
    if importlib.util.find_spec("triton") is None:
        checks.append(Check("WARN", "triton", "not installed: FP8 kernels fall back to the plain-torch reference"))
    else:
        checks.append(Check("OK", "triton", f"{_version('triton')}, interpreter mode {'on' if interp else 'off'} "
                                            f"(TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', 'unset')})"))
    try:
        import torch

        checks.append(Check("OK", "threads", f"torch uses {torch.get_num_threads()} of {os.cpu_count()} CPUs"))
        flags = cpu_flags()
        native = sorted(f for f in flags if f in {"amx_bf16", "amx_tile", "avx512_bf16"})
        x = torch.randn(64, 64, dtype=torch.bfloat16)
        ok = bool(torch.isfinite(x @ x).all())
        checks.append(Check("OK" if ok else "FAIL", "bf16",
                            f"bf16 matmul {'works' if ok else 'FAILED'}; CPU bf16 features: "
                            f"{', '.join(native) if native else 'none detected (bf16 runs, but emulated)'}"))
        cuda = torch.cuda.is_available()
        checks.append(Check("OK", "cuda", torch.cuda.get_device_name(0) if cuda else "no GPU (CPU is the default)"))
        mps = hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
        if mps:
            checks.append(Check("WARN", "mps", "available, best-effort only (compare losses with CPU)"))
    except Exception as e:  # torch itself is broken
        checks.append(Check("FAIL", "torch runtime", repr(e)))
    try:
        from .data import load_corpus

        checks.append(Check("OK", "corpus", load_corpus().describe()))
    except Exception as e:
        checks.append(Check("FAIL", "corpus", str(e)))
    return checks


def report() -> tuple[str, bool]:
    checks = run_checks()
    return "\n".join(map(str, checks)), all(c.status != "FAIL" for c in checks)
