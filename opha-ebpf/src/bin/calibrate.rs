//! `opha_calibrate`: a classifier that does nothing. Never attached; the benchmark runs it
//! through BPF_PROG_TEST_RUN to measure the test harness's own cost per packet, so that the
//! figures of the real programs can be reported both raw and net of it.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::TC_ACT_UNSPEC, macros::classifier, programs::TcContext};

#[classifier]
pub fn opha_calibrate(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
