"""Run the service in a background thread on a free loopback port (tests, benchmarks, notebooks).

    with BackgroundServer(ServeSettings(model="runs/quickstart/model")) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none")
"""

from __future__ import annotations

import socket
import threading
import time


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class BackgroundServer:
    def __init__(self, settings, *, engine=None, host: str = "127.0.0.1", port: int | None = None,
                 wait_ready: bool = True, timeout: float = 120.0):
        import uvicorn

        from conan_embed.serving.app import create_app

        self.app = create_app(settings, engine)
        self.host, self.port = host, port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.wait_ready, self.timeout = wait_ready, timeout
        config = uvicorn.Config(self.app, host=host, port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="conan-embed-server", daemon=True)

    @property
    def engine(self):
        return self.app.app.state.engine

    def __enter__(self) -> BackgroundServer:
        import httpx

        self.thread.start()
        deadline = time.monotonic() + self.timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"the server did not start on {self.url}")
            time.sleep(0.02)
        while self.wait_ready:
            status = httpx.get(self.url + "/health", timeout=5).json().get("status")
            if status == "ok":
                break
            if status == "failed" or time.monotonic() > deadline:
                raise RuntimeError(f"the model did not load: {httpx.get(self.url + '/health').json()}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
