"""The model families: real GRU/LSTM equations, bounded unrolling, sizes from the spec."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cloud.training.models import ModelSpec, build_model, default_arch
from cloud.training.sequence_models import MAX_STEPS, GRUClassifier, LSTMClassifier, Patchify
from shared.errors import ModelSpecError


def _copy_gates(ours: GRUClassifier | LSTMClassifier, ref: nn.GRU | nn.LSTM) -> None:
    """Load torch's fused recurrent weights (gates stacked in torch's order) into ours."""
    gates = ours.gates
    w_ih = ref.weight_ih_l0.detach().chunk(gates)
    w_hh = ref.weight_hh_l0.detach().chunk(gates)
    b_ih = ref.bias_ih_l0.detach().chunk(gates)
    with torch.no_grad():
        for g in range(gates):
            ours.input_gates[g].weight.copy_(w_ih[g])
            ours.input_gates[g].bias.copy_(b_ih[g])
            ours.hidden_gates[g].weight.copy_(w_hh[g])


@pytest.mark.parametrize(("arch", "ref_cls"), [("gru", nn.GRU), ("lstm", nn.LSTM)])
def test_recurrent_cells_compute_torchs_equations(arch: str, ref_cls: type[nn.RNNBase]) -> None:
    torch.manual_seed(0)
    model = build_model(ModelSpec(arch, (10, 3), 2, width=8)).eval()
    ref = ref_cls(3, 8, batch_first=True)
    assert isinstance(model, GRUClassifier | LSTMClassifier)
    _copy_gates(model, ref)  # type: ignore[arg-type]
    if arch == "gru":
        # torch adds b_hn inside r * (W_hn h + b_hn); ours has no hidden bias: zero it.
        with torch.no_grad():
            ref.bias_hh_l0.zero_()
    else:
        with torch.no_grad():  # LSTM hidden biases simply add to the input biases
            for g in range(4):
                model.input_gates[g].bias.add_(ref.bias_hh_l0.detach().chunk(4)[g])
    x = torch.randn(4, 10, 3)
    _, state = ref(x)
    h_ref = state[0] if arch == "lstm" else state
    expected = model.head(h_ref[0])
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


def test_long_series_are_patched_to_a_bounded_unroll() -> None:
    patch = Patchify(1460, 1)  # ACSF1's length
    assert patch.steps <= MAX_STEPS
    out = patch(torch.arange(1460.0).reshape(1, 1460, 1))
    assert out.shape == (1, patch.steps, patch.size)
    # Consecutive steps side by side, the tail zero-padded.
    assert out[0, 0, :3].tolist() == [0.0, 1.0, 2.0]
    assert out[0, -1, -1].item() == 0.0


@pytest.mark.parametrize("arch", ["gru", "lstm", "transformer"])
def test_sequence_families_take_n_t_f(arch: str) -> None:
    model = build_model(ModelSpec(arch, (100, 6), 4)).eval()
    assert model(torch.zeros(3, 100, 6)).shape == (3, 4)


def test_resnet_teacher_has_millions_of_parameters() -> None:
    teacher = build_model(ModelSpec("resnet", (1, 28, 28), 10))
    assert sum(p.numel() for p in teacher.parameters()) > 2_000_000
    assert teacher.eval()(torch.zeros(2, 1, 8, 8)).shape == (2, 10)  # works on 8x8 too


def test_width_sizes_a_student_and_old_specs_still_load() -> None:
    small = build_model(ModelSpec("cnn", (1, 8, 8), 10, width=4))
    default = build_model(ModelSpec("cnn", (1, 8, 8), 10))
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in default.parameters())
    old = {"arch": "cnn", "input_shape": [1, 8, 8], "num_classes": 10}
    assert ModelSpec.from_dict(old).width is None
    assert ModelSpec.from_dict(old).to_dict() == old
    assert ModelSpec.from_dict(ModelSpec("gru", (5, 2), 3, 16).to_dict()).width == 16


def test_families_refuse_inputs_of_the_wrong_rank() -> None:
    with pytest.raises(ModelSpecError, match="gru needs sequence inputs"):
        build_model(ModelSpec("gru", (1, 8, 8), 2))
    with pytest.raises(ModelSpecError, match="resnet needs image inputs"):
        build_model(ModelSpec("resnet", (24, 1), 2))
    assert default_arch((24, 1)) == "gru"
