"""The interface every training backend offers to :class:`gluon_elastic.ElasticTrainer`.

A backend answers three questions, live, every time they are asked (the world can change between
two steps): who am I (``rank``), how many of us are there (``world_size``), and what does the
reduction of gradients return (``grad_reduction``: the ``'sum'`` over workers or their ``'mean'``).
It also moves tensors between workers: gradient reduction, parameter broadcast and a barrier.
"""

__all__ = ["Backend"]


class Backend:
    """Base class of training backends.

    Attributes
    ----------
    name : str
        Backend name as given on the command line.
    grad_reduction : {'sum', 'mean'}
        What reducing the gradients over workers yields. The trainer divides by the global batch
        size accordingly, so the applied update is always the mean over the global batch.
    kvstore : mxnet.kvstore.KVStore or None
        Store handed to :class:`mxnet.gluon.Trainer`; None when the backend reduces by itself.
    elastic_driver : bool
        True when an elastic driver (``horovodrun --host-discovery-script``) runs the job: a
        worker may join a running job, so the trainer's constructor runs no collective and
        :meth:`gluon_elastic.state.ElasticState.check_host_updates` asks for membership changes.
    """

    name = "base"
    grad_reduction = "sum"
    kvstore = None
    elastic_driver = False

    @property
    def rank(self):
        """Rank of this process among the training processes."""
        return 0

    @property
    def world_size(self):
        """Number of training processes."""
        return 1

    @property
    def local_rank(self):
        """Rank of this process on its host."""
        return 0

    def join(self):
        """Join the job's world, for a backend that defers it (elastic Horovod); nothing here."""

    def allreduce_grads(self, params):
        """Sum the gradients of ``params`` over devices and workers, in place on every device.

        Only for backends without a KVStore (with one, Gluon's trainer pushes and pulls every
        device's gradient). The gradient of this process is the sum over its devices; that sum
        is reduced over the workers (:meth:`_allreduce_sum`) and written back to every device,
        so each device's updater applies the same gradient and the copies stay identical.
        """
        from ..optimizers import device_sum

        for index, param in enumerate(params):
            if param.grad_req == "null":
                continue
            grads = param.list_grad()
            if len(grads) == 1:
                self._allreduce_sum(grads[0], index)
                continue
            total = device_sum(grads)
            self._allreduce_sum(total, index)
            for grad in grads:
                total.copyto(grad)

    def _allreduce_sum(self, array, index):
        """``array <- sum over workers of array`` for parameter ``index``: one process here."""

    def broadcast_parameters(self, params, root_rank=0):
        """Overwrite the values of ``params`` (a list of Gluon Parameters) with root's."""
        # Neither Horovod nor the dist KVStore can read an array that MKLDNN has re-laid out
        # (conv weights after a forward pass); a copy has the default layout. The first
        # device's copy stands for the process; set_data writes the result to every device.
        values = [param.list_data()[0].copy() for param in params]
        self.broadcast_arrays(values, root_rank=root_rank, name="param")
        for param, value in zip(params, values):
            param.set_data(value)

    def broadcast_arrays(self, arrays, root_rank=0, name="arrays"):
        """Overwrite ``arrays`` (a list of NDArrays, same shapes on every rank) with root's."""

    def send_arrays(self, arrays, receivers, root_rank=0, name="arrays"):
        """Overwrite ``arrays`` with root's on the ranks in ``receivers`` only.

        A collective: every rank calls it with the same ``receivers``; the others keep their
        values. Here the arrays are broadcast to every rank, through copies (as in
        :meth:`broadcast_parameters`, an array that MKLDNN re-laid out cannot be read by the
        stores).
        """
        if not any(rank != root_rank for rank in receivers):
            return
        values = [array.copy() for array in arrays]
        self.broadcast_arrays(values, root_rank=root_rank, name=name)
        for value, array in zip(values, arrays):
            value.copyto(array)

    def reserve_send_buffers(self, arrays):
        """Prepare what a later :meth:`send_arrays` of arrays of this layout needs (host memory).

        Called ahead of time (e.g. during a worker's start-up) so that the transfer does not pay
        for it. Nothing here.
        """

    def broadcast_object(self, obj, root_rank=0, name="object"):
        """Return root's value of a picklable ``obj`` on every rank."""
        return obj

    def allgather_object(self, obj, name="gather"):
        """Return the list of every rank's ``obj``, ordered by rank."""
        return [obj]

    def sum_over_workers(self, values):
        """Element-wise sum of a short float64 vector (numpy) over the workers, returned to all.

        One process stands for the whole group here: the values are returned as they are.
        """
        return values

    def barrier(self):
        """Block until every worker has reached this call."""

    def __repr__(self):
        return "%s(rank=%d, world_size=%d)" % (type(self).__name__, self.rank, self.world_size)
