//! The host channel. Under QEMU it is a virtio-serial port named [`AGENT_PORT_NAME`]; a vsock
//! transport (Firecracker) plugs in behind the same [`HostLink`] trait.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use ignition_proto::{
    encode, read_frame, FrameError, GuestMessage, HostMessage, AGENT_PORT_NAME, MAX_HOST_FRAME,
};

/// A byte stream to the host.
pub trait HostLink: Read + Write + Send {}
impl<T: Read + Write + Send> HostLink for T {}

/// The framed channel to the host.
pub struct Channel {
    link: Box<dyn HostLink>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Channel")
    }
}

impl Channel {
    /// Writes raw bytes, framed or not (test fixtures that play a hostile guest use this).
    pub fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.link.write_all(bytes)?;
        self.link.flush()
    }

    /// Finds the agent's virtio-serial port by name and opens it, waiting up to `limit` for the
    /// port to appear (udev does not run here; devtmpfs creates the node when the port is added).
    pub fn open(limit: Duration) -> Result<Self, String> {
        let start = Instant::now();
        let mut last = String::from("no virtio port found");
        while start.elapsed() < limit {
            match find_port() {
                Ok(dev) => match OpenOptions::new().read(true).write(true).open(&dev) {
                    Ok(file) => return Ok(Self::from_link(file)),
                    Err(e) => last = format!("open {dev}: {e}"),
                },
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Err(format!("host channel: {last}"))
    }

    fn from_link(link: impl HostLink + 'static) -> Self {
        Self {
            link: Box::new(link),
        }
    }

    pub fn send(&mut self, msg: &GuestMessage) -> Result<(), String> {
        let frame = encode(msg).map_err(|e| e.to_string())?;
        self.link
            .write_all(&frame)
            .and_then(|()| self.link.flush())
            .map_err(|e| format!("write to host: {e}"))
    }

    /// The next message from the host; `Ok(None)` when the host closed the channel.
    pub fn recv(&mut self) -> Result<Option<HostMessage>, FrameError> {
        read_frame(&mut self.link, MAX_HOST_FRAME)
    }
}

fn find_port() -> Result<String, String> {
    let entries =
        fs::read_dir("/sys/class/virtio-ports").map_err(|e| format!("virtio-ports: {e}"))?;
    for entry in entries.flatten() {
        let name = fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if name.trim() == AGENT_PORT_NAME {
            return Ok(format!("/dev/{}", entry.file_name().to_string_lossy()));
        }
    }
    Err(format!("no virtio port named {AGENT_PORT_NAME}"))
}
