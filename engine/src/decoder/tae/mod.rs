//! The temporal-autoencoder decoder (docs/tae.md) of the op list in [`crate::model::tae`]:
//! on the CPU in f32 ([`cpu`]), and lowered to the decoder kernels on a device, real or
//! emulated ([`device`]). Both carry the causal caches between chunks, so the output does not
//! depend on the chunk size. The encoder of video-to-video ([`encoder`]) runs the same
//! executor on the CPU.

pub mod cpu;
pub mod device;
pub mod encoder;
mod layers;

pub use cpu::TaeDecoder;
pub use device::{device_memory, launch_costs, DeviceTae, TaeMemory};
pub use encoder::TaeEncoder;
