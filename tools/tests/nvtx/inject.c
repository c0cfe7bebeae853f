/* A minimal NVTX tool, standing in for Nsight Systems in the tests: NVTX loads the library
 * named by NVTX_INJECTION64_PATH and calls InitializeInjectionNvtx2, which installs handlers
 * for nvtxRangePushA and nvtxRangePop. Each range is written to $STREAMDIT_NVTX_LOG as
 * "push NAME" / "pop". The layout below is the NVTX3 export-table ABI (nvtxDetail/nvtxTypes.h),
 * written out here so the test needs no NVTX headers. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

typedef void (*nvtx_fn)(void);
typedef nvtx_fn **nvtx_table;
typedef struct {
    size_t struct_size;
    int (*get_module_function_table)(int module, nvtx_table *table, unsigned int *size);
} nvtx_callbacks;
typedef const void *(*nvtx_get_export_table)(uint32_t id);

enum { ETID_CALLBACKS = 1, MODULE_CORE = 1, CBID_RANGE_PUSH_A = 9, CBID_RANGE_POP = 11 };

static FILE *log_file;
static int depth;

static int range_push_a(const char *message) {
    fprintf(log_file, "push %s\n", message);
    fflush(log_file);
    return depth++;
}

static int range_pop(void) {
    fputs("pop\n", log_file);
    fflush(log_file);
    return --depth;
}

int InitializeInjectionNvtx2(nvtx_get_export_table get_export_table) {
    const nvtx_callbacks *callbacks = (const nvtx_callbacks *)get_export_table(ETID_CALLBACKS);
    nvtx_table table = NULL;
    unsigned int size = 0;
    const char *path = getenv("STREAMDIT_NVTX_LOG");
    if (!callbacks || !path || !callbacks->get_module_function_table(MODULE_CORE, &table, &size) ||
        size < CBID_RANGE_POP) {
        return 0;
    }
    log_file = fopen(path, "w");
    if (!log_file) {
        return 0;
    }
    *table[CBID_RANGE_PUSH_A] = (nvtx_fn)range_push_a;
    *table[CBID_RANGE_POP] = (nvtx_fn)range_pop;
    return 1;
}
