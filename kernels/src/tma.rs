//! Host-side TMA tensor maps: the arguments of `cuTensorMapEncodeTiled`, checked as the driver
//! documents them (cuda.h of CUDA 13, `cuTensorMapEncodeTiled`), and encoded for the emulator
//! as an `EmuTensorMap` (kernels/emu/emu_runtime.h) in the 128 bytes, 64-byte aligned, that
//! the driver's opaque `CUtensorMap` occupies. A kernel receives it as a `ptx::TmaDesc`
//! member of its `const __grid_constant__` parameter struct (kernels/cuda/common/ptx_sm90.cuh).
//!
//! On a GPU the same [`Tiled`] description is what the CUDA backend hands to the driver's
//! `cuTensorMapEncodeTiled`; [`Tiled::validate`] catches a bad map before either.

use std::fmt;

/// `CUtensorMapDataType` (values as in cuda.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum DataType {
    U8 = 0,
    U16 = 1,
    U32 = 2,
    I32 = 3,
    U64 = 4,
    I64 = 5,
    F16 = 6,
    F32 = 7,
    F64 = 8,
    Bf16 = 9,
    F32Ftz = 10,
    Tf32 = 11,
    Tf32Ftz = 12,
}

impl DataType {
    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            DataType::U8 => 1,
            DataType::U16 | DataType::F16 | DataType::Bf16 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 8,
            _ => 4,
        }
    }
    fn is_float(self) -> bool {
        !matches!(
            self,
            DataType::U8
                | DataType::U16
                | DataType::U32
                | DataType::I32
                | DataType::U64
                | DataType::I64
        )
    }
}

/// `CUtensorMapInterleave`. The emulator copies only `None`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Interleave {
    None = 0,
    B16 = 1,
    B32 = 2,
}

/// `CUtensorMapSwizzle` (the 128-byte-span modes with 32- and 64-byte atoms are not offered).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Swizzle {
    None = 0,
    B32 = 1,
    B64 = 2,
    B128 = 3,
}

impl Swizzle {
    /// The swizzle span in bytes (0 for none).
    pub fn span(self) -> u64 {
        match self {
            Swizzle::None => 0,
            Swizzle::B32 => 32,
            Swizzle::B64 => 64,
            Swizzle::B128 => 128,
        }
    }
}

/// `CUtensorMapL2promotion`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum L2Promotion {
    None = 0,
    B64 = 1,
    B128 = 2,
    B256 = 3,
}

/// `CUtensorMapFloatOOBfill`: out-of-bounds box elements are zeros, or a NaN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum OobFill {
    Zero = 0,
    NanRequestZeroFma = 1,
}

/// What `cuTensorMapEncodeTiled` takes, dimension 0 innermost: for a row-major `[rows, cols]`
/// matrix, `global_dim = [cols, rows]` and `global_strides = [row pitch in bytes]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tiled {
    pub data_type: DataType,
    /// Device address of element 0 (a host address in the emulator).
    pub global_address: u64,
    /// Elements per dimension (the rank is its length, 1..=5).
    pub global_dim: Vec<u64>,
    /// Bytes between consecutive indices of dimensions 1.. (rank - 1 entries).
    pub global_strides: Vec<u64>,
    /// Elements of the box per dimension.
    pub box_dim: Vec<u32>,
    /// Traversal step per dimension (the first is ignored without interleave).
    pub element_strides: Vec<u32>,
    pub interleave: Interleave,
    pub swizzle: Swizzle,
    pub l2_promotion: L2Promotion,
    pub oob_fill: OobFill,
}

/// A rejected tensor map: the `cuTensorMapEncodeTiled` argument at fault and the rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorMapError {
    pub field: &'static str,
    pub message: String,
}

impl fmt::Display for TensorMapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cuTensorMapEncodeTiled: {}: {}",
            self.field, self.message
        )
    }
}

impl std::error::Error for TensorMapError {}

fn err(field: &'static str, message: String) -> TensorMapError {
    TensorMapError { field, message }
}

/// An encoded tensor map: 128 bytes, 64-byte aligned, passed to a kernel by value.
#[repr(C, align(64))]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TensorMap {
    pub bytes: [u8; 128],
}

impl fmt::Debug for TensorMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TensorMap({:02x?})", &self.bytes[..])
    }
}

/// `EMU_TENSOR_MAP_MAGIC` of emu_runtime.h.
const MAGIC: u32 = 0x5041_4d54;

impl Tiled {
    /// The rank (number of dimensions).
    pub fn rank(&self) -> usize {
        self.global_dim.len()
    }

    /// Bytes of one box as TMA writes it to shared memory (and completes on the mbarrier).
    pub fn box_bytes(&self) -> u64 {
        let mut n = self.data_type.size();
        for (i, &b) in self.box_dim.iter().enumerate() {
            let s = if i == 0 {
                1
            } else {
                self.element_strides[i].max(1)
            };
            n *= u64::from(b.div_ceil(s));
        }
        n
    }

    /// The requirements cuda.h (CUDA 13) lists for `cuTensorMapEncodeTiled`, for the data types
    /// above: an error names the argument and the rule it breaks.
    pub fn validate(&self) -> Result<(), TensorMapError> {
        let rank = self.rank();
        let es = self.data_type.size();
        if !(1..=5).contains(&rank) {
            return Err(err(
                "tensorRank",
                format!("{rank} dimensions; must be 1 to 5"),
            ));
        }
        if self.interleave != Interleave::None && rank < 3 {
            return Err(err(
                "tensorRank",
                format!(
                    "{rank} with interleave {:?}; interleaved maps need at least 3",
                    self.interleave
                ),
            ));
        }
        let align = if self.interleave == Interleave::B32 {
            32
        } else {
            16
        };
        if self.global_address % align != 0 {
            return Err(err(
                "globalAddress",
                format!("{:#x} is not {align}-byte aligned", self.global_address),
            ));
        }
        for (i, &d) in self.global_dim.iter().enumerate() {
            if d == 0 || d > 1 << 31 {
                return Err(err(
                    "globalDim",
                    format!("globalDim[{i}] = {d}; must be in 1..=2^31"),
                ));
            }
        }
        if self.global_strides.len() != rank - 1 {
            return Err(err(
                "globalStrides",
                format!(
                    "{} strides for rank {rank}; must be rank - 1",
                    self.global_strides.len()
                ),
            ));
        }
        let stride_align = if self.interleave == Interleave::B32 {
            32
        } else {
            16
        };
        for (i, &s) in self.global_strides.iter().enumerate() {
            if s % stride_align != 0 || s >= 1 << 40 {
                return Err(err(
                    "globalStrides",
                    format!(
                        "globalStrides[{i}] = {s} bytes; must be a multiple of {stride_align} \
                         and below 2^40"
                    ),
                ));
            }
        }
        if self.box_dim.len() != rank {
            return Err(err(
                "boxDim",
                format!("{} entries for rank {rank}", self.box_dim.len()),
            ));
        }
        for (i, &b) in self.box_dim.iter().enumerate() {
            if b == 0 || b > 256 {
                return Err(err(
                    "boxDim",
                    format!("boxDim[{i}] = {b}; must be in 1..=256"),
                ));
            }
        }
        let inner = u64::from(self.box_dim[0]) * es;
        if self.interleave == Interleave::None && inner % 16 != 0 {
            return Err(err(
                "boxDim",
                format!(
                    "boxDim[0] * element size = {inner} bytes; must be a multiple of 16 \
                     without interleave"
                ),
            ));
        }
        if self.element_strides.len() != rank {
            return Err(err(
                "elementStrides",
                format!("{} entries for rank {rank}", self.element_strides.len()),
            ));
        }
        for (i, &s) in self.element_strides.iter().enumerate() {
            if s == 0 || s > 8 {
                return Err(err(
                    "elementStrides",
                    format!("elementStrides[{i}] = {s}; must be in 1..=8"),
                ));
            }
        }
        if self.interleave == Interleave::None
            && self.swizzle != Swizzle::None
            && inner > self.swizzle.span()
        {
            return Err(err(
                "swizzle",
                format!(
                    "the inner box dimension is {inner} bytes, more than the {}-byte span of \
                     swizzle {:?}",
                    self.swizzle.span(),
                    self.swizzle
                ),
            ));
        }
        if self.interleave == Interleave::B32 && self.swizzle != Swizzle::B32 {
            return Err(err(
                "swizzle",
                format!("{:?} with interleave B32; must be B32", self.swizzle),
            ));
        }
        if self.oob_fill == OobFill::NanRequestZeroFma && !self.data_type.is_float() {
            return Err(err(
                "oobFill",
                format!("NaN fill for the integer type {:?}", self.data_type),
            ));
        }
        Ok(())
    }

    /// Validates and encodes the map for the emulator.
    pub fn encode_emulated(&self) -> Result<TensorMap, TensorMapError> {
        self.validate()?;
        let mut b = [0u8; 128];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4] = self.data_type as u8;
        b[5] = self.rank() as u8;
        b[6] = self.interleave as u8;
        b[7] = self.swizzle as u8;
        b[8] = self.l2_promotion as u8;
        b[9] = self.oob_fill as u8;
        for (i, &d) in self.box_dim.iter().enumerate() {
            b[10 + 2 * i..12 + 2 * i].copy_from_slice(&(d as u16).to_le_bytes());
        }
        for (i, &s) in self.element_strides.iter().enumerate() {
            b[20 + i] = s as u8;
        }
        b[32..40].copy_from_slice(&self.global_address.to_le_bytes());
        for (i, &d) in self.global_dim.iter().enumerate() {
            b[40 + 8 * i..48 + 8 * i].copy_from_slice(&d.to_le_bytes());
        }
        for (i, &s) in self.global_strides.iter().enumerate() {
            b[80 + 8 * i..88 + 8 * i].copy_from_slice(&s.to_le_bytes());
        }
        Ok(TensorMap { bytes: b })
    }
}

// The C layout this mirrors: 128 bytes, 64-byte aligned.
const _: () = assert!(std::mem::size_of::<TensorMap>() == 128);
const _: () = assert!(std::mem::align_of::<TensorMap>() == 64);

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> Tiled {
        Tiled {
            data_type: DataType::F16,
            global_address: 0x1000,
            global_dim: vec![64, 32],
            global_strides: vec![128],
            box_dim: vec![64, 16],
            element_strides: vec![1, 1],
            interleave: Interleave::None,
            swizzle: Swizzle::B128,
            l2_promotion: L2Promotion::B128,
            oob_fill: OobFill::Zero,
        }
    }

    #[test]
    fn a_valid_map_encodes_its_fields() {
        let t = map().encode_emulated().unwrap();
        assert_eq!(&t.bytes[0..4], &MAGIC.to_le_bytes());
        assert_eq!(t.bytes[5], 2);
        assert_eq!(t.bytes[7], 3);
        assert_eq!(u16::from_le_bytes([t.bytes[12], t.bytes[13]]), 16);
        assert_eq!(u64::from_le_bytes(t.bytes[80..88].try_into().unwrap()), 128);
        assert_eq!(map().box_bytes(), 64 * 16 * 2);
    }

    /// A rule's field name and a mutation that breaks it.
    type Case = (&'static str, Box<dyn Fn(&mut Tiled)>);

    #[test]
    fn each_rule_names_its_field() {
        let cases: Vec<Case> = vec![
            ("tensorRank", Box::new(|m| m.global_dim = vec![1; 6])),
            ("globalAddress", Box::new(|m| m.global_address = 0x1008)),
            ("globalDim", Box::new(|m| m.global_dim[1] = 0)),
            ("globalDim", Box::new(|m| m.global_dim[0] = (1 << 31) + 1)),
            ("globalStrides", Box::new(|m| m.global_strides[0] = 120)),
            ("globalStrides", Box::new(|m| m.global_strides[0] = 1 << 40)),
            ("globalStrides", Box::new(|m| m.global_strides.clear())),
            ("boxDim", Box::new(|m| m.box_dim[1] = 257)),
            ("boxDim", Box::new(|m| m.box_dim[0] = 4)),
            ("elementStrides", Box::new(|m| m.element_strides[1] = 9)),
            ("elementStrides", Box::new(|m| m.element_strides[0] = 0)),
            ("swizzle", Box::new(|m| m.swizzle = Swizzle::B64)),
            (
                "oobFill",
                Box::new(|m| {
                    m.data_type = DataType::U16;
                    m.oob_fill = OobFill::NanRequestZeroFma;
                }),
            ),
            ("tensorRank", Box::new(|m| m.interleave = Interleave::B16)),
        ];
        for (field, mutate) in cases {
            let mut m = map();
            mutate(&mut m);
            let e = m.encode_emulated().unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.to_string().starts_with("cuTensorMapEncodeTiled: "), "{e}");
        }
    }
}
