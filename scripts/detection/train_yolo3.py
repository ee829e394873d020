"""GluonCV 0.10's ``scripts/detection/yolo/train_yolo3.py`` command lines, elastic.

Every flag of GluonCV's script with GluonCV's default, the elastic flags on top (table in
``scripts/detection/README.md``); training runs through ``train_detection.py``::

    python scripts/detection/train_yolo3.py --network darknet53 --dataset voc \\
        --gpus 0,1,2,3,4,5,6,7 --batch-size 64 -j 16 --log-interval 100 \\
        --lr-decay-epoch 160,180 --epochs 200 --syncbn --warmup-epochs 4
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_detection  # noqa: E402

# parse_args(argv) -> arguments (exit 2 on bad input); train(args) -> the ElasticLoop; main(argv).
parse_args, train, main = train_detection.gluoncv_entry("yolo3")


if __name__ == "__main__":
    main()
