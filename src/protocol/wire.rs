//! The run socket's frames: each a JSON object behind a four-byte length
//! (big-endian), at most [`MAX_FRAME`] bytes.
//!
//! A connection starts with the client's `hello` (the protocol version it
//! speaks and the sequence number to stream from) and the server's
//! `welcome` (or `refused`, which ends it). Then the server sends `event`s
//! in order, `missed` where it could not, and a `reply` to each `command`
//! the client sends (matched by `id`), an `answer` to each `query`; `end`
//! after the run's last event.

use serde::{Deserialize, Serialize};
use tokio_util::codec::LengthDelimitedCodec;

use super::command::Command;
use super::event::{Event, EventKind, Stream};
use super::query::{Answer, Query};

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
    /// Answered with an `answer` of the same `id`; read-only connections
    /// may ask too.
    Query {
        id: u64,
        query: Query,
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
        event: std::sync::Arc<Event>,
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
    Answer {
        id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        answer: Option<Answer>,
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
    #[error("not a frame of the run protocol: a log line's frame is cut short or not UTF-8")]
    Line,
}

/// A frame's JSON.
pub fn encode<T: Serialize>(frame: &T) -> bytes::Bytes {
    // Our frames are plain data: serializing them cannot fail.
    bytes::Bytes::from(serde_json::to_vec(frame).unwrap_or_default())
}

/// An event's frame, written from the shared event (no copy of it): a log
/// line in the compact form of [`LINE`], anything else as an `event`
/// frame's JSON.
pub fn encode_event(event: &Event) -> bytes::Bytes {
    if let EventKind::LogLine {
        job,
        attempt,
        step,
        stream,
        line,
        line_no,
    } = &event.kind
    {
        let mut out = Vec::with_capacity(38 + job.len() + step.len() + line.len());
        out.push(LINE);
        out.extend_from_slice(&event.seq.to_le_bytes());
        out.extend_from_slice(&event.ts.to_le_bytes());
        out.extend_from_slice(&attempt.to_le_bytes());
        out.extend_from_slice(&line_no.to_le_bytes());
        out.push(u8::from(*stream == Stream::Stderr));
        for text in [job, step] {
            // Names are short; one longer than 4 GiB cannot exist in memory here.
            out.extend_from_slice(&u32::try_from(text.len()).unwrap_or(u32::MAX).to_le_bytes());
            out.extend_from_slice(text.as_bytes());
        }
        out.extend_from_slice(line.as_bytes());
        return bytes::Bytes::from(out);
    }
    event_json(event)
}

/// The first byte of a log line's frame (a JSON frame starts with `{`).
/// Then, little-endian: seq u64, ts u64, attempt u32, line_no u64, stream u8
/// (1: stderr), the job and the step (u32 length, UTF-8), and the line (the
/// rest, UTF-8). Log lines are nearly all of a busy run's frames; this form
/// is read about ten times faster than their JSON.
pub const LINE: u8 = b'L';

/// A frame from the server: a log line's compact form, or JSON.
pub fn decode_server(bytes: &[u8]) -> Result<ServerFrame, FrameError> {
    if bytes.first() != Some(&LINE) {
        return decode(bytes);
    }
    let mut r = Cursor(&bytes[1..]);
    let seq = r.u64()?;
    let ts = r.u64()?;
    let attempt = u32::from_le_bytes(r.array()?);
    let line_no = r.u64()?;
    let stream = if r.array::<1>()? == [1] {
        Stream::Stderr
    } else {
        Stream::Stdout
    };
    let job = r.text()?;
    let step = r.text()?;
    let line = String::from_utf8(r.0.to_vec()).map_err(|_| FrameError::Line)?;
    Ok(ServerFrame::Event {
        event: std::sync::Arc::new(Event {
            seq,
            ts,
            kind: EventKind::LogLine {
                job,
                attempt,
                step,
                stream,
                line,
                line_no,
            },
        }),
    })
}

/// Reads a log line's frame.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], FrameError> {
        if self.0.len() < n {
            return Err(FrameError::Line);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        self.take(N)?.try_into().map_err(|_| FrameError::Line)
    }

    fn u64(&mut self) -> Result<u64, FrameError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn text(&mut self) -> Result<String, FrameError> {
        let len = usize::try_from(u32::from_le_bytes(self.array()?)).map_err(|_| FrameError::Line)?;
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| FrameError::Line)
    }
}

fn event_json(event: &Event) -> bytes::Bytes {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> Event {
        Event {
            seq: 41,
            ts: 1_796_452_917_117,
            kind: EventKind::LogLine {
                job: "test 1/3".into(),
                attempt: 2,
                step: "unit tests".into(),
                stream: Stream::Stderr,
                line: text.into(),
                line_no: 9_000_000_001,
            },
        }
    }

    fn back(frame: &[u8]) -> Event {
        match decode_server(frame) {
            Ok(ServerFrame::Event { event }) => (*event).clone(),
            other => panic!("not an event: {other:?}"),
        }
    }

    #[test]
    fn a_log_line_goes_compact_and_comes_back_whole() {
        for text in ["", "plain", "tabs\tand ünïcödé ✔", "{\"looks\":\"like json\"}"] {
            let ev = line(text);
            let frame = encode_event(&ev);
            assert_eq!(frame[0], LINE);
            assert_eq!(back(&frame), ev);
        }
    }

    #[test]
    fn other_events_go_as_json_frames() {
        let ev = Event {
            seq: 3,
            ts: 5,
            kind: EventKind::GateWaiting { job: "deploy".into() },
        };
        let frame = encode_event(&ev);
        assert_eq!(frame[0], b'{');
        let text = std::str::from_utf8(&frame).expect("utf-8");
        assert!(text.starts_with(r#"{"type":"event","event":{"seq":3"#), "{text}");
        assert_eq!(back(&frame), ev);
    }

    #[test]
    fn a_cut_or_broken_frame_is_an_error_not_a_panic() {
        let frame = encode_event(&line("some output"));
        // Cut anywhere inside the fixed part or the names: an error.
        for cut in 1..(1 + 8 + 8 + 4 + 8 + 1 + 4 + 8 + 4 + 10) {
            assert!(decode_server(&frame[..cut]).is_err(), "cut at {cut}");
        }
        // A name claiming more bytes than there are.
        let mut lying = frame.to_vec();
        lying[30..34].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_server(&lying).is_err());
        // Not UTF-8.
        let mut bad = frame.to_vec();
        bad.push(0xff);
        assert!(matches!(decode_server(&bad), Err(FrameError::Line)));
        // Garbage that is not JSON either.
        assert!(matches!(decode_server(b"{not json"), Err(FrameError::Garbage(_))));
        assert!(decode_server(b"").is_err());
    }

    #[test]
    fn the_largest_log_answer_fits_a_frame() {
        use crate::protocol::query::{self, LineKind, RecordedLine};
        // Text up to the budget, then the longest record line on top, all
        // of it control characters (six bytes each in JSON).
        let mut lines = Vec::new();
        let mut text = 0;
        while text < query::MAX_TEXT {
            lines.push(RecordedLine {
                ts_ms: u64::MAX,
                kind: LineKind::Err,
                text: "\u{1}".repeat(64 << 10),
            });
            text += 64 << 10;
        }
        lines.push(RecordedLine {
            ts_ms: u64::MAX,
            kind: LineKind::Err,
            text: "\u{1b}".repeat(1 << 20),
        });
        let frame = encode(&ServerFrame::Answer {
            id: u64::MAX,
            answer: Some(Answer::Log { lines, cut: true }),
            error: None,
        });
        assert!(frame.len() < MAX_FRAME, "{} bytes", frame.len());
        assert!(matches!(decode_server(&frame), Ok(ServerFrame::Answer { .. })));
    }

    #[test]
    fn frames_longer_than_the_limit_are_refused_by_the_codec() {
        use tokio_util::codec::Decoder;
        let mut codec = codec();
        let mut buf = bytes::BytesMut::new();
        buf.extend_from_slice(&u32::try_from(MAX_FRAME + 1).expect("fits").to_be_bytes());
        assert!(codec.decode(&mut buf).is_err());
        // A partial frame waits for the rest.
        let mut buf = bytes::BytesMut::new();
        buf.extend_from_slice(&10u32.to_be_bytes());
        buf.extend_from_slice(b"{\"ty");
        assert!(matches!(codec.decode(&mut buf), Ok(None)));
        buf.extend_from_slice(b"pe\":1}");
        assert_eq!(
            codec.decode(&mut buf).ok().flatten().as_deref(),
            Some(&b"{\"type\":1}"[..])
        );
    }
}
