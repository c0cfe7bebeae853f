//! The per-step values of the step graph (`tau`, `dtau` and the Euler control block) in one
//! block, written by the host into pinned memory and copied to the device asynchronously on
//! the compute stream: one copy queued in stream order before the step's replay, and no
//! host round trip (three synchronous pageable copies before).
//!
//! Two pinned host blocks alternate. A queued copy reads its host block when the stream
//! reaches it, so the host must not rewrite that block before then; taking the block for
//! the next step waits (`Device::pinned`) only for the copy queued two steps earlier, which
//! the device has normally long finished.
//!
//! On the device the block holds `dtau [F] f32`, the control block `[first pushed frame,
//! shift]` as two u64 (8-byte aligned), then `tau [F] f32`: the Euler kernel reads dtau and
//! the control block in place, and tau is copied (device to device, in stream order) into
//! the graph's input tensor, which the memory plan places elsewhere.

use super::device::{Device, DeviceBuffer, PinnedBuffer, Queue};
use crate::error::{Error, Result};

/// Byte offsets of the block's parts for `frames` latent frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepLayout {
    pub frames: usize,
    pub dtau: usize,
    pub control: usize,
    pub tau: usize,
    pub bytes: usize,
}

impl StepLayout {
    pub fn new(frames: usize) -> StepLayout {
        let dtau = 0;
        let control = (dtau + 4 * frames).next_multiple_of(8);
        let tau = control + 16;
        StepLayout {
            frames,
            dtau,
            control,
            tau,
            bytes: tau + 4 * frames,
        }
    }

    /// Writes one step's values into `out` (the block's bytes, little-endian as the device
    /// reads them). The shift goes in the low 32 bits of the second control word.
    pub fn encode(
        &self,
        out: &mut [u8],
        tau: &[f32],
        dtau: &[f32],
        first: u64,
        shift: u32,
    ) -> Result<()> {
        let f = self.frames;
        for (what, len) in [("step tau", tau.len()), ("step dtau", dtau.len())] {
            if len != f {
                return Err(Error::shape(what, f, len));
            }
        }
        if out.len() != self.bytes {
            return Err(Error::shape("step block bytes", self.bytes, out.len()));
        }
        out.fill(0);
        for (i, v) in dtau.iter().enumerate() {
            let at = self.dtau + 4 * i;
            out[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        out[self.control..self.control + 8].copy_from_slice(&first.to_le_bytes());
        out[self.control + 8..self.control + 16].copy_from_slice(&(shift as u64).to_le_bytes());
        for (i, v) in tau.iter().enumerate() {
            let at = self.tau + 4 * i;
            out[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        Ok(())
    }
}

/// The step block on a device and its two pinned host copies.
pub struct StepBlock {
    layout: StepLayout,
    device: DeviceBuffer<u8>,
    host: [PinnedBuffer<u8>; 2],
    /// The host block the next step writes.
    next: usize,
}

impl StepBlock {
    /// Allocates the device block and the two pinned host blocks for `frames` frames.
    pub fn new<D: Device>(dev: &mut D, frames: usize) -> Result<StepBlock> {
        let layout = StepLayout::new(frames);
        let device = dev.alloc::<u8>("step block (tau, dtau, control)", layout.bytes)?;
        let host = [
            dev.alloc_pinned::<u8>("step block (host, 0)", layout.bytes)?,
            dev.alloc_pinned::<u8>("step block (host, 1)", layout.bytes)?,
        ];
        Ok(StepBlock {
            layout,
            device,
            host,
            next: 0,
        })
    }

    /// `dtau [F]` on the device, read by the Euler kernel.
    pub fn dtau(&self) -> Result<DeviceBuffer<f32>> {
        let l = self.layout;
        self.device.slice(l.dtau, 4 * l.frames)?.cast()
    }

    /// The control block on the device, read by the Euler kernel.
    pub fn control(&self) -> Result<DeviceBuffer<u64>> {
        self.device.slice(self.layout.control, 16)?.cast()
    }

    fn tau(&self) -> Result<DeviceBuffer<f32>> {
        let l = self.layout;
        self.device.slice(l.tau, 4 * l.frames)?.cast()
    }

    /// Writes one step's values into the next host block and queues, on the compute stream,
    /// its copy to the device and the copy of tau into `tau_input` (the graph's input): the
    /// step's launches or replay, queued after this, read them in stream order.
    pub fn write<D: Device>(
        &mut self,
        dev: &mut D,
        tau_input: DeviceBuffer<f32>,
        tau: &[f32],
        dtau: &[f32],
        first: u64,
        shift: u32,
    ) -> Result<()> {
        let host = self.host[self.next];
        // Waits for the copy that last read this host block (two steps ago), if pending.
        let bytes = dev.pinned(host)?;
        self.layout.encode(bytes, tau, dtau, first, shift)?;
        dev.write_async(Queue::Compute, self.device, host)?;
        dev.copy(self.tau()?, tau_input)?;
        self.next = 1 - self.next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::emu::EmuDevice;

    #[test]
    fn the_layout_keeps_the_control_block_aligned() {
        for f in 1..12 {
            let l = StepLayout::new(f);
            assert_eq!(l.control % 8, 0);
            assert!(l.control >= 4 * f && l.tau == l.control + 16);
            assert_eq!(l.bytes, l.tau + 4 * f);
        }
        let l = StepLayout::new(3);
        let mut out = vec![0xAA; l.bytes];
        l.encode(&mut out, &[1.0, 2.0, 3.0], &[0.5, 0.25, 0.125], 7, 2)
            .unwrap();
        assert_eq!(&out[0..4], &0.5f32.to_le_bytes());
        assert_eq!(&out[12..16], &[0; 4], "padding zeroed");
        assert_eq!(&out[16..24], &7u64.to_le_bytes());
        assert_eq!(&out[24..32], &2u64.to_le_bytes());
        assert_eq!(&out[32..36], &1.0f32.to_le_bytes());
        let e = l.encode(&mut out, &[1.0], &[0.5, 0.25, 0.125], 0, 0);
        assert!(e.unwrap_err().to_string().contains("step tau"));
    }

    /// Each write reaches the device in its step, through alternating host blocks, even
    /// when the host writes the next step before reading anything back.
    #[test]
    fn values_reach_the_device_in_order() {
        let mut dev = EmuDevice::new();
        let f = 5;
        let mut block = StepBlock::new(&mut dev, f).unwrap();
        let tau_input = dev.alloc::<f32>("tau", f).unwrap();
        for step in 0..4u32 {
            let tau: Vec<f32> = (0..f).map(|i| (step * 10 + i as u32) as f32).collect();
            let dtau: Vec<f32> = tau.iter().map(|t| -t / 100.0).collect();
            block
                .write(&mut dev, tau_input, &tau, &dtau, step as u64 + 100, step)
                .unwrap();
            let mut got = vec![0f32; f];
            dev.read(tau_input, &mut got).unwrap();
            assert_eq!(got, tau, "step {step}: tau in the graph input");
            dev.read(block.dtau().unwrap(), &mut got).unwrap();
            assert_eq!(got, dtau, "step {step}: dtau");
            let mut control = [0u64; 2];
            dev.read(block.control().unwrap(), &mut control).unwrap();
            assert_eq!(control, [step as u64 + 100, step as u64]);
            assert_eq!(block.next, (step as usize + 1) % 2, "the host blocks alternate");
        }
    }
}
