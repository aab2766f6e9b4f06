//! The consumer's wake-up: a tokio `Notify` for Rust consumers, plus, optionally, a byte written
//! to a socket the Python event loop watches. The socket needs no GIL and no thread of ours
//! calling into Python, so a wake-up can never race the interpreter's shutdown.
//!
//! Portable across Unix systems (Linux and macOS alike): only std's `UnixStream`, non-blocking
//! mode and a plain `write`, no platform-specific socket or send flags. Once the reader has
//! closed its end, a write fails with `EPIPE` and is ignored here; the `SIGPIPE` it also raises
//! is ignored by CPython, which sets it to `SIG_IGN` at start-up on every Unix.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;

use tokio::sync::Notify;

#[derive(Default)]
pub struct Wake {
    notify: Notify,
    socket: OnceLock<UnixStream>,
}

impl Wake {
    pub fn new() -> Wake {
        Wake::default()
    }

    /// Also signal through `socket` (non-blocking; a full socket already means "wake up").
    pub fn attach_socket(&self, socket: UnixStream) -> std::io::Result<()> {
        socket.set_nonblocking(true)?;
        let _ = self.socket.set(socket);
        Ok(())
    }

    pub fn wake(&self) {
        self.notify.notify_one();
        if let Some(mut s) = self.socket.get() {
            let _ = s.write(b"w");
        }
    }

    pub async fn notified(&self) {
        self.notify.notified().await
    }
}
