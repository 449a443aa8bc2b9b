"""Which optimizer runs under which DeepSpeed wrapper, through DeepSpeed's real engine on CPU.

Only FusedLamb's CUDA kernel is replaced: the builder FusedLamb loads it with hands out
RecordingLambKernel, which does the kernel's arithmetic in torch (fp32, as the kernel's
accumulate type), refuses what the kernel's dtype dispatch refuses, and records what it was
given. deepspeed.initialize, the engine's choice of wrapper, FP16_UnfusedOptimizer (its
fp32 master copies, loss scaling, clipping, copy back) and FusedLamb.step are DeepSpeed's
own code. The reference update is written separately from the kernel's formula
(csrc/lamb/fused_lamb_cuda_kernel.cu) in float64.
"""

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import deepspeed
import deepspeed.ops.adam.fused_adam as fused_adam_module
import deepspeed.ops.lamb.fused_lamb as fused_lamb_module
import pytest
import torch
from deepspeed.ops.lamb import FusedLamb
from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer

from bing_bert_pld import config_check, fused_ops
from bing_bert_pld.config import BertConfig, ConfigError
from bing_bert_pld.ds_config import build_training_setup, load_training_setup, optimizer_route
from bing_bert_pld.engine import (decay_groups, init_distributed, initialize_engine,
                                   scale_fp16_loss_in_backward)
from bing_bert_pld.model import BertForPreTraining
from test_model import make_batch

REPO = Path(__file__).resolve().parents[1]
DS_CONFIGS = REPO / "ds_configs"
# bert-tiny with a small vocabulary: every kind of tensor, a few seconds per engine.
TINY = BertConfig.from_json("bert-tiny").replace(hidden_dropout_prob=0.0, vocab_size=1024,
                                                attention_probs_dropout_prob=0.0)
# The legacy bing_bert coefficients: matrices at BERT's init have trust ratios below 0.01
# and LayerNorm weights above 0.3 on the first steps, so both clamps are exercised.
LAMB = {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-6, "weight_decay": 0.01,
        "bias_correction": True, "max_coeff": 0.3, "min_coeff": 0.01}
CLIP = 1.0


def lamb_config(precision: str, optimizer: str = "Lamb", params: dict = LAMB) -> dict:
    block = {"enabled": True}
    if precision == "fp16":
        block.update(loss_scale=0, initial_scale_power=8)  # dynamic, as DeepSpeed's LAMB requires
    return {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1,
            "steps_per_print": 10**6, "gradient_clipping": CLIP,
            "optimizer": {"type": optimizer, "params": dict(params)}, precision: block}


@dataclass
class KernelCall:
    param: torch.dtype
    grad: torch.dtype
    exp_avg: torch.dtype
    exp_avg_sq: torch.dtype
    copy: torch.dtype
    copy_numel: int
    shape: tuple
    grad_scale: float
    grad_value: torch.Tensor  # a copy, as it reached the kernel
    step: int
    lr: float
    decay: float


class RecordingLambKernel:
    """Stands in for the compiled fused_lamb op (its one function, `lamb`)."""

    def __init__(self):
        self.calls: list[KernelCall] = []

    def lamb(self, p, p_copy, m, v, g, lr, beta1, beta2, max_coeff, min_coeff, eps, grad_scale,
             step, mode, bias_correction, decay):
        self.calls.append(KernelCall(p.dtype, g.dtype, m.dtype, v.dtype, p_copy.dtype,
                                     p_copy.numel(), tuple(p.shape), grad_scale, g.clone(), step,
                                     lr, decay))
        # The kernel's dispatch: half gradients with float parameters (the mixed-precision
        # path, which also writes p_copy), else AT_DISPATCH_FLOATING_TYPES on the gradient.
        if g.dtype == torch.float16:
            if p.dtype != torch.float32:
                raise RuntimeError("expected parameter to be of float type")
        elif g.dtype not in (torch.float32, torch.float64):
            name = {torch.bfloat16: "BFloat16"}.get(g.dtype, str(g.dtype))
            raise RuntimeError(f"\"lamb_cuda_kernel\" not implemented for '{name}'")
        scaled = g.float() / grad_scale
        m.mul_(beta1).add_((1 - beta1) * scaled)
        v.mul_(beta2).add_((1 - beta2) * scaled * scaled)
        denom = v.sqrt() + eps if mode == 1 else (v + eps).sqrt()
        update = m / denom + decay * p
        w_norm, u_norm = p.norm(), update.norm()
        coeff = 1.0
        if w_norm != 0 and u_norm != 0:
            coeff = min(max((w_norm / u_norm).item(), min_coeff), max_coeff)
        step_size = (lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
                     if bias_correction else lr)
        p.sub_(step_size * coeff * update)
        if g.dtype == torch.float16 and p_copy.numel():
            with torch.no_grad():  # the kernel writes the model's fp16 weights in place
                p_copy.copy_(p)
        return torch.tensor([coeff])


def reference_lamb(w, g, m, v, step, lr, weight_decay):
    """One LAMB step as FusedLamb's CUDA kernel computes it (eps outside the square root;
    the trust ratio ||w|| / ||update|| with weight decay inside the update, clamped to
    [min_coeff, max_coeff], 1 where a norm is 0; bias correction folded into the step
    size), in float64. Returns the new weight, the moments, and the unclamped ratio (None
    where a norm is 0)."""
    (b1, b2), eps = LAMB["betas"], LAMB["eps"]
    w, g, m, v = (t.double() for t in (w, g, m, v))
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    update = m / (v.sqrt() + eps) + weight_decay * w
    w_norm, u_norm = w.norm().item(), update.norm().item()
    ratio = w_norm / u_norm if w_norm and u_norm else None
    coeff = 1.0 if ratio is None else min(max(ratio, LAMB["min_coeff"]), LAMB["max_coeff"])
    step_size = lr * math.sqrt(1 - b2**step) / (1 - b1**step)
    return w - step_size * coeff * update, m, v, ratio


@pytest.fixture(scope="module", autouse=True)
def distributed():
    init_distributed()


@pytest.fixture
def lamb_kernel(monkeypatch):
    kernel = RecordingLambKernel()

    class Builder:  # FusedLambBuilder's part: load() returns the compiled op
        def load(self):
            return kernel

    monkeypatch.setattr(fused_lamb_module, "FusedLambBuilder", Builder)
    return kernel


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return BertForPreTraining(TINY)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_lamb_on_cuda_routes_through_deepspeeds_wrapper_and_steps_like_the_kernel(
        precision, lamb_kernel, caplog):
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    setup = build_training_setup(lamb_config(precision), f"{precision}.json", cuda_available=True)
    with caplog.at_level(logging.INFO, logger="bing_bert_pld"):
        engine = initialize_engine(tiny_model(), setup)
    wrapper = engine.optimizer
    assert type(engine.basic_optimizer) is FusedLamb and type(wrapper) is FP16_UnfusedOptimizer
    assert wrapper.low_precision_dtype == low
    if precision == "bf16":  # ours: FusedLamb built by us, the wrapper's fp32-gradient path
        assert "optimizer" not in setup.deepspeed and setup.client_optimizer.backend == "fused"
        assert wrapper.fused_lamb_legacy is False
    else:  # DeepSpeed's own LAMB route: the kernel takes the fp16 grads and the loss scale
        assert setup.client_optimizer is None and setup.deepspeed["optimizer"]["type"] == "Lamb"
        assert wrapper.fused_lamb_legacy is True
    route = optimizer_route(setup)
    assert route.startswith("FusedLamb (client) under DeepSpeed FP16_UnfusedOptimizer in bf16"
                            if precision == "bf16" else
                            "FusedLamb (DeepSpeed) under DeepSpeed FP16_UnfusedOptimizer (fused_lamb_legacy)")
    messages = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "bing_bert_pld"]
    assert messages == [(logging.INFO, f"optimizer route: {route}")]  # no fallback warning

    # The gradient the step must use, without DeepSpeed: the same model in the same
    # precision, the loss times the loss scale (fp16) by hand.
    loss_scale = wrapper.loss_scale_config.cur_scale
    assert loss_scale == (256.0 if precision == "fp16" else 1.0)
    twin = tiny_model().to(low)
    (twin(make_batch(TINY)).loss.float() * loss_scale).backward()
    # DeepSpeed's initialize_optimizer_states already ran one zero-gradient step through
    # the kernel; the step under test starts from the state it left.
    lamb_kernel.calls.clear()
    engine.backward(engine(make_batch(TINY)).loss)
    lows = [p for group in wrapper.fp16_groups for p in group]
    masters = [p for group in wrapper.fp32_groups for p in group]
    decays = [group["weight_decay"] for group in wrapper.param_groups for _ in group["params"]]
    names = {id(p): name for name, p in engine.module.named_parameters()}
    twin_grads = dict(twin.named_parameters())
    grads = [twin_grads[names[id(p)]].grad for p in lows]
    for p, g in zip(lows, grads):  # fp16: scaled by the loss scale (DeepSpeed#8393 worked around)
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0, msg=names[id(p)])
    before = [(w.detach().clone(), wrapper.optimizer.state[w]["exp_avg"].clone(),
               wrapper.optimizer.state[w]["exp_avg_sq"].clone(), wrapper.optimizer.state[w]["step"])
              for w in masters]
    engine.step()

    norm = math.sqrt(sum(g.double().pow(2).sum().item() for g in grads))  # of the scaled grads
    clip = (norm / loss_scale + 1e-6) / CLIP  # DeepSpeed's unscale_and_clip_grads
    combined = loss_scale * clip if clip > 1 else loss_scale
    assert clip > 1  # clipping is part of what is checked
    # One kernel call per parameter tensor (one trust ratio each), fp32 master weights and
    # moments; bf16: fp32 grads already unscaled and clipped; fp16: the model's fp16 grads,
    # the loss scale x clip factor, and the fp16 weights as the kernel's output copy.
    # DeepSpeed takes the clipping norm in fp32 (on the CPU 1e-6 to 2e-5 from the float64
    # one here); the reference then starts from exactly what the kernel was given.
    assert [c.shape for c in lamb_kernel.calls] == [tuple(p.shape) for p in lows]
    for call, p, g in zip(lamb_kernel.calls, lows, grads):
        assert (call.param, call.exp_avg, call.exp_avg_sq) == (torch.float32,) * 3
        if precision == "bf16":
            assert (call.grad, call.copy_numel, call.grad_scale) == (torch.float32, 0, 1.0)
            torch.testing.assert_close(call.grad_value.double(), g.double() / combined,
                                       rtol=1e-4, atol=0)
        else:
            assert (call.grad, call.copy, call.copy_numel) == (torch.float16, torch.float16, p.numel())
            assert torch.equal(call.grad_value, g)
            assert call.grad_scale == pytest.approx(combined, rel=1e-4)
        assert call.step == 2 and call.lr == LAMB["lr"]
    ratios = []
    for (w0, m0, v0, step0), decay, w, p, call in zip(before, decays, masters, lows,
                                                       lamb_kernel.calls):
        w_ref, m_ref, v_ref, ratio = reference_lamb(w0, call.grad_value.double() / call.grad_scale,
                                                    m0, v0, step0 + 1, LAMB["lr"], decay)
        ratios.append(ratio)
        state = wrapper.optimizer.state[w]
        torch.testing.assert_close(state["exp_avg"].double(), m_ref, rtol=1e-6, atol=1e-12)
        torch.testing.assert_close(state["exp_avg_sq"].double(), v_ref, rtol=1e-6, atol=1e-15)
        torch.testing.assert_close(w.double(), w_ref, rtol=2e-7, atol=1e-9)
        assert torch.equal(p.detach(), w.detach().to(low))  # the model holds the cast masters
    clamped = [r for r in ratios if r is not None]
    assert min(clamped) < LAMB["min_coeff"] and max(clamped) > LAMB["max_coeff"]  # both clamps hit
    assert None in ratios  # and the zero-norm case (biases start at 0)


def test_deepspeeds_own_lamb_route_in_bf16_hands_bf16_grads_to_the_kernel(lamb_kernel):
    """What every shipped *_bf16.json did before: the Lamb block left to DeepSpeed. On a GPU
    the real kernel would stop with the same message (its dispatch, read from the source)."""
    model = tiny_model()
    config = lamb_config("bf16")
    engine, _, _, _ = deepspeed.initialize(model=model, config=config,
                                           model_parameters=decay_groups(model, LAMB["weight_decay"]))
    assert engine.optimizer.fused_lamb_legacy is True
    engine.backward(engine(make_batch(TINY)).loss)
    with pytest.raises(RuntimeError, match="not implemented for 'BFloat16'"):
        engine.step()
    assert lamb_kernel.calls[-1].grad == torch.bfloat16


@pytest.mark.parametrize("path", sorted(DS_CONFIGS.glob("*bf16*.json")), ids=lambda p: p.name)
def test_no_bf16_config_leaves_lamb_to_deepspeed_on_cuda(path):
    setup = load_training_setup(path, cuda_available=True)
    assert "optimizer" not in setup.deepspeed
    assert (setup.client_optimizer.kind, setup.client_optimizer.backend) == ("lamb", "fused")
    legacy_name = {k: v for k, v in json.loads(path.read_text()).items() if k != "bf16"}
    legacy_name["bfloat16"] = {"enabled": True}  # DeepSpeed's older name for the block
    assert build_training_setup(legacy_name, path.name, True).client_optimizer.backend == "fused"


@pytest.mark.parametrize("precision, optimizer, route", [
    ("bf16", "Lamb", "pytorch_optimizer.Lamb (client, per tensor) under DeepSpeed "
                     "FP16_UnfusedOptimizer in bf16: fp32 master weights and grads"),
    ("fp32", "AdamW", "torch.optim.AdamW (client, fused kernel): fp32 weights and grads, no wrapper"),
])
def test_cpu_routes_are_what_the_engine_builds(precision, optimizer, route):
    config = lamb_config(precision, optimizer) if precision != "fp32" else \
        {k: v for k, v in lamb_config("bf16", optimizer, {"lr": 1e-3}).items() if k != "bf16"}
    setup = build_training_setup(config, "cpu.json", cuda_available=False)
    assert optimizer_route(setup) == route
    engine = initialize_engine(tiny_model(), setup)
    expected_basic = {"Lamb": "Lamb", "AdamW": "AdamW"}[optimizer]
    assert type(engine.basic_optimizer).__name__ == expected_basic
    assert type(engine.optimizer).__name__ == ("FP16_UnfusedOptimizer" if precision == "bf16"
                                               else "AdamW")


def sgd_step_in_fp16(fix, deepspeed_scales=False, accumulation=2):
    """The master weight's change after one SGD step (lr 1, gradient of sum(w . 1) per
    micro-batch: 1) through DeepSpeed's fp16 engine at ZeRO stage 0, loss scale 128."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1, bias=False)
    config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": accumulation,
              "gradient_clipping": 0.0, "fp16": {"enabled": True, "loss_scale": 128}}
    engine, _, _, _ = deepspeed.initialize(model=model, config=config,
                                           optimizer=torch.optim.SGD(model.parameters(), lr=1.0))
    if deepspeed_scales:  # what a DeepSpeed with #8393 merged does inside engine.backward
        plain, scale = engine.backward, engine.optimizer.loss_scale
        engine.backward = lambda loss, **kw: plain(loss * scale, **kw) / scale
    if fix:
        scale_fp16_loss_in_backward(engine)
    master = engine.optimizer.fp32_groups[0][0]
    before = master.detach().clone()
    for _ in range(accumulation):
        loss = engine(torch.ones(1, 4, dtype=torch.float16)).float().sum()
        assert engine.backward(loss).item() == pytest.approx(loss.item() / accumulation)
        engine.step()
    return (master.detach() - before).tolist()[0]


def test_fp16_at_zero_stage_0_steps_with_the_true_gradient():
    assert sgd_step_in_fp16(fix=True) == [-1.0] * 4
    assert sgd_step_in_fp16(fix=True, deepspeed_scales=True) == [-1.0] * 4  # never scaled twice
    # DeepSpeed 0.19.8 alone divides unscaled gradients by the loss scale. When this fails,
    # DeepSpeed has fixed #8393 and scale_fp16_loss_in_backward has nothing left to do.
    assert sgd_step_in_fp16(fix=False) == [-1.0 / 128] * 4


BUILD_LOG = (
    "Error building extension 'fused_lamb': [1/3] /usr/local/cuda/bin/nvcc -c fused_lamb_cuda_kernel.cu\n"
    "FAILED: fused_lamb_cuda_kernel.cuda.o\n"
    "csrc/lamb/fused_lamb_cuda_kernel.cu(412): error: identifier \"p\" is undefined\n"
    "1 error detected in the compilation of \"csrc/lamb/fused_lamb_cuda_kernel.cu\".\n"
    "ninja: build stopped: subcommand failed.\n")
EXCERPT = ("csrc/lamb/fused_lamb_cuda_kernel.cu(412): error: identifier \"p\" is undefined | "
           "1 error detected in the compilation of \"csrc/lamb/fused_lamb_cuda_kernel.cu\".")


class FailingBuilder:  # a builder whose JIT build fails the way torch reports it
    def load(self):
        raise RuntimeError(BUILD_LOG)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_unbuildable_fused_lamb_falls_back_to_library_lamb_with_one_warning(
        precision, monkeypatch, caplog):
    monkeypatch.setattr(fused_lamb_module, "FusedLambBuilder", FailingBuilder)
    setup = build_training_setup(lamb_config(precision), "x.json", cuda_available=True)
    with caplog.at_level(logging.INFO, logger="bing_bert_pld"):
        engine = initialize_engine(tiny_model(), setup)
    from pytorch_optimizer import Lamb
    assert type(engine.basic_optimizer) is Lamb
    assert type(engine.optimizer) is FP16_UnfusedOptimizer and not engine.optimizer.fused_lamb_legacy
    decay, no_decay = engine.basic_optimizer.param_groups
    assert (decay["lr"], decay["betas"], decay["eps"]) == (1e-3, (0.9, 0.999), 1e-6)
    assert (decay["weight_decay"], no_decay["weight_decay"], decay["weight_decouple"]) == (0.01, 0.0, False)
    reason = (f"FusedLamb could not be built ({fused_ops.diagnose(RuntimeError(BUILD_LOG))}); "
              "using pytorch_optimizer.Lamb, per tensor, with the same params")
    assert EXCERPT in reason
    warnings = [r.getMessage() for r in caplog.records
                if r.name == "bing_bert_pld" and r.levelno >= logging.WARNING]
    assert warnings == [f"optimizer fallback: {reason}"]
    assert "optimizer" not in setup.deepspeed and setup.optimizer_fallback == reason
    assert setup.summary()["optimizer_route"].endswith(f"; fallback: {reason}")
    engine.backward(engine(make_batch(TINY)).loss)  # and it trains
    engine.step()
    assert engine.global_steps == 1


def test_unbuildable_fused_adam_falls_back_to_torch_adamw(monkeypatch, caplog):
    monkeypatch.setattr(fused_adam_module, "FusedAdamBuilder", FailingBuilder)
    setup = build_training_setup(lamb_config("bf16", "AdamW", {"lr": 2e-4, "weight_decay": 0.01}),
                                 "x.json", cuda_available=True)
    assert setup.deepspeed["optimizer"]["type"] == "AdamW"  # DeepSpeed's FusedAdam when it builds
    with caplog.at_level(logging.WARNING, logger="bing_bert_pld"):
        engine = initialize_engine(tiny_model(), setup)
    assert type(engine.basic_optimizer) is torch.optim.AdamW
    assert engine.basic_optimizer.defaults["lr"] == 2e-4
    assert [r.getMessage() for r in caplog.records] == [
        f"optimizer fallback: FusedAdam could not be built ({fused_ops.diagnose(RuntimeError(BUILD_LOG))}); "
        "using torch.optim.AdamW, per tensor, with the same params"]


def test_compiler_errors_become_one_line():
    assert fused_ops.compiler_error_excerpt(BUILD_LOG) == EXCERPT
    assert fused_ops.compiler_error_excerpt("ninja: build stopped\n") == ""


def test_load_reports_the_builders_verdict(lamb_kernel, monkeypatch):
    assert fused_ops.load("FusedLamb").ok
    monkeypatch.setattr(fused_lamb_module, "FusedLambBuilder", FailingBuilder)
    status = fused_ops.load("FusedLamb")
    assert not status.ok and EXCERPT in status.detail and "\n" not in status.detail


def test_missing_prerequisites_name_what_is_missing(tmp_path, monkeypatch):
    import torch.utils.cpp_extension as cpp

    nvcc = tmp_path / "cuda" / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True)
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 12.4, V12.4.131'\n")
    nvcc.chmod(0o755)
    ninja = tmp_path / "bin" / "ninja"
    ninja.parent.mkdir()
    ninja.write_text("#!/bin/sh\necho 1.11.1\n")
    ninja.chmod(0o755)
    monkeypatch.setenv("PATH", str(ninja.parent))
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(cpp, "CUDA_HOME", str(tmp_path / "cuda"))
    assert fused_ops.missing_prerequisites() == []  # 12.4 builds for 12.8: same major
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert fused_ops.missing_prerequisites() == [
        f"nvcc 12.4 at {nvcc} and torch's CUDA 13.0 differ in major version "
        "(torch refuses to build extensions then)"]
    monkeypatch.setattr(cpp, "CUDA_HOME", str(tmp_path))
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert fused_ops.missing_prerequisites() == [
        f"torch {torch.__version__} is a CPU-only build (torch.version.cuda is None)",
        f"nvcc not runnable at {tmp_path / 'bin' / 'nvcc'} (CUDA_HOME={tmp_path})",
        "ninja not found on PATH (pip install ninja)"]
    monkeypatch.setattr(cpp, "CUDA_HOME", None)
    assert "no CUDA toolkit: CUDA_HOME is unset and no nvcc was found on PATH" in \
        fused_ops.missing_prerequisites()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the report of a machine without CUDA")
def test_fused_ops_command_says_nothing_was_built_without_cuda(capsys):
    assert fused_ops.main([]) == 0
    assert capsys.readouterr().out.startswith("fused ops: not applicable here: no CUDA device")


def pretraining_configs():
    for path in sorted(DS_CONFIGS.glob("*.json")) + sorted((DS_CONFIGS / "legacy").glob("*.json")):
        if not path.name.startswith("glue_"):
            yield path


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the report of a machine without CUDA")
@pytest.mark.parametrize("path", list(pretraining_configs()), ids=lambda p: p.name)
def test_config_check_for_cuda_reports_route_and_unchecked_build(path, capsys):
    model = "bert-large" if path.name.startswith("bert_large") else "bert-base"
    code = config_check.main(["--deepspeed_config", str(path), "--model_config", model,
                              "--world_size", "64", "--target", "cuda"])
    out = capsys.readouterr().out
    assert code == 0, out
    settings = dict(line.split(None, 1) for line in out.splitlines()[1:])
    raw = json.loads(path.read_text())
    kind, params = raw["optimizer"]["type"], raw["optimizer"].get("params", {})
    precision = "bf16" if "bf16" in raw else "fp16" if "fp16" in raw else "fp32"
    route = settings["optimizer_route"]
    if kind == "Lamb":
        assert route.startswith({
            "bf16": "FusedLamb (client) under DeepSpeed FP16_UnfusedOptimizer in bf16: fp32 master weights and grads",
            "fp16": "FusedLamb (DeepSpeed) under DeepSpeed FP16_UnfusedOptimizer (fused_lamb_legacy): fp32 master weights",
            "fp32": "FusedLamb (DeepSpeed): fp32 weights, grads and update"}[precision]), route
    op = "FusedLamb" if kind == "Lamb" else None if params.get("torch_adam") else "FusedAdam"
    if op is None:  # the CPU configs name torch's Adam, which needs no build
        assert settings["fused_ops"] == "none needed by this route"
    else:
        assert settings["fused_ops"].startswith(f"{op} NOT CHECKED: this machine has no CUDA")


def test_config_check_on_a_cuda_machine_shows_the_fallback_when_the_build_fails(monkeypatch):
    """The GPU machine's view, with its two facts stood in: CUDA is present, the build fails."""
    monkeypatch.setattr(fused_ops, "cuda_present", lambda: True)
    monkeypatch.setattr(fused_lamb_module, "FusedLambBuilder", FailingBuilder)
    setup = build_training_setup(lamb_config("bf16"), "x.json", cuda_available=True)
    line = config_check.check_fused_ops(setup)
    assert line.startswith("FusedLamb cannot be built: ") and EXCERPT in line
    assert line.endswith("; the trainer will fall back to pytorch_optimizer.Lamb")
    assert optimizer_route(setup).startswith("pytorch_optimizer.Lamb (client, per tensor) under "
                                             "DeepSpeed FP16_UnfusedOptimizer in bf16")


@pytest.mark.parametrize("change, message", [
    ({"params": {**LAMB, "max_grad_norm": 1.0}}, r"params.max_grad_norm is not applied; clip with the "
                                                 r"top-level \"gradient_clipping\""),
    ({"fp16": {"enabled": True, "loss_scale": 128}}, r"fp16 with LAMB needs dynamic loss scaling: set "
                                                     r"fp16.loss_scale to 0 \(got 128\)"),
    ({"data_types": {"grad_accum_dtype": "fp32"}}, r"data_types.grad_accum_dtype 'fp32' with bf16 and "
                                                   r"LAMB: at ZeRO stage 0 DeepSpeed accumulates"),
])
def test_what_deepspeed_would_refuse_late_is_refused_early(change, message):
    config = lamb_config("bf16")
    if "params" in change:
        config["optimizer"] = {"type": "Lamb", "params": change["params"]}
    elif "fp16" in change:
        config.pop("bf16")
        config["fp16"] = change["fp16"]
    else:
        config.update(change)
    with pytest.raises(ConfigError, match=message):
        build_training_setup(config, "x.json", cuda_available=True)
