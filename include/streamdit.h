/*
 * streamdit.h: the C interface of streamdit-engine (StreamDiT streaming text-to-video and
 * video-to-video).
 *
 * Link with -lstreamdit (libstreamdit.so, or libstreamdit.a plus -lpthread -ldl -lm).
 * Written by hand to mirror engine/src/abi/mod.rs; tests/abi.rs checks that every
 * function here is exported by the library and that every struct has the same size and
 * field offsets on both sides.
 *
 * Conventions:
 * - Functions return a streamdit_status (0 = STREAMDIT_OK). On failure,
 *   streamdit_last_error() gives a message naming what was wrong and what was expected;
 *   it is per thread and valid until the next failing call on that thread.
 * - Nothing passed in can crash the library: NULL pointers and too-small buffers are
 *   errors, and an internal panic becomes STREAMDIT_ERR_PANIC. Using a freed handle and
 *   freeing twice are undefined behaviour (as with free()); freeing NULL is a no-op.
 * - Threads: an engine may be shared by streams created and used on different threads;
 *   each stream must be used by one thread at a time. Callbacks run on the thread that
 *   made the call that triggers them.
 * - Strings are UTF-8 and NUL-terminated.
 */
#ifndef STREAMDIT_H
#define STREAMDIT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define STREAMDIT_ABI_VERSION 2

typedef enum streamdit_status {
    STREAMDIT_OK = 0,
    STREAMDIT_ERR_INVALID_ARGUMENT = 1, /* NULL pointer, bad enum value, bad UTF-8, misuse */
    STREAMDIT_ERR_BUFFER_TOO_SMALL = 2, /* see streamdit_geometry.bytes_per_chunk */
    STREAMDIT_ERR_PROFILE = 3,          /* unknown profile, unreadable or invalid TOML */
    STREAMDIT_ERR_CHECKPOINT = 4,       /* missing, mis-shaped or corrupt checkpoint */
    STREAMDIT_ERR_IO = 5,               /* a file could not be read or written */
    STREAMDIT_ERR_BACKEND = 6,          /* no GPU, out of memory, a launch failed */
    STREAMDIT_ERR_PANIC = 7,            /* an internal error (a bug): please report it */
    STREAMDIT_ERR_STOPPED = 8           /* the frame callback asked to stop */
} streamdit_status;

typedef enum streamdit_backend {
    STREAMDIT_BACKEND_AUTO = 0, /* CUDA when a device and the kernels are there, else CPU */
    STREAMDIT_BACKEND_CPU = 1,
    STREAMDIT_BACKEND_CUDA = 2,
    STREAMDIT_BACKEND_EMU = 3 /* the CUDA launch plan on the CPU kernel emulator (slow) */
} streamdit_backend;

typedef enum streamdit_decoder {
    STREAMDIT_DECODER_TAE = 0,     /* the profile's full-resolution decoder: StreamDiT's TAE
                                      decoder, a Wan profile's wan.decoder (TAEHV by default) */
    STREAMDIT_DECODER_PREVIEW = 1, /* a cheap per-pixel latent-to-RGB map, upscaled */
    STREAMDIT_DECODER_TAEHV = 2,   /* Wan family: TAEHV (taew2_1), real time */
    STREAMDIT_DECODER_WAN_VAE = 3  /* Wan family: the Wan 2.1 VAE decoder, best quality */
} streamdit_decoder;

typedef enum streamdit_log_level {
    STREAMDIT_LOG_ERROR = 0,
    STREAMDIT_LOG_WARN = 1,
    STREAMDIT_LOG_INFO = 2
} streamdit_log_level;

#define STREAMDIT_PIXEL_RGB8 0

typedef struct streamdit_engine streamdit_engine;
typedef struct streamdit_stream streamdit_stream;

typedef void (*streamdit_log_fn)(int level, const char *message, void *user_data);

/* Called once per video frame in order; return 0 to continue, non-zero to stop. */
typedef int (*streamdit_frame_fn)(const uint8_t *rgb, uint32_t width, uint32_t height,
                                  uint64_t frame_index, void *user_data);

typedef struct streamdit_engine_params {
    const char *profile;    /* built-in name ("tiny", "streamdit-4b", ...) or TOML path */
    const char *checkpoint; /* safetensors path, or NULL: the profile's own checkpoint
                               (its run.weights), else random weights */
    uint64_t random_seed;   /* seed of the random weights (f16), when both are absent */
    int backend;            /* streamdit_backend */
    int device_index;       /* CUDA device ordinal */
    streamdit_log_fn log;   /* may be NULL */
    void *log_user_data;
} streamdit_engine_params;

typedef struct streamdit_stream_params {
    const char *prompt;          /* NULL: the empty prompt */
    const char *negative_prompt; /* NULL: the profile's */
    uint64_t seed;               /* noise seed, used when use_seed != 0 */
    int use_seed;
    float guidance; /* classifier-free guidance scale; NAN: the profile's; 1 disables it */
    int decoder;    /* streamdit_decoder; the default params choose the profile's decoder */
} streamdit_stream_params;

typedef struct streamdit_geometry {
    uint32_t width;
    uint32_t height;
    uint32_t frames_per_chunk; /* video frames streamdit_stream_next writes */
    uint32_t pixel_format;     /* STREAMDIT_PIXEL_RGB8: 3 bytes per pixel, top row first */
    uint64_t bytes_per_frame;
    uint64_t bytes_per_chunk;
    double fps; /* the profile's video frame rate */
} streamdit_geometry;

/* Versions. */
const char *streamdit_version_string(void);
void streamdit_version(uint32_t *major, uint32_t *minor, uint32_t *patch);
uint32_t streamdit_abi_version(void);

/* Errors. */
const char *streamdit_last_error(void);
const char *streamdit_status_string(int status);

/* Engines: a profile, its weights and the backend choice. */
streamdit_engine_params streamdit_engine_default_params(void);
int streamdit_engine_create(const streamdit_engine_params *params, streamdit_engine **out);
void streamdit_engine_free(streamdit_engine *engine); /* streams made from it stay valid */

/* Streams. */
streamdit_stream_params streamdit_stream_default_params(void);
int streamdit_stream_create(const streamdit_engine *engine, const streamdit_stream_params *params,
                            streamdit_stream **out);
/* As streamdit_stream_create, the decoder (TAEHV or the Wan VAE) reading its weights from
 * decoder_weights: a safetensors file or a torch.save .pth (taew2_1.pth, Wan2.1_VAE.pth);
 * NULL takes the profile's wan.decoder_weights, else deterministic random weights. Added
 * within ABI version 2 (no struct changed); decoder values 2 and 3 likewise. */
int streamdit_stream_create_with_decoder(const streamdit_engine *engine,
                                         const streamdit_stream_params *params,
                                         const char *decoder_weights, streamdit_stream **out);
void streamdit_stream_free(streamdit_stream *stream);
/* Takes effect at the next model call; the latent buffer is kept. The prompt is encoded by
 * this call (one run of the text encoders, or none when the engine cached it). */
int streamdit_stream_set_prompt(streamdit_stream *stream, const char *prompt);
int streamdit_stream_geometry(streamdit_stream *stream, streamdit_geometry *out);
/* Pull: the next chunk of frames into buffer (at least bytes_per_chunk bytes). */
int streamdit_stream_next(streamdit_stream *stream, uint8_t *buffer, size_t buffer_bytes,
                          uint32_t *frames_written);
/* Push: `chunks` chunks, on_frame called for every frame. */
int streamdit_stream_run(streamdit_stream *stream, uint32_t chunks, streamdit_frame_fn on_frame,
                         void *user_data);

/* Video-to-video (StreamDiT and Wan-family profiles; added within ABI version 2, no struct
 * changed). A stream made by streamdit_stream_create_video edits an input video: StreamDiT's
 * schedule is remapped by `strength` in (0, 1], a Wan chunk starts at the step of its list
 * that the strength selects (SDEdit, docs/wan.md "Video-to-video"); 1 is text-to-video that
 * ignores the input, smaller keeps more of it. Output video frame f is an edit of input
 * frame f. Its output comes out as above (streamdit_stream_next, streamdit_stream_run, same
 * geometry; a Wan stream's first chunk has 3 frames fewer with the TAEHV or Wan VAE
 * decoder). Input frames are RGB8 of the stream's geometry (width x height x 3 bytes, top
 * row first). Before each streamdit_stream_next, push streamdit_stream_input_frames_needed
 * frames: StreamDiT's first call needs the whole buffer's input (its latent frames times 4
 * video frames), each later chunk the next frames_per_chunk; a Wan chunk needs its own
 * latent frames times 4 before it starts. A model call that lacks its input fails with
 * STREAMDIT_ERR_INVALID_ARGUMENT (naming the missing frames) before it runs; push and call
 * again. When the input ends, call streamdit_stream_end_input: the stream then repeats the
 * last input frame wherever it still needs input and writes exactly as many output frames
 * as were pushed (its last chunk is cut; later calls write 0 frames). streamdit_stream_run
 * makes several chunks in one call, so on such a stream run one chunk per call with its
 * input pushed before it (or end the input first). Errors
 * (STREAMDIT_ERR_INVALID_ARGUMENT): a strength outside (0, 1], a checkpoint without the
 * encoder's encoder.* tensors (a Wan profile reads them from the TAEHV decoder's file), a
 * host memory limit too small for the encoder, pushing to a text-to-video stream or after
 * the end, ending an input with no frame, a NULL pointer, a byte count that is not whole
 * frames. Threads: as every stream call, one thread at a time per stream. */
int streamdit_stream_create_video(const streamdit_engine *engine,
                                  const streamdit_stream_params *params, float strength,
                                  streamdit_stream **out);
/* Copies `bytes` bytes (one or more whole frames) of input video into the stream, encoding
 * every complete group of 4 frames before returning (up to 3 wait for the next push); `rgb`
 * may be reused or freed when the call returns. */
int streamdit_stream_push_frames(streamdit_stream *stream, const uint8_t *rgb, size_t bytes);
/* Input video frames still to push before the next model call can run (0: none, and always
 * 0 for a text-to-video stream). */
int streamdit_stream_input_frames_needed(streamdit_stream *stream, uint32_t *frames);
/* Ends the input after the frames pushed so far; writes the number of output frames the
 * stream will write in all (= frames pushed) to output_frames (may be NULL) and logs the
 * rule's note at STREAMDIT_LOG_INFO. Calling it again returns the same count. */
int streamdit_stream_end_input(streamdit_stream *stream, uint64_t *output_frames);
/* Wan family only, before the first streamdit_stream_next: adaptive noise (StreamDiffusionV2's
 * motion-aware noise, docs/wan.md "Adaptive noise"). From the second chunk on, each chunk
 * starts at its own noise level, up to 0.1 below the strength as its input frames move
 * more. STREAMDIT_ERR_INVALID_ARGUMENT for a text-to-video or StreamDiT stream, or after the
 * first model call. */
int streamdit_stream_set_adaptive_noise(streamdit_stream *stream);

#ifdef __cplusplus
}
#endif

#endif /* STREAMDIT_H */
