"""Optional TensorBoard logs beside a run's CSV and PNG outputs, so ``tensorboard --logdir
checkpoints`` shows every run. Off (with one note) when the tensorboard package is absent."""
import functools


@functools.lru_cache(maxsize=1)
def _summary_writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("note: tensorboard is not installed, so no TensorBoard logs are written "
              "(pip install tensorboard to get them)")
        return None
    return SummaryWriter


def tensorboard_writer(log_dir, first_step=0):
    """A SummaryWriter for ``log_dir`` (events from ``first_step`` on replace those of an
    interrupted earlier attempt), or None without tensorboard."""
    writer_class = _summary_writer_class()
    if writer_class is None:
        return None
    return writer_class(log_dir=str(log_dir), purge_step=first_step or None)


def log_scalars(writer, step, values):
    """Add every number of ``values`` ({tag: value}) at ``step``; nothing without a writer."""
    if writer is None:
        return
    for tag, value in values.items():
        if value is not None:
            writer.add_scalar(tag, float(value), step)
    writer.flush()
