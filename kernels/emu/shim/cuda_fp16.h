// Emulator stand-in for CUDA's <cuda_fp16.h>: cuda_emu.h (included first) already defines its types
// and functions (emu_fp16.h).
#pragma once
#include "../cuda_emu.h"
