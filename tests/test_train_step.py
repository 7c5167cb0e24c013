"""The shared optimizer step (raypref.train_step): gradient accumulation, DDP's no_sync, bf16
autocast; and the DPO UNet's gradient checkpointing. No Ray: the loops' step is tested directly."""

import contextlib

import pytest
import torch

from raypref.train_step import accumulate, autocast, micro_groups


def test_micro_groups_and_bad_k():
    assert list(micro_groups(range(5), 2)) == [[0, 1], [2, 3], [4]]  # an epoch's last group is short
    assert list(micro_groups(range(3), 1)) == [[0], [1], [2]]
    with pytest.raises(ValueError, match="grad_accum_steps"):
        list(micro_groups(range(3), 0))


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 3, generator=g), torch.randn(8, 1, generator=g)


def _mse(model):
    return lambda b: (((model(b[0]) - b[1]) ** 2).mean(), {"n": torch.tensor(float(len(b[0])))})


def test_two_micro_batches_give_the_gradient_of_their_mean_loss():
    x, y = _data()
    torch.manual_seed(0)
    one = torch.nn.Linear(3, 1)
    two = torch.nn.Linear(3, 1)
    two.load_state_dict(one.state_dict())
    loss_one, _ = accumulate(one, [(x, y)], _mse(one), "cpu", "fp32")
    loss_two, m = accumulate(two, [(x[:4], y[:4]), (x[4:], y[4:])], _mse(two), "cpu", "fp32")
    # equal halves: the mean of the two halves' mean losses is the whole batch's mean loss
    assert loss_two == pytest.approx(loss_one, rel=1e-6)
    assert m == {"n": 4.0}  # metrics are averaged over the micro-batches
    for a, b in zip(one.parameters(), two.parameters()):
        torch.testing.assert_close(a.grad, b.grad)


def test_ddp_all_reduces_only_on_the_last_micro_batch():
    class FakeDDP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 1)
            self.in_no_sync = False

        @contextlib.contextmanager
        def no_sync(self):
            self.in_no_sync = True
            try:
                yield
            finally:
                self.in_no_sync = False

        def forward(self, t):
            return self.lin(t)

    ddp, seen = FakeDDP(), []
    x, y = _data()

    def forward(b):
        seen.append(ddp.in_no_sync)
        return _mse(ddp)(b)

    accumulate(ddp, [(x[:3], y[:3]), (x[3:6], y[3:6]), (x[6:], y[6:])], forward, "cpu", "fp32")
    assert seen == [True, True, False]


def test_bf16_autocast_computes_in_bf16_and_keeps_fp32_gradients():
    x, y = _data()
    torch.manual_seed(0)
    ref, half = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
    half.load_state_dict(ref.state_dict())
    dtypes = []

    def forward(b):
        out = half(b[0])
        dtypes.append(out.dtype)
        return ((out.float() - b[1]) ** 2).mean(), {}

    accumulate(ref, [(x, y)], _mse(ref), "cpu", "fp32")
    accumulate(half, [(x, y)], forward, "cpu", "bf16")
    assert dtypes == [torch.bfloat16]
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in half.parameters())
    for a, b in zip(ref.parameters(), half.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=0.05, atol=0.02)  # bf16 keeps ~3 significant digits
    with pytest.raises(ValueError, match="precision"):
        autocast("cpu", "fp16")


def test_dpo_gradient_checkpointing_recomputes_and_gives_the_same_gradients(tiny_sd, monkeypatch):
    import torch.utils.checkpoint as ckpt

    from raypref.train_dpo import dpo_step, load_for_training

    calls = []
    real = ckpt.checkpoint

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(ckpt, "checkpoint", counting)
    c = {"base_model": tiny_sd, "lora_rank": 2, "lora_alpha": 2.0, "lora_targets": ["to_q", "to_v"]}
    grads = {}
    for on in (False, True):
        torch.manual_seed(0)
        _, _, _, sched, unet, params = load_for_training({**c, "gradient_checkpointing": on}, "cpu")
        g = torch.Generator().manual_seed(1)
        latents = torch.randn(4, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size, generator=g)
        enc = torch.randn(4, 77, unet.config.cross_attention_dim, generator=g)
        before = len(calls)
        loss, _ = dpo_step(unet, unet, latents, enc, sched, 5000.0, g)
        loss.backward()
        assert (len(calls) > before) == on  # recomputed blocks only when asked
        grads[on] = [p.grad.clone() for p in params]
    assert any(g.abs().sum() > 0 for g in grads[False])
    for a, b in zip(grads[False], grads[True]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
