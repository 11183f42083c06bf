"""Teacher scoring: the cut (percentile / absolute), the histogram, and real scores from a tiny model."""

from __future__ import annotations

import numpy as np
import pytest

from conan_embed.curate.curate_config import TeacherConfig
from conan_embed.curate.teacher import TeacherScorer, histogram, histogram_text, score_cut


def test_percentile_cut_drops_the_lowest_share():
    scores = np.random.default_rng(0).random(1000).astype(np.float32)
    cut = score_cut(scores, TeacherConfig(percentile=11))
    assert (scores >= cut).sum() == 890  # ceil(0.89 n) kept when there are no ties
    assert score_cut(scores, TeacherConfig(percentile=None, threshold=0.4)) == 0.4
    both = score_cut(scores, TeacherConfig(percentile=11, threshold=0.5))
    assert both == 0.5  # the stricter of the two
    assert score_cut(scores, TeacherConfig(percentile=None, threshold=None)) is None
    assert score_cut(np.array([0.5] * 10), TeacherConfig(percentile=30)) == 0.5  # ties are all kept


def test_histogram_text_marks_the_dropped_bins():
    scores = np.linspace(0.8, 0.95, 200)
    hist = histogram(scores, bins=10)
    assert sum(hist["counts"]) == 200 and len(hist["edges"]) == 11
    text = histogram_text(hist, cut=0.83)
    lines = text.splitlines()
    assert lines[0].endswith("x" * len(lines[0].split()[-1])) and "#" in lines[-2] and "cut at 0.8300" in lines[-1]


def test_scores_from_a_tiny_teacher_are_cosines_and_repeatable(tiny_teacher, shipped_pairs):
    cfg = TeacherConfig(model=tiny_teacher, max_length={"query": 16, "passage": 32}, batch_size=8)
    scorer = TeacherScorer(cfg, device="cpu")
    q = [p["query"] for p in shipped_pairs[:20]]
    p = [p["passage"] for p in shipped_pairs[:20]]
    scores, baseline = scorer.score(q, p)
    assert scores.shape == baseline.shape == (20,)
    assert (np.abs(scores) <= 1 + 1e-5).all()
    again, _ = TeacherScorer(cfg, device="cpu").score(q, p)
    np.testing.assert_allclose(again, scores, atol=1e-6)
    self_scores, _ = scorer.score(q, q)
    assert self_scores.mean() > scores.mean()  # a query is closer to itself than to its answer


def test_the_teacher_runs_on_the_onnx_backend(tiny_teacher, shipped_pairs, tmp_path):
    from conan_embed.onnx_export import export_onnx
    from conan_embed.model_loading import load_embedder
    from conan_embed.modeling import save_embedder

    folder = save_embedder(load_embedder(tiny_teacher), tmp_path / "teacher")
    export_onnx(load_embedder(folder), folder)
    q, p = [x["query"] for x in shipped_pairs[:12]], [x["passage"] for x in shipped_pairs[:12]]
    torch_scores, _ = TeacherScorer(TeacherConfig(model=str(folder)), device="cpu").score(q, p)
    onnx_scores, _ = TeacherScorer(TeacherConfig(model=str(folder), backend="onnx"), device="cpu").score(q, p)
    np.testing.assert_allclose(onnx_scores, torch_scores, atol=1e-5)


@pytest.mark.parametrize("bad", [{"percentile": 100}, {"threshold": 1.5}, {"backend": "tensorrt"}])
def test_bad_teacher_settings_name_the_key(bad):
    from conan_embed.curate.curate_config import curate_config_from_dict
    from conan_embed.errors import InputError

    with pytest.raises(InputError, match=f"stages.teacher.{next(iter(bad))}"):
        curate_config_from_dict({"stages": {"teacher": bad}})
