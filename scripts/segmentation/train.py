"""GluonCV 0.10's ``scripts/segmentation/train.py`` command lines, elastic.

Every flag of GluonCV's script with GluonCV's default, the elastic flags on top (table in
``scripts/segmentation/README.md``); training runs through ``train_segmentation.py``::

    python scripts/segmentation/train.py --dataset pascal_voc --model psp --backbone resnet101 \
        --aux --lr 0.001 --syncbn --ngpus 4 --checkname res101
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_segmentation  # noqa: E402


def parse_args(argv=None):
    """GluonCV's flags into the recipe's arguments; exit 2 on bad input."""
    return train_segmentation.parse_gluoncv_args(argv)


def train(args):
    """Train (or evaluate with ``--eval``)."""
    return train_segmentation.train_gluoncv(args)


def main(argv=None):
    """Command-line entry point."""
    train(parse_args(argv))


if __name__ == "__main__":
    main()
