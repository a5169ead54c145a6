"""A real OpenAI-compatible LLM server for the endpoint tests: llama.cpp's `llama-server`, built from the source
bundled in the `llama-cpp-python` sdist (about 6 minutes on 2 cores, cached), serving the embedded SmolLM2 GGUF."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from net import free_port, serve_process

LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
SERVED_NAME = "SmolLM2-135M-Instruct"
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_BUILD_UI=OFF",  # the UI options avoid a download that fails offline
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
    # portable AVX2 code, not -march=native: on CPUs with AMX, native builds take llama.cpp's AMX path, which
    # crashes (SIGSEGV in ggml_backend_amx_mul_mat) where the kernel does not grant AMX tile state
    "-DGGML_NATIVE=OFF",
    "-DGGML_AVX2=ON",
    "-DGGML_FMA=ON",
    "-DGGML_F16C=ON",
)


def build_llama_server(cache: Path) -> Path:
    """The `llama-server` binary under `cache`, built there from the sdist the first time."""
    digest = hashlib.sha256(repr((LLAMA_CPP_PYTHON, CMAKE_OPTIONS)).encode()).hexdigest()[:12]
    binary = cache / f"llama-server-{digest}"  # a new build whenever the version or the options change
    if binary.is_file():
        return binary
    work = cache / "build"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", LLAMA_CPP_PYTHON, "--no-deps", "--no-binary", ":all:", "-d", work],
        check=True,
        capture_output=True,
    )
    (sdist,) = work.glob("llama_cpp_python-*.tar.gz")
    with tarfile.open(sdist) as archive:
        archive.extractall(work, filter="data")
    (source,) = work.glob("llama_cpp_python-*/vendor/llama.cpp")
    subprocess.run(["cmake", "-S", source, "-B", work / "cmake", *CMAKE_OPTIONS], check=True, capture_output=True)
    subprocess.run(
        ["cmake", "--build", work / "cmake", "--target", "llama-server", "-j2"], check=True, capture_output=True
    )
    (built,) = (work / "cmake").rglob("bin/llama-server")
    shutil.copy2(built, binary.with_suffix(".part"))
    binary.with_suffix(".part").rename(binary)
    shutil.rmtree(work)
    return binary


@contextmanager
def serve_llama(
    binary: Path,
    model: Path,
    log: Path,
    *,
    slots: int = 8,
    context: int = 8192,
    alias: str = SERVED_NAME,
    extra: tuple[str, ...] = (),
) -> Iterator[str]:
    """Run `llama-server` on a free loopback port with `slots` parallel slots, serving `model` under the name
    `alias`; yield its base URL."""
    port = free_port()
    command = [binary, "-m", model, "-a", alias, "--host", "127.0.0.1", "--port", str(port), "-np", str(slots)]
    command += ["-c", str(context), "-t", "2", "--no-webui", *extra]
    url = f"http://127.0.0.1:{port}"
    with serve_process(command, log, f"{url}/health", ready=lambda status: status == 200):  # 503 while loading
        yield url
