/* The Wan family through the C ABI by profile name: `wan-tiny` on the CPU with the
 * preview decoder, three chunks with a prompt switch (LongLive re-cache), written to a
 * file the Rust test compares with the Rust API's frames; the profile's TAEHV decoder
 * streams 5 then 8 frames per chunk, the Wan VAE is chosen by value with its checkpoint per
 * stream (a missing one named), and a CUDA backend is a named error. Usage: wan_test FRAMES_OUT */
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
    /* The Wan family runs on CUDA where a GPU is; without one, the error names the CUDA
       backend and why it could not start. */
    if (streamdit_engine_create(&p, &engine) == STREAMDIT_OK) {
        streamdit_engine_free(engine);
        engine = NULL;
    } else {
        CHECK(strstr(streamdit_last_error(), "cuda") != NULL ||
                  strstr(streamdit_last_error(), "CUDA") != NULL,
              "named: %s", streamdit_last_error());
    }
    p.backend = STREAMDIT_BACKEND_CPU;
    CHECK(streamdit_engine_create(&p, &engine) == STREAMDIT_OK, "engine: %s",
          streamdit_last_error());
    if (!engine) return 1;

    streamdit_stream_params sp = streamdit_stream_default_params();
    sp.prompt = "a red kite over the sea";
    sp.seed = 11;
    sp.use_seed = 1;
    streamdit_stream *stream = NULL;
    /* The default decoder is the profile's (TAEHV for wan-tiny): its first chunk of 2
     * latent frames gives 4*2 - 3 = 5 video frames, the next 8. */
    CHECK(streamdit_stream_create(engine, &sp, &stream) == STREAMDIT_OK, "taehv stream: %s",
          streamdit_last_error());
    if (stream) {
        streamdit_geometry tg;
        CHECK(streamdit_stream_geometry(stream, &tg) == STREAMDIT_OK, "geometry");
        uint8_t *tb = malloc(tg.bytes_per_chunk);
        uint32_t n0 = 0, n1 = 0;
        CHECK(tb && streamdit_stream_next(stream, tb, tg.bytes_per_chunk, &n0) == STREAMDIT_OK &&
                  streamdit_stream_next(stream, tb, tg.bytes_per_chunk, &n1) == STREAMDIT_OK,
              "taehv chunks: %s", streamdit_last_error());
        CHECK(n0 == 5 && n1 == 8, "taehv frames %u then %u", n0, n1);
        free(tb);
        streamdit_stream_free(stream);
        stream = NULL;
    }
    /* The Wan VAE by value, its checkpoint per stream: a missing file is named. */
    sp.decoder = STREAMDIT_DECODER_WAN_VAE;
    CHECK(streamdit_stream_create_with_decoder(engine, &sp, "no-such-vae.pth", &stream) ==
              STREAMDIT_ERR_IO,
          "missing decoder weights: %s", streamdit_last_error());
    CHECK(strstr(streamdit_last_error(), "no-such-vae.pth") != NULL, "named: %s",
          streamdit_last_error());
    CHECK(streamdit_stream_create_with_decoder(engine, &sp, NULL, &stream) == STREAMDIT_OK,
          "wan-vae stream: %s", streamdit_last_error());
    streamdit_stream_free(stream);
    stream = NULL;
    sp.decoder = 7;
    CHECK(streamdit_stream_create(engine, &sp, &stream) == STREAMDIT_ERR_INVALID_ARGUMENT,
          "decoder 7");
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
