//! A step's output cut into the lines its log shows, for every executor
//! (a shell's pipes, a container's log stream).
//!
//! A line ends at `\n` (a `\r` before it is dropped: Windows line ends).
//! Once a line reaches [`MAX_LINE`] bytes without one, that much is handed
//! on as a piece marked partial, and the line goes on in the next piece:
//! one endless line cannot take unbounded memory. A piece ends where the
//! bytes do (a `\r` at its end is kept; a character cut in two shows as
//! U+FFFD on both sides). Only the start of an unfinished line is kept
//! between reads, in at most [`MAX_LINE`] bytes: a step that is quiet, or
//! prints whole lines, holds no buffer at all.

use tokio::sync::mpsc;

use super::shell::MAX_LINE;
use super::{OutputLine, Stream};

/// The unfinished line of one output stream.
#[derive(Debug, Default)]
pub struct Lines {
    pending: Vec<u8>,
}

impl Lines {
    /// Takes the next `bytes` of the stream and hands `line` each line they
    /// finish, as (text, partial). Invalid UTF-8 becomes U+FFFD.
    pub fn push(&mut self, mut bytes: &[u8], mut line: impl FnMut(String, bool)) {
        while !bytes.is_empty() {
            let room = MAX_LINE - self.pending.len();
            let window = &bytes[..bytes.len().min(room)];
            match memchr::memchr(b'\n', window) {
                Some(end) => {
                    let text = if self.pending.is_empty() {
                        &window[..end]
                    } else {
                        self.keep(&window[..end]);
                        &self.pending[..]
                    };
                    line(text_of(text, false), false);
                    self.pending.clear();
                    bytes = &bytes[end + 1..];
                }
                None => {
                    self.keep(window);
                    bytes = &bytes[window.len()..];
                    if self.pending.len() >= MAX_LINE {
                        line(text_of(&self.pending, true), true);
                        self.pending.clear();
                    }
                }
            }
        }
        if self.pending.is_empty() {
            // Between lines nothing is kept, not even the room.
            self.pending = Vec::new();
        }
    }

    /// Adds `bytes` to the unfinished line, growing its room as `Vec` would
    /// but never past [`MAX_LINE`] (the line never holds more).
    fn keep(&mut self, bytes: &[u8]) {
        let need = self.pending.len() + bytes.len();
        if need > self.pending.capacity() {
            let room = (self.pending.capacity() * 2).min(MAX_LINE).max(need);
            self.pending.reserve_exact(room - self.pending.len());
        }
        self.pending.extend_from_slice(bytes);
    }

    /// The stream ended: its unfinished last line, if any, is a line.
    pub fn finish(&mut self, mut line: impl FnMut(String, bool)) {
        if !self.pending.is_empty() {
            line(text_of(&self.pending, false), false);
        }
        self.pending = Vec::new();
    }

    /// Bytes held for an unfinished line.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.pending.capacity()
    }
}

/// Hands `lines` (as [`Lines`] gave them) on to the step's log. A closed
/// receiver means nobody listens any more: the caller goes on draining
/// its stream.
pub async fn send(tx: &mpsc::Sender<OutputLine>, stream: Stream, lines: Vec<(String, bool)>) {
    for (text, partial) in lines {
        let _ = tx
            .send(OutputLine {
                stream,
                text,
                partial,
                node: None,
            })
            .await;
    }
}

fn text_of(bytes: &[u8], partial: bool) -> String {
    let bytes = if partial {
        bytes
    } else {
        bytes.strip_suffix(b"\r").unwrap_or(bytes)
    };
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(chunks: &[&[u8]]) -> (Vec<(String, bool)>, Lines) {
        let mut lines = Lines::default();
        let mut out = Vec::new();
        for c in chunks {
            lines.push(c, |t, p| out.push((t, p)));
        }
        (out, lines)
    }

    fn whole(texts: &[&str]) -> Vec<(String, bool)> {
        texts.iter().map(|t| (t.to_string(), false)).collect()
    }

    #[test]
    fn lines_are_cut_at_newlines_wherever_the_reads_split_them() {
        let text = b"one\r\ntwo\n\nthree\rstill three\nfour";
        for split in 0..text.len() {
            let (got, mut lines) = cut(&[&text[..split], &text[split..]]);
            assert_eq!(
                got,
                whole(&["one", "two", "", "three\rstill three"]),
                "split at {split}"
            );
            let mut last = Vec::new();
            lines.finish(|t, p| last.push((t, p)));
            assert_eq!(last, whole(&["four"]));
        }
    }

    #[test]
    fn a_quiet_stream_or_one_of_whole_lines_holds_nothing() {
        let (_, lines) = cut(&[b"a whole line\n", b"and another\n"]);
        assert_eq!(lines.held(), 0);
        let (got, lines) = cut(&[b"half a li"]);
        assert!(got.is_empty() && lines.held() > 0);
        // Once the line is finished, its room goes.
        let (got, lines) = cut(&[b"half a li", b"ne\n"]);
        assert_eq!(got, whole(&["half a line"]));
        assert_eq!(lines.held(), 0);
    }

    #[test]
    fn an_endless_line_comes_in_pieces_of_max_line_and_holds_no_more() {
        let mut long = vec![b'x'; MAX_LINE * 2 + 10];
        long.extend_from_slice(b"\nnext\n");
        // Reads that do not divide the line: the newline and the next line
        // come in the read that also ends the last piece.
        for size in [4096, 5000, MAX_LINE - 1, long.len()] {
            let mut lines = Lines::default();
            let mut got = Vec::new();
            for chunk in long.chunks(size) {
                lines.push(chunk, |t, p| got.push((t.len(), p)));
                assert!(lines.held() <= MAX_LINE, "reads of {size}: held {}", lines.held());
            }
            assert_eq!(
                got,
                vec![(MAX_LINE, true), (MAX_LINE, true), (10, false), (4, false)],
                "reads of {size}"
            );
        }
        // A line of exactly MAX_LINE bytes: a full piece, then the rest of
        // the line, empty.
        let mut exact = vec![b'x'; MAX_LINE];
        exact.push(b'\n');
        let (got, _) = cut(&[&exact]);
        assert_eq!(
            got.iter().map(|(t, p)| (t.len(), *p)).collect::<Vec<_>>(),
            vec![(MAX_LINE, true), (0, false)]
        );
        // Shorter, with a Windows line end within the limit: one whole line.
        let mut crlf = vec![b'x'; MAX_LINE - 2];
        crlf.extend_from_slice(b"\r\n");
        let (got, _) = cut(&[&crlf]);
        assert_eq!(
            got.iter().map(|(t, p)| (t.len(), *p)).collect::<Vec<_>>(),
            vec![(MAX_LINE - 2, false)]
        );
        // A piece keeps a `\r` that happens to end it: the line goes on.
        let mut cr = vec![b'y'; MAX_LINE - 1];
        cr.extend_from_slice(b"\rz\n");
        let (got, _) = cut(&[&cr]);
        assert_eq!(
            got.iter().map(|(t, p)| (t.len(), *p)).collect::<Vec<_>>(),
            vec![(MAX_LINE, true), (1, false)]
        );
        assert!(got[0].0.ends_with('\r'));
    }

    #[test]
    fn invalid_utf8_is_replaced_not_lost() {
        let (got, _) = cut(&[b"caf\xc3", b"\xa9 \xff\n"]);
        assert_eq!(got, whole(&["café \u{fffd}"]));
    }
}
