"""Load benchmark of `conan-embed serve`: throughput and latency at several concurrencies, against
in-process `SentenceTransformer.encode` on the same texts, in one run; then an overload test.

The server runs as a separate process (`conan-embed serve MODEL --port P`, a free loopback port, its
log in a temporary file), so the load generator's Python does not share its GIL; the run waits for
`/health` = ok. The load generator is `httpx.AsyncClient` (one connection per worker) in this process.

Requests (seeded, the same list for every level and for the baseline): insuranceqa test-split
questions (short: ~13 tokens with the prompt) and the Chinese answers to those questions (passages:
median ~80 tokens, a few over the 512 cap, truncated as `encode` does). A request is a *query*
request with 1-8 questions (`input_type: "query"`) or, with probability --passage-share, a *passage*
request with 1-4 answers (`input_type: "passage"`); `encoding_format: "float"` (the API default).
The in-process baseline encodes exactly the texts of the list, all queries with the model's
query prompt and all passages with its passage prompt, `batch_size=--batch-size`, same precision
(`encode` length-sorts each call). texts/s = texts / wall seconds of the two `encode` calls.

A level (concurrency N) runs N workers that take the next request of the list until it is used up
or --duration seconds have passed (a level cut by the duration is flagged: its texts are a prefix of
the list, not the whole). Each worker sends its next request as soon as the previous one answered
(closed loop, no think time). texts/s = texts of 200 answers / (last answer - start); latency =
send to full body, per request. Every 200 is checked (one embedding per input, of the model's
dimension). The server is idle while the baseline runs. Order: baseline, every level once, then
--repeats - 1 more (baseline, ratio level) pairs in alternating order (ABBA); the baseline and the
ratio level (32) report the median of their runs, the ratio = server texts/s at 32 / in-process texts/s.

Per level the script also reads the server's /metrics (forward passes, texts per pass, padded
tokens, inference and tokenisation seconds) and the CPU seconds of both processes: "busy" is the
inference thread's share of the wall time, "srv CPU" / "cli CPU" the cores each process used.

Overload: a second server with --overload-queue (64 texts) is hit by a burst of the largest level's
count of requests at once, then by an open-loop stream at --overload-factor (2x) the request rate
the ratio level reached (Poisson arrivals, each request on its own, no retries, Retry-After
ignored) for --overload-duration seconds, with a client timeout of --timeout. Every request must
end in a checked 200 or a 429 carrying Retry-After: anything else (other status, connection error,
timeout) counts as lost; afterwards /health must be ok with an empty queue.

Threads: the server uses torch's default intra-op thread count (as `conan-embed serve` does); the
baseline uses the same count in this process. --threads N sets both (OMP_NUM_THREADS for the server).

    HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false .venv/bin/python benchmarks/serve_load.py \
        [--model e5-small|tiny|PATH] [--levels 1,8,32,128] [--requests 256] [--duration 60] [--repeats 3] \
        [--batch-size 32] [--passage-share 0.3] [--overload-queue 64] [--overload-factor 2] \
        [--overload-duration 20] [--timeout 30] [--precision fp32] [--device cpu] [--threads N] [--seed 0]

Smoke run: `--model tiny --requests 64 --levels 1,8,32 --repeats 1 --overload-duration 5`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: ST's weight-loading bars
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_PROMPTS = {"query": "query: ", "passage": "passage: "}


@dataclass
class Req:
    kind: str  # "query" or "passage"
    texts: list[str]


@dataclass
class LevelResult:
    name: str
    concurrency: int
    wall: float = 0.0
    latencies: list[float] = field(default_factory=list)  # of 200 answers, seconds
    texts: int = 0  # texts of 200 answers
    statuses: Counter = field(default_factory=Counter)  # "200", "429", "500", "ReadTimeout", "bad 200", ...
    missing_retry_after: int = 0
    issued: int = 0
    capped: bool = False
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    metrics: dict = field(default_factory=dict)
    r429_latencies: list[float] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return self.statuses["200"]

    @property
    def lost(self) -> int:
        return sum(v for k, v in self.statuses.items() if k not in ("200", "429"))

    @property
    def texts_per_s(self) -> float:
        return self.texts / self.wall if self.wall else 0.0

    @property
    def requests_per_s(self) -> float:
        return self.ok / self.wall if self.wall else 0.0


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank), nan if empty."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


# -- requests ------------------------------------------------------------------------------------------
def make_requests(n: int, passage_share: float, seed: int) -> list[Req]:
    from conan_embed.data.sources import insuranceqa_answers, insuranceqa_questions

    questions = insuranceqa_questions("test")
    answers = insuranceqa_answers()
    rng = random.Random(seed)
    qpool = [q.text for q in questions]
    apool = list(dict.fromkeys(answers[a] for q in questions for a in q.answers))
    rng.shuffle(qpool)
    rng.shuffle(apool)
    qi = ai = 0
    out = []
    for _ in range(n):
        if rng.random() < passage_share:
            k = rng.randint(1, 4)
            texts = [apool[(ai + j) % len(apool)] for j in range(k)]
            ai += k
            out.append(Req("passage", texts))
        else:
            k = rng.randint(1, 8)
            texts = [qpool[(qi + j) % len(qpool)] for j in range(k)]
            qi += k
            out.append(Req("query", texts))
    return out


def prepare_model(args, reqs: list[Req], tmp: Path) -> str:
    if args.model != "tiny":
        from conan_embed.model_loading import resolve_model

        return str(resolve_model(args.model).location)
    from conan_embed.modeling import build_embedder, save_embedder
    from conan_embed.testing import tiny_bert

    texts = [t for r in reqs for t in r.texts] + list(TINY_PROMPTS.values())
    base = tiny_bert(tmp / "tiny-bert", texts, hidden=64, layers=2, intermediate=128, max_positions=512)
    model = build_embedder(base, pooling="mean", out_dim=None, max_seq_length=512, prompts=TINY_PROMPTS)
    return str(save_embedder(model, tmp / "tiny-model"))


# -- the server ----------------------------------------------------------------------------------------
class ServerProcess:
    """`conan-embed serve` in a subprocess on a free port; its output goes to a log file (never a
    pipe, which would block the server once full)."""

    def __init__(self, model: str, log: Path, *, max_queue: int, max_batch_tokens: int, precision: str,
                 threads: int | None, device: str = "cpu"):
        from conan_embed.serving.local import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        exe = Path(sys.executable).with_name("conan-embed")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "conan_embed.cli"]
        cmd += ["serve", model, "--port", str(self.port), "--max-queue", str(max_queue),
                "--max-batch-tokens", str(max_batch_tokens), "--precision", precision, "--device", device]
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false", TQDM_DISABLE="1")
        if threads:
            env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self._spawn(cmd, log, env)

    def _spawn(self, cmd: list[str], log: Path, env: dict, cwd: Path | None = None) -> None:
        self.cmd, self.log = cmd, log
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=cwd)

    def wait_ready(self, timeout: float = 300.0) -> dict:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
            try:
                r = httpx.get(self.url + "/health", timeout=5)
                body = r.json()
                if body.get("status") == "ok":
                    return body
                if body.get("status") == "failed":
                    raise RuntimeError(f"the model did not load: {body}")
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the server was not ready in {timeout:.0f} s: {self.log.read_text()[-2000:]}")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime, all threads

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def scrape(url: str) -> dict[str, float]:
    """The server's counters and histogram sums/counts we use, summed over labels we don't split."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    text = httpx.get(url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith(("_sum", "_count", "_total")) or family.type == "counter":
                key = s.name + "".join(f"[{v}]" for k, v in sorted(s.labels.items()) if k == "stage")
                out[key] = out.get(key, 0.0) + s.value
    return out


def diff_metrics(before: dict, after: dict) -> dict[str, float]:
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    passes = d.get("conan_embed_batch_texts_count", 0.0)
    return {
        "passes": passes,
        "texts_per_pass": d.get("conan_embed_batch_texts_sum", 0.0) / passes if passes else float("nan"),
        "padded_tokens": d.get("conan_embed_batch_padded_tokens_sum", 0.0),
        "real_tokens": d.get("conan_embed_tokens_total", 0.0),
        "inference_s": d.get("conan_embed_stage_seconds_sum[inference]", 0.0),
        "tokenize_s": d.get("conan_embed_stage_seconds_sum[tokenize]", 0.0),
        "queue_s": d.get("conan_embed_stage_seconds_sum[queue]", 0.0),
        "queue_n": d.get("conan_embed_stage_seconds_count[queue]", 0.0),
    }


# -- the load generator --------------------------------------------------------------------------------
def make_client(concurrency: int, timeout: float):
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(timeout))


async def send(client, url: str, req: Req, dim: int, res: LevelResult) -> None:
    """One request; its outcome goes into `res` (never raises, except for cancellation)."""
    import httpx

    body = {"input": req.texts, "model": "bench", "input_type": req.kind, "encoding_format": "float"}
    t0 = time.perf_counter()
    try:
        r = await client.post(url + "/v1/embeddings", json=body)
        latency = time.perf_counter() - t0
        if r.status_code == 200:
            data = r.json()["data"]
            if len(data) != len(req.texts) or any(len(d["embedding"]) != dim for d in data):
                res.statuses["bad 200"] += 1
                return
            res.statuses["200"] += 1
            res.texts += len(req.texts)
            res.latencies.append(latency)
        else:
            res.statuses[str(r.status_code)] += 1
            if r.status_code == 429:
                res.r429_latencies.append(latency)
                if not r.headers.get("retry-after"):
                    res.missing_retry_after += 1
    except httpx.TimeoutException as exc:
        res.statuses[f"timeout ({type(exc).__name__})"] += 1
    except Exception as exc:  # connection reset, protocol error, bad JSON: all count as lost
        res.statuses[f"error ({type(exc).__name__})"] += 1


async def closed_loop(url: str, reqs: list[Req], concurrency: int, duration: float, timeout: float, dim: int,
                      name: str) -> LevelResult:
    res = LevelResult(name, concurrency)
    it = iter(range(len(reqs)))
    async with make_client(concurrency, timeout) as client:
        start = time.perf_counter()
        deadline = start + duration
        last = [start]

        async def worker():
            for i in it:
                if time.perf_counter() > deadline:
                    res.capped = True
                    return
                res.issued += 1
                await send(client, url, reqs[i], dim, res)
                last[0] = time.perf_counter()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        res.wall = last[0] - start
    return res


async def overload(url: str, reqs: list[Req], burst: int, rate: float, duration: float, timeout: float, dim: int,
                   seed: int) -> LevelResult:
    """A burst of `burst` requests at once, then Poisson arrivals at `rate`/s for `duration` s; every
    request on its own task, awaited to the end (each bounded by the client timeout)."""
    res = LevelResult("overload", burst)
    rng = random.Random(seed + 1)
    tasks = []
    async with make_client(10_000, timeout) as client:
        start = time.perf_counter()
        n = 0
        for _ in range(burst):
            tasks.append(asyncio.create_task(send(client, url, reqs[n % len(reqs)], dim, res)))
            n += 1
        t = start
        while True:
            t += rng.expovariate(rate)
            if t - start > duration:
                break
            await asyncio.sleep(max(0.0, t - time.perf_counter()))
            tasks.append(asyncio.create_task(send(client, url, reqs[n % len(reqs)], dim, res)))
            n += 1
        res.issued = n
        done, pending = await asyncio.wait(tasks, timeout=timeout + 30)
        for task in pending:  # the client timeout should have ended these: count them as hung
            task.cancel()
            res.statuses["hung (client task)"] += 1
        res.wall = time.perf_counter() - start
    return res


def run_level(server: ServerProcess, reqs, concurrency, args, dim, name) -> LevelResult:
    before, cpu0, ccpu0 = scrape(server.url), server.cpu_seconds(), time.process_time()
    res = asyncio.run(closed_loop(server.url, reqs, concurrency, args.duration, args.timeout, dim, name))
    res.server_cpu, res.client_cpu = server.cpu_seconds() - cpu0, time.process_time() - ccpu0
    res.metrics = diff_metrics(before, scrape(server.url))
    return res


# -- the in-process baseline -----------------------------------------------------------------------------
class Baseline:
    def __init__(self, path: str, precision: str, batch_size: int, device: str = "cpu"):
        import torch
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(path, device=device)
        self.model.eval()
        self.batch_size, self.precision = batch_size, precision
        self.shapes: list[tuple[int, int]] = []
        self.model[0].register_forward_pre_hook(lambda mod, inp: self.shapes.append(tuple(inp[0]["input_ids"].shape)))
        self.autocast = (lambda: torch.autocast(device.split(":")[0], dtype=torch.bfloat16)) if precision == "bf16" \
            else None
        prompts = self.model.prompts or {}
        self.prompt_names = {"query": "query" if "query" in prompts else None,
                             "passage": next((p for p in ("passage", "document") if p in prompts), None)}

    def encode(self, texts: dict[str, list[str]]) -> tuple[float, float]:
        """(wall seconds, CPU seconds) to encode every text of each kind with its prompt."""
        from contextlib import nullcontext

        self.shapes.clear()
        t0, c0 = time.perf_counter(), time.process_time()
        with self.autocast() if self.autocast else nullcontext():
            for kind, items in texts.items():
                if items:
                    self.model.encode(items, batch_size=self.batch_size, prompt_name=self.prompt_names[kind],
                                      convert_to_numpy=True)
        return time.perf_counter() - t0, time.process_time() - c0

    @property
    def padded_tokens(self) -> int:
        return sum(a * b for a, b in self.shapes)


# -- main ------------------------------------------------------------------------------------------------
def fmt_row(cells, widths) -> str:
    return " ".join(f"{c:>{w}}" for c, w in zip(cells, widths))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="e5-small", help="a shipped model, a folder, or 'tiny' (random tiny BERT)")
    parser.add_argument("--levels", default="1,8,32,128", help="concurrency levels (default: %(default)s)")
    parser.add_argument("--requests", type=int, default=256, help="requests per level (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=60.0, help="wall-clock cap per level, s (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the baseline and of the ratio level")
    parser.add_argument("--batch-size", type=int, default=32, help="in-process encode batch size")
    parser.add_argument("--passage-share", type=float, default=0.3, help="share of passage requests")
    parser.add_argument("--max-batch-tokens", type=int, default=8192, help="the server's --max-batch-tokens")
    parser.add_argument("--max-queue", type=int, default=1024, help="the server's --max-queue for the levels")
    parser.add_argument("--overload-queue", type=int, default=64, help="--max-queue of the overload server")
    parser.add_argument("--overload-factor", type=float, default=2.0, help="offered load / measured capacity")
    parser.add_argument("--overload-duration", type=float, default=20.0, help="seconds of open-loop overload")
    parser.add_argument("--no-overload", action="store_true")
    parser.add_argument("--timeout", type=float, default=30.0, help="client timeout per request, s")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--device", default="cpu", help="the server's and the baseline's device (cpu, cuda)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the server and the baseline")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    ratio_level = 32 if 32 in levels else max(levels)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    reqs = make_requests(args.requests, args.passage_share, args.seed)
    texts = {k: [t for r in reqs if r.kind == k for t in r.texts] for k in ("query", "passage")}
    n_texts = sum(len(v) for v in texts.values())
    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    server = None
    try:
        path = prepare_model(args, reqs, tmp)
        baseline = Baseline(path, args.precision, args.batch_size, args.device)
        tok = baseline.model.tokenizer
        cap = baseline.model.max_seq_length
        lens = {k: [min(cap, len(tok((baseline.model.prompts.get(baseline.prompt_names[k]) or "") + t)["input_ids"]))
                    for t in v] for k, v in texts.items()}
        print(f"model {args.model} ({path}), {args.precision}, torch threads {torch.get_num_threads()} "
              f"(server: {'OMP_NUM_THREADS=' + str(args.threads) if args.threads else 'torch default'}), "
              f"{os.cpu_count()} CPUs, load average {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}")
        print(f"{len(reqs)} requests: {sum(r.kind == 'query' for r in reqs)} query ({len(texts['query'])} texts, "
              f"median {statistics.median(lens['query'] or [0])} tokens), {sum(r.kind == 'passage' for r in reqs)} "
              f"passage ({len(texts['passage'])} texts, median {statistics.median(lens['passage'] or [0])} tokens, "
              f"p90 {pct(lens['passage'], 90)}); {n_texts} texts, {sum(map(sum, lens.values()))} tokens")

        server = ServerProcess(path, tmp / "server.log", max_queue=args.max_queue, max_batch_tokens=args.max_batch_tokens,
                               precision=args.precision, threads=args.threads, device=args.device)
        health = server.wait_ready()
        dim = max(health["dimensions"])
        print(f"server {' '.join(server.cmd[1:])} ready (dim {dim})")
        # warm-up, not measured: the server's first forward passes and the baseline's
        asyncio.run(closed_loop(server.url, reqs[:16], 8, 60, args.timeout, dim, "warm-up"))
        baseline.encode({k: v[:16] for k, v in texts.items()})

        base_runs: list[tuple[float, float]] = []
        results: dict[int, list[LevelResult]] = {c: [] for c in levels}

        def do_baseline():
            wall, cpu = baseline.encode(texts)
            base_runs.append((wall, cpu))
            print(f"  in-process encode: {n_texts / wall:8.1f} texts/s ({wall:.1f} s, CPU {cpu / wall:.2f} cores, "
                  f"{baseline.padded_tokens / n_texts:.0f} padded tokens/text)", flush=True)

        def do_level(c):
            res = run_level(server, reqs, c, args, dim, f"c{c}")
            results[c].append(res)
            m = res.metrics
            print(f"  concurrency {c:>4}: {res.texts_per_s:8.1f} texts/s {res.requests_per_s:6.1f} req/s "
                  f"p50 {1000 * pct(res.latencies, 50):7.0f} ms p99 {1000 * pct(res.latencies, 99):7.0f} ms "
                  f"({res.ok}/{res.issued} ok, {dict(res.statuses)}{', CAPPED by --duration' if res.capped else ''}; "
                  f"{m['passes']:.0f} passes, {m['texts_per_pass']:.1f} texts/pass, busy "
                  f"{m['inference_s'] / res.wall:.2f}, srv CPU {res.server_cpu / res.wall:.2f}, "
                  f"cli CPU {res.client_cpu / res.wall:.2f})", flush=True)

        for r in range(args.repeats):
            print(f"round {r + 1}:")
            if r == 0:
                do_baseline()
                baseline_padded = baseline.padded_tokens
                for c in levels:
                    do_level(c)
            elif r % 2 == 1:
                do_level(ratio_level)
                do_baseline()
            else:
                do_baseline()
                do_level(ratio_level)

        over = None
        if not args.no_overload:
            server.stop()
            server = ServerProcess(path, tmp / "overload.log", max_queue=args.overload_queue,
                                   max_batch_tokens=args.max_batch_tokens, precision=args.precision,
                                   threads=args.threads, device=args.device)
            server.wait_ready()
            asyncio.run(closed_loop(server.url, reqs[:16], 8, 60, args.timeout, dim, "warm-up"))
            capacity = statistics.median(x.requests_per_s for x in results[ratio_level])
            rate = args.overload_factor * capacity
            burst = max(levels)
            before, cpu0, ccpu0 = scrape(server.url), server.cpu_seconds(), time.process_time()
            over = asyncio.run(overload(server.url, reqs, burst, rate, args.overload_duration, args.timeout, dim,
                                        args.seed))
            over.server_cpu, over.client_cpu = server.cpu_seconds() - cpu0, time.process_time() - ccpu0
            over.metrics = diff_metrics(before, scrape(server.url))
            import httpx

            after = httpx.get(server.url + "/health", timeout=10).json()
            healthy = after.get("status") == "ok" and after.get("queue") == 0
            if not healthy:
                over.statuses[f"unhealthy after ({after})"] += 1
            print(f"overload: --max-queue {args.overload_queue}, burst {burst} + {rate:.1f} req/s "
                  f"({args.overload_factor:g}x {capacity:.1f}) for {args.overload_duration:g} s: {over.issued} requests, "
                  f"{dict(over.statuses)}, 429 without Retry-After {over.missing_retry_after}, health after "
                  f"{after.get('status')} queue {after.get('queue')}", flush=True)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    load_end = os.getloadavg()

    # -- report ----------------------------------------------------------------------------------------
    base_tps = statistics.median(n_texts / w for w, _ in base_runs)
    print(f"\nin-process encode (batch {args.batch_size}): runs " + ", ".join(f"{n_texts / w:.1f}" for w, _ in base_runs)
          + f" texts/s, median {base_tps:.1f}; {baseline_padded / n_texts:.0f} padded tokens/text")
    head = ("level", "runs", "ok", "429", "lost", "texts/s", "req/s", "p50 ms", "p99 ms", "vs in-proc", "passes",
            "texts/pass", "pad tok/text", "busy", "srv CPU", "cli CPU")
    widths = (10, 5, 5, 4, 4, 8, 6, 7, 7, 10, 6, 10, 12, 5, 7, 7)
    print(fmt_row(head, widths))
    print(fmt_row(("in-proc", len(base_runs), n_texts, "", "", f"{base_tps:.1f}", "", "", "", "1.00", "", args.batch_size,
                   f"{baseline_padded / n_texts:.0f}", "", "", f"{statistics.median(c / w for w, c in base_runs):.2f}"),
                  widths))
    summary = {}
    for c in levels:
        runs = results[c]
        med = sorted(runs, key=lambda x: x.texts_per_s)[len(runs) // 2]  # the median run (upper for even counts)
        summary[c] = med
        m = med.metrics
        cells = (f"c{c}" + ("*" if med.capped else ""), len(runs), med.ok, med.statuses["429"], med.lost,
                 f"{med.texts_per_s:.1f}", f"{med.requests_per_s:.1f}", f"{1000 * pct(med.latencies, 50):.0f}",
                 f"{1000 * pct(med.latencies, 99):.0f}", f"{med.texts_per_s / base_tps:.2f}", f"{m['passes']:.0f}",
                 f"{m['texts_per_pass']:.1f}", f"{m['padded_tokens'] / max(med.texts, 1):.0f}",
                 f"{m['inference_s'] / med.wall:.2f}", f"{med.server_cpu / med.wall:.2f}",
                 f"{med.client_cpu / med.wall:.2f}")
        print(fmt_row(cells, widths))
    if any(x.capped for runs in results.values() for x in runs):
        print("* cut by --duration: texts/s over a prefix of the request list")
    c_runs = results[ratio_level]
    c_tps = statistics.median(x.texts_per_s for x in c_runs)
    ratio = c_tps / base_tps
    print(f"ratio level c{ratio_level}: runs " + ", ".join(f"{x.texts_per_s:.1f}" for x in c_runs)
          + f" texts/s, median {c_tps:.1f}; ratio {ratio:.2f} (target >= 0.8: {'met' if ratio >= 0.8 else 'MISSED'})")
    over_ok = None
    if over is not None:
        over_ok = over.lost == 0 and over.missing_retry_after == 0 and over.ok > 0 and over.statuses["429"] > 0
        m = over.metrics
        print(f"overload: {over.issued} requests in {over.wall:.1f} s: {over.ok} x 200 ({over.texts / over.wall:.1f} "
              f"texts/s, p50 {1000 * pct(over.latencies, 50):.0f} ms, p99 {1000 * pct(over.latencies, 99):.0f} ms), "
              f"{over.statuses['429']} x 429 (p50 {1000 * pct(over.r429_latencies, 50):.0f} ms, p99 "
              f"{1000 * pct(over.r429_latencies, 99):.0f} ms), lost {over.lost}; server busy "
              f"{m['inference_s'] / over.wall:.2f}, tokenize {m['tokenize_s']:.1f} s over all requests, srv CPU "
              f"{over.server_cpu / over.wall:.2f}, cli CPU {over.client_cpu / over.wall:.2f} "
              f"(target: every request a 200 or a 429 with Retry-After: {'met' if over_ok else 'MISSED'})")
    print(f"load average: {load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end")
    line = (f"RESULT serve_load model={args.model} texts={n_texts} inprocess_texts_per_s={base_tps:.1f} "
            + " ".join(f"c{c}_texts_per_s={summary[c].texts_per_s:.1f} c{c}_p50_ms={1000 * pct(summary[c].latencies, 50):.0f} "
                       f"c{c}_p99_ms={1000 * pct(summary[c].latencies, 99):.0f}" for c in levels)
            + f" ratio_c{ratio_level}={ratio:.2f}")
    if over is not None:
        line += (f" overload_ok={str(over_ok).lower()} overload_200={over.ok} overload_429={over.statuses['429']} "
                 f"overload_lost={over.lost}")
    print(line)


if __name__ == "__main__":
    main()
