"""CondInst (Tian et al., ECCV 2020) as AdelaiDet builds it, with torchvision MaskRCNN's call
contract; see ``alseg.models.condinst.model``."""

from alseg.models.condinst.model import CondInst, build_condinst, mask_frame

__all__ = ["CondInst", "build_condinst", "mask_frame"]
