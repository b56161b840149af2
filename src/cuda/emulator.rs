//! Runs a kernel through its emulated entry point (`emu_<kernel>`, built by build.rs from the same
//! `.cu` source with `kernels/emulation/cuda_emulation.h`).

use super::{generated, EmuLaunch, Launch, ThreadOrder};
use crate::{Error, Result};
use std::ffi::c_void;

pub(super) fn launch(kernel: &'static str, launch: Launch, order: ThreadOrder, params: &mut [*mut c_void]) -> Result<()> {
    let entry = generated::EMULATED
        .iter()
        .find(|(name, _)| *name == kernel)
        .map(|(_, entry)| *entry)
        .ok_or_else(|| Error::invalid("kernel", format!("{kernel} is not among the emulated kernels")))?;
    let config = EmuLaunch {
        grid: launch.grid,
        block: [launch.block, 1, 1],
        shared_bytes: launch.shared_bytes,
        reverse_order: (order == ThreadOrder::Reverse) as u32,
        workers: 0,
    };
    let mut message = vec![0u8; 1024];
    // SAFETY: `entry` is the emulated kernel `kernel`, whose parameters are exactly `params`, in order
    // (the launchers build `Args` from the kernel's signature); every pointer parameter addresses a
    // live host buffer of the size the kernel indexes (the launchers check lengths), and `message`
    // has the length passed with it.
    let status = unsafe { entry(&config, params.as_mut_ptr(), message.as_mut_ptr().cast(), message.len()) };
    if status == 0 {
        return Ok(());
    }
    let end = message.iter().position(|&b| b == 0).unwrap_or(message.len());
    Err(Error::Kernel { kernel, why: String::from_utf8_lossy(&message[..end]).into_owned() })
}
