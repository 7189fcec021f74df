//! The host end of the agent channel: framed, bounded, and under a deadline.

use ignition_proto::{
    encode, FrameError, GuestMessage, Header, HostMessage, HEADER_LEN, MAX_GUEST_FRAME,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::Instant;

/// Why the channel failed.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The deadline passed before a whole frame arrived.
    #[error("no answer from the guest in time")]
    Deadline,
    /// The guest closed the channel (it crashed or powered off).
    #[error("the guest closed its channel")]
    Closed,
    /// The guest sent something that is not a valid frame.
    #[error("invalid frame from the guest: {0}")]
    Frame(#[from] FrameError),
    /// Writing to the guest failed.
    #[error("sending to the guest failed: {0}")]
    Send(std::io::Error),
}

/// A framed connection to one guest.
#[derive(Debug)]
pub(crate) struct AgentChannel {
    stream: UnixStream,
}

impl AgentChannel {
    pub(crate) fn new(stream: UnixStream) -> Self {
        Self { stream }
    }

    pub(crate) async fn send(
        &mut self,
        msg: &HostMessage,
        deadline: Instant,
    ) -> Result<(), ChannelError> {
        let frame = encode(msg)?;
        tokio::time::timeout_at(deadline, self.stream.write_all(&frame))
            .await
            .map_err(|_| ChannelError::Deadline)?
            .map_err(ChannelError::Send)
    }

    /// Reads one message; the header is validated before any body byte is read or allocated.
    pub(crate) async fn recv(&mut self, deadline: Instant) -> Result<GuestMessage, ChannelError> {
        let read = async {
            let mut raw = [0u8; HEADER_LEN];
            read_exact(&mut self.stream, &mut raw).await?;
            let header = Header::parse(&raw, MAX_GUEST_FRAME)?;
            let mut body = vec![0u8; header.len as usize];
            read_exact(&mut self.stream, &mut body).await?;
            Ok(header.decode_body(&body)?)
        };
        tokio::time::timeout_at(deadline, read)
            .await
            .map_err(|_| ChannelError::Deadline)?
    }
}

async fn read_exact(stream: &mut UnixStream, buf: &mut [u8]) -> Result<(), ChannelError> {
    match stream.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ChannelError::Closed),
        Err(e) => Err(ChannelError::Frame(FrameError::Io(e))),
    }
}
