"""The PLD hook on a real DeepSpeedEngine (one gloo process, CPU)."""

import copy

import pytest
import torch

from bing_bert_pld import pld
from bing_bert_pld.config import BertConfig
from bing_bert_pld.ds_config import build_training_setup
from bing_bert_pld.engine import PLDHook, PLDNotAppliedError, init_distributed, initialize_engine
from bing_bert_pld.model import BertForPreTraining
from test_model import make_batch

TINY = BertConfig.from_json("bert-tiny")
DS = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2,
      "steps_per_print": 10**6,
      "optimizer": {"type": "Adam", "params": {"lr": 1e-3}},
      "progressive_layer_drop": {"enabled": True, "theta": 0.5, "gamma": 0.1}}


@pytest.fixture(scope="module", autouse=True)
def distributed():
    init_distributed()


def engine_for(model, config=DS):
    setup = build_training_setup(config, "test.json", cuda_available=False)
    engine = initialize_engine(model, setup)
    return engine, setup


class RecordingModel(BertForPreTraining):
    def __init__(self, config):
        super().__init__(config)
        self.received = []

    def forward(self, batch, layer_gates=None):
        self.received.append(layer_gates)
        return super().forward(batch, layer_gates)


def test_hook_hands_gates_drawn_from_the_engine_step_counter():
    torch.manual_seed(0)
    model = RecordingModel(TINY)
    engine, setup = engine_for(model)
    hook = PLDHook(engine, setup.pld, seed=11)
    batch = make_batch()
    for _ in range(3 * engine.gradient_accumulation_steps()):  # 3 optimizer steps
        engine.backward(engine(batch).loss)
        engine.step()
    assert engine.global_steps == 3
    expected = [pld.sample_gates(setup.pld.theta(step), 4, 11, step, micro)
                for step in range(3) for micro in range(2)]
    assert model.received == expected
    assert hook.theta == pytest.approx(0.5 * torch.exp(torch.tensor(-0.3)).item() + 0.5)
    assert hook.stats.total_micro_batches == 6
    assert hook.stats.total_active_layers == sum(g.num_active for g in expected)

    engine.eval()
    with torch.no_grad():
        engine(batch)
    assert model.received[-1] is None  # evaluation: full depth, no gates
    hook.remove()


class IgnoresGates(BertForPreTraining):
    def forward(self, batch, **ignored):
        return super().forward(batch)  # drops the gates: must not train silently at full depth


def test_model_that_ignores_its_gates_stops_training():
    engine, setup = engine_for(IgnoresGates(TINY))
    hook = PLDHook(engine, setup.pld, seed=0)
    with pytest.raises(PLDNotAppliedError, match="did not use the layer gates"):
        engine(make_batch())
    hook.remove()


def test_model_without_gate_support_is_refused_at_attach_time():
    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 2)

        def forward(self, x):
            return self.linear(x).sum()

    engine, setup = engine_for(Plain(), {**DS, "optimizer": {"type": "Adam", "params": {"lr": 1e-3}}})
    with pytest.raises(PLDNotAppliedError, match="has no bert.encoder.layer"):
        PLDHook(engine, setup.pld, seed=0)


def test_gates_are_identical_on_every_rank_without_communication():
    # Ranks share (seed, step, micro-step) and nothing else: simulate two of them with
    # different global RNG states, as two processes would have.
    draws = []
    for rank in range(2):
        torch.manual_seed(1000 + rank)
        import numpy as np
        np.random.seed(rank)
        draws.append([pld.sample_gates(0.6, 12, 5, step, micro).keep
                      for step in range(50) for micro in range(4)])
    assert draws[0] == draws[1]


def test_cpu_adamw_is_torch_fused_with_berts_decay_groups_and_same_update():
    from bing_bert_pld.engine import build_client_optimizer
    values = {"train_micro_batch_size_per_gpu": 2,
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "betas": [0.9, 0.98],
                                                        "eps": 1e-6, "weight_decay": 0.01}}}
    setup = build_training_setup(values, "<test>", cuda_available=False)
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig.from_json("bert-tiny"))
    optimizer = build_client_optimizer(setup, model)
    assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["fused"] is True
    decay, no_decay = optimizer.param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.01, 0.0)
    names = {id(p): n for n, p in model.named_parameters()}
    is_norm_or_bias = [n.endswith("bias") or "LayerNorm" in n or "final_layer_norm" in n
                       for n in names.values()]
    assert len(no_decay["params"]) == sum(is_norm_or_bias) > 0
    assert all(names[id(p)].endswith("bias") or "LayerNorm" in names[id(p)]
               or "final_layer_norm" in names[id(p)] for p in no_decay["params"])
    # One step gives the update torch's reference (foreach) AdamW gives.
    reference = copy.deepcopy(model)
    reference_params = dict(reference.named_parameters())
    reference_optimizer = torch.optim.AdamW(
        [{"params": [reference_params[names[id(p)]] for p in group["params"]],
          "weight_decay": group["weight_decay"]} for group in optimizer.param_groups],
        lr=1e-3, betas=(0.9, 0.98), eps=1e-6, foreach=True)
    for p, q in zip(model.parameters(), reference.parameters()):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
    optimizer.step(), reference_optimizer.step()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.allclose(p, q, atol=1e-7, rtol=0), name
