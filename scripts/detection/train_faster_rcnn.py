"""GluonCV 0.10's ``scripts/detection/faster_rcnn/train_faster_rcnn.py`` command lines, elastic.

Every flag of GluonCV's script with GluonCV's default, its ``custom-model`` subcommand with the
model's sizes, the elastic flags on top (table in ``scripts/detection/README.md``); training runs
through ``train_detection.py``::

    python scripts/detection/train_faster_rcnn.py --network resnet50_v1b --dataset voc \\
        --gpus 0,1,2,3,4,5,6,7 -j 4 --batch-size 8 --lr 0.01 --lr-decay-epoch 14,20 --epochs 20
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_detection  # noqa: E402

# parse_args(argv) -> arguments (exit 2 on bad input); train(args) -> the ElasticLoop; main(argv).
parse_args, train, main = train_detection.gluoncv_entry("faster_rcnn")


if __name__ == "__main__":
    main()
