"""Streams frames from a prompt through the C ABI with ctypes.

    cargo build --release -p streamdit
    python3 examples/python/stream.py "a paper boat on a river" 3
    (STREAMDIT_LIB=path/to/libstreamdit.so selects another build)

Prints each chunk's frame count and mean pixel value; the frames are RGB8 bytes that
numpy.frombuffer(...).reshape(frames, height, width, 3) turns into an array.
"""
import ctypes
import os
import pathlib
import sys

LIB = os.environ.get("STREAMDIT_LIB") or (
    pathlib.Path(__file__).resolve().parents[2] / "target" / "release" / "libstreamdit.so")
lib = ctypes.CDLL(str(LIB))

LOG_FN = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


class EngineParams(ctypes.Structure):
    _fields_ = [("profile", ctypes.c_char_p), ("checkpoint", ctypes.c_char_p),
                ("random_seed", ctypes.c_uint64), ("backend", ctypes.c_int),
                ("device_index", ctypes.c_int), ("log", LOG_FN), ("log_user_data", ctypes.c_void_p)]


class StreamParams(ctypes.Structure):
    _fields_ = [("prompt", ctypes.c_char_p), ("negative_prompt", ctypes.c_char_p),
                ("seed", ctypes.c_uint64), ("use_seed", ctypes.c_int), ("guidance", ctypes.c_float),
                ("decoder", ctypes.c_int)]


class Geometry(ctypes.Structure):
    _fields_ = [("width", ctypes.c_uint32), ("height", ctypes.c_uint32),
                ("frames_per_chunk", ctypes.c_uint32), ("pixel_format", ctypes.c_uint32),
                ("bytes_per_frame", ctypes.c_uint64), ("bytes_per_chunk", ctypes.c_uint64),
                ("fps", ctypes.c_double)]


lib.streamdit_engine_default_params.restype = EngineParams
lib.streamdit_stream_default_params.restype = StreamParams
lib.streamdit_last_error.restype = ctypes.c_char_p


def check(status):
    if status != 0:
        raise RuntimeError(lib.streamdit_last_error().decode())


def main(prompt, chunks):
    log = LOG_FN(lambda level, msg, _: print(f"streamdit[{level}]: {msg.decode()}", file=sys.stderr))
    ep = lib.streamdit_engine_default_params()
    ep.log = log
    engine = ctypes.c_void_p()
    check(lib.streamdit_engine_create(ctypes.byref(ep), ctypes.byref(engine)))
    sp = lib.streamdit_stream_default_params()
    sp.prompt = prompt.encode()
    stream = ctypes.c_void_p()
    check(lib.streamdit_stream_create(engine, ctypes.byref(sp), ctypes.byref(stream)))
    g = Geometry()
    check(lib.streamdit_stream_geometry(stream, ctypes.byref(g)))
    buf = (ctypes.c_uint8 * g.bytes_per_chunk)()
    frames = ctypes.c_uint32()
    for i in range(chunks):
        check(lib.streamdit_stream_next(stream, buf, ctypes.c_size_t(g.bytes_per_chunk), ctypes.byref(frames)))
        data = bytes(buf)[: frames.value * g.bytes_per_frame]
        print(f"chunk {i}: {frames.value} frames {g.width}x{g.height}, mean {sum(data) / len(data):.1f}")
    lib.streamdit_stream_free(stream)
    lib.streamdit_engine_free(engine)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "a paper boat on a river",
         int(sys.argv[2]) if len(sys.argv) > 2 else 3)
