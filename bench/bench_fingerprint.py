"""Benchmark: identifying a model by its fingerprint against hashing its whole weights file, in the same run.

A synthetic safetensors file of `--gb` GB with `--tensors` tensors (a 1B-parameter Llama has ~150 in 2.5 GB) is
written to a temporary folder beside a config and a tokenizer file; then its fingerprint (`model_identity`) and a
sha256 of every byte are timed, wall and CPU, each from the page cache (the file was just written) and, where
`/proc/sys/vm/drop_caches` is writable, from disk. Reported: seconds of each and the ratio.

    python bench/bench_fingerprint.py [--gb 2] [--tensors 150]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from popalign import model_identity


def write_model(folder: Path, size: int, tensors: int) -> None:
    """A safetensors file of `tensors` equal float32 tensors, `size` bytes in all, and two small files."""
    each = size // tensors // 4 * 4
    header = {
        f"model.layers.{i}.weight": {"dtype": "F32", "shape": [each // 4], "data_offsets": [i * each, (i + 1) * each]}
        for i in range(tensors)
    }
    encoded = json.dumps(header).encode()
    block = bytes(range(256)) * 4096  # 1 MiB
    with (folder / "model.safetensors").open("wb") as sink:
        sink.write(struct.pack("<Q", len(encoded)) + encoded)
        for _ in range(each * tensors // len(block)):
            sink.write(block)
        sink.write(block[: each * tensors % len(block)])
    (folder / "config.json").write_text(json.dumps({"num_hidden_layers": tensors}))
    (folder / "tokenizer.json").write_text(json.dumps({"vocab": {f"t{i}": i for i in range(50_000)}}))


def timed(work: Callable[[], object]) -> tuple[float, float]:
    """Wall and CPU seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def whole_sha256(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        with path.open("rb") as source:
            while chunk := source.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def drop_page_cache() -> bool:
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=2.0)
    parser.add_argument("--tensors", type=int, default=150)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="popalign-bench-fp-") as name:
        folder = Path(name)
        write_model(folder, int(args.gb * 1e9), args.tensors)
        for where in ("page cache", "disk"):
            if where == "disk" and not drop_page_cache():
                print("disk: /proc/sys/vm/drop_caches is not writable here; measured from the page cache only")
                break
            model_identity._file_digest.cache_clear()
            fast = timed(lambda: model_identity.fingerprint(folder))
            if where == "disk":
                drop_page_cache()
            whole = timed(lambda: whole_sha256(folder))
            print(f"{where}: fingerprint {fast[0]:.3f} s wall ({fast[1]:.3f} s CPU); whole-file sha256 "
                  f"{whole[0]:.2f} s wall ({whole[1]:.2f} s CPU); the fingerprint takes 1/{whole[0] / fast[0]:.0f} "
                  "of the time")  # fmt: skip


if __name__ == "__main__":
    main()
