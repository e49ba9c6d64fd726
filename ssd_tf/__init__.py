"""ssd_tf: SSD300 (ResNet34 / VGG16) and Faster R-CNN FPN detectors on TensorFlow 2 / Keras 3."""
__version__ = "0.1.0"
