"""GluonCV 0.10's ``scripts/detection/ssd/train_ssd.py`` command lines, elastic.

Every flag of GluonCV's script with GluonCV's default, the elastic flags on top (table in
``scripts/detection/README.md``); training runs through ``train_detection.py``::

    python scripts/detection/train_ssd.py --network vgg16_atrous --data-shape 300 \\
        --batch-size 32 --gpus 0,1,2,3 -j 32 --lr 0.001
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_detection  # noqa: E402

# parse_args(argv) -> arguments (exit 2 on bad input); train(args) -> the ElasticLoop; main(argv).
parse_args, train, main = train_detection.gluoncv_entry("ssd")


if __name__ == "__main__":
    main()
