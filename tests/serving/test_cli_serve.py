"""`conan-embed serve` as a user runs it: a subprocess, the key from the environment, the int8 ONNX backend,
a clean stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from conan_embed.serving.local import free_port


def test_serve_command(tiny_model):
    port = free_port()
    env = {**os.environ, "CONAN_EMBED_API_KEY": "k1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "conan_embed.cli", "serve", tiny_model, "--port", str(port),
                             "--model-id", "demo", "--max-queue", "16", "--backend", "onnx",
                             "--onnx-file", "onnx/model_qint8_avx2.onnx", "--max-in-flight", "3"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).json().get("status") == "ok":
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else "timeout"
            time.sleep(0.2)
        r = httpx.post(url + "/v1/embeddings", json={"input": ["保险"], "dimensions": 16},
                       headers={"Authorization": "Bearer k1"})
        assert r.status_code == 200 and r.json()["model"] == "demo" and len(r.json()["data"][0]["embedding"]) == 16
        assert httpx.post(url + "/v1/embeddings", json={"input": ["保险"]}).status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-2000:]
    assert f"serving {tiny_model} (onnx) on http://127.0.0.1:{port}/v1/embeddings (API key required)" in out


def test_serve_refuses_bad_flags(tiny_model, capsys):
    from conan_embed.cli import main

    with pytest.raises(SystemExit):
        main(["serve", tiny_model, "--max-in-flight", "0"])
    assert "--max-in-flight: must be 1 or more, got 0" in capsys.readouterr().err
    assert main(["serve", tiny_model, "--compile", "--backend", "onnx"]) == 2
    assert "--compile is for --backend torch" in capsys.readouterr().err
