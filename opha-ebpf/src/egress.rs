//! `opha_egress`: requests leaving the poller.

use aya_ebpf::{bindings::TC_ACT_UNSPEC, macros::classifier, programs::TcContext};

use crate::classify::{Direction, classify};

#[classifier]
pub fn opha_egress(ctx: TcContext) -> i32 {
    // The verdict is always "continue": opha only observes.
    let _ = classify(&ctx, Direction::Egress);
    TC_ACT_UNSPEC
}
