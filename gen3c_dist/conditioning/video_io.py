"""File reading for source videos: mp4 frames, npz arrays, EXR depth and PNG masks in zip archives.

Every reader raises one ``ValueError`` naming the file (and member or key) and the problem, never a library's
own exception, so a bad input is refused with a message a user can act on.

Libraries:
* mp4: imageio's ffmpeg plugin (a core dependency), decoded to RGB uint8. A lossless RGB H.264 file
  (libx264rgb, qp 0, as the fixtures and the demo ship) decodes to exactly its encoded frames, so parity with
  the official OpenCV (directory) and decord (ViPE) readers is exact. For ordinary yuv420p videos decoders
  may differ in the colour conversion by a level or so.
* EXR: the ``OpenEXR`` Python bindings (3.x, the Academy Software Foundation's own package, wheels for every
  major platform), read from the zip member as a stream with ``OpenEXR.File``; no hand-written parser. It is the
  library the official ViPE loader uses. Only the ViPE format needs it, so it sits in the ``video`` extra
  (``pip install gen3c_dist[video]``), which ``test`` includes.
* PNG: Pillow (a core dependency).
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import numpy as np

EXR_DEPTH_CHANNEL = "Z"


@dataclass(frozen=True)
class Mp4Info:
    num_frames: int
    height: int
    width: int


def _reader(path: str):
    import imageio.v2 as iio

    if not os.path.isfile(path):
        raise ValueError(f"video {path}: file does not exist")
    try:
        return iio.get_reader(path, format="ffmpeg")
    except (OSError, RuntimeError, ValueError) as err:
        raise ValueError(f"video {path}: cannot be opened as a video ({str(err).splitlines()[0]})") from None


def mp4_info(path: str) -> Mp4Info:
    """Frame count and size of a video from its container (no decoding of the frames)."""
    reader = _reader(path)
    try:
        width, height = reader.get_meta_data()["size"]
        num_frames = reader.count_frames()
    except (OSError, RuntimeError, ValueError, KeyError) as err:
        raise ValueError(f"video {path}: cannot read its frame count and size ({err})") from None
    finally:
        reader.close()
    if num_frames < 1:
        raise ValueError(f"video {path}: holds no frames")
    return Mp4Info(int(num_frames), int(height), int(width))


def read_mp4_frames(path: str, indices: Optional[Sequence[int]] = None) -> np.ndarray:
    """RGB uint8 frames [N, H, W, 3]: all of them, or ``indices`` (repeats allowed) in the order given.

    Frames are decoded in order and only up to the largest index asked for.
    """
    wanted = None if indices is None else sorted(set(int(i) for i in indices))
    frames: dict[int, np.ndarray] = {}
    reader = _reader(path)
    try:
        for index, frame in enumerate(reader):
            if wanted is None or index in wanted:
                frames[index] = np.asarray(frame, dtype=np.uint8)
            if wanted is not None and index >= wanted[-1]:
                break
    except (OSError, RuntimeError, ValueError) as err:
        raise ValueError(f"video {path}: decoding failed after {len(frames)} frames ({err})") from None
    finally:
        reader.close()
    if not frames:
        raise ValueError(f"video {path}: holds no frames")
    order = sorted(frames) if indices is None else [int(i) for i in indices]
    missing = [i for i in order if i not in frames]
    if missing:
        raise ValueError(f"video {path}: has {len(frames)} decodable frames, frame {missing[0]} was asked for")
    return np.stack([frames[i] for i in order])


def read_npz(path: str, keys: Iterable[str]) -> dict[str, np.ndarray]:
    """The arrays of an .npz that must hold exactly ``keys`` (no pickle); a missing or extra key is refused."""
    keys = tuple(keys)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: file does not exist")
    try:
        npz = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: cannot be read as an .npz without pickle ({err})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: holds a single .npy array, not an .npz archive of named arrays")
    with npz:
        found = tuple(npz.files)
        missing = [k for k in keys if k not in found]
        extra = [k for k in found if k not in keys]
        if missing or extra:
            problems = [text for text in (missing and f"missing {missing}", extra and f"extra {extra}") if text]
            raise ValueError(f"{path}: must hold exactly the arrays {list(keys)}; " + "; ".join(problems))
        try:
            return {k: npz[k] for k in keys}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(f"{path}: cannot be read as an .npz without pickle ({err})") from None


def open_zip(path: str) -> zipfile.ZipFile:
    if not os.path.isfile(path):
        raise ValueError(f"{path}: file does not exist")
    try:
        return zipfile.ZipFile(path, "r")
    except (OSError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: not a readable zip archive ({err})") from None


def _member_bytes(archive: zipfile.ZipFile, member: str) -> bytes:
    try:
        return archive.read(member)
    except KeyError:
        raise ValueError(f"{archive.filename}: has no member {member}") from None
    except (OSError, zipfile.BadZipFile) as err:
        raise ValueError(f"{archive.filename}: member {member} cannot be read ({err})") from None


def _import_openexr():
    try:
        import OpenEXR
    except ImportError:
        raise ValueError("reading ViPE depth needs the OpenEXR package: pip install 'gen3c_dist[video]'") from None
    return OpenEXR


def read_exr_depth(archive: zipfile.ZipFile, member: str) -> np.ndarray:
    """Channel Z of an EXR zip member as float32 [H, W] (half or float)."""
    OpenEXR = _import_openexr()
    where = f"{archive.filename}: {member}"
    data = _member_bytes(archive, member)
    try:
        exr = OpenEXR.File(io.BytesIO(data), separate_channels=True)
        header = exr.header()
        channel_names = [channel.name for channel in header["channels"]]
    except (OSError, RuntimeError, TypeError, ValueError) as err:
        raise ValueError(f"{where}: cannot be read as an EXR image ({err})") from None
    if EXR_DEPTH_CHANNEL not in channel_names:
        raise ValueError(f"{where}: has no depth channel {EXR_DEPTH_CHANNEL!r} (channels: {channel_names})")
    (x0, y0), (x1, y1) = header["dataWindow"]
    height, width = int(y1 - y0 + 1), int(x1 - x0 + 1)
    depth = np.asarray(exr.channels()[EXR_DEPTH_CHANNEL].pixels)
    if depth.shape != (height, width) or depth.dtype not in (np.float16, np.float32):
        raise ValueError(f"{where}: channel Z must be half or float [{height}, {width}], got {depth.dtype} "
                         f"{list(depth.shape)}")
    return depth.astype(np.float32)


def read_png_mask(archive: zipfile.ZipFile, member: str) -> np.ndarray:
    """A PNG mask member as float32 [H, W] 0/1: ``> 0`` of its first channel as OpenCV decodes it.

    The official reader takes channel 0 of ``cv2.imdecode``, which is blue for a colour PNG (OpenCV is BGR); so
    colour masks use their blue channel here too, and grey ones their grey value.
    """
    from PIL import Image, UnidentifiedImageError

    where = f"{archive.filename}: {member}"
    data = _member_bytes(archive, member)
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.mode == "P":
                image = image.convert("RGBA")
            pixels = np.asarray(image)
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise ValueError(f"{where}: cannot be read as a PNG image ({err})") from None
    if pixels.ndim == 3:
        pixels = pixels[..., 2] if pixels.shape[-1] in (3, 4) else pixels[..., 0]
    return (pixels > 0).astype(np.float32)
