"""Every recipe in recipes/ runs end to end on the tiny model: the recipe's own stages and settings, with the model
overridden and the sizes shrunk (and, where the recipe builds pairs from a judge's measured preference, the
thresholds that a random model cannot pass set as recipes/tiny.yaml sets them), to a written report.md."""

import pytest

from conftest import run_main
from pipeline.config import available_recipes

SMALL = ["model.name_or_path=embedded:tiny-random", "wandb.mode=disabled", "sample_space.num_samples=4",
         "sample_space.max_new_tokens=8", "sample_space.min_chars=1", "sample_space.drop_truncated=false",
         "sample_space.chunk_size=4", "sample_space.batch_size=4", "spmcmc.iterations=10", "spmcmc.burn_in=2",
         "spmcmc.num_chains=2", "finetune.max_length=64", "finetune.batch_size=4", "finetune.num_epochs=1",
         "evaluate.max_items=10", "evaluate.max_chars=100", "evaluate.winrate_samples=2", "evaluate.spmcmc_iterations=10"]
RANDOM_JUDGE = ["preferences.control=false", "preferences.min_confidence=0.5", "preferences.min_gap_z=0"]
PER_RECIPE = {
    "jokes_dpo": RANDOM_JUDGE,
    "joke_topics": [*RANDOM_JUDGE, "preferences.max_confound_gap=0", "preferences.max_pairs=1"],  # matching needs control
    "jokes_dpo_paper": [*RANDOM_JUDGE, "sample_space.num_samples=12", "spmcmc.budget=200", "spmcmc.iterations=10",
                        "finetune.gradient_accumulation_steps=1", "finetune.save_steps=2", "judge.batch_size=8",
                        "preferences.max_pairs=8"],
    # the planted reward counts exclamation marks, which 8 random tokens almost never hold: every reward would tie
    "planted_topics": ["judge.function=pipeline.rewards:length", "preferences.max_pairs=1"],
}
# tiny: the shared runs of tests/conftest.py; jester_spmcmc: tests/test_ratings.py; caption_contests:
# tests/test_within_prompts.py (each on the tiny model, to report.md)
COVERED_ELSEWHERE = {"tiny", "jester_spmcmc", "caption_contests"}


def test_every_recipe_has_a_run_here():
    assert set(available_recipes()) == set(PER_RECIPE) | COVERED_ELSEWHERE


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(PER_RECIPE))
def test_the_recipe_runs_to_a_report(recipe, tmp_path):
    proc = run_main(f"recipe={recipe}", f"output_dir={tmp_path}", *SMALL, *PER_RECIPE[recipe])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# ") and "## " in report
