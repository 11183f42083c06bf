"""Serving (docs/serving.md): an OpenAI-compatible embedding service with dynamic batching and
Matryoshka dimensions."""

from conan_embed.serving.app import ServeSettings, create_app
from conan_embed.serving.engine import EmbeddingEngine

__all__ = ["EmbeddingEngine", "ServeSettings", "create_app", "serve"]


def serve(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8080, log_level: str = "info") -> None:
    """Run the service until interrupted (uvicorn, one process: the model lives once in memory)."""
    import uvicorn

    # keep-alive longer than clients' pool idle times: a connection closed by the server just as a client
    # reuses it is a "lost" request to that client (seen as ReadError under load)
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level, timeout_graceful_shutdown=10,
                timeout_keep_alive=75)
