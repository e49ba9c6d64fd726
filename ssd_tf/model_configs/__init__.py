"""Model configs, one dataclass per detector family (no TensorFlow).

A family plugs in with its config class here and its task in ``ssd_tf/tasks``; ``ssd_tf/presets.py`` fills
the config with a reference's values.
"""
from ssd_tf.model_configs.faster_rcnn import FasterRCNNModelConfig
from ssd_tf.model_configs.ssd import SSDModelConfig

FAMILIES = {cls.family: cls for cls in (SSDModelConfig, FasterRCNNModelConfig)}
