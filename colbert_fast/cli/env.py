"""`colbert-fast env` (or `python -m colbert_fast.cli.env`): versions, devices, build and backends."""

from __future__ import annotations

import importlib
import json
import platform

import torch

HELP = "print versions, GPU, build information and which backends can run"


def collect() -> dict:
    from colbert_fast import __version__, backends, extension

    info = {
        "colbert_fast": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_threads": torch.get_num_threads(),
        "extension": extension.build_info(),
        "backends_cpu": backends.available("cpu"),
    }
    if torch.cuda.is_available():
        info["backends_cuda"] = backends.available("cuda")
    for name in ("triton", "transformers", "faiss", "safetensors", "numpy"):
        try:
            info[name] = getattr(importlib.import_module(name), "__version__", "installed")
        except ImportError:
            info[name] = None
    return info


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args) -> int:
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    for key, value in info.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k:14s} {'ok' if v is None and key.startswith('backends') else v}")
        else:
            print(f"{key:16s} {value}")
    return 0


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=HELP)
    add_arguments(p)
    raise SystemExit(run(p.parse_args()))
