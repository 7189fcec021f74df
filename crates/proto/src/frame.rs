//! Framing: header layout, limits, incremental decoding.

use std::io::Read;

use serde::{de::DeserializeOwned, Serialize};

/// The two bytes every frame starts with.
pub const MAGIC: [u8; 2] = *b"IG";
/// The protocol version this build speaks. Bump it on any change to a message's layout.
pub const VERSION: u8 = 10;
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 8;

/// Why a frame was refused.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The frame does not start with the protocol's magic bytes.
    #[error("bad frame magic {0:02x?}: the peer does not speak the Ignition agent protocol")]
    BadMagic([u8; 2]),
    /// The peer speaks another version of the protocol.
    #[error("protocol version {got} is not supported (this build speaks version {VERSION})")]
    Version {
        /// The version the frame carried.
        got: u8,
    },
    /// The reserved header byte was not zero.
    #[error("reserved header byte is {0}, expected 0")]
    Reserved(u8),
    /// The announced body is larger than this direction allows.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced body length.
        len: u32,
        /// The limit in force.
        max: u32,
    },
    /// The body did not decode as a message, or had bytes left over.
    #[error("malformed frame body: {0}")]
    Body(String),
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({have} of {want} bytes)")]
    Truncated {
        /// Bytes received.
        have: usize,
        /// Bytes the frame needed.
        want: usize,
    },
    /// Reading from the transport failed.
    #[error("channel read failed: {0}")]
    Io(#[from] std::io::Error),
    /// A message could not be encoded (too large for a frame).
    #[error("message of {0} bytes is too large to frame")]
    Encode(usize),
}

/// A validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Length of the body that follows.
    pub len: u32,
}

impl Header {
    /// Validates a raw header against `max` body bytes.
    pub fn parse(raw: &[u8; HEADER_LEN], max: u32) -> Result<Self, FrameError> {
        let magic = [raw[0], raw[1]];
        if magic != MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        if raw[2] != VERSION {
            return Err(FrameError::Version { got: raw[2] });
        }
        if raw[3] != 0 {
            return Err(FrameError::Reserved(raw[3]));
        }
        let len = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]);
        if len > max {
            return Err(FrameError::TooLarge { len, max });
        }
        Ok(Self { len })
    }

    /// Decodes a body that followed this header.
    pub fn decode_body<T: DeserializeOwned>(&self, body: &[u8]) -> Result<T, FrameError> {
        decode_exact(body)
    }
}

fn decode_exact<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (msg, rest) =
        postcard::take_from_bytes::<T>(body).map_err(|e| FrameError::Body(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Body(format!(
            "{} trailing bytes after the message",
            rest.len()
        )));
    }
    Ok(msg)
}

/// Encodes `msg` as one frame (header and body).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let header = vec![MAGIC[0], MAGIC[1], VERSION, 0, 0, 0, 0, 0];
    let mut out = postcard::to_extend(msg, header).map_err(|e| FrameError::Body(e.to_string()))?;
    let body_len = out.len() - HEADER_LEN;
    let len = u32::try_from(body_len).map_err(|_| FrameError::Encode(body_len))?;
    out[4..8].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// Reads one whole frame from a blocking reader and decodes it. `Ok(None)` on a clean end of
/// stream before any header byte.
pub fn read_frame<T: DeserializeOwned>(
    reader: &mut impl Read,
    max: u32,
) -> Result<Option<T>, FrameError> {
    let mut raw = [0u8; HEADER_LEN];
    let mut have = 0;
    while have < HEADER_LEN {
        match reader.read(&mut raw[have..]) {
            Ok(0) if have == 0 => return Ok(None),
            Ok(0) => {
                return Err(FrameError::Truncated {
                    have,
                    want: HEADER_LEN,
                })
            }
            Ok(n) => have += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let header = Header::parse(&raw, max)?;
    let want = header.len as usize;
    let mut body = vec![0u8; want];
    let mut got = 0;
    while got < want {
        match reader.read(&mut body[got..]) {
            Ok(0) => {
                return Err(FrameError::Truncated {
                    have: HEADER_LEN + got,
                    want: HEADER_LEN + want,
                })
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    header.decode_body(&body).map(Some)
}

/// Incremental decoder for a byte stream that arrives in arbitrary pieces.
///
/// It never buffers more than one header plus one body of at most `max` bytes: a peer that
/// announces more is refused before its body is read.
#[derive(Debug)]
pub struct FrameDecoder {
    max: u32,
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// A decoder that accepts bodies of at most `max` bytes.
    pub fn new(max: u32) -> Self {
        Self {
            max,
            buf: Vec::new(),
        }
    }

    /// Appends received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received and not yet consumed by a complete frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete message, `Ok(None)` when more bytes are needed.
    pub fn next_message<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let mut raw = [0u8; HEADER_LEN];
        raw.copy_from_slice(&self.buf[..HEADER_LEN]);
        let header = Header::parse(&raw, self.max)?;
        let end = HEADER_LEN + header.len as usize;
        if self.buf.len() < end {
            return Ok(None);
        }
        let msg = header.decode_body(&self.buf[HEADER_LEN..end]);
        self.buf.drain(..end);
        msg.map(Some)
    }

    /// Call at end of stream: an error if a partial frame is left.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let want = if self.buf.len() < HEADER_LEN {
            HEADER_LEN
        } else {
            let mut raw = [0u8; HEADER_LEN];
            raw.copy_from_slice(&self.buf[..HEADER_LEN]);
            HEADER_LEN + Header::parse(&raw, self.max)?.len as usize
        };
        Err(FrameError::Truncated {
            have: self.buf.len(),
            want,
        })
    }
}
