"""Model FLOPs of a training step and MFU (model FLOPs utilisation), for benchmarks/train_step.py.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode``: 2 per multiply-accumulate of the convolutions
and matrix products, forward and backward. That is the usual convention of MFU; the element-wise work (BatchNorm,
ReLU, pooling, the optimizer) is left out, so MFU slightly understates how busy the device is.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from torch.utils.flop_counter import FlopCounterMode

# Dense (no sparsity) bfloat16 tensor-core peaks in TFLOP/s from NVIDIA's datasheets, matched against
# torch.cuda.get_device_name() in this order (the first match wins: "H100 PCIe" before "H100").
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"H200 NVL", 835.0),
    (r"H200", 989.0),  # H200 SXM and GH200 have the H100 SXM's tensor cores
    (r"H100 NVL", 835.0),
    (r"H100 PCIe", 756.0),
    (r"H100", 989.0),  # H100 SXM, named "NVIDIA H100 80GB HBM3"
    (r"A100", 312.0),
    (r"L40S", 362.0),
    (r"\bL4\b", 121.0),
)


def count_flops(step: Callable[[], object]) -> int:
    """FLOPs of one call of ``step`` (run it once: it executes for real)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a known GPU by its name, or None (MFU then needs the peak given explicitly)."""
    for pattern, peak in PEAK_BF16_TFLOPS:
        if re.search(pattern, device_name):
            return peak
    return None


def mfu(flops_per_step: float, seconds_per_step: float, peak: float) -> float:
    """Achieved model FLOP/s as a fraction of ``peak`` TFLOP/s."""
    return flops_per_step / seconds_per_step / (peak * 1e12)
