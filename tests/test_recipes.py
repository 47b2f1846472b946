"""Recipe presets in configs/ load and agree with the recipes defined in code."""

from pathlib import Path

import pytest

from selfguard_jax import recipes
from selfguard_jax.model_presets import load_model_preset
from selfguard_jax.prompts import SAFEREMIND_REMINDER, SELF_REMINDER_SUFFIX_ASSISTANT, SELF_REMINDER_SYSTEM

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted((CONFIGS / "recipes").glob("*.yaml")), ids=lambda p: p.stem)
def test_recipe_files_load(path):
    if path.stem == "reminder-baselines":
        import yaml

        for name in yaml.safe_load(path.read_text())["recipes"]:
            assert recipes.RECIPES[name].remind
        return
    r = recipes.load_recipe_file(path)
    assert r == recipes.RECIPES[r.name], f"{path.name} drifted from recipes.RECIPES[{r.name!r}]"


def test_paper_recipes():
    sg = recipes.RECIPES["selfguard"]
    # the authors' steering evaluation: 'ChatGPT' system prompt, 'AI assistant' suffix
    assert sg.system == SELF_REMINDER_SYSTEM and sg.user_suffix == SELF_REMINDER_SUFFIX_ASSISTANT
    assert sg.steer_layers == (30, 31, 32) and sg.steer_alpha == 0.3 and sg.steer_rule == "all"
    sr = recipes.RECIPES["saferemind"]
    assert sr.remind and sr.reminder_text == SAFEREMIND_REMINDER and sr.threshold == 0.5 and sr.criterion == "lt"
    assert sr.max_reminders == 1 and sr.max_think_tokens == 4096 and sr.max_answer_tokens == 1024
    both = recipes.RECIPES["selfguard+saferemind"]
    assert both.steers and both.remind


@pytest.mark.parametrize("path", sorted((CONFIGS / "models").glob("*.yaml")), ids=lambda p: p.stem)
def test_model_presets(path):
    preset = load_model_preset(path)
    assert preset.model_type and preset.num_layers and preset.hidden_size and preset.vocab_size
    if preset.status == "paper":
        assert preset.steer_alpha == 0.3 and preset.steer_layers == (30, 31, 32)
    elif preset.status == "sweep":
        assert preset.steer_layers and preset.steer_alpha
    elif preset.status == "relative depth, not set by a sweep":
        assert preset.steer_depth and preset.steer_layers is None and preset.steer_alpha is None
    else:
        assert preset.status == "to be set by a sweep" and preset.steer_layers is None


def test_bad_recipe_names():
    with pytest.raises(ValueError, match="unknown"):
        recipes.get_recipe("nope")
    with pytest.raises(ValueError, match="do not exist"):
        recipes.get_recipe("selfguard", steer_alfa=0.3)
