"""What the recipes need to take GluonCV 0.10's command lines: argparse types of GluonCV's value
ranges, the batch-size rule, and the input checks that end a run with exit code 2 before it writes
anything.

The batch-size rule
-------------------
GluonCV's ``--batch-size`` is per device and a process trains ``--batch-size x max(1, --num-gpus)``
samples per step; the elastic flag ``--local-batch-size`` is per process (per worker). The recipes
take either: the per-worker batch is ``--local-batch-size`` when it is given, else
``--batch-size x max(1, --num-gpus)``. Both given and different is a contradiction (exit 2); both
given and equal is accepted. "Given" means typed on the command line: ``--batch-size`` parses to
None when it is absent and takes GluonCV's default afterwards (:func:`add_batch_size_arg`), so
GluonCV's default typed out (``--batch-size 32 --local-batch-size 8``) is a contradiction too.
``--lr`` is GluonCV's LR of one process at that batch, which is the elastic LR at the base batch of
a world of one (``--base-batch-size``, default: the starting world's global batch).

Each check here names the flag at fault. Imports no MXNet.
"""
import argparse
import math
import os
import struct

import numpy as np

from . import flags as _flags

__all__ = ["bounded_float", "unit_interval", "crop_ratio", "add_batch_size_arg",
           "add_device_batch_args",
           "resolve_local_batch_size", "check_output_paths", "read_record_labels",
           "check_record_pair", "check_labels", "refuse_download", "RECORD_MAGIC"]

# dmlc RecordIO: every record starts with this magic word, then a word of flag and length.
RECORD_MAGIC = 0xced7230a


def bounded_float(low, high, low_inclusive=True, high_inclusive=False):
    """An argparse type: a finite float in the interval given (``[low, high)`` by default)."""
    description = "a number in %s%g, %g%s" % ("[" if low_inclusive else "(", low, high,
                                             "]" if high_inclusive else ")")

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError("expected %s, got %r" % (description, text)) from None
        above = value >= low if low_inclusive else value > low
        below = value <= high if high_inclusive else value < high
        if not (above and below) or not math.isfinite(value):
            raise argparse.ArgumentTypeError("expected %s, got %r" % (description, text))
        return value
    return parse


# Momentum and label smoothing: [0, 1). Validation crop ratio: (0, 1].
unit_interval = bounded_float(0.0, 1.0)
crop_ratio = bounded_float(0.0, 1.0, low_inclusive=False, high_inclusive=True)


def add_batch_size_arg(parser, group, default, help):
    """Add GluonCV's ``--batch-size`` to ``group`` with GluonCV's ``default`` stated in its help.

    It parses to None when it is not on the command line, and so does ``--local-batch-size`` of
    :func:`gluon_elastic.flags.add_elastic_args` here: :func:`resolve_local_batch_size` sees
    which of the two were typed and fills in the defaults.
    """
    action = group.add_argument("--batch-size", type=_flags.positive_int, default=None,
                                help="%s (default: %d)" % (help, default))
    action.gluoncv_default = default
    parser.set_defaults(local_batch_size=None)
    return action


def add_device_batch_args(parser, batch_size=32):
    """Add GluonCV's ``--batch-size`` (per device).

    ``--num-gpus``, the devices it counts, is the recipes' own flag
    (:func:`gluon_elastic.recipe.add_run_args`, which the parser must have).
    """
    if "--num-gpus" not in parser._option_string_actions:  # pylint: disable=protected-access
        raise ValueError("add_device_batch_args: add the run flags (recipe.add_run_args) first; "
                         "--batch-size counts the devices of their --num-gpus")
    group = parser.add_argument_group("GluonCV batch")
    add_batch_size_arg(parser, group, batch_size,
                       "training batch size per device (CPU/GPU); the per-worker batch is this "
                       "times max(1, --num-gpus) unless --local-batch-size is given")
    return group


def resolve_local_batch_size(parser, args, num_devices=None):
    """Set ``args.local_batch_size`` by the module's batch-size rule; exit 2 on a contradiction.

    Parameters
    ----------
    num_devices : int, optional
        Devices the ``--batch-size`` counts per process: default ``--num-gpus`` (at least 1);
        GluonCV's detection and segmentation scripts give the batch per process (1).
    """
    if num_devices is None:
        num_devices = max(1, getattr(args, "num_gpus", 0) or 0)
    batch_size_given = args.batch_size is not None
    if not batch_size_given:
        args.batch_size = parser._option_string_actions["--batch-size"].gluoncv_default
    from_devices = args.batch_size * num_devices
    if args.local_batch_size is None:
        args.local_batch_size = from_devices
    elif args.local_batch_size != from_devices and batch_size_given:
        parser.error("--local-batch-size %d (per worker) contradicts --batch-size %d per device x "
                     "%d device(s) = %d; give one of them, or values that agree"
                     % (args.local_batch_size, args.batch_size, num_devices, from_devices))
    return args.local_batch_size


def check_output_paths(parser, directories=(), files=()):
    """Exit 2 when an output path cannot be used: a directory flag naming a file (or under one),
    a file flag naming a directory or lying under a file.

    Parameters
    ----------
    parser : argparse.ArgumentParser
    directories, files : iterable of (str, str or None)
        ``(flag, path)``; a None or empty path is skipped.
    """
    for flag, path in directories:
        if path:
            blocker = _file_on_the_way(path, include_self=True)
            if blocker:
                parser.error("%s %s: %s is a file, not a directory" % (flag, path, blocker))
    for flag, path in files:
        if path:
            if os.path.isdir(path):
                parser.error("%s %s is a directory, not a file" % (flag, path))
            blocker = _file_on_the_way(os.path.dirname(os.path.abspath(path)), include_self=True)
            if blocker:
                parser.error("%s %s: %s is a file, not a directory" % (flag, path, blocker))


def _file_on_the_way(path, include_self):
    path = os.path.abspath(os.path.expanduser(path))
    candidates = [path] if include_self else []
    parent = os.path.dirname(path)
    while parent and parent != os.path.dirname(parent):
        candidates.append(parent)
        parent = os.path.dirname(parent)
    for candidate in candidates:
        if os.path.exists(candidate) and not os.path.isdir(candidate):
            return candidate
    return None


def read_record_labels(path_imgrec, path_imgidx):
    """Check that an index file matches its RecordIO file; return the label of every record.

    Reads the index (``key<TAB>offset`` lines, as ``im2rec`` and ``MXIndexedRecordIO`` write them)
    and, at every offset, the record header and the image header that follows (32 bytes): the
    RecordIO magic word must be there and the record must end inside the file. Costs one small
    read per record.

    Returns
    -------
    numpy.ndarray of float
        The first label of each record, in index order.

    Raises
    ------
    ValueError
        A malformed index line, an offset outside the file, or no record at an offset; the
        message names the file and the record key.
    """
    size = os.path.getsize(path_imgrec)
    offsets = []
    with open(path_imgidx) as fin:
        for number, line in enumerate(fin, 1):
            if not line.strip():
                continue
            parts = line.split()
            try:
                key, offset = int(parts[0]), int(parts[1])
            except (ValueError, IndexError):
                raise ValueError("%s line %d is not 'key<TAB>offset': %r"
                                 % (path_imgidx, number, line.rstrip("\n"))) from None
            offsets.append((key, offset))
    if not offsets:
        raise ValueError("%s lists no records" % path_imgidx)
    labels = np.empty(len(offsets))
    with open(path_imgrec, "rb") as fin:
        for position, (key, offset) in enumerate(offsets):
            if not 0 <= offset <= size - 32:
                raise ValueError("%s gives record %d the offset %d, outside %s (%d bytes): the "
                                 "index does not belong to this file"
                                 % (path_imgidx, key, offset, path_imgrec, size))
            fin.seek(offset)
            magic, length_word, flag, label = struct.unpack("<IIIf", fin.read(16))
            length = length_word & ((1 << 29) - 1)
            if magic != RECORD_MAGIC or offset + 8 + length > size:
                raise ValueError("%s has no record at offset %d (record %d of %s): the index "
                                 "does not belong to this file" % (path_imgrec, offset, key,
                                                                   path_imgidx))
            if flag > 0:
                # A label array follows the 24-byte image header; the first entry is the class.
                fin.seek(offset + 8 + 24)
                label, = struct.unpack("<f", fin.read(4))
            labels[position] = label
    return labels


def check_record_pair(parser, rec_flag, path_imgrec, idx_flag, path_imgidx):
    """Exit 2 when a ``.rec``/``.idx`` pair is missing or does not match; return the labels."""
    for flag, path in ((rec_flag, path_imgrec), (idx_flag, path_imgidx)):
        if not os.path.isfile(path):
            parser.error("%s %s: no such file" % (flag, path))
    try:
        return read_record_labels(path_imgrec, path_imgidx)
    except ValueError as err:
        parser.error("%s/%s: %s" % (rec_flag, idx_flag, err))


def check_labels(parser, labels, classes, source):
    """Exit 2 when a label of ``source`` is not a class index below ``--classes``."""
    labels = np.asarray(labels)
    bad = labels[(labels < 0) | (labels >= classes) | (labels != np.floor(labels))]
    if len(bad):
        parser.error("--classes %d disagrees with %s: it holds label %g (labels must be 0 .. %d)"
                     % (classes, source, bad.max() if (bad >= classes).any() else bad.min(),
                        classes - 1))


def refuse_download(parser, flag, what):
    """Exit 2: ``flag`` needs ``what`` downloaded, and the recipes download nothing."""
    parser.error("%s needs %s downloaded from the GluonCV model zoo; the recipes download "
                 "nothing (train from scratch, or load your own files with --resume-params)"
                 % (flag, what))
