"""ILA layer importance on a synthetic task where only a known layer can help."""

import pytest
import torch
from aligner_data import toy_pairs

from aligners import models
from aligners.importance import (
    cost_aware_layers,
    jaccard,
    layer_importance,
    layers_from_runs,
    top_k_layers,
)
from aligners.train_config import AlignerTrainConfig, ImportanceConfig

USEFUL_LAYER = 2


def model_where_only_one_layer_can_help():
    """4-layer tiny Llama whose attention input is zeroed in every layer but USEFUL_LAYER:
    there q/k/v LoRA updates see a zero input, so they cannot change the output at all."""
    model, tokenizer = models.load_causal_lm(models.TINY_LLAMA, num_layers=4)
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            if i != USEFUL_LAYER:
                layer.input_layernorm.weight.zero_()
    return model, tokenizer


def cfg_for(method: str) -> AlignerTrainConfig:
    return AlignerTrainConfig(
        base=models.TINY_LLAMA, target_modules=["q_proj", "k_proj", "v_proj"], batch_size=4,
        learning_rate=5e-3, lora_dropout=0.0,
        importance=ImportanceConfig(method=method, warmup_steps=15, gate_steps=40, gate_lr=0.1,
                                    batches=3, top_k=1),
    )


@pytest.mark.parametrize("method", ["gates", "grad-norm"])
def test_importance_finds_the_only_useful_layer(method):
    model, tokenizer = model_where_only_one_layer_can_help()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = layer_importance(model, tokenizer, toy_pairs(16), cfg_for(method))
    assert top_k_layers(scores, 1) == [USEFUL_LAYER]
    others = [s for layer, s in scores.items() if layer != USEFUL_LAYER]
    assert scores[USEFUL_LAYER] > 2 * max(others) if method == "grad-norm" else scores[USEFUL_LAYER] - max(others) > 0.1
    after = model.state_dict()
    assert before.keys() == after.keys()  # LoRA was unloaded again
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_top_k_and_jaccard():
    scores = {0: 0.1, 1: 0.9, 2: 0.5, 3: 0.9}
    assert top_k_layers(scores, 2) == [1, 3]
    assert top_k_layers(scores, 3) == [1, 2, 3]
    assert jaccard([1, 2], [2, 3]) == pytest.approx(1 / 3)
    assert jaccard([], []) == 1.0


def test_k_from_fraction():
    assert ImportanceConfig(top_k_fraction=0.25).k_for(30) == 8
    assert ImportanceConfig(top_k=40).k_for(30) == 30
    assert ImportanceConfig(top_k_fraction=0.01).k_for(4) == 1


def test_layers_from_runs_averages_the_runs_on_the_data_else_all_runs_of_the_method():
    def run(data, method, scores):
        return {"data": data, "method": method, "scores": {str(i): v for i, v in enumerate(scores)}}

    result = {"k": 2, "runs": [
        run("seed:harmless", "gates", [0.9, 0.1, 0.5, 0.0]),
        run("seed:harmless", "gates", [0.1, 0.1, 0.6, 0.8]),   # mean: 0.5, 0.1, 0.55, 0.4
        run("seed:polite", "gates", [0.0, 1.0, 0.0, 1.0]),
        run("seed:harmless", "grad-norm", [0.0, 0.0, 0.0, 9.0]),
    ]}
    assert layers_from_runs(result, "seed:harmless", "gates") == [0, 2]
    assert layers_from_runs(result, "data/other", "gates") == [1, 3]  # no run on it: mean of all 3
    assert layers_from_runs(result, "seed:harmless", "grad-norm")[-1] == 3
    with pytest.raises(ValueError, match="no 'gates' runs"):
        layers_from_runs({"k": 2, "runs": []}, "seed:harmless", "gates")


def test_cost_aware_layers_trade_a_share_of_importance_for_a_higher_lowest_layer():
    scores = {0: 0.9, 1: 0.1, 2: 0.2, 3: 0.8, 4: 0.7, 5: 0.6}  # plain top-3: 0, 3, 4 (sum 2.4)
    assert cost_aware_layers(scores, 3, None) == [0, 3, 4]
    assert cost_aware_layers(scores, 3, 0.85) == [3, 4, 5]  # 2.1 >= 0.85 * 2.4: backward stops at 3
    assert cost_aware_layers(scores, 3, 0.9) == [0, 3, 4]  # 2.1 < 2.16: no higher depth keeps enough
    assert cost_aware_layers(scores, 3, 1.0) == [0, 3, 4]
    assert cost_aware_layers({0: 1.0, 1: 0.5, 2: 0.5}, 2, 0.6) == [1, 2]  # 1.0 >= 0.6 * 1.5
    assert cost_aware_layers({0: 1.0, 1: 0.0, 2: 0.0}, 2, 0.01) == [0, 1]  # nothing above 0 holds any
    with pytest.raises(ValueError, match="greater than 0"):
        from aligners.train_config import ImportanceConfig
        ImportanceConfig(cost_share=0)
