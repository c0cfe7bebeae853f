/* Wan-family video-to-video through the C ABI, compiled and run by tests/abi.rs (also under
 * valgrind in the full tier).
 *
 * usage: wan_v2v_test FRAMES_OUT INPUT_FRAMES [OPTIONS]
 * OPTIONS (comma-separated): `wan-vae` decodes with the Wan VAE (so the input is encoded by
 * the Wan VAE encoder), `adaptive` turns on adaptive noise.
 * Edits INPUT_FRAMES frames of a synthetic input (the formula of input_byte, mirrored in
 * tests/abi.rs) with wan-tiny on the CPU at strength 0.7: before each
 * streamdit_stream_next it pushes the frames the stream asks for (in two pieces, so a group
 * of 4 frames is split across pushes) until the input is used up, then ends the input with
 * streamdit_stream_end_input and pulls chunks until one has 0 frames. Every frame is written
 * to FRAMES_OUT as raw RGB8. Checks: exactly INPUT_FRAMES frames come out, the last chunk
 * is cut, the end's note is logged, pushing after the end and ending an empty or a
 * text-to-video input are named errors, a call after the end writes 0 frames. Exits 0 when
 * every check passed, 1 otherwise (each failure printed). */
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

/* The last INFO message the library logged. */
static char info[1024];

static void on_log(int level, const char *message, void *user_data) {
    (void)user_data;
    if (level == STREAMDIT_LOG_INFO) {
        strncpy(info, message, sizeof info - 1);
        info[sizeof info - 1] = '\0';
    }
}

/* Byte c of pixel (x, y) of input frame t: as tests/abi/v2v_test.c. */
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

int main(int argc, char **argv) {
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: %s FRAMES_OUT INPUT_FRAMES [wan-vae,adaptive]\n", argv[0]);
        return 2;
    }
    const char *options = argc == 4 ? argv[3] : "";
    const int wan_vae = strstr(options, "wan-vae") != NULL;
    const int adaptive = strstr(options, "adaptive") != NULL;
    const uint64_t total = strtoull(argv[2], NULL, 10);
    streamdit_engine_params p = streamdit_engine_default_params();
    p.profile = "wan-tiny";
    p.random_seed = 3;
    p.backend = STREAMDIT_BACKEND_CPU;
    p.log = on_log;
    streamdit_engine *engine = NULL;
    EXPECT_STATUS(streamdit_engine_create(&p, &engine), STREAMDIT_OK);
    if (!engine) return 1;

    streamdit_stream_params sp = streamdit_stream_default_params();
    sp.prompt = "a red kite over the sea";
    sp.seed = 11;
    sp.use_seed = 1;
    if (wan_vae) sp.decoder = STREAMDIT_DECODER_WAN_VAE;
    /* A text-to-video stream has no input to end. */
    streamdit_stream *t2v = NULL;
    EXPECT_STATUS(streamdit_stream_create(engine, &sp, &t2v), STREAMDIT_OK);
    uint64_t out_frames = 99;
    EXPECT_ERROR(streamdit_stream_end_input(t2v, &out_frames), STREAMDIT_ERR_INVALID_ARGUMENT,
                 "text-to-video");
    CHECK(out_frames == 0, "output_frames not cleared on failure");
    /* Adaptive noise needs an input video. */
    EXPECT_ERROR(streamdit_stream_set_adaptive_noise(t2v), STREAMDIT_ERR_INVALID_ARGUMENT,
                 "text-to-video");
    streamdit_stream_free(t2v);
    EXPECT_ERROR(streamdit_stream_set_adaptive_noise(NULL), STREAMDIT_ERR_INVALID_ARGUMENT,
                 "`stream` is NULL");
    streamdit_stream *v2v = NULL;
    EXPECT_STATUS(streamdit_stream_create_video(engine, &sp, 0.7f, &v2v), STREAMDIT_OK);
    EXPECT_STATUS(streamdit_stream_set_adaptive_noise(v2v), STREAMDIT_OK);
    streamdit_stream_free(v2v);
    EXPECT_ERROR(streamdit_stream_end_input(NULL, NULL), STREAMDIT_ERR_INVALID_ARGUMENT,
                 "`stream` is NULL");

    streamdit_stream *stream = NULL;
    EXPECT_STATUS(streamdit_stream_create_video(engine, &sp, 0.7f, &stream), STREAMDIT_OK);
    if (!stream) return 1;
    if (adaptive) EXPECT_STATUS(streamdit_stream_set_adaptive_noise(stream), STREAMDIT_OK);
    /* Nothing pushed yet: the input cannot end. */
    EXPECT_ERROR(streamdit_stream_end_input(stream, NULL), STREAMDIT_ERR_INVALID_ARGUMENT,
                 "no input video frame");
    streamdit_geometry g;
    EXPECT_STATUS(streamdit_stream_geometry(stream, &g), STREAMDIT_OK);
    printf("geometry %u %u %u\n", g.width, g.height, g.frames_per_chunk);

    uint8_t *out_buf = malloc(g.bytes_per_chunk);
    uint8_t *in_buf = malloc(g.bytes_per_frame * (size_t)g.frames_per_chunk * 2);
    FILE *out = fopen(argv[1], "wb");
    CHECK(out != NULL && out_buf != NULL && in_buf != NULL, "open %s", argv[1]);
    uint64_t pushed = 0, written = 0;
    int ended = 0, chunks = 0;
    uint32_t last = 0;
    for (int guard = 0; out && out_buf && in_buf && guard < 16; guard++) {
        uint32_t need = 0;
        EXPECT_STATUS(streamdit_stream_input_frames_needed(stream, &need), STREAMDIT_OK);
        if (!ended && need > 0 && pushed < total) {
            uint32_t n = need;
            if (n > total - pushed) n = (uint32_t)(total - pushed);
            if (n > 2u * g.frames_per_chunk) n = 2u * g.frames_per_chunk;
            fill_frames(in_buf, pushed, n, g.width, g.height);
            /* One frame, then the rest: a group of 4 waits for the second push. */
            uint32_t first = n > 1 ? 1 : n;
            EXPECT_STATUS(streamdit_stream_push_frames(stream, in_buf, g.bytes_per_frame * first),
                          STREAMDIT_OK);
            if (n > first)
                EXPECT_STATUS(streamdit_stream_push_frames(stream,
                                                           in_buf + g.bytes_per_frame * first,
                                                           g.bytes_per_frame * (n - first)),
                              STREAMDIT_OK);
            pushed += n;
            continue;
        }
        if (!ended && pushed == total) {
            out_frames = 0;
            EXPECT_STATUS(streamdit_stream_end_input(stream, &out_frames), STREAMDIT_OK);
            CHECK(out_frames == total, "end_input: %llu output frames, expected %llu",
                  (unsigned long long)out_frames, (unsigned long long)total);
            CHECK(strstr(info, "ended after") != NULL, "the end's note was not logged: `%s`",
                  info);
            printf("note: %s\n", info);
            uint32_t after = 7;
            EXPECT_STATUS(streamdit_stream_input_frames_needed(stream, &after), STREAMDIT_OK);
            CHECK(after == 0, "%u frames needed after the end", after);
            fill_frames(in_buf, 0, 1, g.width, g.height);
            EXPECT_ERROR(streamdit_stream_push_frames(stream, in_buf, g.bytes_per_frame),
                         STREAMDIT_ERR_INVALID_ARGUMENT, "was ended");
            ended = 1;
            continue;
        }
        uint32_t frames = 99;
        EXPECT_STATUS(streamdit_stream_next(stream, out_buf, g.bytes_per_chunk, &frames),
                      STREAMDIT_OK);
        if (frames == 0 || frames > g.frames_per_chunk) break;
        fwrite(out_buf, 1, (size_t)frames * g.bytes_per_frame, out);
        written += frames;
        last = frames;
        chunks++;
    }
    if (out) fclose(out);
    CHECK(ended, "the input never ended");
    CHECK(written == total, "%llu frames written for %llu input frames",
          (unsigned long long)written, (unsigned long long)total);
    printf("pushed %llu written %llu chunks %d last %u\n", (unsigned long long)pushed,
           (unsigned long long)written, chunks, last);
    /* After the last frame: 0 frames, OK, every time. */
    uint32_t frames = 99;
    EXPECT_STATUS(streamdit_stream_next(stream, out_buf, g.bytes_per_chunk, &frames),
                  STREAMDIT_OK);
    CHECK(frames == 0, "%u frames after the end", frames);
    /* Ending again gives the same count. */
    out_frames = 0;
    EXPECT_STATUS(streamdit_stream_end_input(stream, &out_frames), STREAMDIT_OK);
    CHECK(out_frames == total, "a second end_input: %llu", (unsigned long long)out_frames);

    free(in_buf);
    free(out_buf);
    streamdit_stream_free(stream);
    streamdit_engine_free(engine);
    printf("failures %d\n", failures);
    return failures == 0 ? 0 : 1;
}
