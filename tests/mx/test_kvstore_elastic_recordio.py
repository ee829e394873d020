"""RecordIO data following restarts: ElasticRecordIter parts and skips, ImageRecordDataset exact."""
import mxnet as mx
import numpy as np
import pytest

from gluon_elastic.data import ElasticRecordIter, ElasticSampler, record_part

NUM_RECORDS = 25


@pytest.fixture(scope="module")
def record_file(tmp_path_factory):
    """25 tiny PNG images in an indexed .rec file; record i has label i."""
    directory = tmp_path_factory.mktemp("rec")
    rec_path, idx_path = str(directory / "data.rec"), str(directory / "data.idx")
    writer = mx.recordio.MXIndexedRecordIO(idx_path, rec_path, "w")
    rng = np.random.RandomState(0)
    for index in range(NUM_RECORDS):
        image = (rng.rand(8, 8, 3) * 255).astype(np.uint8)
        header = mx.recordio.IRHeader(0, float(index), index, 0)
        writer.write_idx(index, mx.recordio.pack_img(header, image, img_fmt=".png"))
    writer.close()
    return rec_path, idx_path


def _labels(iterator):
    return [int(v) for _, label in iterator for v in label.asnumpy()]


def _iter(record_file, world_size, rank, **kwargs):
    return ElasticRecordIter(record_file[0], record_file[1], world_size, rank, 3,
                             data_shape=(3, 8, 8), preprocess_threads=1, **kwargs)


def test_record_part_matches_the_split():
    assert [record_part(25, 3, r) for r in range(3)] == [(0, 9), (9, 18), (18, 25)]
    assert [record_part(25, 2, r) for r in range(2)] == [(0, 13), (13, 25)]
    assert record_part(2, 3, 2) == (2, 2)
    with pytest.raises(ValueError, match="rank 3 out of range"):
        record_part(25, 3, 3)


@pytest.mark.parametrize("world_size", [2, 3])
def test_parts_cover_the_epoch_without_padding(record_file, world_size):
    labels = []
    for rank in range(world_size):
        iterator = _iter(record_file, world_size, rank)
        part = _labels(iterator)
        assert part == list(range(*record_part(NUM_RECORDS, world_size, rank)))
        assert len(iterator) == -(-len(part) // 3)
        labels += part
    assert labels == list(range(NUM_RECORDS))


@pytest.mark.parametrize("shuffle", [False, True])
def test_restart_in_the_same_world_skips_exactly_what_was_trained(record_file, shuffle):
    # Two ranks trained 2 steps of 3 records each: processed = 12 for the group.
    before, after = [], []
    for rank in range(2):
        first = _iter(record_file, 2, rank, epoch=1, shuffle=shuffle, seed=7)
        batches = iter(first)
        before += [int(v) for _ in range(2) for v in next(batches)[1].asnumpy()]
        resumed = _iter(record_file, 2, rank, epoch=1, processed=12, shuffle=shuffle, seed=7)
        assert resumed.skip == 6
        after += _labels(resumed)
    assert len(before) == 12
    assert sorted(before + after) == list(range(NUM_RECORDS))


def test_mid_epoch_resize_keeps_the_count(record_file):
    # 2 -> 3 after 12 records: each new part skips 12 // 3 = 4 of its own records.
    after = [_labels(_iter(record_file, 3, rank, processed=12)) for rank in range(3)]
    assert after == [list(range(4, 9)), list(range(13, 18)), list(range(22, 25))]
    assert sum(map(len, after)) == NUM_RECORDS - 12


def test_image_record_dataset_with_sampler_is_exactly_once_across_a_resize(record_file):
    dataset = mx.gluon.data.vision.ImageRecordDataset(record_file[0])
    sampler = ElasticSampler(len(dataset), seed=3)
    seen = []
    for world_size, steps in ((2, 2), (3, None)):   # 2 steps with 2 workers, the rest with 3
        batches = [sampler.iter_batches([3] * world_size, rank) for rank in range(world_size)]
        for step, per_rank in enumerate(zip(*batches)):
            if steps is not None and step == steps:
                break
            for indices, _ in per_rank:
                seen += [int(dataset[int(i)][1]) for i in indices]
            sampler.record(per_rank[0][1])
    assert sorted(seen) == list(range(NUM_RECORDS))


def test_bad_arguments(record_file):
    with pytest.raises(ValueError, match="needs path_imgidx"):
        ElasticRecordIter(record_file[0], None, 2, 0, 3)
    with pytest.raises(ValueError, match="processed=30"):
        ElasticRecordIter(record_file[0], record_file[1], 2, 0, 3, processed=30)
