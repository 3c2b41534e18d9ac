"""The FCN model family on the fused ops (Long, Shelhamer, Darrell: Fully Convolutional
Networks for Semantic Segmentation).

Drop-in replacements for pytorch-fcn's torchfcn.models (same state_dict keys), whose
fixed bilinear upsampling heads run on fcn_fast.upsample_skip:

    model = fcn_fast.FCN8s(n_class=21)                 # backend="auto"
    model.load_state_dict(torch.load(path, weights_only=True))   # plain or
    # {"model_state_dict": ...} checkpoints, strict=True
    model.set_backend("reference")                     # plain-PyTorch heads

Every model takes `width=` (channel multiplier, 1.0 = the published net) for small
test and demo models.
"""

from fcn_fast.models._common import (
    BilinearUpscore,
    FCNBase,
    NonBilinearUpscoreWarning,
    fcn_param_groups,
    load_checkpoint,
    unwrap_state_dict,
)
from fcn_fast.models.alexnet import FCNAlexNet
from fcn_fast.models.googlenet import FCNGoogLeNet
from fcn_fast.models.vgg import VGG16FCN, FCN8s, FCN8sAtOnce, FCN16s, FCN32s, load_vgg16_backbone

__all__ = [
    "BilinearUpscore",
    "FCN8s",
    "FCN8sAtOnce",
    "FCN16s",
    "FCN32s",
    "FCNAlexNet",
    "FCNBase",
    "FCNGoogLeNet",
    "NonBilinearUpscoreWarning",
    "VGG16FCN",
    "fcn_param_groups",
    "load_checkpoint",
    "load_vgg16_backbone",
    "unwrap_state_dict",
]
