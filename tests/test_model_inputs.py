"""Every model checks its inputs at the boundary: a wrong shape or dtype names the fix."""

import re

import pytest
import torch

from avalanche_neuromod.models import (FlyNet, ModulatedConv2d, ModulatedLinear, NeuroModNet, NeuroModResNet18,
                                       SparseFlyEncoder, TaskBatchNorm2d)
from avalanche_neuromod.models._checks import as_task_labels, check_features, check_images, check_task_labels

FC_MODELS = {
    "FlyNet": lambda: FlyNet(1),
    "NeuroModNet": lambda: NeuroModNet((16,)),
}


def _raises(call, *fragments: str) -> str:
    """Run ``call``, expect a ValueError whose message holds every fragment; return the message."""
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from: {message}"
    return message


def _trained(model):
    model.known_train_tasks_labels = {0}
    return model.eval()


@pytest.mark.parametrize("name", FC_MODELS)
def test_fc_models_take_any_layout_with_input_size_values(name):
    model = _trained(FC_MODELS[name]())
    x = torch.rand(4, 784)
    assert model(x, 0).shape == (4, 10)
    assert torch.equal(model(x.view(4, 1, 28, 28), 0), model(x, 0))
    assert torch.equal(model(x.view(4, 28, 28), torch.zeros(4, dtype=torch.long)), model(x, 0))


@pytest.mark.parametrize("name", FC_MODELS)
@pytest.mark.parametrize("shape, per_sample, fix", [
    ((2, 3, 32, 32), 3072, "SplitCIFAR100"),
    ((2, 3, 28, 28), 2352, "SplitMNIST(channels=3)"),
    ((2, 100), 100, None),
])
def test_fc_models_reject_another_number_of_values(name, shape, per_sample, fix):
    model = _trained(FC_MODELS[name]())
    message = _raises(lambda: model(torch.rand(shape), 0),
                      f"{name}(input_size=784)", "(B, 784) or (B, 1, 28, 28)", str(shape),
                      f"input_size={per_sample}", "SplitMNIST(channels=1)", "RotatedMNIST")
    if fix:
        assert f"they match 3x{shape[-1]}x{shape[-1]} images: {fix}" in message


def test_the_issue_example_no_longer_fails_inside_a_layer():
    model = _trained(NeuroModNet())
    message = _raises(lambda: model(torch.rand(2, 3, 32, 32), 0), "(2, 3, 32, 32)", "input_size=3072")
    assert "mat1 and mat2" not in message


@pytest.mark.parametrize("name", FC_MODELS)
def test_fc_models_reject_a_missing_batch_dimension_and_other_dtypes(name):
    model = _trained(FC_MODELS[name]())
    _raises(lambda: model(torch.rand(784), 0), "(784,)", "no batch dimension", "x.unsqueeze(0)")
    _raises(lambda: model(torch.zeros(2, 1, 28, 28, dtype=torch.uint8), 0),
            "torch.float32", "torch.uint8", "(2, 1, 28, 28)", "/ 255")
    _raises(lambda: model(torch.zeros(2, 784, dtype=torch.float64), 0),
            "torch.float32", "torch.float64", "x.to(torch.float32)")


def test_resnet_takes_images_with_its_channels():
    model = _trained(NeuroModResNet18())
    assert model(torch.rand(2, 3, 32, 32), 0).shape == (2, 10)
    assert model(torch.rand(2, 3, 28, 28), 0).shape == (2, 10)
    grey = _trained(NeuroModResNet18(in_channels=1))
    assert grey(torch.rand(2, 1, 28, 28), 0).shape == (2, 10)


@pytest.mark.parametrize("shape, received, fix", [
    ((2, 1, 28, 28), "1 channel(s)", "in_channels=1"),
    ((2, 3072), "2 dims", "unflattened images"),
    ((3, 32, 32), "3 dims", "x.unsqueeze(0)"),
    ((2, 1, 3, 32, 32), "5 dims", "reshape the batch to (B, 3, H, W)"),
])
def test_resnet_rejects_other_layouts(shape, received, fix):
    model = _trained(NeuroModResNet18())
    _raises(lambda: model(torch.rand(shape), 0),
            "NeuroModResNet18(in_channels=3)", "(B, 3, H, W)", str(shape), received, fix)


def test_resnet_channel_error_points_to_the_streams_with_those_channels():
    _raises(lambda: _trained(NeuroModResNet18())(torch.rand(2, 1, 28, 28), 0),
            "SplitMNIST(channels=3)", "SplitCIFAR100", "SeqSVHN")
    _raises(lambda: _trained(NeuroModResNet18(in_channels=1))(torch.rand(2, 3, 32, 32), 0),
            "in_channels=3", "SplitMNIST(channels=1)", "RotatedMNIST")


MODELS = {**FC_MODELS, "NeuroModResNet18": lambda: NeuroModResNet18()}
INPUTS = {"FlyNet": (3, 1, 28, 28), "NeuroModNet": (3, 1, 28, 28), "NeuroModResNet18": (3, 3, 32, 32)}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("labels, fragments", [
    (torch.tensor([0, 0]), ["2 task labels for a batch of 3", "expected 3 (one per sample) or 1", "single int"]),
    (torch.zeros(4, dtype=torch.long), ["4 task labels for a batch of 3"]),
    (torch.zeros(3), ["integer task labels (torch.long)", "torch.float32", "(3,)", "integer task ids"]),
    (torch.zeros(3, dtype=torch.float16), ["torch.float16"]),
    (torch.ones(3, dtype=torch.bool), ["bool tensor", "(3,)", "not a task label", "torch.full((B,), task_id)"]),
    (torch.zeros(3, 1, dtype=torch.long), ["task labels of shape (3,) or a single int", "(3, 1)",
                                           "task_labels.reshape(-1)"]),
    (torch.zeros(1, 3, dtype=torch.long), ["(1, 3)"]),
    (True, ["the bool True", "model(x, 0)"]),
    (0.0, ["the float 0.0", "int(task_id)"]),
])
def test_wrong_task_labels_name_the_problem_and_the_fix(name, labels, fragments):
    model = _trained(MODELS[name]())
    _raises(lambda: model(torch.rand(INPUTS[name]), labels), f"{name}(", *fragments)


@pytest.mark.parametrize("name", MODELS)
def test_accepted_task_labels(name):
    model = _trained(MODELS[name]())
    x = torch.rand(INPUTS[name])
    expected = model(x, 0)
    for labels in (torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.int32), torch.tensor(0),
                   torch.tensor([0]), [0, 0, 0], torch.zeros(3, dtype=torch.uint8)):
        assert torch.equal(model(x, labels), expected), labels


def test_single_sample_batch_with_one_label():
    model = _trained(NeuroModNet((16,)))
    assert model(torch.rand(1, 784), torch.tensor([0])).shape == (1, 10)


def test_layers_check_their_inputs():
    t = torch.zeros(3, dtype=torch.long)
    linear = ModulatedLinear(784, 10)
    linear.modulation.add_task()
    assert linear(torch.rand(3, 784), t).shape == (3, 10)
    _raises(lambda: linear(torch.rand(3, 1, 28, 28), t), "ModulatedLinear(in_features=784)", "(B, 784)",
            "(3, 1, 28, 28)", "x.reshape(x.shape[0], -1)")
    message = _raises(lambda: linear(torch.rand(3, 100), t), "(B, 784)", "(3, 100)", "in_features=100")
    assert "(B, 1, 28, 28)" not in message  # a layer does not flatten
    _raises(lambda: linear.forward_transposed(torch.rand(3, 784), t), "(784, B)", "(3, 784)", "x.t()")
    _raises(lambda: linear(torch.rand(3, 784), t[:2]), "2 task labels for a batch of 3")
    _raises(lambda: linear(torch.rand(3, 784), t.float()), "torch.float32")
    with pytest.raises(TypeError, match="torch.Tensor"):
        linear(torch.rand(3, 784), 0)

    conv = ModulatedConv2d(3, 4, 3)
    conv.modulation.add_task()
    assert conv(torch.rand(3, 3, 8, 8), t).shape == (3, 4, 6, 6)
    _raises(lambda: conv(torch.rand(3, 1, 8, 8), t), "ModulatedConv2d(in_channels=3)", "(B, 3, H, W)",
            "(3, 1, 8, 8)", "in_channels=1")
    _raises(lambda: conv(torch.rand(3, 3, 8, 8), t.bool()), "bool")

    norm = TaskBatchNorm2d(4)
    norm.add_task()
    assert norm(torch.rand(3, 4, 6, 6), t).shape == (3, 4, 6, 6)
    _raises(lambda: norm(torch.rand(3, 5, 6, 6), t), "TaskBatchNorm2d(num_features=4)", "(3, 5, 6, 6)",
            "num_features=5")

    encoder = SparseFlyEncoder(784, 32)
    assert encoder(torch.rand(3, 1, 28, 28)).shape == (3, 32)
    _raises(lambda: encoder(torch.rand(3, 3, 32, 32)), "SparseFlyEncoder(input_size=784)", "(3, 3, 32, 32)",
            "input_size=3072")


def test_non_tensor_inputs_are_type_errors():
    model = _trained(NeuroModNet((16,)))
    with pytest.raises(TypeError, match=re.escape("torch.as_tensor")):
        model([[0.0] * 784], 0)


def test_helpers_pass_what_fits():
    x = torch.rand(5, 1, 28, 28)
    check_features(x, 784, owner="m")
    check_images(x, 1, owner="m")
    check_task_labels(torch.zeros(5, dtype=torch.long), 5, owner="m")
    check_task_labels(torch.zeros(1, dtype=torch.long), 5, owner="m")
    labels = as_task_labels(torch.tensor([2]), x, owner="m")
    assert labels.dtype == torch.long and labels.tolist() == [2] * 5
    assert as_task_labels(3, x, owner="m").tolist() == [3] * 5


def test_layers_refuse_a_task_id_they_do_not_hold():
    linear = ModulatedLinear(784, 10)
    linear.modulation.add_task()
    linear.modulation.add_task()
    x = torch.rand(3, 784)
    assert linear(x, torch.tensor([0, 1, 1])).shape == (3, 10)
    _raises(lambda: linear(x, torch.tensor([0, 2, 1])), "ModulatedLinear(in_features=784)", "task id 2",
            "holds 2 task(s), ids 0..1", "add_task()")
    # A negative id used to pick the last task silently.
    _raises(lambda: linear(x, torch.tensor([-1])), "task id -1", "ids 0..1")
    _raises(lambda: linear.forward_transposed(x.t(), torch.tensor([5])), "forward_transposed", "task id 5")
    conv = ModulatedConv2d(3, 4, 3)
    _raises(lambda: conv(torch.rand(2, 3, 8, 8), torch.tensor([0])), "ModulatedConv2d(in_channels=3)",
            "holds 0 task(s), no task yet")
    norm = TaskBatchNorm2d(4)
    norm.add_task()
    _raises(lambda: norm(torch.rand(2, 4, 6, 6), torch.tensor([0, 1])), "TaskBatchNorm2d(num_features=4)",
            "task id 1", "ids 0..0")


def test_class_targets_must_have_an_output():
    from avalanche_neuromod.models._checks import check_class_targets

    logits = torch.zeros(4, 5)
    check_class_targets(logits, torch.tensor([0, 4, 2, 1]), owner="S")
    _raises(lambda: check_class_targets(logits, torch.tensor([0, 5]), owner="S"), "S: the batch holds class label 5",
            "5 outputs (labels 0..4)", "n_classes >= 6")
    _raises(lambda: check_class_targets(logits, torch.tensor([-1, 2]), owner="S"), "class label -1", "relabel")


@pytest.mark.parametrize("layer_cls", ["PSPLayer", "BatchELayer", "SupSupLayer"])
def test_baseline_layers_refuse_a_task_id_they_do_not_hold(layer_cls):
    import avalanche_neuromod.models as models
    from avalanche_neuromod.models.task_incremental import TaskState

    layer = getattr(models, layer_cls)(8, 4)
    for state in (m for m in layer.children() if isinstance(m, TaskState)):
        state.add_task()
    x = torch.rand(2, 8)
    assert layer(x, torch.tensor([0, 0])).shape == (2, 4)
    for bad in (1, -1):  # used to end in a bare IndexError / AttributeError
        _raises(lambda: layer(x, torch.tensor([0, bad])), f"{layer_cls}(8, 4) got task id {bad}", "ids 0..0")
