//! CUDA kernel sources, their nvcc build and the CUDA-on-CPU emulator.
