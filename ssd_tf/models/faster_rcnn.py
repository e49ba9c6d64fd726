"""Faster R-CNN with a ResNet-50/101 FPN backbone, faithful to torchvision's ``fasterrcnn_resnet50_fpn`` (v1) or, by
config values, to maskrcnn-benchmark's ``e2e_faster_rcnn_R_101_FPN_1x``.

Public API
----------
``build_faster_rcnn(cfg: FasterRCNNModelConfig, *, jit_compile=False) -> FasterRCNN`` (a ``keras.Model``).
``jit_compile`` compiles the dense part (backbone, FPN, RPN head) with XLA; proposal selection, NMS and RoIAlign
always run outside XLA. Measured on the AMX / AVX512_BF16 dev CPU (bench/frcnn_throughput.py): XLA's own CPU
convolutions are ~2x slower than TensorFlow's oneDNN ones under ``mixed_bfloat16`` and about equal in float32, so
it is off by default.

Inference: ``model(inputs, training=False)`` with ``inputs`` either

* a float tensor ``[B, H, W, 3]``: images normalised as ``cfg.normalization`` says, H and W multiples of 32, every
  pixel a real image pixel; or
* a dict ``{"images": [B, H, W, 3], "image_shape": int [B, 2]}`` for a zero-padded batch, ``image_shape`` holding
  each image's true (height, width) in pixels of the network input (its top-left corner is at (0, 0)); the
  keyword ``model(images, image_shape=...)`` is the same.

Returns a dict (K = ``cfg.postprocess.max_detections``, rows sorted by score, padding rows zero):
``detection_boxes`` float32 [B, K, 4] ``[ymin, xmin, ymax, xmax]`` in input pixels, ``detection_scores`` float32
[B, K], ``detection_classes`` int32 [B, K] (contiguous ids, 1 = first class, 0 = padding), ``num_detections``
int32 [B]. The RPN uses the test-time top-n (``cfg.rpn.*_test``); ``training`` changes nothing (BatchNorm is
frozen and there is no dropout).

Training: ``model.compute_losses(images, image_shape, gt_boxes, gt_classes, num_gt, seed, sampled=None)``
(traceable inside one ``tf.function`` step; every shape static given static inputs):

* ``images`` [B, H, W, 3], ``image_shape`` int [B, 2] (or None: every image fills the batch);
* ``gt_boxes`` float [B, M, 4] yxyx pixels of the input, ``gt_classes`` int [B, M] (1..C-1), ``num_gt`` int [B]:
  rows ``>= num_gt`` are padding (an image may have none);
* ``seed``: int [2] (or [B, 2], one per image) stateless seed of the anchor and RoI sampling; the caller derives it from the step and the
  replica so that a resumed run draws the same samples;
* ``sampled`` (tests): ``{"rpn_indices": int [B, S], "rpn_valid": bool [B, S]}`` fixes the sampled anchors
  (indices into the concatenated P2..P6 anchors) and/or ``{"roi_boxes": [B, R, 4], "roi_valid": bool [B, R]}``
  fixes the sampled RoIs (their labels and targets still come from matching them to the gt);
  ``return_samples=True`` also returns the samples drawn, in that form.

Returns float32 scalars ``rpn_objectness_loss``, ``rpn_box_loss``, ``roi_classification_loss``, ``roi_box_loss``
and their sum ``total_loss``, computed as torchvision does (REFERENCE_SPECS §3.3-3.5): RPN matching 0.7 / 0.3 with
low-quality matches, 256 anchors per image at most half positive, BCE averaged over the sampled anchors of the
batch, Smooth-L1 (``cfg.rpn.box_loss_beta``) summed over the sampled positives and divided by the sampled anchors;
proposals (train top-n, no gradient) plus the gt boxes, matched at 0.5, 512 RoIs per image at most 25 % positive,
cross-entropy averaged over the sampled RoIs, class-specific Smooth-L1 (``cfg.roi.box_loss_beta``) summed over
positives and divided by the sampled RoIs. An image without boxes has only negatives: box losses 0.

A training task passes, per step: the normalised padded images, their true sizes, the padded gt boxes (pixels of
the network input, yxyx), contiguous classes and counts, and a seed [2]; it differentiates ``total_loss`` with
respect to ``model.trainable_variables`` (frozen BN and the frozen stages are not among them).

Pieces used by the parity tests and the benchmark: ``dense_forward`` (pyramid + raw RPN outputs),
``anchors``, ``propose``, ``box_head_outputs`` (RoIAlign + box head on given boxes) and ``postprocess``.

Mixed precision: the backbone, FPN and heads follow the global dtype policy; RPN outputs, RoIAlign, the box-head
outputs, losses and post-processing are float32.

Conventions (REFERENCE_SPECS §3, §5), each a value of the model config; torchvision's are the defaults:

* ``backbone.stride_in_1x1`` (MSRA bottleneck), ``backbone.frozen_bn_epsilon``, ``normalization`` (the parser's);
* ``anchors.style="detectron"``: Detectron cell anchors on the fixed ``anchors.strides``;
* ``pixel_offset=1``: maskrcnn-benchmark's "+1" pixel convention in the box coder (RPN and box head, encode and
  decode), the IoU of both matchers, every NMS, the box area of the RoI level mapper (with its eps inside the log),
  clipping to [0, size - 1] and the minimum-size filters (the parser's flip and the COCO export follow the same
  value);
* ``rpn.straddle_threshold`` (not None): anchors not inside the image by that margin are ignored in RPN training;
* ``rpn.post_nms_per_batch``: in training, the ``rpn.post_nms_top_n_train`` best proposals of the whole batch
  this model is called on (one device's batch under a distribution strategy), not of each image, so the number of
  proposals per image depends on the per-device batch (maskrcnn-benchmark: 2000 for 2 images per GPU);
* ``roi.box_loss_beta`` / ``rpn.box_loss_beta``: the Smooth-L1 betas.

With every value at torchvision's, the model computes exactly what it did before these options existed.

Known difference from torchvision, by design: RoIAlign uses the fixed level scales 1/4..1/32. torchvision infers
them from the largest true image size of the batch, which gives the same scales unless the largest image of a
batch fills less than ~71 % of the padded height or width (impossible in torchvision, which pads to that image).
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf

import keras

from ssd_tf.model_configs import faster_rcnn as frcnn_config
from ssd_tf.model_configs.common import Normalization
from ssd_tf.model_configs.faster_rcnn import FasterRCNNModelConfig
from ssd_tf.models.backbones.resnet import scaled_channels
from ssd_tf.models.backbones.resnet_fpn import resnet_fpn_backbone
from ssd_tf.models.rcnn_heads import BoxHead, RPNHead
from ssd_tf.ops import box_coder
from ssd_tf.ops.grid_anchors import anchor_visibility, grid_anchors
from ssd_tf.ops.matcher import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, match_boxes
from ssd_tf.ops.rcnn_postprocess import rcnn_detections
from ssd_tf.ops.roi_align import multilevel_roi_align
from ssd_tf.ops.rpn_proposals import rpn_proposals
from ssd_tf.ops.sampling import balanced_sample

_NESTED = {(FasterRCNNModelConfig, "backbone"): frcnn_config.ResNetBackbone,
           (FasterRCNNModelConfig, "anchors"): frcnn_config.FPNAnchors,
           (FasterRCNNModelConfig, "rpn"): frcnn_config.RPNConfig,
           (FasterRCNNModelConfig, "roi"): frcnn_config.RoIHeadConfig,
           (FasterRCNNModelConfig, "postprocess"): frcnn_config.RCNNPostprocess,
           (FasterRCNNModelConfig, "normalization"): Normalization}
LOSS_NAMES = ("rpn_objectness_loss", "rpn_box_loss", "roi_classification_loss", "roi_box_loss")
ROI_LEVELS = 4  # P2..P5 feed RoIAlign; P6 only the RPN


def _static_or_dynamic(tensor, axis):
    static = tensor.shape[axis]
    return static if static is not None else tf.shape(tensor)[axis]


def _smooth_l1(diff, beta):
    """torchvision smooth_l1_loss elementwise: 0.5 x^2 / beta if |x| < beta else |x| - 0.5 beta."""
    diff = tf.abs(diff)
    if beta == 0:
        return diff
    return tf.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)


@keras.saving.register_keras_serializable(package="ssd_tf")
class FasterRCNN(keras.Model):
    """See the module docstring. Build it with ``build_faster_rcnn``."""

    def __init__(self, cfg: FasterRCNNModelConfig, jit_compile_dense=False, **kwargs):
        kwargs.setdefault("name", cfg.name or f"faster_rcnn_r{cfg.backbone.depth}_fpn")
        super().__init__(**kwargs)
        if cfg.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background + classes), got {cfg.num_classes}")
        if len(cfg.anchors.sizes) != 5:
            raise ValueError(f"anchors.sizes needs one size per level P2..P6 (5), got {cfg.anchors.sizes}")
        self.cfg = cfg
        self.plus_one = cfg.pixel_offset == 1.0  # maskrcnn-benchmark's "+1" pixel convention
        self.jit_compile_dense = bool(jit_compile_dense)
        width = cfg.width_multiplier
        self.fpn_channels = scaled_channels(cfg.fpn_channels, width)
        bb = cfg.backbone
        self.backbone = resnet_fpn_backbone(bb.depth, bb.stride_in_1x1, bb.frozen_bn_epsilon, bb.trainable_layers,
                                            cfg.fpn_channels, width, name="backbone", norm=bb.norm)
        self.num_cell_anchors = len(cfg.anchors.aspect_ratios)
        self.rpn_head = RPNHead(self.num_cell_anchors, self.fpn_channels, name="rpn_head")
        self.box_head = BoxHead(cfg.num_classes, scaled_channels(cfg.roi.representation_size, width),
                                cfg.roi.pool_size, self.fpn_channels, name="box_head")
        self.rpn_head.build([(None, None, None, self.fpn_channels)])
        self.box_head.build((None, cfg.roi.pool_size, cfg.roi.pool_size, self.fpn_channels))
        self._dense_compiled = None
        self.built = True

    def build(self, input_shape=None):
        self.built = True

    # --- inputs --------------------------------------------------------------------------------------------
    @staticmethod
    def _unpack(inputs, image_shape=None):
        if isinstance(inputs, dict):
            images = inputs["images"]
            image_shape = inputs.get("image_shape", image_shape)
        else:
            images = inputs
        images = tf.convert_to_tensor(images)
        if images.shape.rank != 4 or images.shape[-1] != 3:
            raise ValueError(f"FasterRCNN: images must be [B, H, W, 3], got shape {images.shape}")
        for axis, label in ((1, "height"), (2, "width")):
            size = images.shape[axis]
            if size is not None and size % 32:
                raise ValueError(f"FasterRCNN: the input {label} must be a multiple of 32, got {size}")
        if image_shape is None:
            image_shape = tf.tile(tf.shape(images)[1:3][None], [tf.shape(images)[0], 1])
        return images, tf.cast(image_shape, tf.int32)

    # --- dense part ---------------------------------------------------------------------------------------
    def _dense(self, images, training=False):
        features = self.backbone(images, training=training)
        objectness, deltas = self.rpn_head(features)
        return features, objectness, deltas

    def dense_forward(self, images, training=False):
        """images [B,H,W,3] -> ([P2..P6] in the compute dtype, objectness float32 [B, N], deltas [B, N, 4]).
        ``training`` matters only to a trainable-BatchNorm backbone (``backbone.norm="batch"``): batch statistics."""
        if self.jit_compile_dense:
            if self._dense_compiled is None:
                self._dense_compiled = tf.function(self._dense, jit_compile=True, autograph=False)
            return self._dense_compiled(images, training)
        return self._dense(images, training)

    def anchors(self, images, features):
        """Anchors [N, 4] yxyx pixels (P2..P6, (y, x, a) order) and the number of anchors per level."""
        image_size = (_static_or_dynamic(images, 1), _static_or_dynamic(images, 2))
        feature_sizes = [(_static_or_dynamic(f, 1), _static_or_dynamic(f, 2)) for f in features]
        spec = self.cfg.anchors
        # torchvision infers each level's stride from the image and feature sizes; Detectron uses the fixed ones.
        strides = tuple(spec.strides) if spec.style == "detectron" else None
        anchors = grid_anchors(image_size, feature_sizes, sizes=spec.sizes, aspect_ratios=spec.aspect_ratios,
                               style=spec.style, strides=strides)
        level_sizes = [h * w * self.num_cell_anchors for h, w in feature_sizes]
        return anchors, level_sizes

    def propose(self, objectness, deltas, anchors, level_sizes, image_shape, training=False):
        """RPN proposals: (boxes [B, P, 4], scores [B, P], valid [B, P]), P = post-NMS top-n, best first.
        With ``rpn.post_nms_per_batch``, training keeps the top-n of the whole batch (each image's share a prefix)."""
        rpn = self.cfg.rpn
        out = rpn_proposals(
            tf.stop_gradient(tf.cast(objectness, tf.float32)), tf.stop_gradient(tf.cast(deltas, tf.float32)),
            tf.cast(anchors, tf.float32), image_shape, [int(n) for n in level_sizes],
            pre_nms_top_n=rpn.pre_nms_top_n_train if training else rpn.pre_nms_top_n_test,
            post_nms_top_n=rpn.post_nms_top_n_train if training else rpn.post_nms_top_n_test,
            nms_threshold=rpn.nms_threshold, min_size=rpn.min_size, score_threshold=rpn.score_threshold,
            weights=rpn.box_coder_weights, wh_clip=self.cfg.bbox_xform_clip, plus_one=self.plus_one,
            post_nms_per_batch=bool(rpn.post_nms_per_batch and training))
        return out["proposals"], out["scores"], out["valid"]

    def box_head_outputs(self, features, rois):
        """RoIAlign over P2..P5 + box head: rois [B, R, 4] yxyx pixels -> (logits [B, R, C], deltas [B, R, C, 4]).

        RoIAlign runs in float32 (float64 in float64 parity runs), whatever the compute dtype."""
        roi = self.cfg.roi
        dtype = tf.float64 if features[0].dtype == tf.float64 else tf.float32
        method = "gather" if dtype == tf.float64 else "crop_and_resize"  # crop_and_resize samples in float32
        pooled = multilevel_roi_align(
            [tf.cast(f, dtype) for f in features[:ROI_LEVELS]], tf.cast(rois, dtype), output_size=roi.pool_size,
            sampling_ratio=roi.sampling_ratio, plus_one=self.plus_one, canonical_size=float(roi.canonical_scale),
            canonical_level=roi.canonical_level, method=method)  # [B, R, P, P, C]
        batch, num_rois = tf.shape(rois)[0], _static_or_dynamic(rois, 1)
        logits, deltas = self.box_head(tf.reshape(pooled, [-1] + pooled.shape[2:].as_list()))
        num_classes = self.cfg.num_classes
        return (tf.reshape(logits, [batch, num_rois, num_classes]),
                tf.reshape(deltas, [batch, num_rois, num_classes, 4]))

    def postprocess(self, logits, deltas, rois, roi_valid, image_shape):
        """Detections dict (see ``call``) from box-head outputs on ``rois``."""
        post = self.cfg.postprocess
        return rcnn_detections(
            logits, deltas, rois, image_shape, roi_valid, score_threshold=post.score_threshold,
            nms_threshold=post.iou_threshold, max_detections=post.max_detections, min_size=post.min_size,
            weights=self.cfg.roi.box_coder_weights, wh_clip=self.cfg.bbox_xform_clip, plus_one=self.plus_one)

    # --- inference ----------------------------------------------------------------------------------------
    def call(self, inputs, training=False, image_shape=None):
        images, image_shape = self._unpack(inputs, image_shape)
        features, objectness, deltas = self.dense_forward(images)
        anchors, level_sizes = self.anchors(images, features)
        proposals, _, valid = self.propose(objectness, deltas, anchors, level_sizes, image_shape, training=False)
        # Valid proposals come first in every image: RoIAlign and the box head only see the longest valid prefix
        # of the batch (the whole padded list costs ~2x on small inputs, where NMS leaves a few hundred).
        longest = tf.maximum(tf.reduce_max(tf.reduce_sum(tf.cast(valid, tf.int32), axis=1)), 1)
        proposals, valid = proposals[:, :longest], valid[:, :longest]
        logits, box_deltas = self.box_head_outputs(features, proposals)
        return self.postprocess(logits, box_deltas, proposals, valid, image_shape)

    # --- training -----------------------------------------------------------------------------------------
    def compute_losses(self, images, image_shape, gt_boxes, gt_classes, num_gt, seed, sampled=None,
                       return_samples=False):
        """The four Faster R-CNN losses and their sum (see the module docstring). ``return_samples``: also return
        the sampled anchors and RoIs in the form ``sampled`` takes (to repeat a loss on the same samples)."""
        cfg = self.cfg
        images, image_shape = self._unpack(images, image_shape)
        gt_boxes = tf.cast(gt_boxes, tf.float32)
        gt_classes = tf.cast(gt_classes, tf.int32)
        num_gt = tf.reshape(tf.cast(num_gt, tf.int32), [-1])
        gt_valid = tf.range(tf.shape(gt_boxes)[1])[None, :] < num_gt[:, None]  # [B, M]
        sampled = dict(sampled or {})
        seed = tf.cast(seed, tf.int64)
        if seed.shape.rank == 2:  # one seed per image: its samples do not depend on the rest of the batch
            split = tf.map_fn(lambda s: tf.random.experimental.stateless_split(s, 2), seed,
                              fn_output_signature=tf.int64)  # [B, 2, 2]
            rpn_seed, roi_seed = split[:, 0], split[:, 1]
        else:
            rpn_seed, roi_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))

        features, objectness, deltas = self.dense_forward(images, training=True)
        anchors, level_sizes = self.anchors(images, features)
        rpn_losses, rpn_indices, rpn_valid = self._rpn_losses(objectness, deltas, anchors, image_shape, gt_boxes,
                                                              num_gt, rpn_seed, sampled)

        if "roi_boxes" in sampled:
            rois = tf.cast(sampled["roi_boxes"], tf.float32)
            roi_valid = tf.cast(sampled["roi_valid"], tf.bool)
            labels, matched_gt = self._roi_targets(rois, roi_valid, gt_boxes, gt_classes, num_gt)[:2]
        else:
            proposals, _, prop_valid = self.propose(objectness, deltas, anchors, level_sizes, image_shape,
                                                    training=True)
            candidates = tf.concat([proposals, gt_boxes], axis=1)  # gt boxes appended, as both references
            cand_valid = tf.concat([prop_valid, gt_valid], axis=1)
            cand_labels, cand_matched, matches = self._roi_targets(candidates, cand_valid, gt_boxes, gt_classes,
                                                                   num_gt)
            sample = balanced_sample(matches, cfg.roi.batch_size_per_image, cfg.roi.positive_fraction, roi_seed)
            roi_valid = sample.valid
            rois = tf.gather(candidates, sample.indices, batch_dims=1)
            labels = tf.gather(cand_labels, sample.indices, batch_dims=1)
            matched_gt = tf.gather(cand_matched, sample.indices, batch_dims=1)
        roi_losses = self._roi_losses(features, rois, roi_valid, labels, matched_gt)
        losses = {**rpn_losses, **roi_losses}
        losses["total_loss"] = tf.add_n([losses[name] for name in LOSS_NAMES])
        if return_samples:
            return losses, {"rpn_indices": rpn_indices, "rpn_valid": rpn_valid, "roi_boxes": rois,
                            "roi_valid": roi_valid}
        return losses

    def _rpn_losses(self, objectness, deltas, anchors, image_shape, gt_boxes, num_gt, seed, sampled):
        rpn = self.cfg.rpn
        matches = match_boxes(gt_boxes, num_gt, anchors, rpn.fg_iou_threshold, rpn.bg_iou_threshold,
                              allow_low_quality_matches=True, plus_one=self.plus_one)  # [B, N]
        if rpn.straddle_threshold is not None:
            # maskrcnn-benchmark: anchors crossing the image border (by more than the threshold) are matched like
            # the others (a gt's best anchor may be one of them) and then ignored.
            visible = anchor_visibility(anchors, image_shape, float(rpn.straddle_threshold))  # [B, N]
            matches = tf.where(visible, matches, BETWEEN_THRESHOLDS)
        if "rpn_indices" in sampled:
            index = tf.cast(sampled["rpn_indices"], tf.int32)
            valid = tf.cast(sampled["rpn_valid"], tf.bool)
        else:
            sample = balanced_sample(matches, rpn.batch_size_per_image, rpn.positive_fraction, seed)
            index, valid = sample.indices, sample.valid
        sel_matches = tf.gather(matches, index, batch_dims=1)  # [B, S]
        valid = valid & (sel_matches != BETWEEN_THRESHOLDS)  # an injected ignored anchor does not count
        positive = valid & (sel_matches >= 0)
        sel_logits = tf.gather(objectness, index, batch_dims=1)
        count = tf.maximum(tf.reduce_sum(tf.cast(valid, tf.float32)), 1.0)
        bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.cast(positive, tf.float32), logits=sel_logits)
        objectness_loss = tf.reduce_sum(tf.where(valid, bce, 0.0)) / count
        sel_anchors = tf.gather(anchors, index)  # [B, S, 4]
        matched = tf.gather(gt_boxes, tf.maximum(sel_matches, 0), batch_dims=1)
        matched = tf.where(positive[..., None], matched, sel_anchors)  # negatives: zero targets, never NaN
        targets = tf.stop_gradient(box_coder.encode(matched, sel_anchors, rpn.box_coder_weights,
                                                    plus_one=self.plus_one))
        # Targets of non-positives (padding gt rows, zero-size boxes) can be inf; zeroed so that the masked
        # Smooth-L1 has a finite gradient (tf.where would multiply 0 by an infinite derivative).
        targets = tf.where(positive[..., None], targets, 0.0)
        diff = tf.gather(deltas, index, batch_dims=1) - targets
        box_loss = tf.reduce_sum(tf.where(positive[..., None], _smooth_l1(diff, rpn.box_loss_beta), 0.0)) / count
        return {"rpn_objectness_loss": objectness_loss, "rpn_box_loss": box_loss}, index, valid

    def _roi_targets(self, rois, roi_valid, gt_boxes, gt_classes, num_gt):
        """Labels int32 [B, R] (class, 0 background, -1 ignored or invalid), matched gt boxes [B, R, 4] (the RoI
        itself where there is no positive match) and the matcher's output (invalid RoIs set to ignored)."""
        roi = self.cfg.roi
        matches = match_boxes(gt_boxes, num_gt, rois, roi.fg_iou_threshold, roi.bg_iou_threshold,
                              plus_one=self.plus_one)  # [B, R]
        matches = tf.where(roi_valid, matches, BETWEEN_THRESHOLDS)
        safe = tf.maximum(matches, 0)
        labels = tf.where(matches >= 0, tf.gather(gt_classes, safe, batch_dims=1),
                          tf.where(tf.equal(matches, BELOW_LOW_THRESHOLD), 0, -1))
        matched = tf.where((labels > 0)[..., None], tf.gather(gt_boxes, safe, batch_dims=1), rois)
        return labels, matched, matches

    def _roi_losses(self, features, rois, roi_valid, labels, matched_gt):
        roi = self.cfg.roi
        logits, deltas = self.box_head_outputs(features, rois)  # [B, R, C], [B, R, C, 4]
        roi_valid = roi_valid & (labels >= 0)
        count = tf.maximum(tf.reduce_sum(tf.cast(roi_valid, tf.float32)), 1.0)
        safe_labels = tf.maximum(labels, 0)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe_labels, logits=logits)
        classification = tf.reduce_sum(tf.where(roi_valid, ce, 0.0)) / count
        positive = roi_valid & (labels > 0)
        targets = tf.stop_gradient(box_coder.encode(matched_gt, rois, roi.box_coder_weights, plus_one=self.plus_one))
        targets = tf.where(positive[..., None], targets, 0.0)  # finite gradients of the masked loss (see above)
        pred = tf.gather(deltas, safe_labels, batch_dims=2)  # [B, R, 4]
        box = tf.reduce_sum(tf.where(positive[..., None], _smooth_l1(pred - targets, roi.box_loss_beta), 0.0)) / count
        return {"roi_classification_loss": classification, "roi_box_loss": box}

    def get_config(self):
        return {"cfg": dataclasses.asdict(self.cfg), "jit_compile_dense": self.jit_compile_dense,
                "name": self.name}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls(config_from_dict(config.pop("cfg")), **config)


def config_from_dict(values):
    """A FasterRCNNModelConfig from ``dataclasses.asdict`` output (or its JSON round trip: lists become tuples)."""

    def build(kind, data):
        kwargs = {}
        for field in dataclasses.fields(kind):
            if field.name not in data:
                continue
            value = data[field.name]
            nested = _NESTED.get((kind, field.name))
            if nested is not None:
                value = build(nested, value)
            elif isinstance(value, list):
                value = tuple(value)
            kwargs[field.name] = value
        return kind(**kwargs)

    return build(FasterRCNNModelConfig, values)


def build_faster_rcnn(cfg: FasterRCNNModelConfig, *, jit_compile=False) -> FasterRCNN:
    """Faster R-CNN for ``cfg`` (see the module docstring)."""
    if not isinstance(cfg, FasterRCNNModelConfig):
        raise TypeError(f"build_faster_rcnn needs a FasterRCNNModelConfig, got {type(cfg).__name__}")
    return FasterRCNN(cfg, jit_compile_dense=jit_compile)
