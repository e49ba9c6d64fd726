"""ssd_tf: SSD300 (ResNet34 / VGG16) and Faster R-CNN FPN detectors on TensorFlow 2 / Keras 3."""
from setuptools import find_packages, setup

RUNTIME = [
    "tensorflow==2.21.0",
    "tensorboard==2.21.0",  # tf.summary needs it; tensorflow 2.21 no longer pulls it in
    "keras==3.15.1",
    "numpy>=1.26,<3",
    "absl-py==2.5.1",
    "pycocotools==2.0.11",
    "faster-coco-eval==1.8.0",
    "matplotlib==3.11.2",
    "pillow==13.0.0",
    "defusedxml==0.7.1",
    "tqdm==4.70.1",
    "google-crc32c==1.9.0",  # TFRecord CRCs in the converters without importing TensorFlow
    "msgspec==0.22.0",  # COCO converter: decodes only the fields it uses (flat memory, ~5x faster than json)
    "pyyaml==6.0.3",  # --config_file recipes written as YAML
]

EXTRAS = {
    "test": [
        "pytest==9.2.0",
        "pytest-timeout==2.4.0",
        "pytest-xdist==3.8.0",  # run_tests.sh runs the tests in two processes
        "hypothesis==6.170.15",
    ],
    # Weight import from PyTorch state dicts and the parity tests.
    "torch": ["torch==2.14.1", "torchvision==0.29.1"],
}

CONSOLE_SCRIPTS = [
    "create_coco_tfrecord=data_tools.create_coco_tfrecord:run",
    "create_voc_tfrecord=data_tools.create_voc_tfrecord:run",
    "create_txt_tfrecord=data_tools.create_txt_tfrecord:run",
    "make_shapes_dataset=data_tools.make_shapes_dataset:run",
    "inspect_tfrecord=data_tools.inspect_tfrecord:run",
]

setup(
    name="ssd_tf",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.10",
    packages=find_packages(include=["ssd_tf", "ssd_tf.*", "data_tools", "data_tools.*", "flags", "flags.*"]),
    py_modules=["ssd_main"],
    install_requires=RUNTIME,
    extras_require=EXTRAS,
    entry_points={"console_scripts": CONSOLE_SCRIPTS},
)
