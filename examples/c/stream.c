/* Streams video from a prompt into a Y4M file through the C ABI.
 *
 *   cargo build --release -p streamdit
 *   cc -std=c99 -I include examples/c/stream.c -L target/release -lstreamdit \
 *      -Wl,-rpath,$PWD/target/release -o stream
 *   ./stream "a paper boat on a river" 64 boat.y4m      # tiny profile, random weights
 */
#include <stdio.h>
#include <stdlib.h>

#include "streamdit.h"

static void on_log(int level, const char *message, void *user_data) {
    (void)user_data;
    fprintf(stderr, "streamdit[%d]: %s\n", level, message);
}

/* One RGB8 frame as Y4M 4:4:4 (BT.601, limited range). */
static void write_frame(FILE *f, const uint8_t *rgb, uint32_t w, uint32_t h, uint8_t *planes) {
    size_t n = (size_t)w * h;
    for (size_t i = 0; i < n; i++) {
        double r = rgb[3 * i], g = rgb[3 * i + 1], b = rgb[3 * i + 2];
        planes[i] = (uint8_t)(16.5 + 0.257 * r + 0.504 * g + 0.098 * b);
        planes[n + i] = (uint8_t)(128.5 - 0.148 * r - 0.291 * g + 0.439 * b);
        planes[2 * n + i] = (uint8_t)(128.5 + 0.439 * r - 0.368 * g - 0.071 * b);
    }
    fputs("FRAME\n", f);
    fwrite(planes, 1, 3 * n, f);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s PROMPT FRAMES OUT.y4m\n", argv[0]);
        return 2;
    }
    streamdit_engine_params ep = streamdit_engine_default_params(); /* tiny, auto backend */
    ep.log = on_log;
    streamdit_engine *engine = NULL;
    if (streamdit_engine_create(&ep, &engine) != STREAMDIT_OK) {
        fprintf(stderr, "engine: %s\n", streamdit_last_error());
        return 1;
    }
    streamdit_stream_params sp = streamdit_stream_default_params();
    sp.prompt = argv[1];
    streamdit_stream *stream = NULL;
    streamdit_geometry g;
    if (streamdit_stream_create(engine, &sp, &stream) != STREAMDIT_OK ||
        streamdit_stream_geometry(stream, &g) != STREAMDIT_OK) {
        fprintf(stderr, "stream: %s\n", streamdit_last_error());
        streamdit_engine_free(engine);
        return 1;
    }
    FILE *out = fopen(argv[3], "wb");
    uint8_t *chunk = malloc(g.bytes_per_chunk);
    uint8_t *planes = malloc(g.bytes_per_frame);
    int status = out && chunk && planes ? STREAMDIT_OK : STREAMDIT_ERR_IO;
    if (status == STREAMDIT_OK)
        fprintf(out, "YUV4MPEG2 W%u H%u F%d:1 Ip A1:1 C444\n", g.width, g.height, (int)g.fps);
    for (long done = 0; status == STREAMDIT_OK && done < atol(argv[2]);) {
        uint32_t frames = 0;
        status = streamdit_stream_next(stream, chunk, g.bytes_per_chunk, &frames);
        for (uint32_t i = 0; status == STREAMDIT_OK && i < frames; i++, done++)
            write_frame(out, chunk + i * g.bytes_per_frame, g.width, g.height, planes);
    }
    if (status != STREAMDIT_OK) fprintf(stderr, "streaming: %s\n", streamdit_last_error());
    if (out) fclose(out);
    free(chunk);
    free(planes);
    streamdit_stream_free(stream);
    streamdit_engine_free(engine);
    return status == STREAMDIT_OK ? 0 : 1;
}
