"""A real LLM for the test suite: llama.cpp's llama-server with SmolLM2-135M-Instruct on CPU.

tools/real_model.sh builds both into a cache once (~5 min on 2 cores; `make real-model`).
Without the cache these tests are skipped, unless REQUIRE_REAL_MODEL=1 (set by .ci/run), which
builds it if missing and makes a missing or broken model a failure instead of a skip.
REAL_MODEL_CACHE points at another cache directory, REAL_MODEL_THREADS sets llama-server's -t.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from realmodel.llama import API_KEY, PROMPTS, RECORD, LlamaServer, Reference, fetch_reference

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "tools" / "real_model.sh"
REQUIRED = os.environ.get("REQUIRE_REAL_MODEL") == "1"
# Seconds the first real-model test may take when it has to build llama-server first.
BUILD_TIMEOUT = 1200
# One thread: the test process (SDK, intact, proxy) needs the other core, and two spinning
# llama.cpp threads on a busy 2-core machine stall for seconds (real-model.md: -t 1 is steadier).
THREADS = os.environ.get("REAL_MODEL_THREADS", "1")


def model_cache() -> Path:
    """Where tools/real_model.sh keeps the build (it alone knows the default path)."""
    out = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--where"], capture_output=True, text=True, check=True
    )
    return Path(out.stdout.strip())


def _built(cache: Path) -> bool:
    return os.access(cache / "llama-server", os.X_OK) and (cache / "model.gguf").is_file()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    mine = [item for item in items if here in item.path.parents]
    if mine and REQUIRED and not _built(model_cache()):
        mine[0].add_marker(pytest.mark.timeout(BUILD_TIMEOUT))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    cache = model_cache()
    if not _built(cache):
        if not REQUIRED:
            pytest.skip(
                f"no real model in {cache}: run `make real-model` (tools/real_model.sh) once, "
                "or set REQUIRE_REAL_MODEL=1 to build it and require these tests"
            )
        subprocess.run(["bash", str(BUILD_SCRIPT), sys.executable], check=True)
    port = _free_port()
    log = tmp_path_factory.mktemp("llama") / "llama-server.log"
    # -ub 1 (physical batch of one): a resumed prompt decodes exactly like the uninterrupted
    # one; with the default batch about 1 in 4 uncached resumes diverges (real-model.md).
    command = [
        str(cache / "llama-server"),
        *("-m", str(cache / "model.gguf")),
        *("--host", "127.0.0.1", "--port", str(port)),
        *("-t", THREADS, "-ub", "1", "-c", "4096", "--parallel", "1"),
        # Keys are checked: Bearer on the OpenAI APIs, x-api-key on Messages.
        *("--api-key", API_KEY),
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama-server exited with {proc.returncode}:\n{_tail(log)}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama-server not healthy after 60 s:\n{_tail(log)}")
            time.sleep(0.1)
        yield LlamaServer(url=url, log=log, api_key=API_KEY)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="session")
def references(llama_server: LlamaServer) -> dict[str, Reference]:
    """The uninterrupted answer to each prompt (greedy, so the same every time)."""
    return {key: fetch_reference(llama_server, key) for key in PROMPTS}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RECORD.requests and not RECORD.seams:
        return
    write = terminalreporter.write_line
    terminalreporter.section("real model (llama-server + SmolLM2-135M) through the chaos proxy")
    write(
        f"{RECORD.requests} interrupted requests, {RECORD.exact} byte-identical to the "
        f"uninterrupted answer, {time.monotonic() - RECORD.started:.1f} s"
    )
    write("faults struck: " + ", ".join(f"{k}={n}" for k, n in sorted(RECORD.faults.items())))
    for outcome, count in sorted(RECORD.outcomes.items()):
        write(f"  {outcome}: {count}")
    for line in RECORD.differences:
        write("DIFFERED: " + line)
    for line in RECORD.seams:
        write("instruct seam: " + line)
