"""Which devices a training process drives, and how its batch is spread over them.

The rule
--------
A process drives ``N = max(1, --num-gpus)`` devices. On GPUs, the process with local rank ``r``
(its index among the training processes of its host: ``GLUON_ELASTIC_LOCAL_RANK`` from the
KVStore launchers, ``hvd.local_rank()`` under Horovod) drives ``gpu(r*N) .. gpu(r*N + N - 1)``,
so the processes of a host share its GPUs without overlap; a host with fewer than
``(r + 1) * N`` GPUs is refused. On the CPU the process drives ``cpu(0) .. cpu(N - 1)``: MXNet
keeps a separate copy of every parameter and gradient per context, so the same arithmetic as N
GPUs runs on one processor (BatchNorm sees the same per-device batches as the GPU command line,
and tests exercise the multi-device paths without a GPU).

The launchers' ``--dry-run`` plans (:func:`gluon_elastic.launch.process_plan`) print the same
:func:`device_ids` for each process. A process's batch is split over its devices as GluonCV's
scripts do (``gluon.utils.split_and_load`` with ``even_split=False``): the first
``batch % N`` devices take one sample more than the others.

Imports MXNet only inside the functions that make contexts or move data.
"""

__all__ = ["device_ids", "format_devices", "choose_contexts", "split_sizes", "split_and_load",
           "sync_batch_norm"]


def device_ids(local_rank, devices_per_process=1):
    """GPU ids of the process with ``local_rank`` when each process drives ``devices_per_process``.

    Returns
    -------
    list of int
        ``[local_rank * N, ..., local_rank * N + N - 1]``.
    """
    if isinstance(devices_per_process, bool) or not isinstance(devices_per_process, int) \
            or devices_per_process < 1:
        raise ValueError("devices per process must be a positive integer, got %r"
                         % (devices_per_process,))
    first = local_rank * devices_per_process
    return list(range(first, first + devices_per_process))


def format_devices(kind, ids):
    """``gpu(4),gpu(5)``: the contexts of ``ids`` as MXNet prints them, comma-separated."""
    return ",".join("%s(%d)" % (kind, index) for index in ids)


def choose_contexts(local_rank, devices_per_process=1, device="auto", num_gpus=None):
    """The MXNet contexts of one process under the module's rule.

    Parameters
    ----------
    local_rank : int
        Index of the process among the training processes of its host.
    devices_per_process : int
        ``N``, at least 1.
    device : {'auto', 'gpu', 'cpu'}
        ``auto``: GPUs when the host has any, else the CPU.
    num_gpus : int, optional
        GPUs visible to the process (default: what MXNet sees).

    Returns
    -------
    list of mxnet.Context

    Raises
    ------
    ValueError
        ``device='gpu'`` without a GPU, or a host with too few GPUs for this local rank.
    """
    import mxnet as mx

    if device not in ("auto", "gpu", "cpu"):
        raise ValueError("device must be auto, gpu or cpu, got %r" % (device,))
    if num_gpus is None:
        num_gpus = mx.context.num_gpus()
    if device == "cpu" or (device == "auto" and num_gpus == 0):
        return [mx.cpu(index) for index in range(devices_per_process)]
    if num_gpus == 0:
        raise ValueError("--device gpu: no GPU is visible to MXNet")
    ids = device_ids(local_rank, devices_per_process)
    if ids[-1] >= num_gpus:
        raise ValueError("local rank %d with %d GPU(s) per process needs %s, but this host shows "
                         "%d GPU(s): start at most %d process(es) per host, or give each fewer "
                         "GPUs (--num-gpus; GluonCV's --gpus, --ngpus)"
                         % (local_rank, devices_per_process, format_devices("gpu", ids),
                            num_gpus, num_gpus // devices_per_process))
    return [mx.gpu(index) for index in ids]


def split_sizes(batch_size, num_devices):
    """Samples of each device for a batch of ``batch_size`` (GluonCV's uneven split).

    The first ``batch_size % num_devices`` devices take one more; with fewer samples than
    devices the last devices get none.
    """
    each, extra = divmod(batch_size, num_devices)
    return [each + 1] * extra + [each] * (num_devices - extra)


def split_and_load(arrays, contexts):
    """Spread one batch (a tuple of NDArrays with the samples on axis 0) over ``contexts``.

    Returns
    -------
    list of tuple
        One tuple per device that gets samples, in device order, each array on its device.
        A batch smaller than the number of devices leaves the last devices out (their
        gradient stays zero).
    """
    sizes = split_sizes(arrays[0].shape[0], len(contexts))
    parts, start = [], 0
    for ctx, size in zip(contexts, sizes):
        if size == 0:
            break
        parts.append(tuple(array[start:start + size].as_in_context(ctx) for array in arrays))
        start += size
    return parts


def sync_batch_norm(num_devices):
    """Keyword arguments of a GluonCV model builder for ``--syncbn``.

    BatchNorm layers become ``SyncBatchNorm`` over the ``num_devices`` devices of this process, as
    in GluonCV's scripts: each device's batch statistics are those of the process's whole batch.
    Workers still normalise separately (Horovod and the KVStore reduce gradients only). Every
    device must take part in every forward pass (a device left without samples would wait for
    ever): the recipes refuse a per-worker batch smaller than the number of devices, and several
    CPU contexts (:func:`check_sync_batch_norm`).
    """
    from mxnet import gluon

    return {"norm_layer": gluon.contrib.nn.SyncBatchNorm,
            "norm_kwargs": {"num_devices": num_devices}}


def check_sync_batch_norm(parser, flag, local_batch_size, num_devices, device):
    """Exit 2 when ``flag`` (a synchronised BatchNorm) cannot run on these devices.

    MXNet 1.9.1's SyncBatchNorm deadlocks across CPU contexts: five convolutions, each followed
    by a SyncBatchNorm over cpu(0) and cpu(1), never finish their first training forward (two
    do; the engine's worker threads wait on each other's barriers). One CPU context, or GPUs,
    work.
    """
    if device == "cpu" and num_devices > 1:
        parser.error("%s over %d CPU contexts: MXNet's SyncBatchNorm deadlocks across CPU "
                     "contexts; train on GPUs, or with one device per process" % (flag,
                                                                                  num_devices))
    if local_batch_size < num_devices:
        parser.error("%s synchronises BatchNorm over the %d devices of a process: the per-worker "
                     "batch %d leaves a device without samples" % (flag, num_devices,
                                                                  local_batch_size))
