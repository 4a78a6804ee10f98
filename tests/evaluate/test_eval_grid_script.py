"""The world grid of benchmarks/eval_ground_truth.py (--worlds): its summary arithmetic, its world
resolution, and one tiny run through the command line."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

_BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(_BENCH))
_SPEC = importlib.util.spec_from_file_location("eval_ground_truth_grid", _BENCH / "eval_ground_truth.py")
gt = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(gt)
import _world_grid as grid  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def record(world, config, **values):
    row = {m: None for m in grid.METRICS}
    row.update(values)
    return {"world": world, "config": config, "default": config == "a", **row}


def test_summary_is_the_mean_over_worlds_and_the_worst_world():
    records = [record("w1", "a", spearman=0.9, top_pointing=1.0, top_on_most_relied=True,
                      deletion_area=0.1),
               record("w1", "a", spearman=0.7, top_pointing=1.0, top_on_most_relied=True,
                      deletion_area=0.3),
               record("w2", "a", spearman=0.2, top_pointing=0.5, top_on_most_relied=False,
                      deletion_area=0.5),
               record("w2", "b", spearman=None, top_pointing=1.0)]
    summary = grid.summarise(records)
    a = summary["a"]
    assert a["per_world"]["w1"]["spearman"] == pytest.approx(0.8)
    assert a["mean"]["spearman"] == pytest.approx(0.5)       # (0.8 + 0.2) / 2
    assert a["worst"]["spearman"] == pytest.approx(0.2) and a["worst_world"]["spearman"] == "w2"
    assert a["worst"]["deletion_area"] == pytest.approx(0.5)  # lower is better: the max
    assert a["mean"]["top_on_most_relied"] == pytest.approx(0.5)
    assert not a["meets_bar"]
    assert summary["b"]["mean"]["spearman"] is None and not summary["b"]["meets_bar"]
    assert summary["b"]["missing_worlds"] == ["w1"] and summary["a"]["missing_worlds"] == []
    perfect = [record(w, "c", spearman=0.9, top_pointing=1.0, top_on_most_relied=True)
               for w in ("w1", "w2")]
    assert grid.summarise(perfect)["c"]["meets_bar"]
    assert not grid.summarise(perfect + [record("w3", "d")])["c"]["meets_bar"]
    assert "| **a** (default) |" in grid.markdown({"summary": summary})


def test_worlds_are_resolved_lazily():
    names = grid.world_names()
    resolved = [name for name, _ in grid.resolve_worlds("all", log=lambda _: None)]
    if names is None:      # without load_world: shapes only, other worlds refused
        assert resolved == ["shapes"]
        with pytest.raises(SystemExit, match="load_world"):
            grid.resolve_worlds("textures")
    else:                  # one entry per world (and per architecture where several ship)
        assert {name.split("/")[0] for name in resolved} == set(names)
        with pytest.raises(SystemExit, match="no architecture"):
            grid.resolve_worlds("shapes:transformer")
        assert "shapes/vit" in resolved and "shapes" in resolved
        assert [name for name, _ in grid.resolve_worlds("shapes:vit,context")] == [
            "shapes/vit", "context"]
        vit = dict(grid.resolve_worlds("shapes:vit"))["shapes/vit"]
        assert vit.layer == "blocks.2" and vit.model().__class__.__name__ == "VisionTransformer"
    worlds = grid.resolve_worlds("shapes")
    assert worlds[0][0] == "shapes" and hasattr(worlds[0][1], "sample")


def test_a_model_file_is_scored_as_its_own_world(tmp_path):
    if grid.world_names() is None:
        pytest.skip("needs conceptkit.datasets.load_world")
    from conceptkit.datasets import _world, train_world_model
    from conceptkit.io import save_file

    model, info = train_world_model("textures", "vit", epochs=1, n_per_class=1, n_val_per_class=1,
                                    n_test_per_class=1, config={"patch_size": 16}, progress=False)
    path = tmp_path / "tv.safetensors"
    save_file(path, model.state_dict(), info, kind=_world.WORLD_WEIGHTS_KIND,
              version=_world.WORLD_WEIGHTS_VERSION)
    [(name, world)] = grid.resolve_worlds(f"textures:vit@{path}")
    assert name == "textures/vit@tv.safetensors" and world.layer == "blocks.2"
    assert world.model().patch_embed.patch_size == (16, 16)
    assert world.sample(1).images.shape == (4, 3, 64, 64)
    with pytest.raises(SystemExit, match="no model file"):
        grid.resolve_worlds(f"textures:vit@{tmp_path / 'missing.safetensors'}")


def test_tiny_grid_run_writes_json(tmp_path, capsys):
    path = tmp_path / "grid.json"
    assert gt.main(["--worlds", "shapes", "--seeds", "0", "--n-per-class", "6", "--methods", "ice",
                    "--importances", "sobol,occlusion", "--classes", "4", "--n-concepts", "4",
                    "--json", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "ice / sobol / auto" in printed and "Bar (every world)" in printed
    assert "auto maps of ice: shapes pixel" in printed and "shortfall" in printed
    saved = json.loads(path.read_text())
    # the shortfall from the bar, by hand from the per-world means
    entry = saved["summary"]["ice / sobol / auto"]
    means = entry["per_world"]["shapes"]
    expected = sum(max(0.0, bar - means[m]) for m, bar in grid.BAR.items())
    assert entry["shortfall"] == pytest.approx(expected) == pytest.approx(entry["worst_shortfall"])
    configs = {r["config"] for r in saved["records"]}
    assert configs == {f"ice / {i} / {k}" for i in ("sobol", "occlusion")
                       for k in (*grid.KINDS["ice"], "auto")}
    for row in saved["records"]:
        assert row["world"] == "shapes" and row["class_id"] == 4 and row["n_images"] == 6
    by_config = {r["config"]: r for r in saved["records"]}
    auto, plain = by_config["ice / sobol / auto"], by_config["ice / sobol / pixel"]
    assert auto["auto_kind"] == "pixel"
    assert all(auto[m] == plain[m] for m in grid.METRICS)
    entry = saved["summary"]["ice / sobol / auto"]
    assert entry["mean"]["top_pointing"] == pytest.approx(auto["top_pointing"])
    # --kinds auto: only the kind the library picks (pixel maps here), with the same numbers
    assert gt.main(["--worlds", "shapes", "--seeds", "0", "--n-per-class", "6", "--methods", "ice",
                    "--importances", "sobol", "--classes", "4", "--n-concepts", "4",
                    "--kinds", "auto", "--json", str(path)]) == 0
    saved = json.loads(path.read_text())
    assert saved["setting"]["kinds"] == ["auto"]
    assert {r["config"] for r in saved["records"]} == {"ice / sobol / pixel", "ice / sobol / auto"}
    again = {r["config"]: r for r in saved["records"]}["ice / sobol / auto"]
    assert all(again[m] == auto[m] for m in grid.METRICS)


def test_spearman_ceiling_closed_form():
    import numpy as np

    # ranks (ties averaged): 10, 9 and 4.5 eight times against 10, 9, ..., 1 once the ties are
    # broken: covariance 40.5, variances 40.5 and 82.5
    values = np.array([0.79, 0.008] + [0.0] * 8)
    assert grid.spearman_ceiling(values) == pytest.approx(40.5 / np.sqrt(40.5 * 82.5))
    assert grid.spearman_ceiling(np.array([0.9, 0.5, 0.3, 0.1])) == pytest.approx(1.0)
    assert grid.spearman_ceiling(np.zeros(5)) is None
