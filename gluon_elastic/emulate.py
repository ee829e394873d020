"""Emulated workers: the arithmetic of an N-worker group inside one process.

The paper varies the GPU count between 8 and 128. :class:`EmulatedWorkers` reproduces what such a
group computes on one device: the global batch is split into per-worker batches exactly as the
batch policy splits it, every virtual worker runs its own forward and backward pass (so BatchNorm
normalises with that worker's batch statistics), and the gradients add up (``grad_req='add'``) to
the sum over the global batch, which is what the reduction of a real group returns. With a
:class:`gluon_elastic.backends.LocalBackend` whose ``world_size`` is the virtual world, the trainer
then normalises, scales and corrects exactly as it would for real workers.

BatchNorm running statistics: every real worker keeps its own and rank 0's are the ones evaluated
and saved, so only virtual worker 0 is allowed to update them (the others' updates are undone).
"""
from mxnet import autograd

from .optimizers import device_sum, sum_of_squares

__all__ = ["EmulatedWorkers"]


class EmulatedWorkers:
    """Run forward/backward for every virtual worker of the current world.

    Parameters
    ----------
    params : mxnet.gluon.ParameterDict
        The model's parameters; trainable ones are switched to ``grad_req='add'``.
    """

    def __init__(self, params):
        self._params = list(params.values())
        self.worker_noise = None
        self._aux = [p for p in self._params if p.grad_req == "null"]
        for param in self._params:
            if param.grad_req == "write":
                param.grad_req = "add"

    def forward_backward(self, loss_fn, shards, batch_sizes=None):
        """Accumulate the gradients of every shard.

        Parameters
        ----------
        loss_fn : callable
            ``loss_fn(rank, shard)`` returns the loss NDArray of one virtual worker's batch, to be
            differentiated (its sum is taken, as ``backward`` of a vector loss does), or a list of
            them, one per device the batch was split over (differentiated together).
        shards : sequence
            One per-worker batch per virtual rank, in rank order.
        batch_sizes : sequence of int, optional
            Samples of each shard. When given, each virtual worker's own gradient ``G_i`` is
            measured as it is added, and :attr:`worker_noise` holds ``(sum_i |G_i|^2 / b_i,
            workers with samples)``, what a real group's AdaScale reduction gives
            (``ElasticTrainer.step(worker_noise=...)``). Costs one copy of the gradients.

        Returns
        -------
        list
            Each virtual worker's loss, as ``loss_fn`` returned it.
        """
        # Per parameter, the gradient copies of every device.
        grads = []
        for param in self._params:
            if param.grad_req != "null":
                param.zero_grad()
                grads.append(param.list_grad())
        saved_aux = None
        losses = []
        previous = ([[g.copy() for g in copies] for copies in grads]
                    if batch_sizes is not None else None)
        noise_sum, noise_workers = 0.0, 0
        for rank, shard in enumerate(shards):
            with autograd.record():
                loss = loss_fn(rank, shard)
            if isinstance(loss, (list, tuple)):
                autograd.backward(list(loss))
            else:
                loss.backward()
            losses.append(loss)
            if previous is not None and batch_sizes[rank] > 0:
                # The worker's gradient G_i is the sum over its devices of what it added.
                own = sum_of_squares([device_sum([g - p for g, p in zip(copies, before)])
                                      for copies, before in zip(grads, previous)])
                noise_sum += own / batch_sizes[rank]
                noise_workers += 1
                for copies, before in zip(grads, previous):
                    for grad, copy in zip(copies, before):
                        grad.copyto(copy)
            if rank == 0 and len(shards) > 1:
                saved_aux = [[d.copy() for d in p.list_data()] for p in self._aux]
        if saved_aux is not None:
            for param, copies in zip(self._aux, saved_aux):
                for dest, src in zip(param.list_data(), copies):
                    src.copyto(dest)
        self.worker_noise = (noise_sum, noise_workers) if previous is not None else None
        return losses

    @staticmethod
    def split(array, local_batch_sizes):
        """Split the first axis of ``array`` into per-worker batches of ``local_batch_sizes``."""
        shards, start = [], 0
        for size in local_batch_sizes:
            shards.append(array[start:start + size])
            start += size
        if start != len(array):
            raise ValueError("local batch sizes sum to %d, the array has %d samples"
                             % (start, len(array)))
        return shards

