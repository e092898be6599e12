import pytest
import torch

from b3core.errors import B3Error
from b3core.workloads.models import (
    count_parameters,
    create_model,
    get_model_spec,
    has_batch_dependent_layers,
    list_models,
)

pytestmark = pytest.mark.untimed  # nothing here asserts on speed

REQUIRED = {
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "resnet18",
    "resnet50",
    "simple_cnn",
    "tanh_cnn",
    "vit_b_16",
    "vit_tiny",
}


def test_registry_holds_the_required_models():
    assert REQUIRED <= set(list_models())


def test_list_models_takes_wildcards():
    assert list_models("resnet*") == ["resnet18", "resnet50"]
    assert list_models("mobilenet_v3_*") == ["mobilenet_v3_large", "mobilenet_v3_small"]
    assert list_models("nothing*") == []


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_every_model_classifies_to_the_requested_class_count(name):
    spec = get_model_spec(name)
    # the smallest size each model allows keeps this fast; simple_cnn keeps its native 32
    size = max(spec.min_image_size, 32)
    model = create_model(name, num_classes=7, image_size=size).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, size, size))
    assert out.shape == (2, 7)


def test_mobilenet_is_b3s_model_with_a_resized_classifier():
    model = create_model("mobilenet_v3_large")
    last = model.classifier[-1]
    assert (last.in_features, last.out_features) == (1280, 10)
    assert get_model_spec("mobilenet_v3_large").image_size == 224


def test_simple_cnn_matches_the_tutorial():
    model = create_model("simple_cnn")
    conv, linear = model[0][0], model[-1]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.padding) == (
        3,
        16,
        (3, 3),
        (1, 1),
    )
    assert linear.in_features == 16 * 16 * 16
    assert count_parameters(model) == 3 * 16 * 9 + 16 + 16 * 16 * 16 * 10 + 10


def test_tanh_cnn_has_four_batchnorm_tanh_blocks_and_three_linear_layers():
    model = create_model("tanh_cnn")
    kinds = [type(m).__name__ for m in model.modules()]
    assert kinds.count("BatchNorm2d") == 4 and kinds.count("Tanh") >= 4
    assert kinds.count("MaxPool2d") == 4 and kinds.count("Linear") == 3
    assert has_batch_dependent_layers(model)
    assert not has_batch_dependent_layers(create_model("simple_cnn"))


def test_unknown_model_suggests_close_names():
    with pytest.raises(B3Error, match="did you mean resnet18"):
        create_model("resnet_18")


def test_image_size_is_validated():
    with pytest.raises(B3Error, match="multiple of 16"):
        create_model("vit_b_16", image_size=100)
    with pytest.raises(B3Error, match="at least"):
        create_model("vit_tiny", image_size=4)


def test_b3s_own_models_run_without_importing_torchvision():
    """torchvision (a second to import) loads only when one of its models is built; the machine
    record still names its version, build tag included."""
    import subprocess
    import sys

    import torchvision

    probe = (
        "import sys\n"
        "from b3core import create_model\n"
        "from b3core.measuring.machine import machine_record\n"
        "create_model('simple_cnn')\n"
        "version = machine_record()['torchvision']\n"
        "print('torchvision' in sys.modules, version)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["False", torchvision.__version__]
