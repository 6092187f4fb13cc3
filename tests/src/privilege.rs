//! Tests that need root and the kernel run in CI (as root); elsewhere they skip with a reason.

/// True when the caller may run a privileged test. Without root: in CI (CI=true) this panics,
/// because CI must run every test; elsewhere it prints why the test is skipped and returns false.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: needs root, and CI must run it as root");
    }
    eprintln!("skipped {test}: needs root (BPF, network namespaces); run as root or in CI");
    false
}
