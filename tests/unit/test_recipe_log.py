"""The recipes' log formats against a reader written from GluonCV 0.10's printed lines."""
import collections

from gluon_elastic.recipe_log import GluonCVClassificationLog, RecipeLog, parse_gluoncv_log

# Lines as GluonCV 0.10's train_imagenet.py prints them (its format strings, filled in).
GLUONCV_LINES = """\
Namespace(batch_size=128, model='resnet50_v1b', mode='hybrid')
Epoch[0] Batch [49]\tSpeed: 1234.567891 samples/sec\taccuracy=0.012500\tlr=0.008000
Epoch[0] Batch [99]\tSpeed: 1300.000000 samples/sec\taccuracy=0.020000\tlr=0.016000
[Epoch 0] training: accuracy=0.020000
[Epoch 0] speed: 1290 samples/sec\ttime cost: 987.654321
[Epoch 0] validation: err-top1=0.950000 err-top5=0.850000
"""


def test_reader_reads_gluoncvs_own_lines():
    assert parse_gluoncv_log(GLUONCV_LINES) == [
        {"kind": "batch", "epoch": 0, "batch": 49, "speed": 1234.567891, "accuracy": 0.0125,
         "lr": 0.008},
        {"kind": "batch", "epoch": 0, "batch": 99, "speed": 1300.0, "accuracy": 0.02,
         "lr": 0.016},
        {"kind": "training", "epoch": 0, "accuracy": 0.02},
        {"kind": "speed", "epoch": 0, "speed": 1290.0, "time": 987.654321},
        {"kind": "validation", "epoch": 0, "err-top1": 0.95, "err-top5": 0.85}]


class _Metric:
    """A stand-in for mx.metric.Accuracy: name and a fixed value, counting resets."""

    def __init__(self, value):
        self.value, self.resets = value, 0

    def get(self):
        return "accuracy", self.value

    def reset(self):
        self.resets += 1


def test_classification_format_is_gluoncvs_with_world_and_batch_appended():
    metric = _Metric(0.25)
    log = GluonCVClassificationLog(metric)
    log.start_epoch(3)
    assert metric.resets == 1
    lines = [log.batch(3, 9, 512.5, 0.05, 4, 128, 2.5),
             log.training(3, 2.25, 4, 128),
             log.speed(3, 500.9, 12.5),
             log.validation(3, collections.OrderedDict([("err-top1", 0.5), ("err-top5", 0.125)]))]
    assert lines == [
        "Epoch[3] Batch [9]\tSpeed: 512.500000 samples/sec\taccuracy=0.250000\tlr=0.050000\t"
        "world=4\tglobal_batch=128\tloss=2.500000",
        "[Epoch 3] training: accuracy=0.250000\tworld=4\tglobal_batch=128\tloss=2.250000",
        "[Epoch 3] speed: 500 samples/sec\ttime cost: 12.500000",
        "[Epoch 3] validation: err-top1=0.500000 err-top5=0.125000"]
    assert parse_gluoncv_log("\n".join("12:00:00 " + line for line in lines)) == [
        {"kind": "batch", "epoch": 3, "batch": 9, "speed": 512.5, "accuracy": 0.25, "lr": 0.05,
         "world": 4.0, "global_batch": 128.0, "loss": 2.5},
        {"kind": "training", "epoch": 3, "accuracy": 0.25, "world": 4.0, "global_batch": 128.0,
         "loss": 2.25},
        {"kind": "speed", "epoch": 3, "speed": 500.0, "time": 12.5},
        {"kind": "validation", "epoch": 3, "err-top1": 0.5, "err-top5": 0.125}]


def test_default_format_reads_too():
    log = RecipeLog()
    text = "\n".join([log.batch(0, 0, 10.0, 0.1, 2, 8, 1.5), log.training(0, 1.5, 2, 8),
                      log.validation(0, {"mAP": 0.25})])
    assert parse_gluoncv_log(text) == [
        {"kind": "batch", "epoch": 0, "batch": 1, "speed": 10.0, "world": 2.0,
         "global_batch": 8.0, "lr": 0.1, "loss": 1.5},
        {"kind": "training", "epoch": 0, "loss": 1.5, "world": 2.0, "global_batch": 8.0},
        {"kind": "validation", "epoch": 0, "mAP": 0.25}]


# Lines as GluonCV 0.10's train_ssd.py and train_yolo3.py print them.
GLUONCV_DETECTION_LINES = """\
[Epoch 0][Batch 99], Speed: 12.345 samples/sec, CrossEntropy=5.123, SmoothL1=1.234
[Epoch 0] Training cost: 123.456, CrossEntropy=5.000, SmoothL1=1.000
[Epoch 0] Validation: 
aeroplane=0.1
diningtable=0.25
mAP=0.175
[Epoch 1][Batch 9], LR: 1.00E-03, Speed: 10.000 samples/sec, ObjLoss=1.000, BoxCenterLoss=2.000, BoxScaleLoss=3.000, ClassLoss=4.000
"""


def test_reader_reads_gluoncvs_detection_lines():
    assert parse_gluoncv_log(GLUONCV_DETECTION_LINES) == [
        {"kind": "batch", "epoch": 0, "batch": 99, "speed": 12.345, "CrossEntropy": 5.123,
         "SmoothL1": 1.234},
        {"kind": "training", "epoch": 0, "time": 123.456, "CrossEntropy": 5.0, "SmoothL1": 1.0},
        {"kind": "validation", "epoch": 0, "aeroplane": 0.1, "diningtable": 0.25, "mAP": 0.175},
        {"kind": "batch", "epoch": 1, "batch": 9, "speed": 10.0, "lr": 0.001, "ObjLoss": 1.0,
         "BoxCenterLoss": 2.0, "BoxScaleLoss": 3.0, "ClassLoss": 4.0}]


class _Loss(_Metric):
    def __init__(self, name, value):
        super().__init__(value)
        self.name = name

    def get(self):
        return self.name, self.value


def test_detection_format_is_gluoncvs_with_world_and_batch_appended():
    from gluon_elastic.recipe_log import GluonCVDetectionLog

    losses = [_Loss("ObjLoss", 1.5), _Loss("ClassLoss", 0.25)]
    log = GluonCVDetectionLog(losses, show_lr=True)
    log.start_epoch(2)
    assert [loss.resets for loss in losses] == [1, 1]
    assert log.batch(2, 7, 3.5, 0.001, 2, 8, 9.0) == (
        "[Epoch 2][Batch 7], LR: 1.00E-03, Speed: 3.500 samples/sec, ObjLoss=1.500, "
        "ClassLoss=0.250, world=2, global_batch=8")
    assert log.validation(2, {"cat": 0.5, "mAP": 0.5}) == "[Epoch 2] Validation: \ncat=0.5\nmAP=0.5"
    training = parse_gluoncv_log(log.training(2, 9.0, 2, 8))
    assert training[0]["ObjLoss"] == 1.5 and training[0]["world"] == 2.0


def test_segmentation_format_and_gluoncvs_own_lines():
    from gluon_elastic.recipe_log import GluonCVSegmentationLog

    log = GluonCVSegmentationLog(lambda global_batch_size: 96 // global_batch_size)
    lines = [log.batch(1, 5, 10.0, 0.001, 2, 8, 1.25), log.training(1, 1.5, 2, 8),
             log.validation(1, {"pixAcc": 0.5, "mIoU": 0.25}),
             # GluonCV 0.10's segmentation/train.py lines:
             "Epoch 3 iteration 0020/0100: training loss 0.812",
             "Epoch 3 validation pixAcc: 0.912, mIoU: 0.701"]
    assert lines[:3] == [
        "Epoch 1 iteration 0005/0012: training loss 1.250, world=2, global_batch=8, lr=0.001000",
        "Epoch 1, training loss 1.500, world=2, global_batch=8",
        "Epoch 1 validation pixAcc: 0.500, mIoU: 0.250, world=2, global_batch=8"]
    assert parse_gluoncv_log("\n".join(lines)) == [
        {"kind": "batch", "epoch": 1, "batch": 5, "batches": 12, "loss": 1.25, "world": 2.0,
         "global_batch": 8.0, "lr": 0.001},
        {"kind": "training", "epoch": 1, "loss": 1.5, "world": 2.0, "global_batch": 8.0},
        {"kind": "validation", "epoch": 1, "pixAcc": 0.5, "mIoU": 0.25, "world": 2.0,
         "global_batch": 8.0},
        {"kind": "batch", "epoch": 3, "batch": 20, "batches": 100, "loss": 0.812},
        {"kind": "validation", "epoch": 3, "pixAcc": 0.912, "mIoU": 0.701}]
