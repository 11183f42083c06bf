"""Two processes (gloo, spawned) observe different rows; after a check both hold the same negatives,
equal to one process that saw every row."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conan_embed.mining.dynamic import STATE_FILE
from conan_embed.serving.local import free_port

sys.path.insert(0, str(Path(__file__).parent))
import dist_worker  # noqa: E402


@pytest.mark.parametrize("margin", [None, 0.05], ids=["windows", "false-negative-filter"])
def test_two_processes_agree_after_a_check(recipe_dict, tmp_path, margin):
    """With the filter, each process scores its shard of the replaced rows' candidates."""
    recipe_dict["stages"]["finetune"]["mining"] = {"mode": "dynamic", "check_every": 2, "batch_size": 3,
                                                   "relative_margin": margin}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe_dict, sort_keys=False))
    out = tmp_path / "states"
    done = subprocess.run([sys.executable, str(Path(dist_worker.__file__)), str(path), str(out), str(free_port())],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    single = dist_worker.build_miner(str(path))  # one process that saw both ranks' records, in rank order
    records = [dist_worker.records_of(rank) for rank in (0, 1)]
    single.on_step_records(None, dist_worker.State(1, 0), records[0][0] + records[1][0])
    single.on_step_records(None, dist_worker.State(2, 0), records[0][1] + records[1][1])
    assert single.totals["retrieval"]["replaced"] > 0
    assert (single.totals["retrieval"]["false_negatives_dropped"] > 0) == (margin is not None)
    (tmp_path / "single").mkdir()
    single.save(tmp_path / "single")

    states = [np.load(folder / STATE_FILE) for folder in (out / "rank0", out / "rank1", tmp_path / "single")]
    for key in states[0].files:
        np.testing.assert_array_equal(states[0][key], states[1][key], err_msg=key)
        if states[0][key].dtype.kind == "U":  # the counters, as JSON
            assert states[0][key] == states[2][key]
        else:  # S_initial of new sets: one process computed them in shards of 3 rows, the other in one pass
            np.testing.assert_allclose(states[0][key], states[2][key], rtol=1e-6, err_msg=key)
    window = states[0]["retrieval/window"]
    assert (window[:20] == 2).sum() == single.totals["retrieval"]["replaced"] and (window[20:] == 1).all()
