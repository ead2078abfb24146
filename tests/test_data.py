"""FramePairDataset, EpochSampler, loader and broken-video accounting on generated videos."""

from __future__ import annotations

import logging
import pickle
import re

import av
import numpy as np
import pytest
import torch
from fixtures_data import copy_dataset, data_config
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from rsp.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataError,
    EpochSampler,
    FramePairDataset,
    crop_box,
    normalize_pairs,
    sample_pair_indices,
)
from rsp.generated_videos import synthetic_frames, write_video
from rsp.loading import BrokenVideoBudget, collate_pairs, make_loader
from rsp.video import LabelEntry, VideoReadError, read_labels, write_labels

# --- sampler --------------------------------------------------------------------------------------


def test_sampler_order_is_a_seeded_permutation_that_changes_every_epoch():
    sampler = EpochSampler(num_items=50, batch_size=5, rank=0, world_size=1, seed=3)
    first, second = list(sampler), list(sampler)  # no set_position: moves on to the next epoch
    assert [e for e, _ in first] == [0] * 50 and [e for e, _ in second] == [1] * 50
    assert sorted(i for _, i in first) == list(range(50))
    assert [i for _, i in first] != [i for _, i in second]
    again = EpochSampler(50, 5, 0, 1, seed=3)
    assert list(again) == first
    assert list(EpochSampler(50, 5, 0, 1, seed=4)) != first


def test_sampler_shards_are_disjoint_equal_and_truncated_to_whole_batches():
    shards = [list(EpochSampler(num_items=23, batch_size=3, rank=r, world_size=2, seed=0)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 9  # 23 // (3 * 2) = 3 batches of 3 per rank
    indices = [{i for _, i in shard} for shard in shards]
    assert not indices[0] & indices[1]
    full = EpochSampler(23, 3, 0, 1, seed=0).epoch_order(0)[:18]  # same permutation on every rank
    assert indices[0] | indices[1] == set(full.tolist())


def test_sampler_set_position_yields_the_tail_of_the_epoch():
    sampler = EpochSampler(num_items=40, batch_size=4, rank=1, world_size=2, seed=7)
    assert sampler.batches_per_epoch == 5 and len(sampler) == 20
    sampler.set_position(epoch=3, batch_in_epoch=0)
    whole = list(sampler)
    sampler.set_position(epoch=3, batch_in_epoch=2)
    assert len(sampler) == 12
    assert list(sampler) == whole[8:]
    assert next(iter(sampler))[0] == 4  # then the next epoch


def test_sampler_rejects_what_cannot_fill_a_batch_and_bad_positions():
    with pytest.raises(DataError, match="cannot fill one batch"):
        EpochSampler(num_items=7, batch_size=4, rank=0, world_size=2, seed=0)
    with pytest.raises(ValueError, match="rank"):
        EpochSampler(10, 2, rank=2, world_size=2, seed=0)
    with pytest.raises(ValueError, match="position"):
        EpochSampler(10, 2, 0, 1, 0).set_position(0, 6)


# --- pair indices and crops -----------------------------------------------------------------------


def test_pair_indices_follow_the_reference_rule_with_inclusive_gaps():
    rng = np.random.default_rng(0)
    pairs = np.concatenate([sample_pair_indices(rng, 100, 2, 4, 48) for _ in range(2000)])
    gaps, starts = pairs[:, 1] - pairs[:, 0], pairs[:, 0]
    # the reference's rule (util/kinetics.py at 3a653e28: randint(4, max_distance), both ends inclusive)
    assert gaps.min() == 4 and gaps.max() == 48  # both ends drawn: inclusive
    assert starts.min() == 0 and starts.max() == 100 - 1 - 48


def test_short_videos_use_the_reference_fallback_and_single_frames_are_unreadable():
    rng = np.random.default_rng(0)
    pairs = np.concatenate([sample_pair_indices(rng, 10, 2, 4, 48) for _ in range(500)])
    gaps = pairs[:, 1] - pairs[:, 0]
    # two distinct sorted frames anywhere in the video: the gap may fall below min_gap (docs/data.md#frame-pair-sampling)
    assert gaps.min() == 1 and gaps.max() == 9 and pairs.min() == 0 and pairs.max() == 9
    pairs = sample_pair_indices(rng, 2, 3, 4, 48, "two.mp4")
    assert pairs.tolist() == [[0, 1]] * 3
    with pytest.raises(VideoReadError, match=r"short\.mp4.*has 1 frame"):
        sample_pair_indices(rng, 1, 2, 4, 48, "short.mp4")


def test_crop_box_stays_inside_and_respects_scale_and_ratio():
    rng = np.random.default_rng(1)
    for _ in range(300):
        top, left, h, w = crop_box(rng, 256, 340, (0.5, 1.0))
        assert 0 <= top and top + h <= 256 and 0 <= left and left + w <= 340
        assert 0.45 <= h * w / (256 * 340) <= 1.0  # scale >= 0.5 up to rounding h and w to whole pixels
    # hand computation of torchvision's fallback: ratio 100 > 4/3, so the largest centred crop is 10 x round(10 * 4/3)
    assert crop_box(rng, 10, 1000, (0.99, 1.0)) == (0, (1000 - 13) // 2, 10, 13)  # centre fallback


# --- items ----------------------------------------------------------------------------------------


def test_item_shapes_normalization_and_determinism(synthetic_root):
    ds = FramePairDataset(data_config(synthetic_root), img_size=32, seed=0)
    item = ds[(0, 5)]
    assert item["src"].shape == item["tgt"].shape == (2, 3, 32, 32)
    assert item["src"].dtype == torch.uint8 and item["broken"] == 0 and item["broken_paths"] == []
    # ImageNet-normalized range, by hand: (0 - 0.485) / 0.229 = -2.12 to (1 - 0.406) / 0.225 = 2.64
    normalized = normalize_pairs(item["src"])
    assert normalized.dtype == torch.float32 and -2.2 < normalized.min() and normalized.max() < 2.7
    again = ds[(0, 5)]
    assert torch.equal(item["src"], again["src"]) and torch.equal(item["tgt"], again["tgt"])
    other_epoch = ds[(1, 5)]
    assert not torch.equal(item["src"], other_epoch["src"])
    assert torch.equal(FramePairDataset(data_config(synthetic_root), 32, seed=0)[(0, 5)]["tgt"], item["tgt"])


def test_decoded_frames_are_the_sampled_frames(synthetic_root):
    ds = FramePairDataset(data_config(synthetic_root, repeated_sampling=3), img_size=32, seed=1)
    decoded = ds.decode_item((2, 4))
    assert decoded.frames.shape == (3, 2, 64, 80, 3) and decoded.video_index == 4
    gaps = decoded.frame_indices[:, 1] - decoded.frame_indices[:, 0]
    assert ((gaps >= 1) & (gaps <= 39)).all()  # 40-frame video (< max_gap + 1): two distinct frames
    with av.open(str(decoded.path)) as container:
        sequential = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    for pair, indices in zip(decoded.frames, decoded.frame_indices, strict=True):
        for frame, index in zip(pair, indices, strict=True):
            assert np.array_equal(frame, sequential[index])


def _float_item(ds: FramePairDataset, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The item as the loader made it before it handed over uint8: crops stacked, then converted
    and normalized in the worker (the code of that version, kept here as the yardstick)."""
    decoded, rng = ds._decode(key)
    pairs = torch.from_numpy(decoded.frames).permute(0, 1, 4, 2, 3)
    crops = []
    for pair in pairs:
        top, left, h, w = crop_box(rng, *pairs.shape[-2:], (ds.cfg.crop_min_scale, ds.cfg.crop_max_scale))
        crop = TF.resized_crop(pair, top, left, h, w, [ds.img_size] * 2, InterpolationMode.BICUBIC, antialias=True)
        crops.append(crop.flip(-1) if rng.random() < ds.cfg.hflip_prob else crop)
    scale = 1 / (255 * torch.tensor(IMAGENET_STD).view(3, 1, 1))
    shift = -torch.tensor(IMAGENET_MEAN).view(3, 1, 1) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    x = torch.stack(crops, dim=1).float().mul_(scale).add_(shift)
    return x[0], x[1]


def test_uint8_items_normalized_on_the_device_match_the_float_items(synthetic_root):
    ds = FramePairDataset(data_config(synthetic_root, repeated_sampling=3, hflip_prob=0.5), img_size=40, seed=2)
    for key in [(0, 1), (3, 7), (5, 2)]:
        item, (src, tgt) = ds[key], _float_item(ds, key)
        batch = collate_pairs([item, item])
        for uint8, expected in ((batch["src"][0], src), (batch["tgt"][1], tgt)):
            assert uint8.dtype == torch.uint8
            # the same crops (the same pixels), and on the CPU the same normalized bits
            assert torch.equal(normalize_pairs(uint8), expected)
            # and the definition, (x / 255 - mean) / std in float64, within float32 rounding
            exact = (uint8.double() / 255 - torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(3, 1, 1)) / torch.tensor(
                IMAGENET_STD, dtype=torch.float64
            ).view(3, 1, 1)
            assert torch.allclose(normalize_pairs(uint8).double(), exact, atol=1e-6, rtol=0)


def _static_dataset(root, frames: int = 12):
    image = next(synthetic_frames(np.random.default_rng(0), 1, 48, 64))
    write_video(root / "v" / "static.mp4", [image] * frames, crf=0)  # lossless: all frames decode alike
    write_labels(root / "labels.csv", [LabelEntry("v/static.mp4", 0, "v", frames)])
    return root


def test_both_frames_of_a_pair_share_crop_and_flip(tmp_path):
    # every frame of the video is the same image: src == tgt exactly iff crop and flip are shared
    root = _static_dataset(tmp_path)
    ds = FramePairDataset(data_config(root, repeated_sampling=4), img_size=24, seed=0)
    for key in [(0, 0), (1, 0), (2, 0)]:
        item = ds[key]
        assert torch.equal(item["src"], item["tgt"])
        assert not torch.equal(item["src"][0], item["src"][1])  # pairs get their own crops


def test_hflip_prob_flips_both_frames(tmp_path):
    root = _static_dataset(tmp_path)
    never = FramePairDataset(data_config(root, hflip_prob=0.0), 24, seed=0)[(0, 0)]
    always = FramePairDataset(data_config(root, hflip_prob=1.0), 24, seed=0)[(0, 0)]
    assert torch.equal(always["src"], never["src"].flip(-1)) and torch.equal(always["tgt"], never["tgt"].flip(-1))


# --- loader and exact resume ----------------------------------------------------------------------


def _batches(ds, cfg, epoch: int, start: int, count: int) -> list[dict]:
    sampler = EpochSampler(len(ds), cfg.batch_size, rank=0, world_size=1, seed=5)
    sampler.set_position(epoch, start)
    loader = make_loader(ds, sampler, cfg, seed=5)
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == count:
            break
    return out


def test_batches_do_not_depend_on_workers_and_resume_exactly(synthetic_root):
    cfg0 = data_config(synthetic_root, batch_size=3, num_workers=0)
    cfg2 = data_config(synthetic_root, batch_size=3, num_workers=2, prefetch_factor=1)
    ds = FramePairDataset(cfg0, img_size=16, seed=9)
    in_process = _batches(ds, cfg0, epoch=1, start=0, count=4)
    workers = _batches(ds, cfg2, epoch=1, start=0, count=4)
    resumed = _batches(ds, cfg0, epoch=1, start=2, count=2)
    assert [b["src"].shape for b in in_process] == [(3, 2, 3, 16, 16)] * 4
    for a, b in zip(in_process, workers, strict=True):
        assert torch.equal(a["src"], b["src"]) and torch.equal(a["tgt"], b["tgt"])
    for a, b in zip(in_process[2:], resumed, strict=True):
        assert torch.equal(a["src"], b["src"]) and torch.equal(a["tgt"], b["tgt"])


def test_starting_an_iterator_leaves_the_global_torch_rng_alone(synthetic_root):
    cfg = data_config(synthetic_root, batch_size=2)
    ds = FramePairDataset(cfg, img_size=16, seed=0)
    loader = make_loader(ds, EpochSampler(len(ds), 2, 0, 1, seed=0), cfg, seed=0)
    state = torch.get_rng_state()
    next(iter(loader))
    assert torch.equal(state, torch.get_rng_state())


def test_collate_stacks_items_and_sums_broken_reads():
    item = {"src": torch.zeros(2, 3, 4, 4), "tgt": torch.ones(2, 3, 4, 4), "broken": 1, "broken_paths": ["a"]}
    batch = collate_pairs([item, {**item, "broken": 0, "broken_paths": []}, item])
    assert batch["src"].shape == (3, 2, 3, 4, 4) and batch["tgt"].sum() == 3 * 2 * 3 * 16
    assert batch["broken"] == 2 and batch["broken_paths"] == ["a", "a"]


# --- bad input ------------------------------------------------------------------------------------


def _damage(root) -> dict[str, str]:
    """Break videos of a copied dataset in the ways the issue lists; returns name -> kind. The labels
    file forgets the sizes it recorded, so each file fails for its own reason rather than for having
    changed since the labels step (tests/test_data_changes.py tests that)."""
    labels = root / "labels.csv"
    write_labels(labels, [e._replace(size=-1, mtime_ns=-1) for e in read_labels(labels)])
    videos = sorted((root / "train").glob("*/*.mp4"))
    kinds = {}
    videos[0].write_bytes(b"")
    kinds[videos[0].name] = "empty"
    videos[1].write_bytes(videos[1].read_bytes()[:2000])
    kinds[videos[1].name] = "cannot open it"
    videos[2].write_text("not a video at all")
    kinds[videos[2].name] = "cannot open it"
    write_video(videos[3], synthetic_frames(np.random.default_rng(0), 1, 64, 80))
    kinds[videos[3].name] = "finds 1 frame(s) where the labels file records 40"
    videos[4].unlink()
    kinds[videos[4].name] = "does not exist"
    return kinds


def test_broken_videos_are_replaced_counted_and_logged_by_path(synthetic_root, tmp_path, caplog):
    root = copy_dataset(synthetic_root, tmp_path / "ds")
    kinds = _damage(root)
    ds = FramePairDataset(data_config(root), img_size=16, seed=0)
    caplog.set_level(logging.WARNING, logger="rsp.data")
    for index, path in enumerate(ds.paths):
        item = ds[(0, index)]
        if path.name in kinds:
            assert item["broken"] >= 1 and item["broken_paths"][0] == str(path)
            assert ds[(0, index)]["src"].equal(item["src"])  # the replacement is deterministic
        else:
            assert item["broken"] == 0
        assert item["src"].shape == (2, 3, 16, 16)
    for name, reason in kinds.items():
        assert any(name in r.getMessage() and reason in r.getMessage() for r in caplog.records), name


def test_broken_reads_reach_the_batch(synthetic_root, tmp_path):
    root = copy_dataset(synthetic_root, tmp_path / "ds")
    _damage(root)
    cfg = data_config(root, batch_size=12)
    ds = FramePairDataset(cfg, img_size=16, seed=0)
    batch = next(iter(make_loader(ds, EpochSampler(len(ds), 12, 0, 1, seed=0), cfg, seed=0)))
    assert batch["broken"] >= 5 and len(batch["broken_paths"]) == batch["broken"]


def test_too_many_missing_videos_stop_before_training(synthetic_root, tmp_path, caplog):
    root = copy_dataset(synthetic_root, tmp_path / "ds")
    gone = sorted((root / "train").glob("*/*.mp4"))[:2]
    for p in gone:
        p.unlink()
    with pytest.raises(DataError, match=rf"2 of 12 videos listed in .*labels.csv do not exist.*{gone[0].name}"):
        FramePairDataset(data_config(root, max_broken_fraction=0.1), img_size=16, seed=0)
    with caplog.at_level(logging.WARNING, logger="rsp.data"):
        assert len(FramePairDataset(data_config(root, max_broken_fraction=0.2), img_size=16, seed=0)) == 12
    assert "2 of 12 videos" in caplog.text


def test_an_unreadable_dataset_fails_with_the_paths(tmp_path):
    root = tmp_path / "bad"
    for i in range(3):
        (root / "c" / f"{i}.mp4").parent.mkdir(parents=True, exist_ok=True)
        (root / "c" / f"{i}.mp4").write_bytes(b"\0" * 10)
    write_labels(root / "labels.csv", [LabelEntry(f"c/{i}.mp4", 0) for i in range(3)])
    with pytest.raises(DataError, match=r"16 videos in a row could not be read.*c/.\.mp4"):
        FramePairDataset(data_config(root), img_size=16, seed=0)[(0, 0)]


def test_data_root_problems_name_the_path(tmp_path):
    with pytest.raises(DataError, match="data.root is empty"):
        FramePairDataset(data_config(""), 16, 0)
    with pytest.raises(DataError, match=f"{re.escape(str(tmp_path / 'nope'))}.* not a directory"):
        FramePairDataset(data_config(tmp_path / "nope"), 16, 0)
    with pytest.raises(DataError, match=rf"no labels file in data root {re.escape(str(tmp_path))}.*rsp.prepare labels"):
        FramePairDataset(data_config(tmp_path), 16, 0)
    (tmp_path / "train" / "c").mkdir(parents=True)
    (tmp_path / "labels.csv").write_text("")
    for inside in (tmp_path / "train", tmp_path / "train" / "c"):  # the videos folder, a class folder
        with pytest.raises(DataError, match=rf"but {re.escape(str(tmp_path))} has one: set data.root={re.escape(str(tmp_path))}"):
            FramePairDataset(data_config(inside), 16, 0)
    (tmp_path / "labels.csv").unlink()
    with pytest.raises(DataError, match="data.labels .'other.csv'. does not exist"):
        FramePairDataset(data_config(tmp_path, labels="other.csv"), 16, 0)
    (tmp_path / "labels.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="must start with the header path,class_idx"):
        FramePairDataset(data_config(tmp_path), 16, 0)
    with pytest.raises(DataError, match="invalid data config: data.max_gap"):
        FramePairDataset(data_config(tmp_path, min_gap=8, max_gap=4), 16, 0)


# --- labels formats -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["label_1.0.pickle", "label_full_1.0.pickle"])
def test_reference_pickle_labels_are_read(synthetic_root, tmp_path, name):
    root = copy_dataset(synthetic_root, tmp_path / "ds")
    (root / "labels.csv").unlink()
    videos = sorted((root / "train").glob("*/*.mp4"))
    with (root / name).open("wb") as f:
        pickle.dump([(i % 3, p.relative_to(root).as_posix()) for i, p in enumerate(videos)], f)
    ds = FramePairDataset(data_config(root), img_size=16, seed=0)
    assert ds.labels_path.name == name and len(ds) == 12 and ds[(0, 0)]["broken"] == 0


def test_pickles_that_would_run_code_are_refused(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    with (tmp_path / "label_1.0.pickle").open("wb") as f:
        pickle.dump([(0, "a.mp4"), Exploit()], f)
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        FramePairDataset(data_config(tmp_path), 16, 0)


def test_our_labels_file_wins_over_the_reference_pickle(synthetic_root, tmp_path):
    root = copy_dataset(synthetic_root, tmp_path / "ds")
    with (root / "label_1.0.pickle").open("wb") as f:
        pickle.dump([(0, "missing.mp4")], f)
    assert FramePairDataset(data_config(root), 16, 0).labels_path.name == "labels.csv"


# --- run-level budget -----------------------------------------------------------------------------


def test_broken_video_budget():
    budget = BrokenVideoBudget(max_fraction=0.01, min_reads=100)
    budget.record(["/data/a.mp4", "/data/a.mp4", "/data/b.mp4"])
    budget.check(total_broken=50, total_seen=99)  # too few reads to judge
    budget.check(total_broken=1, total_seen=100)  # exactly at the limit
    with pytest.raises(DataError, match=r"2 of 100 video reads failed \(2.00%\).*1.00%.*/data/a.mp4, /data/b.mp4"):
        budget.check(total_broken=2, total_seen=100)
    with pytest.raises(ValueError, match="max_fraction"):
        BrokenVideoBudget(max_fraction=1.0)
