"""The SegAN-CAT training step in TensorFlow 2 / Keras, for a speed comparison (#14).

An independent TF2/Keras implementation of the step that ``core.trainer.train_step``
runs, written from the method (README, "Method"), at the same sizes:

* segmentor S: four 4×4 stride-2 'same' convs (64·w, 128·w, 256·w, 512·w filters; BN
  after all but the first; LeakyReLU 0.3), three decoder stages (bilinear ×2, 3×3 conv,
  BN, ReLU; 256·w, 128·w, 64·w) whose outputs *add* the matching encoder output, a last
  bilinear ×2, a 3×3 conv to one channel with bias, sigmoid;
* critic D: input image ⊕ mask (SegAN-CAT), three 4×4 stride-2 convs (64·w, 128·w,
  256·w; BN after all but the first; LeakyReLU 0.3); its features are [input, block1,
  block2, block3];
* one forward pass; L1 = one mean of |D(x, S(x)) − D(x, y)| over all features
  concatenated (``loss.l1_mode: global``); S minimises L1 + w·dice (soft dice per
  sample, eps 1e-6, batch mean), D minimises −L1; RMSprop (rho 0.9, eps 1e-7) on both;
  the critic's conv kernels are clipped to ±0.05 after every update.

Convs followed by BN have no bias (``model.conv_bias: false``); BN eps 1e-5, Keras
momentum 0.1 (= PyTorch 0.9). Layout NHWC (TensorFlow's CPU layout). The step is one
``tf.function`` (graph mode; ``--xla`` adds ``jit_compile=True``); ``--amp bf16`` uses
the Keras ``mixed_bfloat16`` policy (losses and clipping in fp32).

Run it with a Python that has TensorFlow (a one-off venv, never the project's)::

    python3 -m venv /work/tfvenv && /work/tfvenv/bin/pip install tensorflow-cpu
    /work/tfvenv/bin/python bench/step_tf.py --width 1 --crop 160 --batch 8 --steps 10

It prints one JSON line: slices/s (median step after warm-up), step seconds, warm-up
seconds, trainable parameter counts. Without TensorFlow it prints one JSON line with
``"skipped"`` and exits 0. ``--serve`` (used by ``bench/step.py``): after warm-up it
prints a ``ready`` line, then for every integer N read from stdin runs N timed steps and
prints their times, so the caller can interleave TF steps with its own.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

ENCODER_FILTERS = (64, 128, 256, 512)
DECODER_FILTERS = (256, 128, 64)
CRITIC_FILTERS = (64, 128, 256)


def scaled(filters: int, width: float) -> int:
    return max(1, int(round(filters * width)))


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def build(tf, keras, channels: int, crop: int, width: float, amp: str):  # type: ignore[no-untyped-def]
    """(segmentor, critic, critic conv kernels) as Keras functional models."""
    layers = keras.layers
    if amp == "bf16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")

    def init(k: int, fout: int):  # type: ignore[no-untyped-def]
        # N(0, sqrt(2 / (k² · f_out))), as core/model.py
        return keras.initializers.RandomNormal(0.0, math.sqrt(2.0 / (k * k * fout)))

    def down(x, fout: int, bn: bool, convs: list | None = None):  # type: ignore[no-untyped-def]
        conv = layers.Conv2D(fout, 4, strides=2, padding="same", use_bias=not bn,
                             kernel_initializer=init(4, fout))
        if convs is not None:
            convs.append(conv)
        x = conv(x)
        if bn:
            x = layers.BatchNormalization(momentum=0.1, epsilon=1e-5)(x)
        return layers.LeakyReLU(negative_slope=0.3)(x)

    def up(x, fout: int):  # type: ignore[no-untyped-def]
        x = layers.UpSampling2D(2, interpolation="bilinear")(x)
        x = layers.Conv2D(fout, 3, padding="same", use_bias=False,
                          kernel_initializer=init(3, fout))(x)
        x = layers.BatchNormalization(momentum=0.1, epsilon=1e-5)(x)
        return layers.ReLU()(x)

    enc = [scaled(f, width) for f in ENCODER_FILTERS]
    dec = [scaled(f, width) for f in DECODER_FILTERS]
    image = keras.Input((crop, crop, channels))
    e1 = down(image, enc[0], bn=False)
    e2 = down(e1, enc[1], bn=True)
    e3 = down(e2, enc[2], bn=True)
    e4 = down(e3, enc[3], bn=True)
    d = layers.Add()([up(e4, dec[0]), e3])
    d = layers.Add()([up(d, dec[1]), e2])
    d = layers.Add()([up(d, dec[2]), e1])
    d = layers.UpSampling2D(2, interpolation="bilinear")(d)
    d = layers.Conv2D(1, 3, padding="same", kernel_initializer=init(3, 1))(d)
    prob = layers.Activation("sigmoid", dtype="float32")(d)
    segmentor = keras.Model(image, prob, name="segmentor")

    c_image = keras.Input((crop, crop, channels))
    c_mask = keras.Input((crop, crop, 1))
    x0 = layers.Concatenate()([c_image, c_mask])
    convs: list = []
    f = [scaled(c, width) for c in CRITIC_FILTERS]
    x1 = down(x0, f[0], bn=False, convs=convs)
    x2 = down(x1, f[1], bn=True, convs=convs)
    x3 = down(x2, f[2], bn=True, convs=convs)
    critic = keras.Model([c_image, c_mask], [x0, x1, x2, x3], name="critic")
    return segmentor, critic, [c.kernel for c in convs]


def make_step(tf, keras, segmentor, critic, kernels, lr: float, dice_weight: float,  # type: ignore[no-untyped-def]
              clip: float, xla: bool):
    opt_s = keras.optimizers.RMSprop(learning_rate=lr, rho=0.9, epsilon=1e-7)
    opt_d = keras.optimizers.RMSprop(learning_rate=lr, rho=0.9, epsilon=1e-7)
    s_vars = segmentor.trainable_variables
    d_vars = critic.trainable_variables

    def global_l1(fp, ft):  # type: ignore[no-untyped-def]
        total = tf.add_n([tf.reduce_sum(tf.abs(tf.cast(p, tf.float32) - tf.cast(t, tf.float32)))
                          for p, t in zip(fp, ft, strict=True)])
        count = sum(int(math.prod(p.shape[1:])) for p in fp) * tf.cast(tf.shape(fp[0])[0], tf.float32)
        return total / count

    def dice_loss(pred, target, eps=1e-6):  # type: ignore[no-untyped-def]
        inter = tf.reduce_sum(pred * target, axis=[1, 2, 3])
        denom = tf.reduce_sum(pred * pred, axis=[1, 2, 3]) + tf.reduce_sum(target * target, axis=[1, 2, 3])
        return tf.reduce_mean(1.0 - (2.0 * inter + eps) / (denom + eps))

    @tf.function(jit_compile=xla)
    def step(image, mask):  # type: ignore[no-untyped-def]
        with tf.GradientTape(persistent=True) as tape:
            pred = segmentor(image, training=True)
            l1 = global_l1(critic([image, pred], training=True), critic([image, mask], training=True))
            loss_s = l1 + dice_weight * dice_loss(tf.cast(pred, tf.float32), mask)
            loss_d = -l1
        grads_s = tape.gradient(loss_s, s_vars)
        grads_d = tape.gradient(loss_d, d_vars)
        del tape
        opt_s.apply_gradients(zip(grads_s, s_vars, strict=True))
        opt_d.apply_gradients(zip(grads_d, d_vars, strict=True))
        for k in kernels:
            k.assign(tf.clip_by_value(k, -clip, clip))
        return loss_s

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--crop", type=int, default=160)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--amp", choices=("off", "bf16"), default="off")
    parser.add_argument("--xla", action="store_true", help="tf.function(jit_compile=True)")
    parser.add_argument("--threads", type=int, default=0,
                        help="intra-op threads, and at most as many inter-op (0 = TF's defaults)")
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--dice-weight", type=float, default=1.0)
    parser.add_argument("--clip", type=float, default=0.05)
    parser.add_argument("--serve", action="store_true", help="timed steps on request (stdin)")
    args = parser.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
        from tensorflow import keras
    except ImportError as exc:
        emit({"engine": "tensorflow", "skipped": f"TensorFlow is not importable by {sys.executable} "
              f"({exc}); install it in a one-off venv: python3 -m venv /work/tfvenv && "
              "/work/tfvenv/bin/pip install tensorflow-cpu"})
        return
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    tf.random.set_seed(0)

    segmentor, critic, kernels = build(tf, keras, args.channels, args.crop, args.width, args.amp)
    step = make_step(tf, keras, segmentor, critic, kernels, args.lr, args.dice_weight,
                     args.clip, args.xla)
    image = tf.random.uniform((args.batch, args.crop, args.crop, args.channels))
    mask = tf.cast(tf.random.uniform((args.batch, args.crop, args.crop, 1)) > 0.7, tf.float32)

    def one() -> float:
        t0 = time.perf_counter()
        step(image, mask).numpy()  # .numpy() waits for the step to finish
        return time.perf_counter() - t0

    warm = [one() for _ in range(max(1, args.warmup))]
    info = {"engine": "tensorflow", "tf_version": tf.__version__, "keras_version": keras.__version__,
            "width": args.width, "crop": args.crop, "batch": args.batch, "channels": args.channels,
            "amp": args.amp, "xla": args.xla, "threads": args.threads or None,
            "params_segmentor": sum(int(math.prod(v.shape)) for v in segmentor.trainable_variables),
            "params_critic": sum(int(math.prod(v.shape)) for v in critic.trainable_variables),
            "first_step_s": warm[0], "warmup_s": sum(warm)}
    if args.serve:
        emit({"ready": True, **info})
        for line in sys.stdin:
            n = int(line.strip() or 0)
            if n <= 0:
                break
            emit({"step_s": [one() for _ in range(n)]})
        return
    times = [one() for _ in range(args.steps)]
    median = statistics.median(times)
    emit({**info, "steps": args.steps, "step_s": median, "slices_per_s": args.batch / median})


if __name__ == "__main__":
    main()
