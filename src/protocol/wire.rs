//! The run socket's frames: each a JSON object behind a four-byte length
//! (big-endian), at most [`MAX_FRAME`] bytes.
//!
//! A connection starts with the client's `hello` (the protocol version it
//! speaks and the sequence number to stream from) and the server's
//! `welcome` (or `refused`, which ends it). Then the server sends `event`s
//! in order, `missed` where it could not, and a `reply` to each `command`
//! the client sends (matched by `id`); `end` after the run's last event.

use serde::{Deserialize, Serialize};
use tokio_util::codec::LengthDelimitedCodec;

use super::command::Command;
use super::event::Event;

/// The version this trackside speaks. A server refuses any other.
pub const VERSION: u32 = 1;

/// `from` in a hello for "from now on": no replay, only what comes next.
pub const LIVE: u64 = u64::MAX;

/// The largest frame either side accepts: a run summary of thousands of
/// jobs fits; a frame claiming more ends the connection.
pub const MAX_FRAME: usize = 16 << 20;

/// The framing both sides use.
pub fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder().max_frame_length(MAX_FRAME).new_codec()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Hello {
        version: u32,
        /// Stream events from this sequence number; `None`: none at all
        /// (a connection that only sends commands).
        from: Option<u64>,
        /// Watch only: commands are refused.
        #[serde(default)]
        read_only: bool,
    },
    Command {
        id: u64,
        command: Command,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Welcome {
        version: u32,
        run_id: String,
        /// Whether commands will be taken (not for `read_only`, nor from a
        /// run that has ended).
        can_steer: bool,
    },
    /// The handshake failed (a version this server does not speak): why.
    Refused {
        message: String,
    },
    Event {
        event: Box<Event>,
    },
    Missed {
        from: u64,
        to: u64,
    },
    Reply {
        id: u64,
        /// What was done, for people; absent when refused.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        done: Option<String>,
        /// Why not.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<WireError>,
    },
    /// The run's last event has been sent.
    End,
}

/// A refusal as it travels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub enum WireError {
    Refused(String),
    Ended,
    ReadOnly,
}

impl From<WireError> for super::link::LinkError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Refused(m) => super::link::LinkError::Refused(m),
            WireError::Ended => super::link::LinkError::Ended,
            WireError::ReadOnly => super::link::LinkError::ReadOnly,
        }
    }
}

impl From<super::link::LinkError> for WireError {
    fn from(e: super::link::LinkError) -> Self {
        match e {
            super::link::LinkError::Ended => WireError::Ended,
            super::link::LinkError::ReadOnly => WireError::ReadOnly,
            other => WireError::Refused(other.to_string()),
        }
    }
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("not a frame of the run protocol: {0}")]
    Garbage(#[from] serde_json::Error),
}

/// A frame's JSON.
pub fn encode<T: Serialize>(frame: &T) -> bytes::Bytes {
    // Our frames are plain data: serializing them cannot fail.
    bytes::Bytes::from(serde_json::to_vec(frame).unwrap_or_default())
}

/// An `event` frame's JSON, written from the shared event (no copy of it).
pub fn encode_event(event: &Event) -> bytes::Bytes {
    let mut out = br#"{"type":"event","event":"#.to_vec();
    if serde_json::to_writer(&mut out, event).is_err() {
        return encode(&ServerFrame::Missed {
            from: event.seq,
            to: event.seq,
        });
    }
    out.push(b'}');
    bytes::Bytes::from(out)
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, FrameError> {
    Ok(serde_json::from_slice(bytes)?)
}
