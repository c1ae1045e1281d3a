"""Which GEN3C job an input is, and the cache source that serves it.

GEN3C has three official entry points, and the runner one mode per entry point, chosen by which input key is set
(exactly one must be):

* ``input.image``: image to video (``gen3c_single_image.py``), :class:`ImageCacheSource`;
* ``input.video``: video to video (``gen3c_dynamic.py``), :class:`VideoCacheSource`;
* ``input.key_frames``: multi-view (``gen3c_multiview.py``), :class:`MultiviewCacheSource`.

The rest of the runner (the conditioner, the chunk loop, layouts, resume, batches) does not know which mode it
runs. The loaders of the video and multi-view inputs raise ``ValueError`` naming the file and the problem; the
sources turn those into :class:`InputError` (:func:`gen3c_dist.errors.input_errors`), which the entry point
prints as one line (exit 2).
"""

from __future__ import annotations

from gen3c_dist.conditioning.image_source import ImageCacheSource
from gen3c_dist.conditioning.multiview_source import MultiviewCacheSource
from gen3c_dist.conditioning.video_conditioner import CacheSource, ConditioningModels
from gen3c_dist.conditioning.video_source import VideoCacheSource
from gen3c_dist.config import CacheConfig, Choice, InputConfig, TrajectoryConfig, VideoFormat
from gen3c_dist.errors import InputError


class InputMode(Choice):
    image = "image"  # image to video
    video = "video"  # video to video
    multiview = "multiview"  # key frames to video


SOURCE_KEYS: dict[InputMode, str] = {InputMode.image: "image", InputMode.video: "video",
                                     InputMode.multiview: "key_frames"}
# Keys that only one mode reads, with the value that means "not used": anything else in another mode is refused,
# so a key a user set is never silently ignored.
_MODE_ONLY_KEYS: dict[str, tuple[InputMode, object]] = {
    "depth": (InputMode.image, None),
    "depth_png_scale": (InputMode.image, None),
    "intrinsics": (InputMode.image, None),
    "video_format": (InputMode.video, VideoFormat.auto),
    "start_frame": (InputMode.video, 0),
    "vipe_read_mask": (InputMode.video, False),
}


def input_mode(inputs: InputConfig) -> InputMode:
    """The job's mode: the one source key that is set; none or several is an InputError saying which."""
    given = [mode for mode, key in SOURCE_KEYS.items() if getattr(inputs, key)]
    if not given:
        raise InputError("no input is set: give input.image (image to video), input.video (video to video) or "
                         "input.key_frames (multi-view)")
    if len(given) > 1:
        keys = [f"input.{SOURCE_KEYS[mode]}" for mode in given]
        both = "both" if len(keys) == 2 else "all"
        raise InputError(f"{' and '.join(keys)} are {both} set, but a job has exactly one input: set the others "
                         f"to null (e.g. {keys[0]}=null), or give one of image / video / key_frames in a batch line")
    return given[0]


def mode_of_key(key: str) -> InputMode:
    """The mode whose source key ``key`` is (``image``, ``video``, ``key_frames``)."""
    return next(mode for mode, source_key in SOURCE_KEYS.items() if source_key == key)


def unset_other_modes(mode: InputMode) -> dict[str, object]:
    """Input fields to reset for a job of ``mode`` that brings its own input: the other modes' source keys and
    mode-only keys at their "not used" values (so a preset's ``input.depth`` does not follow a video line)."""
    cleared: dict[str, object] = {key: None for other, key in SOURCE_KEYS.items() if other != mode}
    cleared.update({key: unused for key, (owner, unused) in _MODE_ONLY_KEYS.items() if owner != mode})
    return cleared


def check_mode_keys(inputs: InputConfig, mode: InputMode) -> None:
    """Refuse a key that only another mode reads (``input.depth`` on a video job, ``input.start_frame`` on an image)."""
    for key, (owner, unused) in _MODE_ONLY_KEYS.items():
        value = getattr(inputs, key)
        if owner != mode and value != unused:
            shown = str(value) if isinstance(value, Choice) else repr(value)
            raise InputError(f"input.{key}={shown} applies to {owner} jobs only, but this job is {mode} "
                             f"(input.{SOURCE_KEYS[mode]}); leave it unset")


def cache_source_for(inputs: InputConfig, trajectory: TrajectoryConfig, cache_cfg: CacheConfig, *,
                     frame_buffer_max: int, models: ConditioningModels) -> CacheSource:
    """The cache source of a job's mode, on the lead rank (it loads the input in ``start()``)."""
    mode = input_mode(inputs)
    if mode == InputMode.video:
        return VideoCacheSource(inputs, trajectory, cache_cfg, placement=models.placement)
    if mode == InputMode.multiview:
        return MultiviewCacheSource(inputs, trajectory, cache_cfg, frame_buffer_max=frame_buffer_max,
                                    placement=models.placement)
    return ImageCacheSource(inputs, trajectory, cache_cfg, frame_buffer_max=frame_buffer_max, moge=models.moge,
                            placement=models.placement)
