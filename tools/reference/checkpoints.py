#!/usr/bin/env python3
"""Write the small torch-made checkpoints the loader tests read (tests/data/checkpoints/).

    /work/venv-ref/bin/python tools/reference/checkpoints.py [--out tests/data/checkpoints]

shared_storage.pt: torch.save of an OrderedDict whose tensors are views of shared storages at
non-zero offsets (row-major, transposed, a single element, an f16 storage, a parameter), the way
torch writes tied or sliced weights. shared_storage.safetensors holds contiguous copies of the same
tensors under the same names: the test loads both and compares them bit for bit.
"""

import argparse
import sys
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from funasr_ref import fixed_torch_save  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=REPO / "tests/data/checkpoints")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(20261201)
    base = torch.randn(40, generator=g)
    half = torch.randn(16, generator=g).half()
    state = OrderedDict()
    state["first"] = base[0:6].view(2, 3)
    state["second"] = base[6:18].view(3, 4)
    state["transposed"] = base[18:30].view(4, 3).t()
    state["single"] = base[33:34]
    state["overlap"] = base[4:12]
    state["half.tail"] = half[5:13].view(2, 4)
    state["param"] = torch.nn.Parameter(base[30:33].clone(), requires_grad=False)
    assert state["second"].storage_offset() == 6 and not state["transposed"].is_contiguous()
    fixed_torch_save(state, args.out / "shared_storage.pt")
    save_file({k: v.detach().contiguous().clone() for k, v in state.items()},
              str(args.out / "shared_storage.safetensors"))
    print(f"wrote {args.out}/shared_storage.{{pt,safetensors}}")


if __name__ == "__main__":
    main()
