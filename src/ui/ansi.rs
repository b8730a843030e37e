//! Job output as styled text: SGR colour codes become span styles; every
//! other escape sequence and control character is shown visibly (`^G`,
//! `\e[2J` becomes `^[[2J`), so job output can never move the cursor,
//! clear the screen or retitle the terminal under the UI.

use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Span;

/// What a line written with carriage returns (a progress bar:
/// `10%\r50%\r100%`) ends up showing: its last non-empty part, as GitLab's
/// and GitHub's log viewers show it.
pub fn final_state(text: &str) -> &str {
    match text.rsplit('\r').find(|part| !part.is_empty()) {
        Some(part) if text.contains('\r') => part,
        _ => text,
    }
}

/// Splits `text` into styled spans. With `color` false, SGR codes are dropped.
/// A line with carriage returns shows its [`final_state`].
pub fn spans(text: &str, color: bool) -> Vec<Span<'static>> {
    let text = final_state(text);
    let mut out: Vec<Span<'static>> = Vec::new();
    let mut style = Style::default();
    let mut buf = String::new();
    let mut chars = text.chars().peekable();
    let flush = |buf: &mut String, out: &mut Vec<Span<'static>>, style: Style| {
        if !buf.is_empty() {
            out.push(Span::styled(std::mem::take(buf), style));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\x1b' if chars.peek() == Some(&'[') => {
                chars.next();
                let mut params = String::new();
                let mut fin = None;
                for d in chars.by_ref() {
                    if ('\x40'..='\x7e').contains(&d) {
                        fin = Some(d);
                        break;
                    }
                    params.push(d);
                    if params.len() > 64 {
                        break;
                    }
                }
                if fin == Some('m') {
                    flush(&mut buf, &mut out, style);
                    if color {
                        style = apply_sgr(style, &params);
                    }
                } else {
                    buf.push_str("^[[");
                    buf.push_str(&params);
                    if let Some(f) = fin {
                        buf.push(f);
                    }
                }
            }
            '\t' => buf.push_str("    "),
            c if c.is_control() => {
                let code = c as u32;
                if code < 0x20 {
                    buf.push('^');
                    buf.push(char::from_u32(code + 0x40).unwrap_or('?'));
                } else {
                    buf.push_str(&format!("\\u{{{code:x}}}"));
                }
            }
            c => buf.push(c),
        }
    }
    flush(&mut buf, &mut out, style);
    out
}

fn basic(n: u16) -> Color {
    match n % 8 {
        0 => Color::Black,
        1 => Color::Red,
        2 => Color::Green,
        3 => Color::Yellow,
        4 => Color::Blue,
        5 => Color::Magenta,
        6 => Color::Cyan,
        _ => Color::Gray,
    }
}

fn bright(n: u16) -> Color {
    match n % 8 {
        0 => Color::DarkGray,
        1 => Color::LightRed,
        2 => Color::LightGreen,
        3 => Color::LightYellow,
        4 => Color::LightBlue,
        5 => Color::LightMagenta,
        6 => Color::LightCyan,
        _ => Color::White,
    }
}

fn apply_sgr(mut style: Style, params: &str) -> Style {
    let nums: Vec<u16> = if params.is_empty() {
        vec![0]
    } else {
        params.split(';').map(|p| p.parse().unwrap_or(0)).collect()
    };
    let mut i = 0;
    while i < nums.len() {
        let n = nums[i];
        style = match n {
            0 => Style::default(),
            1 => style.add_modifier(Modifier::BOLD),
            2 => style.add_modifier(Modifier::DIM),
            3 => style.add_modifier(Modifier::ITALIC),
            4 => style.add_modifier(Modifier::UNDERLINED),
            7 => style.add_modifier(Modifier::REVERSED),
            22 => style.remove_modifier(Modifier::BOLD | Modifier::DIM),
            23 => style.remove_modifier(Modifier::ITALIC),
            24 => style.remove_modifier(Modifier::UNDERLINED),
            27 => style.remove_modifier(Modifier::REVERSED),
            30..=37 => style.fg(basic(n - 30)),
            39 => style.fg(Color::Reset),
            40..=47 => style.bg(basic(n - 40)),
            49 => style.bg(Color::Reset),
            90..=97 => style.fg(bright(n - 90)),
            100..=107 => style.bg(bright(n - 100)),
            38 | 48 => {
                let color = match nums.get(i + 1) {
                    Some(5) => {
                        i += 2;
                        nums.get(i).map(|&c| Color::Indexed(c.min(255) as u8))
                    }
                    Some(2) => {
                        i += 4;
                        match (nums.get(i - 2), nums.get(i - 1), nums.get(i)) {
                            (Some(&r), Some(&g), Some(&b)) => Some(Color::Rgb(r as u8, g as u8, b as u8)),
                            _ => None,
                        }
                    }
                    _ => None,
                };
                match (n, color) {
                    (38, Some(c)) => style.fg(c),
                    (48, Some(c)) => style.bg(c),
                    _ => style,
                }
            }
            _ => style,
        };
        i += 1;
    }
    style
}

/// Re-styles the parts of `spans` matching `needle` (case-insensitive).
pub fn highlight(spans: Vec<Span<'static>>, needle: &str, hit: Style) -> Vec<Span<'static>> {
    if needle.is_empty() {
        return spans;
    }
    let text: String = spans.iter().map(|s| s.content.as_ref()).collect();
    let lower = text.to_lowercase();
    let needle = needle.to_lowercase();
    if lower.len() != text.len() {
        return spans; // case folding changed byte offsets; leave it unhighlighted
    }
    let ranges: Vec<(usize, usize)> = lower.match_indices(&needle).map(|(i, m)| (i, i + m.len())).collect();
    if ranges.is_empty() {
        return spans;
    }
    let mut out = Vec::new();
    let mut offset = 0;
    for span in spans {
        let content = span.content.to_string();
        let (start, end) = (offset, offset + content.len());
        let mut cut = vec![start, end];
        for &(a, b) in &ranges {
            for x in [a, b] {
                if x > start && x < end {
                    cut.push(x);
                }
            }
        }
        cut.sort_unstable();
        cut.dedup();
        for w in cut.windows(2) {
            let piece = &content[w[0] - start..w[1] - start];
            let in_hit = ranges.iter().any(|&(a, b)| w[0] >= a && w[1] <= b);
            let style = if in_hit { span.style.patch(hit) } else { span.style };
            out.push(Span::styled(piece.to_string(), style));
        }
        offset = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(spans: &[Span]) -> String {
        spans.iter().map(|s| s.content.as_ref()).collect()
    }

    #[test]
    fn sgr_colours_become_styles() {
        let s = spans("\x1b[31mred\x1b[0m plain \x1b[1;38;5;208mbold\x1b[m", true);
        assert_eq!(text(&s), "red plain bold");
        assert_eq!(s[0].style.fg, Some(Color::Red));
        assert_eq!(s[1].style, Style::default());
        assert_eq!(s[2].style.fg, Some(Color::Indexed(208)));
        assert!(s[2].style.add_modifier.contains(Modifier::BOLD));
    }

    #[test]
    fn other_escapes_and_controls_are_shown_not_obeyed() {
        let s = spans("a\x1b[2Jb\x07c", true);
        assert_eq!(text(&s), "a^[[2Jb^Gc");
    }

    #[test]
    fn a_progress_line_shows_its_final_state() {
        assert_eq!(
            text(&spans("progress 10%\rprogress 50%\rprogress 100%", true)),
            "progress 100%"
        );
        assert_eq!(
            text(&spans("done\r\r", true)),
            "done",
            "trailing returns change nothing"
        );
        assert_eq!(text(&spans("plain", true)), "plain");
    }

    #[test]
    fn without_colour_sgr_is_dropped() {
        let s = spans("\x1b[32mok\x1b[0m", false);
        assert_eq!(text(&s), "ok");
        assert!(s.iter().all(|x| x.style == Style::default()));
    }

    #[test]
    fn search_hits_are_restyled_across_spans() {
        let hit = Style::default().add_modifier(Modifier::REVERSED);
        let s = highlight(spans("\x1b[31merr\x1b[0mor here", true), "ror", hit);
        assert_eq!(text(&s), "error here");
        let marked: String = s
            .iter()
            .filter(|x| x.style.add_modifier.contains(Modifier::REVERSED))
            .map(|x| x.content.as_ref())
            .collect();
        assert_eq!(marked, "ror");
    }
}
