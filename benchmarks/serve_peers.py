"""The race (issue 14; docs/serving.md): `conan-embed serve` on each backend against infinity on the same
folder and against in-process sentence-transformers encode, one after the other on one machine.

Systems (each on the same requests, the same closed-loop clients at each concurrency):
- ours-torch, ours-onnx, ours-onnx-int8: `conan-embed serve MODEL [--backend onnx --onnx-file ...]`;
  ours-torch-compile: `conan-embed serve MODEL --compile` (CUDA graphs on a GPU; by default only there);
  ours-torch-serial, ours-onnx-int8-serial (only when --systems names them): `--max-in-flight 1`, the
  server without the overlap of one pass's collection with the next pass's launch (an A/B of it);
- infinity-torch, infinity-onnx: `infinity_emb v2 --model-id MODEL --engine torch|optimum` from its own
  virtual environment (built once by this script from the package registry, so its pins never touch
  ours). The optimum engine runs our int8 file, from a view of the folder with that file at the root
  (`root_onnx_view`: infinity cannot read ONNX files in `onnx/`), with `--pooling-method mean` (its
  default there is CLS pooling, whatever the folder's pooling config says);
- inproc-torch, inproc-onnx-int8: `encode` of all the texts in this process (`batch_size` 32), the
  ceiling a server is measured against (no HTTP, no queue).
infinity knows no `input_type`, so every system gets the texts with the e5 prompt already in front
(`query: ...`, `passage: ...`) and our servers are asked for no prompt of their own (`input_type:
none`): the same tokens everywhere. The requests are serve_load.py's (insuranceqa questions in
requests of 1-8, answers in requests of 1-4). texts/s per system and concurrency is the median over
--repeats rounds, systems in the same order each round. Before timing, each system embeds 16 probe
texts; their cosine with in-process torch fp32 is reported (infinity returns full-size vectors
normalised: with `dimensions` it would cut without renormalising, so the race uses the full dim).

    .venv/bin/python benchmarks/serve_peers.py --model runs/quickstart/model
    .venv/bin/python benchmarks/serve_peers.py --model runs/quickstart/model --levels 1,8,32,128 --repeats 3
    .venv/bin/python benchmarks/serve_peers.py --model runs/quickstart/model --device cuda   # torch systems only

With --device cuda every torch system runs on the GPU, in fp32 and bf16 (ours-torch-bf16 and
ours-torch-compile-bf16 serve with --precision bf16, inproc-torch-bf16 encodes under bf16 autocast); the
ONNX systems are left out (our ONNX backend runs on the CPU), and infinity unless --systems names it.

Last line: RESULT serve_peers ... ratio=<our best server texts/s / the best other system's, at --ratio-level>.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from portable_check import build_venv  # noqa: E402
from serve_load import Req, ServerProcess, make_client, make_requests  # noqa: E402

INFINITY = "infinity-emb[server,torch,optimum]==0.0.78"
PROMPTS = {"query": "query: ", "passage": "passage: "}
SYSTEMS = ("ours-torch", "ours-torch-serial", "ours-torch-bf16", "ours-torch-compile", "ours-torch-compile-bf16",
           "ours-onnx", "ours-onnx-int8", "ours-onnx-int8-serial", "infinity-torch", "infinity-onnx", "inproc-torch",
           "inproc-torch-bf16", "inproc-onnx-int8")


def cpu_arch() -> str:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "avx512_vnni" if "avx512_vnni" in flags else "avx512" if "avx512f" in flags else "avx2"


class Server(ServerProcess):
    """A server process on a free port, its log in a file (serve_load's, for any command); `path` is its
    embeddings route, `health` a route that answers 200 once the model is loaded."""

    def __init__(self, name: str, cmd: list[str], port: int, log: Path, path: str, health: str, extra: dict,
                 cwd: Path | None = None):
        self.name, self.url, self.path, self.health, self.extra = name, f"http://127.0.0.1:{port}", path, health, extra
        self._spawn(cmd, log, dict(os.environ, TOKENIZERS_PARALLELISM="false", TQDM_DISABLE="1", HF_HUB_OFFLINE="1",
                                   INFINITY_ANONYMOUS_USAGE_STATS="0", DO_NOT_TRACK="1"), cwd)

    def wait_ready(self, timeout: float = 600) -> bool:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if httpx.get(self.url + self.health, timeout=5).status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        return False


def ours(name: str, model: str, port: int, log: Path, device: str, backend: str = "torch",
         file: str | None = None) -> Server:
    exe = Path(sys.executable).with_name("conan-embed")
    cmd = [str(exe), "serve", model, "--port", str(port), "--max-queue", "100000", "--device", device]
    if backend != "torch":
        cmd += ["--backend", backend, "--onnx-file", file]
    if "compile" in name:
        cmd.append("--compile")
    if name.endswith("bf16"):
        cmd += ["--precision", "bf16"]
    if name.endswith("serial"):
        cmd += ["--max-in-flight", "1"]
    if device != "cpu":
        cmd += ["--max-batch-tokens", "65536"]  # docs/serving.md, deployment notes
    return Server(name, cmd, port, log, "/v1/embeddings", "/health", {"input_type": "none"})


def infinity(name: str, python: Path, model: str, port: int, log: Path, engine: str, device: str,
             cwd: Path | None = None) -> Server:
    cmd = [str(python.with_name("infinity_emb").absolute()), "v2", "--model-id", model, "--engine", engine,
           "--device", device, "--port", str(port), "--url-prefix", "/v1", "--batch-size", "32", "--no-model-warmup"]
    if engine == "optimum":  # its "auto" pooling is CLS there: it does not read 1_Pooling/config.json
        cmd += ["--pooling-method", "mean"]
    return Server(name, cmd, port, log, "/v1/embeddings", "/v1/models", {}, cwd)


def root_onnx_view(folder: Path, onnx_file: str, view: Path) -> Path:
    """The folder as infinity's optimum engine can read it: symlinks to its files, with `onnx_file` at the
    root as `model_quantized.onnx` (infinity prefers a "quantize" name on a CPU). infinity 0.0.78 hands
    optimum the file's path as globbed from the folder, and optimum 2.1 matches it against bare file
    names, so a file in `onnx/` (sentence-transformers' place) is never found; a root file is, when
    the server runs from inside the folder with `--model-id .`."""
    view.mkdir(parents=True, exist_ok=True)
    for item in folder.iterdir():
        if item.name != "onnx" and not (view / item.name).exists():
            (view / item.name).symlink_to(item.resolve())
    if not (view / "model_quantized.onnx").exists():
        (view / "model_quantized.onnx").symlink_to((folder / onnx_file).resolve())
    return view


async def closed_loop(server: Server, reqs: list[Req], concurrency: int, duration: float) -> tuple[float, int, int]:
    """(wall seconds, texts answered, failed requests): `concurrency` workers each sending their next
    request as soon as the last one answered, until the list is used up or `duration` passed."""
    it, texts, failed = iter(reqs), [0], [0]
    async with make_client(concurrency, 120) as client:
        start = time.perf_counter()
        last = [start]

        async def worker():
            for req in it:
                if time.perf_counter() - start > duration:
                    return
                body = {"input": [PROMPTS[req.kind] + t for t in req.texts], "model": "bench",
                        "encoding_format": "float", **server.extra}
                try:
                    r = await client.post(server.url + server.path, json=body)
                    ok = r.status_code == 200 and len(r.json()["data"]) == len(req.texts)
                except Exception:  # noqa: BLE001 - a lost request counts as failed
                    ok = False
                texts[0] += len(req.texts) if ok else 0
                failed[0] += not ok
                last[0] = time.perf_counter()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return last[0] - start, texts[0], failed[0]


def probe(server: Server, texts: list[str]) -> np.ndarray:
    import httpx

    r = httpx.post(server.url + server.path, json={"input": texts, "model": "bench", "encoding_format": "float",
                                                   **server.extra}, timeout=120)
    r.raise_for_status()
    return np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)


def inproc_rate(model, reqs: list[Req], bf16: bool = False) -> float:
    import torch

    texts = [PROMPTS[r.kind] + t for r in reqs for t in r.texts]
    autocast = torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16)
    with autocast:
        model.encode(texts[:64], batch_size=32)  # warm-up (CUDA context, kernels)
        t0 = time.perf_counter()
        model.encode(texts, batch_size=32, convert_to_numpy=True, normalize_embeddings=True)
    return len(texts) / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="runs/quickstart/model", help="model folder (default: %(default)s)")
    p.add_argument("--levels", default="1,8,32,128", help="concurrencies (default: %(default)s)")
    p.add_argument("--ratio-level", type=int, default=32, help="concurrency of the RESULT ratio (default: %(default)s)")
    p.add_argument("--requests", type=int, default=256, help="requests per level (default: %(default)s)")
    p.add_argument("--duration", type=float, default=60, help="seconds at most per level (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=2, help="rounds over every system (default: %(default)s)")
    p.add_argument("--systems", help="comma-separated subset of the systems (default: all)")
    p.add_argument("--infinity", default=INFINITY, help="pip requirement of infinity (default: %(default)s)")
    p.add_argument("--torch", default="torch==2.13.0", help="torch for infinity's environment (default: %(default)s)")
    p.add_argument("--venvs", default="runs/serve-peers", help="where infinity's environment goes")
    p.add_argument("--device", default="cpu", help="cpu or cuda: where every torch system runs (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    unknown = sorted(set((args.systems or "").split(",")) - set(SYSTEMS) - {""})
    if unknown:
        p.error(f"unknown --systems {unknown}; known: {', '.join(SYSTEMS)}")

    from conan_embed.onnx_export import export_onnx
    from conan_embed.onnx_runtime import onnx_file_name
    from conan_embed.model_loading import load_embedder
    from conan_embed.serving.local import free_port

    folder = Path(args.model).resolve()
    arch = cpu_arch()
    int8 = onnx_file_name("int8", arch)
    reference = load_embedder(folder, device="cpu")
    for quantize in (None, "int8"):
        if args.device == "cpu" and not (folder / onnx_file_name(quantize, arch)).is_file():
            export_onnx(reference, folder, quantize=quantize, arch=arch)
    levels = [int(x) for x in args.levels.split(",")]
    reqs = make_requests(args.requests, 0.3, args.seed)
    probes = [PROMPTS["query"] + t for r in reqs[:8] for t in r.texts][:16]
    want = reference.encode(probes, normalize_embeddings=True)
    gpu = args.device != "cpu"
    # the device machine reaches no package registry, so infinity's environment can't be built there
    systems = (["ours-torch", "ours-torch-bf16", "ours-torch-compile", "ours-torch-compile-bf16", "inproc-torch",
                "inproc-torch-bf16"] if gpu else
               ["ours-torch", "ours-onnx", "ours-onnx-int8", "infinity-torch", "infinity-onnx", "inproc-torch",
                "inproc-onnx-int8"])
    if args.systems:
        systems = args.systems.split(",")
    inproc = load_embedder(folder, device=args.device) if gpu else reference
    python = None
    if any(s.startswith("infinity") for s in systems):
        python = build_venv(Path(args.venvs), args.infinity, args.torch)
    rates: dict[str, dict[int, list[float]]] = {s: {c: [] for c in levels} for s in systems}
    agreement, notes = {}, {}
    logs = Path(tempfile.mkdtemp(prefix="serve-peers-"))
    onnx = {"ours-onnx": onnx_file_name(), "ours-onnx-int8": int8, "ours-onnx-int8-serial": int8}
    for round_ in range(args.repeats):
        for name in systems:
            if name in notes:
                continue  # did not start in an earlier round
            if name.startswith("inproc"):
                model = load_embedder(folder, backend="onnx", onnx_file=int8) if "onnx" in name else inproc
                rate = inproc_rate(model, reqs, bf16=name.endswith("bf16"))
                agreement.setdefault(name, float((model.encode(probes, normalize_embeddings=True) * want).sum(1).min()))
                for c in levels:
                    rates[name][c].append(rate)
                print(f"[round {round_ + 1}] {name}: {rate:.1f} texts/s", flush=True)
                continue
            port = free_port()
            log = logs / f"{name}-{round_}.log"
            server = (ours(name, str(folder), port, log, args.device, "onnx", onnx[name]) if name in onnx else
                      ours(name, str(folder), port, log, args.device) if name.startswith("ours") else
                      infinity(name, python, str(folder), port, log, "torch", args.device) if name == "infinity-torch"
                      else infinity(name, python, ".", port, log, "optimum", args.device,
                                    cwd=root_onnx_view(folder, int8, logs / "infinity-onnx-view")))
            try:
                if not server.wait_ready():
                    notes[name] = f"did not start: {log.read_text(errors='replace')[-600:]!r}"
                    print(f"{name}: {notes[name]}", flush=True)
                    continue
                agreement.setdefault(name, float((probe(server, probes) * want).sum(1).min()))
                for c in levels:
                    wall, texts, failed = asyncio.run(closed_loop(server, reqs, c, args.duration))
                    rates[name][c].append(texts / wall if wall else 0.0)
                    print(f"[round {round_ + 1}] {name} c={c}: {texts / wall:.1f} texts/s"
                          + (f", {failed} failed" if failed else ""), flush=True)
            finally:
                server.stop()
    print(f"\nmodel {folder} on {args.device}, int8 file {int8}, {args.requests} requests per level, "
          f"median of {args.repeats} rounds")
    width = max(len(s) for s in systems)
    print(f"{'system':{width}s} {'min cos':>8s} " + " ".join(f"{'c=' + str(c):>9s}" for c in levels))
    median = {s: {c: statistics.median(v) for c, v in rates[s].items() if v} for s in systems if s not in notes}
    for s in systems:
        if s in notes:
            print(f"{s:{width}s} {'-':>8s} {notes[s][:80]}")
            continue
        print(f"{s:{width}s} {agreement[s]:8.5f} " + " ".join(f"{median[s][c]:9.1f}" for c in levels))
    at = args.ratio_level if args.ratio_level in levels else levels[-1]
    our = {s: m[at] for s, m in median.items() if s.startswith("ours")}
    other = {s: m[at] for s, m in median.items() if not s.startswith("ours")}
    if not our or not other:
        print("RESULT serve_peers incomplete=true")
        return 1
    best_ours, best_other = max(our, key=our.get), max(other, key=other.get)
    print(f"RESULT serve_peers level={at} best_ours={best_ours} ours_texts_s={our[best_ours]:.1f} "
          f"best_other={best_other} other_texts_s={other[best_other]:.1f} "
          f"ratio={our[best_ours] / other[best_other]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
