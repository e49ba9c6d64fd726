"""Using a trained model: ``--mode=predict`` (``predict.py``: pictures in, detections.json and annotated copies
out), ``--mode=export`` (``export.py``: a SavedModel that needs only TensorFlow), both built on the shared
inference graph (``module.py``); drawing (``draw.py``); which checkpoint to use (``checkpoints.py``)."""
