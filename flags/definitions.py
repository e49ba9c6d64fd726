"""absl flag definitions for ssd_main.py, grouped as the config is. Flags know nothing of the package.

A flag left at its default (None for most) keeps the preset's value; `ssd_main.py` is the only place
where flags become a config.
"""
from absl import flags


def define_data_flags():
    flags.DEFINE_string("training_file_pattern", None, "Glob of training TFRecords (e.g. /data/train-*.tfrecord).")
    flags.DEFINE_string("validation_file_pattern", None, "Glob of validation TFRecords.")
    flags.DEFINE_string("val_json_file", None, "COCO ground-truth JSON of the validation set; without it the "
                        "ground truth is built from the validation TFRecords.")
    flags.DEFINE_string("label_map", None, "Label map file (JSON list of {id, name}, JSON {id: name}, or one name "
                        "per line). Default: the converter's sidecar (PREFIX.meta.json) beside the shards.")
    flags.DEFINE_integer("num_train_images", None, "Images per epoch (default: from the sidecar).")
    flags.DEFINE_integer("max_boxes", None, "Boxes kept per image (padding size).")
    flags.DEFINE_integer("shuffle_buffer", None, "Shuffle buffer in examples.")
    flags.DEFINE_enum("augmentation", None, ["auto", "mlperf", "ssd", "none"],
                      "SSD models: training augmentation recipe (auto: the preset's reference recipe).")


def define_model_flags():
    flags.DEFINE_string("model", "ssd_resnet34", "Model preset: ssd_resnet34 | ssd_vgg16 | ssd_vgg16_voc | "
                        "faster_rcnn_r50_fpn (torchvision) | faster_rcnn_r101_fpn (maskrcnn-benchmark) (each a "
                        "complete config: model and recipe).")
    flags.DEFINE_string("config_file", None, "Starting config: a saved config.json or a hand-written JSON/YAML "
                        "subset such as {model: {name: ssd_vgg16, postprocess: {score_threshold: 0.1}}, train: "
                        "{momentum: 0.8}}; flags override it.")
    flags.DEFINE_multi_string("params_override", None, "Config values by dotted path, applied after --config_file: "
                              "'model.rpn.nms_threshold=0.6,train.momentum=0.8' (values in YAML syntax; repeatable). "
                              "Every value of config.json can be set this way.")
    flags.DEFINE_integer("num_classes", None, "Classes including background (default: 1 + label-map size).")
    flags.DEFINE_integer("min_size", None, "Faster R-CNN: shorter image side after resizing (torchvision: 800).")
    flags.DEFINE_integer("max_size", None, "Faster R-CNN: longer image side at most (torchvision: 1333).")
    flags.DEFINE_integer("trainable_backbone_layers", None, "Faster R-CNN: ResNet stages trained, 0-5 of layer4, "
                         "layer3, layer2, layer1, conv1 (torchvision: 3; the rest keep their weights).")
    flags.DEFINE_float("width_multiplier", None, "Scales every channel count (1.0 = the reference model).")
    flags.DEFINE_string("backbone_checkpoint", None, "Weights to start training from: a Keras .weights.h5 of the "
                        "whole model or its backbone (python -m ssd_tf.weights.convert makes one), or a TF checkpoint "
                        "with the MLPerf ResNet34 variable names.")
    flags.DEFINE_string("resnet_checkpoint", None, "Alias of --backbone_checkpoint (the seed's name).")


def define_train_flags():
    flags.DEFINE_enum("mode", "train_and_eval", ["train", "eval", "train_and_eval", "predict", "export"],
                      "What to run (predict: detections and annotated pictures; export: a SavedModel).")
    flags.DEFINE_string("model_dir", None, "Directory for checkpoints, summaries, config.json, eval results.")
    flags.DEFINE_integer("train_batch_size", None, "Training batch size per device.")
    flags.DEFINE_float("num_epochs", None, "Epochs to train (train_steps wins when given).")
    flags.DEFINE_integer("train_steps", None, "Optimizer steps to train.")
    flags.DEFINE_float("base_learning_rate", None, "Learning rate for lr_reference_batch images; scaled linearly "
                       "with the global batch.")
    flags.DEFINE_integer("lr_reference_batch", None, "Batch size that base_learning_rate refers to.")
    flags.DEFINE_enum("lr_schedule", None, ["cosine", "multistep", "constant"], "Learning-rate schedule.")
    flags.DEFINE_float("warmup_epochs", None, "Linear warmup length in epochs.")
    flags.DEFINE_integer("warmup_steps", None, "Linear warmup length in steps (wins over warmup_epochs).")
    flags.DEFINE_float("cosine_alpha", None, "Final learning rate of the cosine schedule, as a fraction.")
    flags.DEFINE_list("lr_boundaries", None, "Multistep drops: fractions of training (<1) or steps (>=1).")
    flags.DEFINE_float("lr_gamma", None, "Multistep factor.")
    flags.DEFINE_float("momentum", None, "SGD momentum.")
    flags.DEFINE_float("weight_decay", None, "Weight decay.")
    flags.DEFINE_enum("weight_decay_mode", None, ["coupled", "decoupled"], "coupled: L2 folded into the gradient "
                      "(the references); decoupled: w -= lr*wd*w.")
    flags.DEFINE_bool("exclude_bn_bias_from_weight_decay", None, "No weight decay on BN parameters and biases.")
    flags.DEFINE_float("bias_lr_factor", None, "Learning-rate factor of layer biases (maskrcnn-benchmark: 2).")
    flags.DEFINE_float("bias_weight_decay", None, "Weight decay of layer biases: 0 (maskrcnn-benchmark) or the "
                       "weight decay (default: biases decay like every weight).")
    flags.DEFINE_integer("steps_reference_batch", None, "Global batch at which --train_steps and --lr_boundaries in "
                         "steps are counted; they are rescaled to the run's global batch (0: taken as given; "
                         "faster_rcnn_r101_fpn: 16, maskrcnn-benchmark's 90k iterations of 16 images).")
    flags.DEFINE_enum("loss_normalization", None, ["per_image", "per_batch"], "SSD models: loss normalisation.")
    flags.DEFINE_enum("precision", None, ["auto", "fp32", "fp16", "bf16"], "Compute precision; variables, "
                      "losses, box decoding and post-processing stay fp32. auto (default): bf16 where the hardware "
                      "runs it natively (GPU compute capability >= 8.0, CPU with AMX-BF16 or AVX512_BF16), else fp32.")
    flags.DEFINE_bool("xla", None, "Compile the forward/backward pass with XLA.")
    flags.DEFINE_bool("deterministic_ops", None, "TensorFlow op determinism, for bit-identical resume where a CPU "
                      "kernel is otherwise nondeterministic; the data wait is then not measured. On by default for "
                      "Faster R-CNN, whose RoIAlign gradient races on a CPU without it (false is refused there).")
    flags.DEFINE_integer("steps_per_loop", None, "Steps per tf.function call.")
    flags.DEFINE_integer("log_every_steps", None, "Steps between log lines.")
    flags.DEFINE_integer("checkpoint_every_steps", None, "Steps between checkpoints.")
    flags.DEFINE_integer("keep_checkpoints", None, "Checkpoints kept.")
    flags.DEFINE_integer("seed", None, "Random seed (data order, augmentation, initialisation).")


def define_eval_flags():
    flags.DEFINE_integer("eval_batch_size", None, "Evaluation batch size.")
    flags.DEFINE_float("eval_every_epochs", None, "train_and_eval: evaluate every this many epochs (and at the end).")
    flags.DEFINE_enum("eval_backend", None, ["faster", "pycocotools"], "COCO evaluation implementation.")
    flags.DEFINE_enum("eval_metric", None, ["coco", "voc07", "voc"], "coco: COCO AP; voc07: VOC 11-point mAP; "
                      "voc: VOC2010+ area mAP.")
    flags.DEFINE_integer("eval_steps", None, "Evaluation batches (0: the whole validation set).")
    flags.DEFINE_string("checkpoint", None, "eval / predict / export: this checkpoint instead of the latest: a "
                        "prefix (model_dir/checkpoints/ckpt-1200), a directory of checkpoints, or 'best' (the one "
                        "--best_metric kept).")
    flags.DEFINE_bool("eval_all_checkpoints", False, "eval: every checkpoint in model_dir in turn.")
    flags.DEFINE_float("score_threshold", None, "Post-processing score threshold (default: the preset's; "
                       "predict: 0.3, what is written and drawn).")
    flags.DEFINE_float("nms_iou_threshold", None, "Post-processing NMS IoU threshold (default: the preset's).")
    flags.DEFINE_integer("max_detections", None, "Detections kept per image (default: the preset's).")


def define_inference_flags():
    flags.DEFINE_string("input_pattern", None, "predict: pictures (JPEG, PNG, GIF, BMP): a file, a glob, a "
                        "comma-separated list, or a directory.")
    flags.DEFINE_string("output_dir", None, "predict: where detections.json and the annotated pictures go.")
    flags.DEFINE_string("export_dir", None, "export: the SavedModel directory to write.")
    flags.DEFINE_string("best_metric", None, "Keep the best evaluated checkpoint in model_dir/best/ by this "
                        "eval_results.json key (e.g. COCO/AP, COCO/AP50, VOC/mAP, per_class_AP/<name>); "
                        "--checkpoint=best uses it.")
    flags.DEFINE_enum("best_metric_mode", None, ["auto", "max", "min"], "Whether higher or lower --best_metric "
                      "is better (auto: max for AP/AR/mAP keys, min for losses).")


def define_distribute_flags():
    flags.DEFINE_enum("strategy", None, ["auto", "one_device", "mirrored", "multi_worker"], "Distribution strategy.")
    flags.DEFINE_integer("num_devices", None, "Devices per worker (0: all visible).")
    flags.DEFINE_bool("sync_batchnorm", None, "Synchronise BatchNorm statistics across replicas.")
    flags.DEFINE_list("worker_hosts", None, "Cluster workers host:port,... (with --task_index).")
    flags.DEFINE_integer("task_index", None, "This worker's index in --worker_hosts.")
    flags.DEFINE_string("rank_table_file", None, "Ascend-style rank table JSON; this process is RANK_ID / --rank_id.")
    flags.DEFINE_integer("rank_id", None, "Rank in the rank table (default: $RANK_ID).")
    flags.DEFINE_integer("base_port", 29500, "Worker port = base_port + rank for rank tables and SLURM.")
    flags.DEFINE_float("collective_timeout", None, "multi_worker: seconds after which a collective (all-reduce, "
                       "broadcast) that has not completed fails instead of hanging, e.g. when a worker died. Must "
                       "exceed the chief's longest pause between steps (evaluation, checkpoint) and the first "
                       "step's tracing. Default: no timeout.")


def define_all():
    define_data_flags()
    define_model_flags()
    define_train_flags()
    define_eval_flags()
    define_inference_flags()
    define_distribute_flags()
