"""Classic momentum SGD (PyTorch `torch.optim.SGD` / TF1 `MomentumOptimizer` semantics) as a Keras 3 optimizer.

Per variable w with gradient g, learning rate lr (times the variable's LR multiplier m) and weight decay wd:

    coupled   (default, = PyTorch weight_decay and the TF1 `wd * l2_loss` term):  g <- g + wd * w
    momentum  b <- mu * b + g               (the buffer holds gradients, not lr * gradients as Keras `SGD` does)
    nesterov  d <- g + mu * b   else  d <- b
    update    w <- w - lr * m * d
    decoupled (instead of coupled):  w <- w - lr * m * wd * w  as well, outside the momentum buffer

Keras `SGD` keeps lr inside its buffer, so it only matches the references while lr is constant (not through
warmup or LR drops). Weight decay is handled here only; the base class's own decoupled weight decay is
switched off so that it is never applied twice.

Build the optimizer's slots under the strategy scope before the first distributed step:
`with strategy.scope(): opt = MomentumSGD(...); opt.build(model.trainable_variables)`.
"""
from __future__ import annotations

import re
from typing import Callable, Iterable, Mapping

import keras
import tensorflow as tf

__all__ = ["MomentumSGD", "BN_AND_BIAS_NAMES"]

# Final path components of Keras 3 bias and normalisation-layer variables (Dense/Conv bias, BatchNorm and
# LayerNorm gamma/beta). Used by `exclude_bn_and_bias=True`.
BN_AND_BIAS_NAMES = ("bias", "gamma", "beta")

WEIGHT_DECAY_MODES = ("coupled", "decoupled")


def _variable_path(variable) -> str:
    """The layer-qualified name ("block1/conv/kernel"), or the plain name when a variable has no path."""
    path = getattr(variable, "path", None)
    return str(path if path else variable.name)


def _last_component(path: str) -> str:
    return path.rsplit("/", 1)[-1].split(":", 1)[0]


@keras.saving.register_keras_serializable(package="ssd_tf")
class MomentumSGD(keras.optimizers.Optimizer):
    """SGD with classic (PyTorch / TF1) momentum, coupled or decoupled weight decay and per-variable groups.

    Args:
        learning_rate: float or `keras.optimizers.schedules.LearningRateSchedule`.
        momentum: mu in [0, 1]; 0 gives plain SGD (no slot variables).
        nesterov: Nesterov momentum (PyTorch form; needs momentum > 0).
        weight_decay: wd >= 0 (0 disables it).
        weight_decay_mode: "coupled" (wd * w added to the gradient before momentum) or "decoupled".
        exclude_from_weight_decay: regex patterns searched in each variable's path (e.g. ["bias", "gamma",
            "beta"] or [r"/bias$"]), or a predicate `fn(variable) -> bool` (True = no decay).
        exclude_bn_and_bias: also exclude every variable whose final name is bias, gamma or beta.
        lr_multipliers: {regex: multiplier} searched in each variable's path, first match wins (e.g.
            {r"/bias$": 2.0} for maskrcnn-benchmark's BIAS_LR_FACTOR), or `fn(variable) -> float`.
        Other keyword arguments (clipnorm, global_clipnorm, clipvalue, name, ...) go to `keras.optimizers.Optimizer`.

    Predicates and multipliers are evaluated once per variable in `build()`, so they are plain Python
    constants in the traced update (no per-step cost, XLA friendly). Callables are not serialised by
    `get_config()`; pattern lists and dicts are.
    """

    def __init__(self, learning_rate=0.01, momentum: float = 0.9, nesterov: bool = False,
                 weight_decay: float = 0.0, weight_decay_mode: str = "coupled",
                 exclude_from_weight_decay: Iterable[str] | Callable | None = None,
                 exclude_bn_and_bias: bool = False,
                 lr_multipliers: Mapping[str, float] | Callable | None = None,
                 name: str = "MomentumSGD", **kwargs):
        if isinstance(learning_rate, int) and not isinstance(learning_rate, bool):
            learning_rate = float(learning_rate)
        # weight_decay=None for the base class: it would apply its own decoupled decay on top of ours.
        kwargs.pop("weight_decay", None)
        super().__init__(learning_rate=learning_rate, weight_decay=None, name=name, **kwargs)
        momentum = float(momentum)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        if nesterov and momentum == 0.0:
            raise ValueError("nesterov=True needs momentum > 0")
        weight_decay = float(weight_decay or 0.0)
        if weight_decay < 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        if weight_decay_mode not in WEIGHT_DECAY_MODES:
            raise ValueError(f"weight_decay_mode must be one of {WEIGHT_DECAY_MODES}, got {weight_decay_mode!r}")
        self.momentum = momentum
        self.nesterov = bool(nesterov)
        self.l2_weight_decay = weight_decay
        self.weight_decay_mode = weight_decay_mode
        self.exclude_bn_and_bias = bool(exclude_bn_and_bias)
        self._wd_exclude = self._check_exclude(exclude_from_weight_decay)
        self._lr_multipliers = self._check_multipliers(lr_multipliers)
        self._wd_per_var: list[float] = []
        self._lr_mult_per_var: list[float] = []
        self._momentums = []

    # ----------------------------------------------------------------------------------------- arguments
    @staticmethod
    def _check_exclude(exclude):
        if exclude is None or callable(exclude):
            return exclude
        if isinstance(exclude, str):
            exclude = [exclude]
        patterns = list(exclude)
        for p in patterns:
            if not isinstance(p, str):
                raise ValueError(f"exclude_from_weight_decay entries must be regex strings, got {p!r}")
            re.compile(p)
        return patterns

    @staticmethod
    def _check_multipliers(multipliers):
        if multipliers is None or callable(multipliers):
            return multipliers
        if not isinstance(multipliers, Mapping):
            raise ValueError(f"lr_multipliers must be a {{regex: float}} dict or a callable, got {multipliers!r}")
        out = {}
        for pattern, mult in multipliers.items():
            re.compile(pattern)
            if not float(mult) >= 0.0:
                raise ValueError(f"lr_multipliers[{pattern!r}] must be >= 0, got {mult!r}")
            out[str(pattern)] = float(mult)
        return out

    # ------------------------------------------------------------------------------- per-variable groups
    def variable_uses_weight_decay(self, variable) -> bool:
        """Whether `variable` is decayed (weight_decay > 0 and not excluded by any rule)."""
        if self.l2_weight_decay == 0.0:
            return False
        path = _variable_path(variable)
        if self.exclude_bn_and_bias and _last_component(path) in BN_AND_BIAS_NAMES:
            return False
        if callable(self._wd_exclude):
            if self._wd_exclude(variable):
                return False
        elif self._wd_exclude and any(re.search(p, path) for p in self._wd_exclude):
            return False
        # Also honour the base class API `optimizer.exclude_from_weight_decay(var_list=..., var_names=...)`.
        return self._use_weight_decay(variable)

    def variable_lr_multiplier(self, variable) -> float:
        """The learning-rate multiplier of `variable` (1.0 unless a rule matches)."""
        if self._lr_multipliers is None:
            return 1.0
        if callable(self._lr_multipliers):
            mult = float(self._lr_multipliers(variable))
            if not mult >= 0.0:
                raise ValueError(f"lr_multipliers returned {mult!r} for {_variable_path(variable)}; must be >= 0")
            return mult
        path = _variable_path(variable)
        for pattern, mult in self._lr_multipliers.items():
            if re.search(pattern, path):
                return mult
        return 1.0

    # ---------------------------------------------------------------------------------------- Keras API
    def build(self, var_list):
        """Create one momentum slot per variable (same shape/dtype, colocated) and freeze the groups."""
        if self.built:
            return
        super().build(var_list)
        self._wd_per_var = [self.l2_weight_decay if self.variable_uses_weight_decay(v) else 0.0
                            for v in var_list]
        self._lr_mult_per_var = [self.variable_lr_multiplier(v) for v in var_list]
        self._momentums = []
        if self.momentum > 0.0:
            self._momentums = [self.add_variable_from_reference(v, name="momentum") for v in var_list]

    def _apply_weight_decay(self, variables):
        # The base class's decoupled decay is disabled: update_step applies both modes itself.
        return

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        wd = self._wd_per_var[index]
        lr_mult = self._lr_mult_per_var[index]
        dtype = variable.dtype
        if isinstance(gradient, tf.IndexedSlices):
            gradient = tf.convert_to_tensor(gradient)
        g = tf.cast(gradient, dtype)
        lr = tf.cast(learning_rate, dtype)
        if lr_mult != 1.0:
            lr = lr * tf.constant(lr_mult, dtype)
        w = variable.value if isinstance(variable, keras.Variable) else variable
        if wd and self.weight_decay_mode == "coupled":
            g = g + tf.constant(wd, dtype) * w
        elif wd:  # decoupled: w <- w - lr * wd * w from the weights before this step, outside the momentum buffer
            self.assign_sub(variable, lr * tf.constant(wd, dtype) * w)
        if self.momentum > 0.0:
            # One in-place kernel (TF1 MomentumOptimizer's): b <- mu * b + g; w <- w - lr * b (Nesterov:
            # w <- w - lr * g - lr * mu * b), in one pass over memory instead of five temporaries and two
            # assignments: the update is memory-bound.
            buf = self._momentums[index]
            buf = buf.value if isinstance(buf, keras.Variable) else buf
            tf.raw_ops.ResourceApplyMomentum(var=w.handle, accum=buf.handle, lr=lr, grad=g,
                                             momentum=tf.constant(self.momentum, dtype), use_locking=False,
                                             use_nesterov=self.nesterov)
        else:
            self.assign_sub(variable, lr * g)

    @property
    def momentums(self):
        """The momentum slots, in the order of the variables passed to build()."""
        return list(self._momentums)

    def get_config(self):
        config = super().get_config()
        config.update({
            "momentum": self.momentum,
            "nesterov": self.nesterov,
            "weight_decay": self.l2_weight_decay,
            "weight_decay_mode": self.weight_decay_mode,
            "exclude_from_weight_decay": None if callable(self._wd_exclude) else self._wd_exclude,
            "exclude_bn_and_bias": self.exclude_bn_and_bias,
            "lr_multipliers": None if callable(self._lr_multipliers) else self._lr_multipliers,
        })
        return config
