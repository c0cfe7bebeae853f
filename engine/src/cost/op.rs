//! The cost of one op: its kernel class, FLOPs and bytes (shared by every family's op
//! costs: `dit.rs`, `wan.rs`).

use std::fmt;

/// The kind of kernel an op lowers to, for grouping costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpClass {
    /// `Linear`: tensor-core GEMMs.
    Gemm,
    /// Window self-attention and cross-attention.
    Attention,
    /// `LayerNorm`, `AdaLn`, `HeadRmsNorm`: per-row reductions.
    Norm,
    /// Per-element arithmetic: activations, residuals, modulation, embeddings, guidance.
    Elementwise,
    /// Pure data movement: `Patchify`, `Unpatchify`, `Repeat`.
    Layout,
}

impl OpClass {
    /// Every class, in report order.
    pub const ALL: [OpClass; 5] = [
        OpClass::Gemm,
        OpClass::Attention,
        OpClass::Norm,
        OpClass::Elementwise,
        OpClass::Layout,
    ];

    /// Lower-case name (`gemm`, `attention`, ...).
    pub fn name(self) -> &'static str {
        match self {
            OpClass::Gemm => "gemm",
            OpClass::Attention => "attention",
            OpClass::Norm => "norm",
            OpClass::Elementwise => "elementwise",
            OpClass::Layout => "layout",
        }
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for OpClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// FLOPs and compulsory bytes of one op (see the module's conventions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpCost {
    pub flops: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub class: OpClass,
}

impl OpCost {
    /// Bytes read plus bytes written.
    pub fn bytes(&self) -> u64 {
        self.bytes_read + self.bytes_written
    }
}
