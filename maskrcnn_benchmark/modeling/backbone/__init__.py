"""ResNet/ResNeXt bodies and feature pyramids; ``build_backbone(cfg)`` picks one by name."""
from .backbone import BACKBONES, build_backbone, build_resnet_body
from .fpn import FPN, LastLevelMaxPool, LastLevelP6P7
from .resnet import RESNET_DEPTHS, BasicBlock, Bottleneck, ResNet, Stem

__all__ = ["BACKBONES", "build_backbone", "build_resnet_body", "FPN", "LastLevelMaxPool",
           "LastLevelP6P7", "RESNET_DEPTHS", "BasicBlock", "Bottleneck", "ResNet", "Stem"]
