"""The inference engines a version is deployed to: existing OpenAI-compatible servers, each started as its
own process on 127.0.0.1, never ours.

    qrtrain deploy NAME/v1 --name support                      # transformers serve (ships with transformers)
    qrtrain deploy NAME/v1 --name support --engine vllm        # vllm serve BASE --enable-lora --lora-modules ...
    qrtrain deploy NAME/v1 --name support --engine llama.cpp   # llama-server -m NAME-v1.q8_0.gguf --jinja
    qrtrain deploy NAME/v1 --name support --engine ollama      # ollama serve + ollama create (from the GGUF)

ENGINES says, per engine, the program it runs, what it is built from (`merged`: the merged safetensors
folder; `adapter`: the version itself over its base; `gguf`: the full-model GGUF package) and the path
that answers 200 when it is ready. `command()` builds the command line; `start()` runs it in its own
session with its output in the deployment folder's engine.log.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from qrtrain.errors import QrtrainError

ENGINES = {
    "transformers": {"program": "transformers", "build": "merged", "health": "/health",
                     "install": "pip install 'transformers[serving]' (installed with qrtrain)"},
    "vllm": {"program": "vllm", "build": "adapter", "health": "/health",
             "install": "pip install vllm (a CUDA machine)"},
    "llama.cpp": {"program": "llama-server", "build": "gguf", "health": "/health",
                  "install": "a llama.cpp build with llama-server on PATH (brew install llama.cpp, or build it)"},
    "ollama": {"program": "ollama", "build": "gguf", "health": "/api/version",
               "install": "https://ollama.com/download (the `ollama` program on PATH)"},
}


def program(engine: str) -> str:
    """The engine's program: beside this Python first (a virtual environment's console scripts), then PATH."""
    name = ENGINES[engine]["program"]
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() and os.access(beside, os.X_OK) else shutil.which(name)
    if found is None:
        raise QrtrainError(f"--engine {engine}: `{name}` is not installed (not beside {sys.executable}, not on "
                           f"PATH); install it: {ENGINES[engine]['install']}, or use --engine transformers")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_port(port: int) -> None:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise QrtrainError(f"--port {port}: already in use on 127.0.0.1; choose another port, or leave --port "
                               "out to take a free one") from None


def command(engine: str, build: Path, port: int, model_id: str, extra: list[str], device: str = "auto",
            base: Path | None = None, lora_rank: int | None = None) -> list[str]:
    """The engine's command line, bound to 127.0.0.1:port (the service is the way in from outside)."""
    run = program(engine)
    host = ["--host", "127.0.0.1", "--port", str(port)]
    if engine == "transformers":
        return [run, "serve", str(build), *host, "--device", device, "--log-level", "info", *extra]
    if engine == "vllm":
        return [run, "serve", str(base), *host, "--enable-lora", "--lora-modules", f"{model_id}={build}",
                "--max-lora-rank", str(max(8, lora_rank or 8)), "--served-model-name", f"{model_id}-base",
                "--generation-config", "auto", *extra]
    if engine == "llama.cpp":
        return [run, "-m", str(build), *host, "--jinja", "--alias", model_id, "-np", "1", *extra]
    return [run, "serve"]  # ollama: the address is OLLAMA_HOST, the model is created once it is up


def model_id_for(engine: str, endpoint: str, build: Path) -> str:
    """What requests name as `model` at the engine: transformers serve its FORCE_MODEL path, the others
    the endpoint's name (vLLM's LoRA module, llama-server's alias, Ollama's model)."""
    return str(build) if engine == "transformers" else endpoint


def start(cmd: list[str], folder: Path, port: int, engine: str) -> subprocess.Popen:
    """The engine in its own session (so it outlives `qrtrain deploy` and stops as one group); its output in
    folder/engine.log."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TRANSFORMERS_OFFLINE="1", HF_HUB_OFFLINE="1")
    if engine == "ollama":
        env.update(OLLAMA_HOST=f"127.0.0.1:{port}", OLLAMA_MODELS=str(folder / "ollama-models"))
    with open(folder / "engine.log", "ab") as log:
        try:
            return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    cwd=folder, start_new_session=True)
        except OSError as error:
            raise QrtrainError(f"could not start {cmd[0]}: {error}") from None


def wait_ready(process: subprocess.Popen, url: str, engine: str, log: Path, timeout_s: float) -> float:
    """Seconds until the engine's health path answered 200; QrtrainError (exit 1) if the process ended or the
    time ran out, with the end of its log."""
    import httpx

    began = time.perf_counter()
    while time.perf_counter() - began < timeout_s:
        if process.poll() is not None:
            raise QrtrainError(f"readiness: the {engine} engine exited with code {process.returncode} before it was "
                               f"ready; the end of {log}:\n{log_tail(log)}", exit_code=1)
        try:
            if httpx.get(url + ENGINES[engine]["health"], timeout=2).status_code == 200:
                return round(time.perf_counter() - began, 2)
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise QrtrainError(f"readiness: the {engine} engine was not ready after {timeout_s:.0f} s (raise --ready-timeout "
                       f"for a large model); the end of {log}:\n{log_tail(log)}", exit_code=1)


def create_ollama_model(url: str, model_id: str, folder: Path) -> None:
    """`ollama create ENDPOINT -f Modelfile` (the deployment folder's, FROM the GGUF) against the deployment's own
    Ollama server."""
    env = dict(os.environ, OLLAMA_HOST=url.removeprefix("http://"))
    done = subprocess.run([program("ollama"), "create", model_id, "-f", str(folder / "Modelfile")], env=env,
                          cwd=folder, capture_output=True, text=True, timeout=600)
    (folder / "ollama-create.log").write_text(done.stdout + done.stderr, encoding="utf-8")
    if done.returncode != 0:
        raise QrtrainError(f"ollama create {model_id} failed: {(done.stderr or done.stdout).strip()[-500:]}",
                           exit_code=1)


def log_tail(log: Path, lines: int = 12) -> str:
    try:
        return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
