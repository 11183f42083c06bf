"""`conan-embed import`: your own data (FlagEmbedding JSONL, sentence-transformers columns, query-passage
pairs) into this project's training files, and back out to FlagEmbedding JSONL (docs/data.md, "Bring
your own data").

Layout of the output folder::

    finetune/retrieval.jsonl       id, query, positives, positive_ids, candidates (the given negatives, in
                                   order), optional prompt, positive_scores, negative_scores, type
    finetune/corpus.jsonl          id, text: every positive and negative passage once (id = hash of the text)
    finetune/classification.jsonl  FlagEmbedding rows whose `type` names classification: negatives as texts
    finetune/sts.jsonl             text1, text2, score
    pretrain/weak_pairs.jsonl      id, query, passage, source (the input's name), optional score, prompt
    rejected.jsonl                 every row that could not be imported: file, row, reason, detail, raw
    import.json                    the summary, written last: rows in = written + rejected, counts per
                                   file and reason, the inputs (size, layout) and the options
    import-work/                   while it runs: options.json and one chunk-NNNNNN/ folder per chunk_rows
                                   input rows, its done.json written last (a re-run continues after the last)

Memory is constant in the input size (a chunk's rows at a time) but for the set of passage ids seen,
which the corpus dedup needs: about 100 bytes a passage.
"""

from __future__ import annotations

import itertools
import json
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from conan_embed.data.builders import FILES
from conan_embed.data.builders import KINDS as RECORD_KINDS
from conan_embed.data.import_formats import (Rejected, Source, convert, flagembedding_row, open_source, parse,
                                             raw_rows, raw_text)
from conan_embed.data.records import read_corpus, read_records, write_records
from conan_embed.errors import InputError
from conan_embed.files import atomic_path, write_json
from conan_embed.logs import get_logger

log = get_logger("data")

OUTPUTS = ("retrieval", "corpus", "classification", "sts", "weak_pairs")  # builders.FILES keys, in listing order
REJECTED, SUMMARY, WORK, DONE = "rejected.jsonl", "import.json", "import-work", "done.json"
IMPORT_VERSION = 1


def import_data(inputs: Iterable, output, *, input_format: str = "auto", kind: str = "auto",
                chunk_rows: int = 10_000, overwrite: bool = False, progress: bool = True,
                max_chunks: int | None = None) -> dict:
    """Import `inputs` into the folder `output`; returns the summary (also output/import.json).

    input_format: auto | flagembedding | st | pairs; kind: auto | retrieval | sts | pairs (what the rows
    become; auto: retrieval for FlagEmbedding and triplets, sts for scored sentence pairs, pairs otherwise).
    A re-run continues after the last complete chunk of `chunk_rows` input rows, and refuses, naming the
    setting, if the options or the inputs changed; overwrite: start again. max_chunks: stop after that many
    new chunks (returns {"stopped_after_chunk": n}), to split a long import or to test resume.
    """
    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise InputError("no input files")
    if chunk_rows < 1:
        raise InputError(f"chunk_rows must be 1 or more, got {chunk_rows}", field="chunk_rows")
    sources = [open_source(p, input_format, kind, label) for p, label in zip(inputs, _labels(inputs))]
    output = Path(output)
    settings = {"options": {"format": input_format, "kind": kind, "chunk_rows": chunk_rows},
                "inputs": [{"path": str(s.path), "bytes": _size(s.path), "layout": s.layout, "kind": s.kind}
                           for s in sources]}
    start = time.perf_counter()
    if _start(output, settings, overwrite) == "finished":
        log.info(f"{output} already holds this import ({SUMMARY}); --overwrite imports again")
        return json.loads((output / SUMMARY).read_text(encoding="utf-8"))
    work = output / WORK
    done = _complete_chunks(work)
    if done:
        log.info(f"continuing the import in {output} after chunk {done} ({done * chunk_rows:,} rows)")
    seen = {row["id"] for n in range(done) for row in _chunk_rows(work, n, "corpus")}
    rows = itertools.islice(_all_rows(sources), done * chunk_rows, None)
    from tqdm.auto import tqdm

    chunk = done
    with tqdm(initial=done * chunk_rows, unit=" rows", desc="importing", disable=not progress) as bar:
        while batch := list(itertools.islice(rows, chunk_rows)):
            if max_chunks is not None and chunk - done >= max_chunks:
                return {"stopped_after_chunk": chunk, "work": str(work)}
            _write_chunk(work / _chunk_name(chunk), batch, sources, seen)
            bar.update(len(batch))
            chunk += 1
    return _finish(output, settings, chunk, resumed_at=done, seconds=time.perf_counter() - start)


def export_flagembedding(data_dir, output, *, progress: bool = True) -> dict:
    """Write the retrieval and classification rows of a data folder (an import's output, or build-data's)
    as FlagEmbedding JSONL: {"query", "pos", "neg", and pos_scores, neg_scores, prompt, type where the
    rows carry them}; `neg` is the texts of a row's candidates (the corpus is read into memory), or its
    negatives. Returns {"rows": {file: count}, "output": path}."""
    from tqdm.auto import tqdm

    folder, output = Path(data_dir), Path(output)
    if not folder.is_dir():
        raise InputError("--to flagembedding reads a data folder (finetune/retrieval.jsonl, finetune/corpus.jsonl)",
                         path=folder)
    names = [FILES[n] for n in ("retrieval", "classification") if (folder / FILES[n]).is_file()]
    if not names:
        raise InputError(f"holds neither {FILES['retrieval']} nor {FILES['classification']}", path=folder)
    if output.suffix != ".jsonl":
        raise InputError("FlagEmbedding data is a .jsonl file", path=output, field="output")
    corpus, counts = None, dict.fromkeys(names, 0)

    def lines() -> Iterator[bytes]:
        nonlocal corpus
        for name in names:
            for number, row in enumerate(read_records(folder / name, "retrieval"), 1):
                if row.get("candidates") is not None and corpus is None:
                    corpus = dict(zip(*read_corpus(folder / FILES["corpus"])))
                try:
                    fe = flagembedding_row(row, corpus)
                except KeyError as exc:
                    raise InputError(f"candidate id {exc.args[0]!r} is not in {FILES['corpus']}", path=folder / name,
                                     row=number, field="candidates") from None
                counts[name] += 1
                bar.update()
                yield (json.dumps(fe, ensure_ascii=False) + "\n").encode("utf-8")

    with tqdm(unit=" rows", desc="exporting", disable=not progress) as bar:
        _write_atomic(output, lines())
    return {"rows": counts, "output": str(output)}


# --- the import's steps --------------------------------------------------------------------------------------

def _labels(paths: list[Path]) -> list[str]:
    """Each input's id prefix: its name without suffixes, numbered where two inputs share one."""
    stems = [p.name.split(".")[0] or "input" for p in paths]
    return [s if stems.count(s) == 1 else f"{s}#{k}" for k, s in enumerate(stems)]


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _comparable(settings: dict) -> tuple[dict, list[dict]]:
    return settings["options"], [{k: i[k] for k in ("path", "bytes", "layout", "kind")} for i in settings["inputs"]]


def _same_settings(old: dict, new: dict, where: Path) -> None:
    """Refuse to continue (or reuse) an import made with other options or inputs, naming what changed."""
    (old_options, old_inputs), (options, inputs) = _comparable(old), _comparable(new)
    for key, flag in (("format", "--format"), ("kind", "--kind"), ("chunk_rows", "--chunk-rows")):
        if old_options.get(key) != options[key]:
            raise InputError(f"{flag} was {old_options.get(key)} for the import here and is now {options[key]}: "
                             f"pass {flag} {old_options.get(key)} to continue it, or --overwrite to start again",
                             path=where, field=key)
    if old_inputs != inputs:
        was = [f"{i['path']} ({i['bytes']:,} bytes)" for i in old_inputs]
        now = [f"{i['path']} ({i['bytes']:,} bytes)" for i in inputs]
        raise InputError(f"the inputs changed: the import here read {', '.join(was)}, this one reads "
                         f"{', '.join(now)}; pass --overwrite to start again", path=where, field="inputs")


def _start(output: Path, settings: dict, overwrite: bool) -> str:
    """fresh | resume | finished; clears what an earlier import wrote when `overwrite`."""
    summary, work = output / SUMMARY, output / WORK
    ours = [output / f for f in FILES.values()] + [output / REJECTED, summary, work]
    if overwrite:
        for path in ours:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    elif summary.is_file():
        _same_settings(json.loads(summary.read_text(encoding="utf-8")), settings, summary)
        shutil.rmtree(work, ignore_errors=True)  # left by a crash after the summary was written
        return "finished"
    elif (work / "options.json").is_file():
        _same_settings(json.loads((work / "options.json").read_text(encoding="utf-8")), settings, work / "options.json")
        return "resume"
    elif clash := [p for p in ours if p.exists()]:
        raise InputError("already exists and no import here can continue; pass --overwrite to replace it "
                         "(and every other file import writes)", path=clash[0], field="output")
    write_json(work / "options.json", settings)
    return "fresh"


def _chunk_name(n: int) -> str:
    return f"chunk-{n:06d}"


def _complete_chunks(work: Path) -> int:
    """How many chunks, from the first, are complete; the folders of any others (cut short) are removed."""
    done = 0
    while (work / _chunk_name(done) / DONE).is_file():
        done += 1
    for folder in work.glob("chunk-*"):
        if folder.name >= _chunk_name(done):
            shutil.rmtree(folder)
    return done


def _chunk_rows(work: Path, n: int, name: str) -> Iterator[dict]:
    path = work / _chunk_name(n) / f"{name}.jsonl"
    return read_records(path) if path.is_file() else iter(())


def _all_rows(sources: list[Source]) -> Iterator[tuple[int, int, object]]:
    """(input index, row number, raw row) of every input in turn."""
    for k, source in enumerate(sources):
        for number, raw in raw_rows(source.path, source.container):
            yield k, number, raw


def _write_chunk(folder: Path, batch: list, sources: list[Source], seen: set[str]) -> None:
    """Import one chunk of raw rows into its own files; done.json, written last, marks it complete."""
    out: dict[str, list] = {name: [] for name in OUTPUTS}
    rejected, reasons = [], Counter()
    per_input: dict[int, list[int]] = {}  # input index -> [rows, rejected]
    imported = listed = 0
    for k, number, raw in batch:
        source = sources[k]
        counts = per_input.setdefault(k, [0, 0])
        counts[0] += 1
        try:
            records, passages = convert(source, parse(raw, source.container), number)
        except Rejected as exc:
            counts[1] += 1
            reasons[exc.reason] += 1
            rejected.append({"file": str(source.path), "row": number, "reason": exc.reason,
                             **({"field": exc.field} if exc.field else {}), "detail": exc.detail, "raw": raw_text(raw)})
            continue
        imported += 1
        listed += len(passages)
        for pid, text in passages:
            if pid not in seen:
                seen.add(pid)
                out["corpus"].append({"id": pid, "text": text})
        for name, record in records:
            out[name].append(record)
    files = {name: write_records(folder / f"{name}.jsonl", rows, RECORD_KINDS[name])
             for name, rows in out.items() if rows}
    if rejected:
        write_records(folder / REJECTED, rejected)
    write_json(folder / DONE, {"rows": len(batch), "imported": imported, "rejected": len(rejected),
                               "reasons": dict(reasons), "files": files, "passages_listed": listed,
                               "inputs": {str(k): c for k, c in per_input.items()}})


def _write_atomic(dest: Path, blocks: Iterable[bytes]) -> int:
    """Write byte blocks to `dest` through a temporary file renamed over it; returns the lines written."""
    lines = 0
    with atomic_path(dest) as tmp, open(tmp, "wb") as f:
        for block in blocks:
            f.write(block)
            lines += block.count(b"\n")
    return lines


def _blocks(paths: list[Path]) -> Iterator[bytes]:
    for path in paths:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                yield block


def _finish(output: Path, settings: dict, chunks: int, *, resumed_at: int, seconds: float) -> dict:
    """Join the chunks' files into the output files, check that no row went missing, write the summary."""
    work = output / WORK
    markers = [json.loads((work / _chunk_name(n) / DONE).read_text(encoding="utf-8")) for n in range(chunks)]
    files = {}
    for name in [*OUTPUTS, "rejected"]:
        parts = [work / _chunk_name(n) / (REJECTED if name == "rejected" else f"{name}.jsonl")
                 for n, m in enumerate(markers) if (m["rejected"] if name == "rejected" else m["files"].get(name))]
        expected = sum(m["rejected"] if name == "rejected" else m["files"].get(name, 0) for m in markers)
        if not parts and name != "rejected":
            continue
        dest = output / (REJECTED if name == "rejected" else FILES[name])
        if (written := _write_atomic(dest, _blocks(parts))) != expected:
            raise RuntimeError(f"{dest}: {written} lines written, the chunks hold {expected}")
        if name != "rejected":
            files[FILES[name]] = written
    rows_in, imported, rejected = (sum(m[k] for m in markers) for k in ("rows", "imported", "rejected"))
    if rows_in != imported + rejected:
        raise RuntimeError(f"{rows_in} rows in, but {imported} written + {rejected} rejected")
    inputs = [{**i, "rows": sum(m["inputs"].get(str(k), [0, 0])[0] for m in markers),
               "rejected": sum(m["inputs"].get(str(k), [0, 0])[1] for m in markers)}
              for k, i in enumerate(settings["inputs"])]
    reasons = Counter()
    for m in markers:
        reasons.update(m["reasons"])
    summary = {"version": IMPORT_VERSION, "options": settings["options"], "inputs": inputs,
               "rows_in": rows_in, "rows_written": imported, "rows_rejected": rejected,
               "files": files, "rejected": dict(sorted(reasons.items())), "rejected_file": REJECTED,
               "passages": {"listed": sum(m["passages_listed"] for m in markers),
                            "unique": files.get(FILES["corpus"], 0)},
               "chunks": chunks, "resumed_at_chunk": resumed_at or None, "seconds": round(seconds, 1)}
    write_json(output / SUMMARY, summary)
    shutil.rmtree(work)
    log.info(f"{rows_in:,} rows in: {imported:,} written, {rejected:,} rejected ({output / REJECTED})")
    return summary
