"""slack-digits' augmentation defaults (no flip for digits, Cutout last) reach the search, and the
demo's report states what its budget can and cannot show, with its own numbers."""

import copy

from omegaconf import OmegaConf

from fulcra_plugins.slack.demo import DEMO_CONFIG, budget_note
from fulcra_plugins.slack.workflow import SearchWorkflow, _search_node


def test_workflow_flip_and_cutout_reach_a_slack_node_that_does_not_set_them():
    cfg = OmegaConf.structured(SearchWorkflow.Config)
    node = _search_node(cfg)
    assert node["name"] == "slack" and node["flip"] is False and node["cutout_last"] is True
    cfg.flip = True
    cfg.optimizer = {"name": "slack", "flip": False}
    assert _search_node(cfg)["flip"] is False  # the optimizer's own setting wins
    cfg.optimizer = {"name": "uniform"}
    assert "flip" not in _search_node(cfg)  # other optimizers have no such key


def test_slack_digits_recipe_does_not_flip():
    from fulcra.registry import catalogue

    recipe = catalogue()["recipes"]["slack-digits"]
    assert not recipe.get("flip", False)
    assert "flip" not in recipe["optimizer"] or recipe["optimizer"]["flip"] is False


def test_demo_budget_note_counts_its_own_budget():
    note = budget_note()
    o = DEMO_CONFIG["optimizer"]
    assert f"{o['rounds'] * o['unrolled_steps']} policy updates" in note["budget"]
    assert "4,000" in note["budget"] and note["can_show"] and "cannot" not in note["can_show"]
    assert all(len(v) < 255 for v in note.values())  # the demo report probes string values as paths
    bigger = copy.deepcopy(DEMO_CONFIG)
    bigger["optimizer"]["rounds"] = 10
    assert f"{10 * o['unrolled_steps']} policy updates" in budget_note(bigger)["budget"]
