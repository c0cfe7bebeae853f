/* The Wan family through the C ABI by profile name: `wan-tiny` on the CPU with the
 * preview decoder, three chunks with a prompt switch (LongLive re-cache), written to a
 * file the Rust test compares with the Rust API's frames; the TAE decoder and a CUDA
 * backend are named errors. Usage: wan_test FRAMES_OUT */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "streamdit.h"

static int failures = 0;

#define CHECK(cond, ...)                                    \
    do {                                                    \
        if (!(cond)) {                                      \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                   \
            fprintf(stderr, "\n");                          \
            failures++;                                     \
        }                                                   \
    } while (0)

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s FRAMES_OUT\n", argv[0]);
        return 2;
    }
    streamdit_engine_params p = streamdit_engine_default_params();
    p.profile = "wan-tiny";
    p.random_seed = 3;
    p.backend = STREAMDIT_BACKEND_CUDA;
    streamdit_engine *engine = NULL;
    CHECK(streamdit_engine_create(&p, &engine) != STREAMDIT_OK, "a Wan engine on CUDA");
    CHECK(strstr(streamdit_last_error(), "CUDA lowering") != NULL, "named: %s",
          streamdit_last_error());
    p.backend = STREAMDIT_BACKEND_CPU;
    CHECK(streamdit_engine_create(&p, &engine) == STREAMDIT_OK, "engine: %s",
          streamdit_last_error());
    if (!engine) return 1;

    streamdit_stream_params sp = streamdit_stream_default_params();
    sp.prompt = "a red kite over the sea";
    sp.seed = 11;
    sp.use_seed = 1;
    streamdit_stream *stream = NULL;
    CHECK(streamdit_stream_create(engine, &sp, &stream) != STREAMDIT_OK, "TAE on wan");
    CHECK(strstr(streamdit_last_error(), "--preview") != NULL, "named: %s",
          streamdit_last_error());
    sp.decoder = STREAMDIT_DECODER_PREVIEW;
    CHECK(streamdit_stream_create(engine, &sp, &stream) == STREAMDIT_OK, "stream: %s",
          streamdit_last_error());
    if (!stream) return 1;
    streamdit_geometry g;
    CHECK(streamdit_stream_geometry(stream, &g) == STREAMDIT_OK, "geometry");
    CHECK(g.width == 64 && g.height == 64 && g.frames_per_chunk == 8, "geometry %ux%u %u",
          g.width, g.height, g.frames_per_chunk);
    uint8_t *buffer = malloc(g.bytes_per_chunk);
    FILE *out = fopen(argv[1], "wb");
    CHECK(out != NULL, "open %s", argv[1]);
    for (int chunk = 0; chunk < 3 && out && buffer; chunk++) {
        if (chunk == 2)
            CHECK(streamdit_stream_set_prompt(stream, "a blue whale") == STREAMDIT_OK, "switch");
        uint32_t frames = 0;
        CHECK(streamdit_stream_next(stream, buffer, g.bytes_per_chunk, &frames) == STREAMDIT_OK,
              "chunk %d: %s", chunk, streamdit_last_error());
        fwrite(buffer, 1, (size_t)frames * g.bytes_per_frame, out);
    }
    if (out) fclose(out);
    free(buffer);
    streamdit_stream_free(stream);
    streamdit_engine_free(engine);
    printf("failures %d\n", failures);
    return failures == 0 ? 0 : 1;
}
