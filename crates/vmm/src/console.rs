//! The guest console, captured into a bounded ring so a chatty or hostile guest cannot grow
//! host memory or fill a disk.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes of console output kept per VM.
pub(crate) const CONSOLE_KEEP: usize = 64 * 1024;

/// The last [`CONSOLE_KEEP`] bytes of a VM's console.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConsoleRing(Arc<Mutex<VecDeque<u8>>>);

impl ConsoleRing {
    fn push(&self, bytes: &[u8]) {
        let mut ring = self.0.lock().unwrap_or_else(|p| p.into_inner());
        ring.extend(bytes);
        let excess = ring.len().saturating_sub(CONSOLE_KEEP);
        ring.drain(..excess);
    }

    pub(crate) fn tail(&self) -> String {
        let ring = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (a, b) = ring.as_slices();
        let mut v = Vec::with_capacity(ring.len());
        v.extend_from_slice(a);
        v.extend_from_slice(b);
        String::from_utf8_lossy(&v).into_owned()
    }

    /// Drains `stream` (a console socket, or a VMM's standard output) into the ring until it
    /// closes.
    pub(crate) fn capture(
        &self,
        mut stream: impl AsyncRead + Unpin + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let ring = self.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => ring.push(&buf[..n]),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_only_the_tail() {
        let ring = ConsoleRing::default();
        ring.push(&vec![b'a'; CONSOLE_KEEP]);
        ring.push(b"end");
        let tail = ring.tail();
        assert_eq!(tail.len(), CONSOLE_KEEP);
        assert!(tail.ends_with("aend"));
    }
}
