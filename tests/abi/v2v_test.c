/* Video-to-video through the C ABI, compiled and run by tests/abi.rs (also under valgrind).
 *
 * usage: v2v_test FRAMES_OUT PROFILE T2V_STREAM_BYTES
 * Checks every error path of streamdit_stream_create_video, streamdit_stream_push_frames
 * and streamdit_stream_input_frames_needed; under a host memory limit of exactly what a
 * text-to-video stream of PROFILE needs (T2V_STREAM_BYTES, from the Rust test), a
 * text-to-video stream starts and a video-to-video one is refused (its TAE encoder's
 * memory counted). Then it edits a synthetic input video (the
 * formula of input_byte, mirrored in tests/abi.rs) with PROFILE on the CPU at strength 0.6:
 * three chunks, pushing before each the frames the stream asks for (in two pieces, so a
 * group of 4 frames is split across pushes), written to FRAMES_OUT as raw RGB8. Exits 0
 * when every check passed, 1 otherwise (each failure printed). */
/* setenv and unsetenv (POSIX) under -std=c99. */
#define _POSIX_C_SOURCE 200112L
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "streamdit.h"

static int failures = 0;

#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                    \
            printf(__VA_ARGS__);                                                           \
            printf(" (last error: %s)\n", streamdit_last_error());                         \
            failures++;                                                                    \
        }                                                                                  \
    } while (0)

#define EXPECT_STATUS(call, want)                                                          \
    do {                                                                                   \
        int got_ = (call);                                                                 \
        CHECK(got_ == (want), "%s returned %d (%s), expected %d", #call, got_,             \
              streamdit_status_string(got_), (want));                                      \
    } while (0)

#define EXPECT_ERROR(call, want, needle)                                                   \
    do {                                                                                   \
        EXPECT_STATUS(call, want);                                                         \
        CHECK(strstr(streamdit_last_error(), needle) != NULL, "%s: message lacks `%s`",    \
              #call, needle);                                                              \
    } while (0)

/* Byte c of pixel (x, y) of input frame t: moving stripes with some texture. */
static uint8_t input_byte(uint64_t t, uint32_t y, uint32_t x, uint32_t c) {
    uint64_t v = 3u * x + 5u * y + 7u * t + 50u * c + ((x * y + t) % 13u) * 9u;
    return (uint8_t)(v & 255u);
}

static void fill_frames(uint8_t *dst, uint64_t first, uint32_t n, uint32_t w, uint32_t h) {
    size_t i = 0;
    for (uint64_t t = first; t < first + n; t++)
        for (uint32_t y = 0; y < h; y++)
            for (uint32_t x = 0; x < w; x++)
                for (uint32_t c = 0; c < 3; c++) dst[i++] = input_byte(t, y, x, c);
}

static void create_errors(const streamdit_engine *engine) {
    streamdit_stream_params sp = streamdit_stream_default_params();
    const float bad[] = {0.0f, -0.5f, 1.5f, NAN, INFINITY};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        streamdit_stream *s = (streamdit_stream *)1;
        EXPECT_ERROR(streamdit_stream_create_video(engine, &sp, bad[i], &s),
                     STREAMDIT_ERR_INVALID_ARGUMENT, "strength");
        CHECK(s == NULL, "out not cleared for strength %g", (double)bad[i]);
    }
    streamdit_stream *s = (streamdit_stream *)1;
    EXPECT_ERROR(streamdit_stream_create_video(NULL, &sp, 0.5f, &s),
                 STREAMDIT_ERR_INVALID_ARGUMENT, "`engine` is NULL");
    CHECK(s == NULL, "out not cleared for a NULL engine");
    EXPECT_ERROR(streamdit_stream_create_video(engine, NULL, 0.5f, &s),
                 STREAMDIT_ERR_INVALID_ARGUMENT, "`params` is NULL");
    EXPECT_ERROR(streamdit_stream_create_video(engine, &sp, 0.5f, NULL),
                 STREAMDIT_ERR_INVALID_ARGUMENT, "`out` is NULL");
    sp.decoder = 9;
    EXPECT_ERROR(streamdit_stream_create_video(engine, &sp, 0.5f, &s),
                 STREAMDIT_ERR_INVALID_ARGUMENT, "decoder 9");

    /* A text-to-video stream takes no input. */
    sp = streamdit_stream_default_params();
    streamdit_stream *t2v = NULL;
    EXPECT_STATUS(streamdit_stream_create(engine, &sp, &t2v), STREAMDIT_OK);
    if (!t2v) return;
    uint32_t need = 99;
    EXPECT_STATUS(streamdit_stream_input_frames_needed(t2v, &need), STREAMDIT_OK);
    CHECK(need == 0, "a text-to-video stream needs %u input frames", need);
    uint8_t byte = 0;
    EXPECT_ERROR(streamdit_stream_push_frames(t2v, &byte, 1), STREAMDIT_ERR_INVALID_ARGUMENT,
                 "text-to-video");
    streamdit_stream_free(t2v);
    EXPECT_ERROR(streamdit_stream_push_frames(NULL, &byte, 1), STREAMDIT_ERR_INVALID_ARGUMENT,
                 "`stream` is NULL");
    EXPECT_ERROR(streamdit_stream_input_frames_needed(NULL, &need),
                 STREAMDIT_ERR_INVALID_ARGUMENT, "`stream` is NULL");
}

/* At a host memory limit of `t2v_bytes`, text-to-video fits and video-to-video does not. */
static void memory_limit(const streamdit_engine *engine, const char *t2v_bytes) {
    setenv("STREAMDIT_MEMORY_LIMIT", t2v_bytes, 1);
    streamdit_stream_params sp = streamdit_stream_default_params();
    streamdit_stream *t2v = NULL;
    EXPECT_STATUS(streamdit_stream_create(engine, &sp, &t2v), STREAMDIT_OK);
    streamdit_stream_free(t2v);
    streamdit_stream *v2v = (streamdit_stream *)1;
    EXPECT_ERROR(streamdit_stream_create_video(engine, &sp, 0.5f, &v2v),
                 STREAMDIT_ERR_INVALID_ARGUMENT, "TAE encoder on the host");
    CHECK(strstr(streamdit_last_error(), "host memory") != NULL, "the limit is named");
    CHECK(v2v == NULL, "out not cleared under the memory limit");
    unsetenv("STREAMDIT_MEMORY_LIMIT");
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s FRAMES_OUT PROFILE T2V_STREAM_BYTES\n", argv[0]);
        return 2;
    }
    streamdit_engine_params p = streamdit_engine_default_params();
    p.profile = argv[2];
    p.random_seed = 3;
    p.backend = STREAMDIT_BACKEND_CPU;
    streamdit_engine *engine = NULL;
    EXPECT_STATUS(streamdit_engine_create(&p, &engine), STREAMDIT_OK);
    if (!engine) return 1;
    create_errors(engine);
    memory_limit(engine, argv[3]);

    streamdit_stream_params sp = streamdit_stream_default_params();
    sp.prompt = "a red kite over the sea";
    sp.seed = 11;
    sp.use_seed = 1;
    streamdit_stream *stream = NULL;
    EXPECT_STATUS(streamdit_stream_create_video(engine, &sp, 0.6f, &stream), STREAMDIT_OK);
    if (!stream) return 1;
    streamdit_geometry g;
    EXPECT_STATUS(streamdit_stream_geometry(stream, &g), STREAMDIT_OK);
    printf("geometry %u %u %u\n", g.width, g.height, g.frames_per_chunk);

    uint8_t *out_buf = malloc(g.bytes_per_chunk);
    uint32_t need = 0, frames = 7;
    EXPECT_ERROR(streamdit_stream_input_frames_needed(stream, NULL),
                 STREAMDIT_ERR_INVALID_ARGUMENT, "`frames` is NULL");
    EXPECT_STATUS(streamdit_stream_input_frames_needed(stream, &need), STREAMDIT_OK);
    CHECK(need > 0 && need % 4 == 0, "the first call needs %u input frames", need);
    /* Without its input the first call is refused before it runs. */
    EXPECT_ERROR(streamdit_stream_next(stream, out_buf, g.bytes_per_chunk, &frames),
                 STREAMDIT_ERR_INVALID_ARGUMENT, "video-to-video");
    CHECK(frames == 0, "frames_written not cleared on failure");
    uint8_t *in_buf = malloc(g.bytes_per_frame * (size_t)need);
    fill_frames(in_buf, 0, 1, g.width, g.height);
    EXPECT_ERROR(streamdit_stream_push_frames(stream, NULL, g.bytes_per_frame),
                 STREAMDIT_ERR_INVALID_ARGUMENT, "`rgb` is NULL");
    EXPECT_ERROR(streamdit_stream_push_frames(stream, in_buf, 0),
                 STREAMDIT_ERR_INVALID_ARGUMENT, "whole");
    EXPECT_ERROR(streamdit_stream_push_frames(stream, in_buf, g.bytes_per_frame - 1),
                 STREAMDIT_ERR_INVALID_ARGUMENT, "whole");
    /* The refused pushes took nothing. */
    uint32_t again = 0;
    EXPECT_STATUS(streamdit_stream_input_frames_needed(stream, &again), STREAMDIT_OK);
    CHECK(again == need, "need %u after refused pushes, expected %u", again, need);

    FILE *out = fopen(argv[1], "wb");
    CHECK(out != NULL, "open %s", argv[1]);
    uint64_t pushed = 0;
    for (int chunk = 0; chunk < 3 && out; chunk++) {
        EXPECT_STATUS(streamdit_stream_input_frames_needed(stream, &need), STREAMDIT_OK);
        CHECK(need > 0, "chunk %d needs no input", chunk);
        uint8_t *grown = realloc(in_buf, g.bytes_per_frame * (size_t)(need > 0 ? need : 1));
        if (!grown) break;
        in_buf = grown;
        fill_frames(in_buf, pushed, need, g.width, g.height);
        /* One frame, then the rest: the first group of 4 waits for the second push. */
        uint32_t first = need > 1 ? 1 : need;
        EXPECT_STATUS(streamdit_stream_push_frames(stream, in_buf, g.bytes_per_frame * first),
                      STREAMDIT_OK);
        if (need > first)
            EXPECT_STATUS(streamdit_stream_push_frames(stream, in_buf + g.bytes_per_frame * first,
                                                       g.bytes_per_frame * (need - first)),
                          STREAMDIT_OK);
        pushed += need;
        EXPECT_STATUS(streamdit_stream_input_frames_needed(stream, &again), STREAMDIT_OK);
        CHECK(again == 0, "chunk %d: %u frames still needed after pushing", chunk, again);
        EXPECT_STATUS(streamdit_stream_next(stream, out_buf, g.bytes_per_chunk, &frames),
                      STREAMDIT_OK);
        CHECK(frames == g.frames_per_chunk, "chunk %d: %u frames", chunk, frames);
        fwrite(out_buf, 1, (size_t)frames * g.bytes_per_frame, out);
    }
    if (out) fclose(out);
    printf("pushed %llu\n", (unsigned long long)pushed);

    free(in_buf);
    free(out_buf);
    streamdit_stream_free(stream);
    streamdit_engine_free(engine);
    printf("failures %d\n", failures);
    return failures == 0 ? 0 : 1;
}
