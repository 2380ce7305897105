"""Train the spiral latent ODE with a tf.distribute strategy and plain ``model.fit``.

Strategies (``--strategy``):

* ``default``: one device, no distribution (the baseline).
* ``mirrored``: ``tf.distribute.MirroredStrategy`` over ``--devices N`` logical
  CPU devices (or the GPUs, with ``--devices 0``): one process, N replicas.
* ``multiworker``: ``tf.distribute.MultiWorkerMirroredStrategy``, one process per
  worker. ``--workers host:port,host:port --worker-index i`` builds ``TF_CONFIG``;
  without ``--workers`` the ``TF_CONFIG`` set by a cluster scheduler is used.

Every worker builds the same seeded data set (``tfode.datasets.spirals_2d``,
each series subsampled to its own ``--observed`` times), pre-shuffled once so
every epoch sees the same batches in the same order, batched by the fixed
GLOBAL ``--batch-size`` (``drop_remainder``: every worker runs the same number
of steps) and sharded by ``AutoShardPolicy.DATA``: each step, the replicas
together see exactly one global batch. The loss is the mean ``-ELBO`` of the
global batch whatever the number of replicas.

Fault tolerance: ``keras.callbacks.BackupAndRestore`` saves weights, optimizer
state and the epoch at the end of every epoch into ``--backup-dir/worker-<i>``
(Keras 3 writes the backup on every worker, so each worker gets its own
folder). If a worker dies, stop the others (a collective op of a
``MultiWorkerMirroredStrategy`` cannot continue without it) and start every
worker again with the same command: training resumes at the first epoch not
completed. The backup is deleted when ``fit`` finishes. ``--crash-after-epoch K``
simulates a failure: the worker exits (status 1) right after the backup of its
K-th epoch.

Output: one line per epoch (``epoch <i> loss <value>``; ``--epoch-log`` also
appends the epoch index to a file), then ``weights checksum <sum |w|>`` (float64
sum of the absolute values of every weight, printed with ``repr``: identical
on all workers when their weights are identical) and the final weights in
``--out`` (``.npz``, ``w000``, ``w001``, ... in ``model.weights`` order).

Run (from the repository root, tfode importable, e.g. ``PYTHONPATH=.``):
    python examples/distributed_train.py --strategy default
    python examples/distributed_train.py --strategy mirrored --devices 2
    python examples/distributed_train.py --strategy multiworker --workers 127.0.0.1:12345,127.0.0.1:12346 \\
        --worker-index 0 --out /tmp/w0.npz --backup-dir /tmp/backup &
    python examples/distributed_train.py --strategy multiworker --workers 127.0.0.1:12345,127.0.0.1:12346 \\
        --worker-index 1 --out /tmp/w1.npz --backup-dir /tmp/backup
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfode  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", choices=("default", "mirrored", "multiworker"), default="default")
    parser.add_argument("--devices", type=int, default=2,
                        help="mirrored: logical CPU devices (0: the visible GPUs)")  # fmt: skip
    parser.add_argument("--workers", default=None, help="multiworker: host:port,host:port,... (builds TF_CONFIG)")
    parser.add_argument("--worker-index", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--num-series", type=int, default=64, help="spirals in the training set")
    parser.add_argument("--observed", type=int, default=12, help="observed times per series")
    parser.add_argument("--batch-size", type=int, default=16, help="GLOBAL batch size (all replicas together)")
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backup-dir", default=None, help="BackupAndRestore folder (a worker-<i> folder inside)")
    parser.add_argument("--crash-after-epoch", type=int, default=0,
                        help="exit(1) right after the backup of this many epochs (0: never)")  # fmt: skip
    parser.add_argument("--epoch-log", default=None, help="append each completed epoch's index to this file")
    parser.add_argument("--out", default=None, help="write the final weights to this .npz")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.num_series < args.batch_size:
        parser.error(f"need 1 <= --batch-size <= --num-series, got {args.batch_size} and {args.num_series}.")
    return args


class KerasMultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """``MultiWorkerMirroredStrategy`` whose ``reduce`` accepts what Keras 3 passes it.

    Keras 3's ``fit`` (3.15 here) calls ``strategy.reduce`` with a whole nested
    batch (``_maybe_symbolic_build``) and with ``axis=0`` on scalar metrics
    (``reduce_per_replica``); the multi-worker strategy accepts neither and
    ``fit`` fails on every model (keras-team/keras#20585, #20329). This reduces
    leaf by leaf and drops ``axis`` for scalars (a mean over replicas, which
    is what Keras means). Same collectives, same numbers otherwise.
    """

    def reduce(self, reduce_op, value, axis):
        def leaf(v):
            local = v.values[0] if isinstance(v, tf.distribute.DistributedValues) else tf.convert_to_tensor(v)
            return super(KerasMultiWorkerMirroredStrategy, self).reduce(
                reduce_op, v, axis=axis if local.shape.rank else None
            )

        return tf.nest.map_structure(leaf, value)


def make_strategy(args):
    """The strategy; for ``multiworker`` with ``--workers`` this sets ``TF_CONFIG`` first."""
    if args.strategy == "default":
        return tf.distribute.get_strategy()
    if args.strategy == "mirrored":
        if args.devices > 0:
            # Must run before TensorFlow initialises its devices (before any op).
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * args.devices)
            return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(args.devices)])
        return tf.distribute.MirroredStrategy()
    if args.workers:
        os.environ["TF_CONFIG"] = json.dumps({
            "cluster": {"worker": args.workers.split(",")},
            "task": {"type": "worker", "index": args.worker_index},
        })  # fmt: skip
    elif "TF_CONFIG" not in os.environ:
        raise SystemExit("--strategy multiworker needs --workers or a TF_CONFIG environment variable.")
    return KerasMultiWorkerMirroredStrategy()


def task_index(strategy):
    """This worker's index in the cluster (0 without multi-worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    return int(resolver.task_id) if resolver is not None and resolver.task_id is not None else 0


def make_dataset(args):
    """Seeded spirals, ``{"times": [B, T], "values": [B, T, 2]}`` batches of the global batch size."""
    data = tfode.datasets.spirals_2d(num_spirals=args.num_series, seed=args.seed)
    times, values = tfode.datasets.subsample(data["times"], data["values"], args.observed, seed=args.seed)
    order = np.random.default_rng(args.seed).permutation(args.num_series)  # one shuffle, same every epoch
    dataset = tf.data.Dataset.from_tensor_slices({"times": times[order], "values": values[order]})
    dataset = dataset.batch(args.batch_size, drop_remainder=True)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    options.deterministic = True
    return dataset.with_options(options), {"times": times[:2], "values": values[:2]}


class EpochReport(keras.callbacks.Callback):
    """Prints each epoch's loss, logs its index, and optionally simulates a crash.

    Put it after ``BackupAndRestore`` in the callback list: Keras runs
    ``on_epoch_end`` in list order, so the backup of an epoch is written
    before the epoch is logged (or the process exits).
    """

    def __init__(self, worker, epoch_log=None, crash_after_epoch=0):
        super().__init__()
        self.worker, self.epoch_log, self.crash_after_epoch = worker, epoch_log, crash_after_epoch

    def on_epoch_end(self, epoch, logs=None):
        print(f"worker {self.worker} epoch {epoch} loss {float(logs['loss']):.6f}", flush=True)
        if self.epoch_log:
            with open(self.epoch_log, "a") as f:
                f.write(f"{epoch}\n")
        if self.crash_after_epoch and epoch + 1 == self.crash_after_epoch:
            print(f"worker {self.worker} simulating a crash after epoch {epoch}", flush=True)
            sys.stdout.flush()
            os._exit(1)


def main(argv=None):
    args = parse_args(argv)
    strategy = make_strategy(args)  # before any TensorFlow op (logical devices, TF_CONFIG)
    worker = task_index(strategy)
    print(f"worker {worker}: {type(strategy).__name__}, {strategy.num_replicas_in_sync} replica(s) in sync",
          flush=True)  # fmt: skip
    keras.utils.set_random_seed(args.seed)  # same initial weights everywhere (MWMS also broadcasts them)
    dataset, sample = make_dataset(args)
    with strategy.scope():
        model = tfode.models.LatentODE(obs_dim=2, latent_dim=4, encoder="rnn", encoder_units=16,
                                       field_hidden=(16,), decoder_hidden=(16,), rtol=1e-3, atol=1e-4)  # fmt: skip
        model(sample, training=False)  # build: BackupAndRestore restores into a built model
        model.compile(keras.optimizers.Adam(args.learning_rate), jit_compile=False)

    callbacks = []
    if args.backup_dir:
        callbacks.append(keras.callbacks.BackupAndRestore(os.path.join(args.backup_dir, f"worker-{worker}")))
    callbacks.append(EpochReport(worker, args.epoch_log, args.crash_after_epoch))
    model.fit(dataset, epochs=args.epochs, callbacks=callbacks, shuffle=False, verbose=0)

    weights = [np.asarray(w) for w in model.weights]
    checksum = sum(float(np.sum(np.abs(w.astype(np.float64)))) for w in weights)
    print(f"worker {worker} nfe_forward {float(model.num_fn_evals_forward.numpy()):g}", flush=True)
    print(f"worker {worker} weights checksum {checksum!r}", flush=True)
    if args.out:
        np.savez(args.out, **{f"w{i:03d}": w for i, w in enumerate(weights)})


if __name__ == "__main__":
    main()
