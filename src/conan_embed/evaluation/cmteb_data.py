"""Where the C-MTEB datasets come from: `--data-dir`, the Hugging Face cache, or the hub.

mteb's loaders call `datasets.load_dataset(repo, config, revision=...)`. The runner hands them a local
folder in place of the repo id: `DATA_DIR/<repo id>` (a plain mirror of the dataset repo: `git clone`
or `hf download --local-dir`), or the hub cache's snapshot of the revision mteb pins. So every missing
dataset is known, and named in one error, before the model loads; a run never depends on how
`datasets` behaves offline; and without data and without a hub the run fails in seconds instead of
retrying for minutes (docs/assets.md). Datasets still missing are downloaded when their task runs, if
the hub answers one short probe.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from conan_embed.errors import InputError

HUB_PROBE_TIMEOUT_S = 3.0
_TRUE = {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True)
class DataSource:
    repo: str  # hub dataset repo id, e.g. "mteb/T2Retrieval"
    revision: str  # the commit mteb pins
    path: Path | None  # local folder; None = download when the task runs
    origin: str  # "data-dir", "hf-cache" or "hub"


def hub_unreachable_reason() -> str | None:
    """Why the hub can't be used (None = it answered). One HEAD request, no retries."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in _TRUE:
            return f"{var}={os.environ[var]}"
    from huggingface_hub import constants

    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"),
                               timeout=HUB_PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return None  # any HTTP answer means the hub is there
    except (OSError, ValueError) as exc:
        return f"{constants.ENDPOINT} not reachable: {exc}; one probe, {HUB_PROBE_TIMEOUT_S:.0f} s timeout"
    return None


def _cached_snapshot(repo: str, revision: str) -> Path | None:
    from huggingface_hub import constants, snapshot_download

    try:  # cache_dir read now, not at import, so HF_HUB_CACHE set by the caller counts
        return Path(snapshot_download(repo, repo_type="dataset", revision=revision, local_files_only=True,
                                      cache_dir=constants.HF_HUB_CACHE))
    except OSError:  # LocalEntryNotFoundError is a FileNotFoundError
        return None


def locate(datasets: Mapping[str, tuple[str, str]], data_dir: str | Path | None = None) -> dict[str, DataSource]:
    """task name -> (repo, revision) to where each dataset is read from. Raises InputError naming every
    missing dataset, with the commands that provide them, when the hub can't be reached."""
    if data_dir is not None:
        data_dir = Path(data_dir).expanduser()
        if not data_dir.is_dir():
            raise InputError("data folder does not exist", path=data_dir)
    sources: dict[str, DataSource] = {}
    missing: dict[str, tuple[str, str]] = {}
    for task, (repo, revision) in datasets.items():
        folder = data_dir / repo if data_dir is not None else None
        if folder is not None and folder.is_dir() and any(folder.iterdir()):
            sources[task] = DataSource(repo, revision, folder, "data-dir")
        elif (snapshot := _cached_snapshot(repo, revision)) is not None:
            sources[task] = DataSource(repo, revision, snapshot, "hf-cache")
        else:
            missing[task] = (repo, revision)
    if missing:
        if reason := hub_unreachable_reason():
            raise InputError(_missing_message(missing, len(datasets), data_dir, reason))
        sources.update({t: DataSource(repo, rev, None, "hub") for t, (repo, rev) in missing.items()})
    return sources


def fetch(source: DataSource) -> Path:
    """The dataset's local folder, downloading it into the Hugging Face cache first if needed."""
    if source.path is not None:
        return source.path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(source.repo, repo_type="dataset", revision=source.revision))


def _missing_message(missing: Mapping[str, tuple[str, str]], total: int, data_dir: Path | None, reason: str) -> str:
    from huggingface_hub import constants

    looked = f"the Hugging Face cache {constants.HF_HUB_CACHE}"
    if data_dir is not None:
        looked = f"{data_dir}/<repo id>, {looked}"
    lines = [(f"C-MTEB data missing for {len(missing)} of {total} datasets (looked in {looked}), and the Hugging "
              f"Face hub can't be reached ({reason}):")]
    lines += [f"  {task}: {repo} at revision {rev}" for task, (repo, rev) in missing.items()]
    lines.append("Download them where the hub is reachable (huggingface_hub < 1.0: `huggingface-cli download "
                 "--repo-type dataset REPO --revision REV`):")
    lines += [f"  hf download --repo-type dataset {repo} --revision {rev}" for repo, rev in missing.values()]
    lines.append("then copy the Hugging Face cache (HF_HUB_CACHE) here, or add `--local-dir DIR/<repo id>` to each "
                 "command (a plain mirror of the repo, e.g. a git clone at that revision, works too) and pass "
                 "--data-dir DIR.")
    return "\n".join(lines)
