"""Model registry: build any supported network by name.

    from learndrop.models import create_model, list_models
    model = create_model("resnet56", num_classes=10, in_channels=3)

CIFAR-size ResNets (resnet20 ... resnet110) and VGGs (vgg11_cifar, vgg16_cifar)
live in their own files; torchvision's ImageNet ResNets and VGGs are registered
under their torchvision names.
"""

# Importing the model files registers their builders.
from learndrop.models import cifar_resnet, cifar_vgg, torchvision_models  # noqa: F401
from learndrop.models.registry import (
    UnknownModelError,
    create_model,
    has_pretrained_weights,
    list_models,
    register_model,
    replace_head,
)

__all__ = ["UnknownModelError", "create_model", "has_pretrained_weights", "list_models",
           "register_model", "replace_head"]
