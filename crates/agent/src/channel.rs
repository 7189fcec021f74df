//! The host channel. Under QEMU it is a virtio-serial port named [`AGENT_PORT_NAME`]; under
//! Firecracker, which has no virtio-serial, a vsock connection to the host's port
//! [`AGENT_VSOCK_PORT`]. Both are byte streams behind the same [`HostLink`] trait. A snapshot
//! resets vsock connections, so after a restore the vsock transport connects again.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use ignition_proto::{
    encode, read_frame, FrameError, GuestMessage, HostMessage, AGENT_PORT_NAME, AGENT_VSOCK_PORT,
    MAX_HOST_FRAME,
};

/// A byte stream to the host.
pub trait HostLink: Read + Write + Send {}
impl<T: Read + Write + Send> HostLink for T {}

/// The framed channel to the host.
pub struct Channel {
    link: Box<dyn HostLink>,
    vsock: bool,
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
                    Ok(file) => return Ok(Self::from_link(file, false)),
                    Err(e) => last = format!("open {dev}: {e}"),
                },
                Err(e) => last = e,
            }
            // No virtio-serial bus at all: the VMM offers vsock instead.
            if !std::path::Path::new("/sys/class/virtio-ports").exists()
                || std::path::Path::new("/dev/vsock").exists()
            {
                match connect_vsock() {
                    Ok(file) => return Ok(Self::from_link(file, true)),
                    Err(e) => last = format!("no virtio port, and vsock: {e}"),
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Err(format!("host channel: {last}"))
    }

    fn from_link(link: impl HostLink + 'static, vsock: bool) -> Self {
        Self {
            link: Box::new(link),
            vsock,
        }
    }

    /// After the channel broke: connects again where the transport allows it (vsock, reset
    /// by a snapshot restore), waiting up to `limit`. `false`: the host is gone for good.
    pub fn reconnect(&mut self, limit: Duration) -> bool {
        if !self.vsock {
            return false;
        }
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(file) = connect_vsock() {
                self.link = Box::new(file);
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
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

/// A stream connection to the host (CID 2) on [`AGENT_VSOCK_PORT`].
fn connect_vsock() -> Result<std::fs::File, String> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, VsockAddr};
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("socket: {e}"))?;
    connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &VsockAddr::new(libc::VMADDR_CID_HOST, AGENT_VSOCK_PORT),
    )
    .map_err(|e| format!("connect: {e}"))?;
    Ok(std::fs::File::from(fd))
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
