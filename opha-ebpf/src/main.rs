//! opha's kernel programs: one TC classifier on ingress and one on egress of the polling
//! interface. They count polling traffic per node, match requests with responses for RTT, copy
//! traps and syslog to a ring buffer, and never change or drop a packet.
#![no_std]
#![no_main]

mod classify;
mod egress;
mod ingress;
mod maps;
mod parse;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never called.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
