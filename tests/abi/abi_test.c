/* The C ABI test program, compiled and run by tests/abi.rs (also under valgrind).
 *
 * usage: abi_test FRAMES_OUT CORRUPT_CHECKPOINT PROFILE
 * Prints the struct layouts ("layout NAME SIZE OFFSETS..."), streams three chunks of PROFILE
 * on the CPU (switching the prompt before the third) into FRAMES_OUT as raw RGB8, and checks
 * every error path. Exits 0 when every check passed, 1 otherwise (each failure printed). */
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

static int log_calls = 0;
static void on_log(int level, const char *message, void *user_data) {
    (void)level;
    (void)message;
    *(int *)user_data += 1;
}

struct push_state {
    uint64_t frames;
    uint64_t stop_after;
};
static int on_frame(const uint8_t *rgb, uint32_t w, uint32_t h, uint64_t index, void *user) {
    struct push_state *s = (struct push_state *)user;
    (void)rgb;
    (void)w;
    (void)h;
    (void)index;
    s->frames++;
    return s->frames >= s->stop_after;
}

static void print_layouts(void) {
    printf("layout engine_params %zu %zu %zu %zu %zu %zu %zu %zu\n",
           sizeof(streamdit_engine_params), offsetof(streamdit_engine_params, profile),
           offsetof(streamdit_engine_params, checkpoint),
           offsetof(streamdit_engine_params, random_seed),
           offsetof(streamdit_engine_params, backend),
           offsetof(streamdit_engine_params, device_index),
           offsetof(streamdit_engine_params, log),
           offsetof(streamdit_engine_params, log_user_data));
    printf("layout stream_params %zu %zu %zu %zu %zu %zu %zu\n", sizeof(streamdit_stream_params),
           offsetof(streamdit_stream_params, prompt),
           offsetof(streamdit_stream_params, negative_prompt),
           offsetof(streamdit_stream_params, seed), offsetof(streamdit_stream_params, use_seed),
           offsetof(streamdit_stream_params, guidance),
           offsetof(streamdit_stream_params, decoder));
    printf("layout geometry %zu %zu %zu %zu %zu %zu %zu %zu\n", sizeof(streamdit_geometry),
           offsetof(streamdit_geometry, width), offsetof(streamdit_geometry, height),
           offsetof(streamdit_geometry, frames_per_chunk),
           offsetof(streamdit_geometry, pixel_format),
           offsetof(streamdit_geometry, bytes_per_frame),
           offsetof(streamdit_geometry, bytes_per_chunk), offsetof(streamdit_geometry, fps));
}

static void error_paths(const char *corrupt) {
    streamdit_engine *e = (streamdit_engine *)1;
    streamdit_engine_params p = streamdit_engine_default_params();
    EXPECT_STATUS(streamdit_engine_create(NULL, &e), STREAMDIT_ERR_INVALID_ARGUMENT);
    CHECK(e == NULL, "out not cleared on failure");
    EXPECT_STATUS(streamdit_engine_create(&p, NULL), STREAMDIT_ERR_INVALID_ARGUMENT);
    p.profile = "/nonexistent/profile.toml";
    EXPECT_STATUS(streamdit_engine_create(&p, &e), STREAMDIT_ERR_PROFILE);
    CHECK(strstr(streamdit_last_error(), "profile") != NULL, "profile error message");
    p = streamdit_engine_default_params();
    p.profile = NULL;
    EXPECT_STATUS(streamdit_engine_create(&p, &e), STREAMDIT_ERR_INVALID_ARGUMENT);
    p = streamdit_engine_default_params();
    p.backend = 42;
    EXPECT_STATUS(streamdit_engine_create(&p, &e), STREAMDIT_ERR_INVALID_ARGUMENT);
    p = streamdit_engine_default_params();
    p.checkpoint = corrupt;
    p.backend = STREAMDIT_BACKEND_CPU;
    EXPECT_STATUS(streamdit_engine_create(&p, &e), STREAMDIT_ERR_CHECKPOINT);
    CHECK(strstr(streamdit_last_error(), corrupt) != NULL, "checkpoint error names the file");

    streamdit_stream *s = (streamdit_stream *)1;
    streamdit_stream_params sp = streamdit_stream_default_params();
    EXPECT_STATUS(streamdit_stream_create(NULL, &sp, &s), STREAMDIT_ERR_INVALID_ARGUMENT);
    CHECK(s == NULL, "stream out not cleared on failure");
    uint8_t byte;
    uint32_t frames = 7;
    EXPECT_STATUS(streamdit_stream_next(NULL, &byte, 1, &frames), STREAMDIT_ERR_INVALID_ARGUMENT);
    CHECK(frames == 0, "frames_written not cleared on failure");
    EXPECT_STATUS(streamdit_stream_set_prompt(NULL, "x"), STREAMDIT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(streamdit_stream_geometry(NULL, NULL), STREAMDIT_ERR_INVALID_ARGUMENT);
    streamdit_engine_free(NULL);
    streamdit_stream_free(NULL);
}

/* Sizes no host can hold come back as statuses, never as an abort of this process: a
 * profile with `dim = 1000000000` (refused by validation, naming the field) and, under a
 * host memory limit of 1 KiB (STREAMDIT_MEMORY_LIMIT), an engine and a stream of PROFILE. */
static void size_limits(const char *scratch, const char *profile) {
    static const char *huge =
        "name = \"huge\"\n[model]\nlatent_channels = 8\nlatent_frames = 4\n"
        "latent_height = 8\nlatent_width = 8\ndim = 1000000000\ndepth = 1\nheads = 1\n"
        "ffn_dim = 128\nwindow = [2, 4, 4]\ntext_len = 8\ntext_dim = 32\n"
        "[stream]\nchunks = 2\nchunk_frames = 2\nmicro_steps = 1\n"
        "[video]\nfps = 16.0\ntemporal_upsample = 4\nspatial_upsample = 8\n"
        "[run]\nseed = 0\nguidance = 1.0\n[decoder]\nwidths = [16, 16, 16, 16]\ngroups = 4\n"
        "[text]\n[[text.encoders]]\nname = \"byte\"\nkind = \"byte\"\nlen = 8\n";
    char path[4096];
    snprintf(path, sizeof path, "%s.huge.toml", scratch);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL, "cannot write %s", path);
    if (!f) return;
    fputs(huge, f);
    fclose(f);
    streamdit_engine_params p = streamdit_engine_default_params();
    p.profile = path;
    p.backend = STREAMDIT_BACKEND_CPU;
    streamdit_engine *e = (streamdit_engine *)1;
    EXPECT_STATUS(streamdit_engine_create(&p, &e), STREAMDIT_ERR_PROFILE);
    CHECK(strstr(streamdit_last_error(), "model.dim") != NULL, "the huge field is named");
    CHECK(e == NULL, "out not cleared on a huge profile");
    remove(path);

    p.profile = profile;
    e = NULL;
    EXPECT_STATUS(streamdit_engine_create(&p, &e), STREAMDIT_OK);
    if (!e) return;
    setenv("STREAMDIT_MEMORY_LIMIT", "1K", 1);
    streamdit_stream *s = (streamdit_stream *)1;
    streamdit_stream_params sp = streamdit_stream_default_params();
    EXPECT_STATUS(streamdit_stream_create(e, &sp, &s), STREAMDIT_ERR_INVALID_ARGUMENT);
    CHECK(strstr(streamdit_last_error(), "host memory") != NULL, "the memory limit is named");
    CHECK(s == NULL, "stream out not cleared under the memory limit");
    streamdit_engine *e2 = (streamdit_engine *)1;
    EXPECT_STATUS(streamdit_engine_create(&p, &e2), STREAMDIT_ERR_INVALID_ARGUMENT);
    CHECK(strstr(streamdit_last_error(), "STREAMDIT_MEMORY_LIMIT") != NULL,
          "the limit's source is named");
    CHECK(e2 == NULL, "out not cleared under the memory limit");
    unsetenv("STREAMDIT_MEMORY_LIMIT");
    streamdit_engine_free(e);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s FRAMES_OUT CORRUPT_CHECKPOINT PROFILE\n", argv[0]);
        return 2;
    }
    print_layouts();
    uint32_t major = 99, minor = 99, patch = 99;
    streamdit_version(&major, &minor, &patch);
    printf("version %s %u.%u.%u abi %u\n", streamdit_version_string(), major, minor, patch,
           streamdit_abi_version());
    CHECK(streamdit_abi_version() == STREAMDIT_ABI_VERSION, "ABI version");
    error_paths(argv[2]);
    size_limits(argv[1], argv[3]);

    streamdit_engine_params p = streamdit_engine_default_params();
    p.profile = argv[3];
    p.random_seed = 3;
    p.backend = STREAMDIT_BACKEND_CPU;
    p.log = on_log;
    p.log_user_data = &log_calls;
    streamdit_engine *engine = NULL;
    EXPECT_STATUS(streamdit_engine_create(&p, &engine), STREAMDIT_OK);
    if (!engine) return 1;
    CHECK(log_calls >= 1, "the log callback saw the backend choice");

    streamdit_stream_params sp = streamdit_stream_default_params();
    CHECK(sp.decoder == STREAMDIT_DECODER_TAE, "the default decoder is the TAE decoder");
    streamdit_stream *bad_decoder = (streamdit_stream *)1;
    sp.decoder = 7;
    EXPECT_STATUS(streamdit_stream_create(engine, &sp, &bad_decoder), STREAMDIT_ERR_INVALID_ARGUMENT);
    CHECK(strstr(streamdit_last_error(), "decoder 7") != NULL, "bad decoder named");
    CHECK(bad_decoder == NULL, "stream out not cleared on a bad decoder");
    sp.decoder = STREAMDIT_DECODER_TAE;
    sp.prompt = "a red kite over the sea";
    sp.seed = 11;
    sp.use_seed = 1;
    streamdit_stream *stream = NULL;
    EXPECT_STATUS(streamdit_stream_create(engine, &sp, &stream), STREAMDIT_OK);
    if (!stream) return 1;
    streamdit_geometry g;
    EXPECT_STATUS(streamdit_stream_geometry(stream, NULL), STREAMDIT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(streamdit_stream_geometry(stream, &g), STREAMDIT_OK);
    CHECK(g.width > 0 && g.height > 0 && g.pixel_format == STREAMDIT_PIXEL_RGB8,
          "geometry %ux%u format %u", g.width, g.height, g.pixel_format);
    CHECK(g.bytes_per_chunk == g.bytes_per_frame * g.frames_per_chunk, "chunk bytes");
    printf("geometry %u %u %u %llu %.3f\n", g.width, g.height, g.frames_per_chunk,
           (unsigned long long)g.bytes_per_chunk, g.fps);

    uint8_t *buffer = malloc(g.bytes_per_chunk);
    uint32_t frames = 0;
    EXPECT_STATUS(streamdit_stream_next(stream, buffer, g.bytes_per_chunk - 1, &frames),
                  STREAMDIT_ERR_BUFFER_TOO_SMALL);
    EXPECT_STATUS(streamdit_stream_next(stream, NULL, g.bytes_per_chunk, &frames),
                  STREAMDIT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(streamdit_stream_set_prompt(stream, NULL), STREAMDIT_ERR_INVALID_ARGUMENT);

    FILE *out = fopen(argv[1], "wb");
    CHECK(out != NULL, "open %s", argv[1]);
    for (int chunk = 0; chunk < 3 && out; chunk++) {
        if (chunk == 2) EXPECT_STATUS(streamdit_stream_set_prompt(stream, "a blue whale"), STREAMDIT_OK);
        EXPECT_STATUS(streamdit_stream_next(stream, buffer, g.bytes_per_chunk, &frames), STREAMDIT_OK);
        CHECK(frames == g.frames_per_chunk, "chunk %d: %u frames", chunk, frames);
        fwrite(buffer, 1, (size_t)frames * g.bytes_per_frame, out);
    }
    if (out) fclose(out);

    /* Push mode: the callback sees frames in order and can stop the run. */
    struct push_state ps = {0, 3};
    EXPECT_STATUS(streamdit_stream_run(stream, 1, NULL, NULL), STREAMDIT_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(streamdit_stream_run(stream, 1, on_frame, &ps), STREAMDIT_ERR_STOPPED);
    CHECK(ps.frames == 3, "push mode stopped after %llu frames", (unsigned long long)ps.frames);

    free(buffer);
    streamdit_stream_free(stream);
    streamdit_engine_free(engine);
    printf("failures %d\n", failures);
    return failures == 0 ? 0 : 1;
}
