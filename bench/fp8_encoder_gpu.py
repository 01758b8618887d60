"""Where the Triton fp32→E4M3 encoder and torch's float8_e4m3fn cast differ on a GPU, by input range.

    python bench/fp8_encoder_gpu.py > experiments/gpu/fp8_encoder_diag_h200.json

4M random fp32 bit patterns, encoded by the Triton kernel on the GPU, by dslearn's torch reference, and by
torch's native cast; mismatches counted per range (NaN, inf, |x| > 464, 448 < |x| ≤ 464, normal, subnormal,
below the smallest subnormal). Needs CUDA and Triton; without them it exits with a message.
"""

import json
import sys

import torch

from dslearn.fp8 import backend as be


def main() -> int:
    if not torch.cuda.is_available():
        print("fp8_encoder_gpu: no CUDA GPU visible to torch — nothing to compare.")
        return 0
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    bits = torch.randint(0, 1 << 32, (1 << 22,), generator=g)
    x = torch.where(bits >= 1 << 31, bits - (1 << 32), bits).to(torch.int32).view(torch.float32).to(dev)
    out = {}
    for fmt, dt in (("e4m3", torch.float8_e4m3fn),):
        ours = be.encode(x, fmt, backend="triton")
        ref = be.encode(x.cpu(), fmt, backend="torch").to(dev)
        nat = x.to(dt).view(torch.uint8)
        a = x.abs()
        cats = {"nan": x.isnan(), "inf": x.isinf(), "gt464": (a > 464) & a.isfinite(),
                "448to464": (a > 448) & (a <= 464), "normal": (a >= 2 ** -6) & (a <= 448),
                "subnormal": (a < 2 ** -6) & (a >= 2 ** -10), "tiny": a < 2 ** -10}
        for name, m in cats.items():
            out[f"{fmt}/{name}/n"] = int(m.sum())
            out[f"{fmt}/{name}/triton_vs_native"] = int(((ours != nat) & m).sum())
            out[f"{fmt}/{name}/torchref_vs_native"] = int(((ref != nat) & m).sum())
        mis = torch.nonzero(ours != nat).flatten()[:8]
        out["examples"] = [(float(x[i]), hex(int(ours[i])), hex(int(nat[i])), hex(int(ref[i]))) for i in mis.tolist()]
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
