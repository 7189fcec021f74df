//! A minimal QMP (QEMU Machine Protocol) client: greeting, capabilities negotiation, commands.
//!
//! QEMU runs guest-facing device emulation, so its replies are bounded like guest input: a line
//! longer than [`MAX_LINE`] ends the session.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::VmmError;

const MAX_LINE: usize = 1024 * 1024;

/// A negotiated QMP session.
#[derive(Debug)]
pub(crate) struct Qmp {
    stream: BufReader<UnixStream>,
    timeout: Duration,
}

impl Qmp {
    /// Connects and negotiates capabilities.
    pub(crate) async fn connect(path: &Path, timeout: Duration) -> Result<Self, VmmError> {
        let stream = tokio::time::timeout(timeout, UnixStream::connect(path))
            .await
            .map_err(|_| VmmError::Control("QMP connect timed out".into()))?
            .map_err(VmmError::io(format!("connect QMP {}", path.display())))?;
        let mut qmp = Self {
            stream: BufReader::new(stream),
            timeout,
        };
        let greeting = qmp.read_value().await?;
        if greeting.get("QMP").is_none() {
            return Err(VmmError::Control(format!(
                "unexpected QMP greeting: {greeting}"
            )));
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    async fn read_value(&mut self) -> Result<Value, VmmError> {
        let mut line = Vec::new();
        let read = async {
            loop {
                let buf = self
                    .stream
                    .fill_buf()
                    .await
                    .map_err(VmmError::io("read QMP"))?;
                if buf.is_empty() {
                    return Err(VmmError::Control("QMP connection closed".into()));
                }
                if let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                    line.extend_from_slice(&buf[..nl]);
                    self.stream.consume(nl + 1);
                    return Ok(());
                }
                let n = buf.len();
                line.extend_from_slice(buf);
                self.stream.consume(n);
                if line.len() > MAX_LINE {
                    return Err(VmmError::Control("QMP reply too long".into()));
                }
            }
        };
        tokio::time::timeout(self.timeout, read)
            .await
            .map_err(|_| VmmError::Control("QMP reply timed out".into()))??;
        serde_json::from_slice(&line).map_err(|e| VmmError::Control(format!("bad QMP reply: {e}")))
    }

    /// Runs a command and returns its `return` value; events that arrive meanwhile are skipped.
    pub(crate) async fn execute(
        &mut self,
        command: &str,
        args: Option<Value>,
    ) -> Result<Value, VmmError> {
        let bytes = Self::message(command, args);
        self.stream
            .get_mut()
            .write_all(&bytes)
            .await
            .map_err(VmmError::io(format!("send QMP {command}")))?;
        self.reply(command).await
    }

    /// Hands `fd` to QEMU under `name` (`getfd`), for commands that take `fd:NAME`. The
    /// descriptor travels with the command's first byte (SCM_RIGHTS); QEMU keeps its own copy.
    pub(crate) async fn send_fd(&mut self, name: &str, fd: BorrowedFd<'_>) -> Result<(), VmmError> {
        let bytes = Self::message("getfd", Some(json!({ "fdname": name })));
        let stream = self.stream.get_mut();
        let sent = loop {
            stream
                .writable()
                .await
                .map_err(VmmError::io("send QMP getfd"))?;
            let fds = [fd.as_raw_fd()];
            let cmsg = [ControlMessage::ScmRights(&fds)];
            let iov = [std::io::IoSlice::new(&bytes)];
            match stream.try_io(tokio::io::Interest::WRITABLE, || {
                sendmsg::<UnixAddr>(
                    stream.as_raw_fd(),
                    &iov,
                    &cmsg,
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(std::io::Error::from)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(VmmError::io("send QMP getfd")(e)),
            }
        };
        stream
            .write_all(&bytes[sent..])
            .await
            .map_err(VmmError::io("send QMP getfd"))?;
        self.reply("getfd").await.map(|_| ())
    }

    fn message(command: &str, args: Option<Value>) -> Vec<u8> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = args {
            msg["arguments"] = a;
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(b'\n');
        bytes
    }

    async fn reply(&mut self, command: &str) -> Result<Value, VmmError> {
        loop {
            let v = self.read_value().await?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(VmmError::Control(format!("QMP {command}: {e}")));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{IoSliceMut, Read, Seek, Write};
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};

    use nix::sys::socket::{recvmsg, ControlMessageOwned};

    use super::*;

    /// The QMP side of the test (no QEMU: this is about the protocol): reads one command with
    /// the descriptors that came with it, answers `{"return": {}}`.
    fn serve_one(peer: std::os::unix::net::UnixStream) -> (Value, Vec<OwnedFd>) {
        let mut buf = [0u8; 4096];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 2]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<UnixAddr>(
            peer.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .unwrap();
        let mut fds = Vec::new();
        for c in msg.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(received) = c {
                // SAFETY: the kernel just installed these descriptors in this process.
                fds.extend(
                    received
                        .into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        let n = msg.bytes;
        let line = std::str::from_utf8(&buf[..n])
            .unwrap()
            .trim_end()
            .to_owned();
        (&peer).write_all(b"{\"return\": {}}\n").unwrap();
        (serde_json::from_str(&line).unwrap(), fds)
    }

    #[tokio::test]
    async fn send_fd_hands_over_the_open_file_with_getfd() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut qmp = Qmp {
            stream: BufReader::new(UnixStream::from_std(ours).unwrap()),
            timeout: Duration::from_secs(5),
        };
        let server = std::thread::spawn(move || serve_one(theirs));
        let mut file = tempfile_in_tmp();
        file.write_all(b"device state").unwrap();
        qmp.send_fd("migration-stream", file.as_fd()).await.unwrap();
        let (command, fds) = server.join().unwrap();
        assert_eq!(
            command,
            json!({ "execute": "getfd", "arguments": { "fdname": "migration-stream" } })
        );
        assert_eq!(fds.len(), 1, "exactly one descriptor travels with getfd");
        // The received descriptor is the same open file: it reads what was written through ours.
        let mut theirs = std::fs::File::from(fds.into_iter().next().unwrap());
        theirs.rewind().unwrap();
        let mut text = String::new();
        theirs.read_to_string(&mut text).unwrap();
        assert_eq!(text, "device state");
    }

    fn tempfile_in_tmp() -> std::fs::File {
        let path = std::env::temp_dir().join(format!("qmp-fd-test-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        file
    }
}
