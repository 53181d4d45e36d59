"""Frame codecs of the clip store: one clip's uint8 frames [F, 3, S, S] <-> the bytes of its row.

    raw    the frames as they are (fixed-size rows, memory-mapped; no decoding)
    h264   the clip re-encoded with libx264 in yuv444p (no chroma subsampling), one key frame per
           chunk, no B-frames, decoded by FFmpeg's h264 decoder in the loader worker
    jpeg   one JPEG per frame (Pillow / libjpeg-turbo)

A compressed row is self-describing: a uint32 frame count n, n uint32 packet sizes, then the n
packets (one per frame: without B-frames libx264 emits exactly one packet per frame, in order).
Why h264 is the default compressed format: benchmarks/store-encoding.md.
"""

from __future__ import annotations

import io
from fractions import Fraction

import numpy as np

H264_CRF = 18  # >= 35 dB PSNR on every real input measured (benchmarks/store-encoding.md)
JPEG_QUALITY = 90


class CodecError(ValueError):
    pass


def _pack(packets: list[bytes]) -> bytes:
    head = np.array([len(packets), *map(len, packets)], dtype="<u4").tobytes()
    return head + b"".join(packets)


def _unpack(data) -> list[memoryview]:
    data = memoryview(data)
    if len(data) < 4:
        raise CodecError("row too short")
    n = int(np.frombuffer(data[:4], dtype="<u4")[0])
    if len(data) < 4 * (n + 1):
        raise CodecError(f"row header lists {n} frames but the row holds {len(data)} bytes")
    sizes = np.frombuffer(data[4:4 * (n + 1)], dtype="<u4").astype(np.int64)
    ends = 4 * (n + 1) + np.cumsum(sizes)
    if n and ends[-1] != len(data):
        raise CodecError(f"row holds {len(data)} bytes, its header says {int(ends[-1])}")
    starts = np.concatenate([[4 * (n + 1)], ends[:-1]]) if n else []
    return [data[int(a):int(b)] for a, b in zip(starts, ends)]


def encode_h264(video: np.ndarray, crf: int = H264_CRF, gop: int | None = None, pix_fmt: str = "yuv444p",
                preset: str = "fast") -> bytes:
    """[F, 3, S, S] uint8 -> row bytes. gop: frames between key frames (default: all in one GOP)."""
    import av

    frames, _, h, w = video.shape
    gop = gop or frames
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = w, h, pix_fmt
    ctx.time_base, ctx.framerate = Fraction(1, 25), Fraction(25)
    ctx.thread_count = 1  # one encoder per `prepare` worker process
    ctx.options = {"crf": str(crf), "preset": preset,
                   "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0"}
    packets = []
    for i, frame in enumerate(video):
        image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame.transpose(1, 2, 0)), format="rgb24")
        image.pts = i
        packets += [bytes(p) for p in ctx.encode(image.reformat(format=pix_fmt))]
    packets += [bytes(p) for p in ctx.encode(None)]
    if len(packets) != frames:
        raise CodecError(f"libx264 gave {len(packets)} packets for {frames} frames")
    return _pack(packets)


def decode_h264(data) -> np.ndarray:
    import av

    ctx = av.CodecContext.create("h264", "r")
    ctx.thread_count = 1  # one decoder per loader worker: workers, not threads, scale it
    frames = []
    try:
        for packet in _unpack(data):
            frames += ctx.decode(av.Packet(packet))
        frames += ctx.decode(None)
    except av.error.FFmpegError as err:
        raise CodecError(f"h264: {err}") from None
    if not frames:
        raise CodecError("h264: no frame decoded")
    return np.stack([f.to_ndarray(format="rgb24").transpose(2, 0, 1) for f in frames])


def encode_jpeg(video: np.ndarray, quality: int = JPEG_QUALITY, subsampling: int = 2) -> bytes:
    """subsampling: Pillow's 0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0."""
    from PIL import Image

    packets = []
    for frame in video:
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(frame.transpose(1, 2, 0))).save(
            buf, "JPEG", quality=quality, subsampling=subsampling)
        packets.append(buf.getvalue())
    return _pack(packets)


def decode_jpeg(data) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        return np.stack([np.asarray(Image.open(io.BytesIO(p)).convert("RGB")).transpose(2, 0, 1)
                         for p in _unpack(data)])
    except (OSError, UnidentifiedImageError, SyntaxError) as err:
        raise CodecError(f"jpeg: {err}") from None


def encode(video: np.ndarray, fmt: str, frames_per_chunk: int | None = None) -> bytes:
    """frames_per_chunk: h264 starts each chunk with a key frame (a chunk decodes on its own)."""
    if fmt == "raw":
        return np.ascontiguousarray(video).tobytes()
    if fmt == "h264":
        return encode_h264(video, gop=frames_per_chunk)
    return encode_jpeg(video)


def decode(data, fmt: str, shape: tuple[int, ...]) -> np.ndarray:
    """Row bytes -> uint8 frames of `shape`; CodecError when they do not decode to it."""
    if fmt == "raw":
        return np.frombuffer(data, dtype=np.uint8).reshape(shape)
    video = {"h264": decode_h264, "jpeg": decode_jpeg}[fmt](data)
    if video.shape != tuple(shape):
        raise CodecError(f"decoded frames have shape {video.shape}, expected {tuple(shape)}")
    return video


def psnr(reference: np.ndarray, decoded: np.ndarray) -> float:
    """Peak signal-to-noise ratio of uint8 images in dB (inf when identical)."""
    mse = np.mean((reference.astype(np.float64) - decoded.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))
