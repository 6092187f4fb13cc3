//! The stop signal every task of the pipeline watches: a flag for the blocking threads (with a
//! condition variable so that a sleeping thread wakes at once) and a watch channel for the
//! async servers.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// Cloneable handle on one stop signal.
#[derive(Clone)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

struct Inner {
    stopped: Mutex<bool>,
    wake: Condvar,
    tx: watch::Sender<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        let (tx, _rx) = watch::channel(false);
        Self {
            inner: Arc::new(Inner {
                stopped: Mutex::new(false),
                wake: Condvar::new(),
                tx,
            }),
        }
    }

    /// Asks every task to stop (idempotent).
    pub fn trigger(&self) {
        let mut stopped = self.inner.stopped.lock().unwrap_or_else(|p| p.into_inner());
        *stopped = true;
        self.inner.wake.notify_all();
        self.inner.tx.send_replace(true);
    }

    pub fn is_stopped(&self) -> bool {
        *self.inner.stopped.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sleeps up to `d`; returns early (true) when stopped.
    pub fn sleep(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut stopped = self.inner.stopped.lock().unwrap_or_else(|p| p.into_inner());
        while !*stopped {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            stopped = self
                .inner
                .wake
                .wait_timeout(stopped, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// Resolves once stopped (for the async servers).
    pub async fn wait(&self) {
        let mut rx = self.inner.tx.subscribe();
        // An error means the sender is gone, which cannot happen while `self` holds it.
        let _ = rx.wait_for(|s| *s).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_returns_early_when_triggered() {
        let s = Shutdown::new();
        assert!(!s.sleep(Duration::from_millis(1)));
        let t = s.clone();
        let h = std::thread::spawn(move || {
            let start = Instant::now();
            assert!(t.sleep(Duration::from_secs(30)));
            start.elapsed()
        });
        std::thread::sleep(Duration::from_millis(20));
        s.trigger();
        assert!(h.join().unwrap() < Duration::from_secs(5));
        assert!(s.is_stopped());
    }

    #[tokio::test]
    async fn wait_resolves_after_trigger_even_if_triggered_first() {
        let s = Shutdown::new();
        s.trigger();
        tokio::time::timeout(Duration::from_secs(5), s.wait())
            .await
            .unwrap();
    }
}
