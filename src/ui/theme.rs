//! How statuses look: glyph (Unicode and ASCII) and colour, in one table.
//!
//! Only the 16 basic colours are used, so any terminal (and any SSH
//! client) shows them; with NO_COLOR every colour is dropped and status is
//! carried by the glyph and by bold/reverse.

use ratatui::style::{Color, Modifier, Style};

use crate::protocol::JobStatus;

/// A status as drawn: Unicode glyph, ASCII glyph, colour, word.
pub struct Look {
    pub glyph: &'static str,
    pub ascii: &'static str,
    pub color: Color,
    pub word: &'static str,
}

/// Looks for job states. FLAKY, CACHED and allowed failures have their own rows.
/// ASCII glyphs avoid what ASCII drawing uses: `+` (box corners), `~` (a cut
/// name), `-` and `|` (edges).
pub fn look(status: JobStatus, flaky: bool, allowed_failure: bool, cached: bool) -> Look {
    let (glyph, ascii, color, word) = match status {
        JobStatus::Pending => ("○", ".", Color::DarkGray, "pending"),
        JobStatus::Ready => ("◌", "o", Color::Blue, "queued"),
        JobStatus::Running => ("▶", ">", Color::Yellow, "running"),
        JobStatus::Retrying => ("↻", "r", Color::Magenta, "retrying"),
        JobStatus::WaitingApproval => ("⏸", "?", Color::Cyan, "manual"),
        JobStatus::Delayed => ("◷", "d", Color::Cyan, "delayed"),
        JobStatus::Succeeded if flaky => ("≈", "%", Color::Yellow, "flaky"),
        JobStatus::Succeeded if cached => ("≡", "=", Color::Green, "cached"),
        JobStatus::Succeeded => ("✔", "*", Color::Green, "passed"),
        JobStatus::Failed if allowed_failure => ("!", "!", Color::Magenta, "failed (allowed)"),
        JobStatus::Failed => ("✖", "X", Color::Red, "failed"),
        JobStatus::Cancelled => ("⊘", "c", Color::Magenta, "cancelled"),
        JobStatus::Skipped => ("⤼", "s", Color::DarkGray, "skipped"),
    };
    Look {
        glyph,
        ascii,
        color,
        word,
    }
}

/// Every look a job can have, as (status, flaky, allowed failure, cached),
/// in the order the help's legend and the header's counts give them.
pub const LEGEND: [(JobStatus, bool, bool, bool); 13] = [
    (JobStatus::Succeeded, false, false, false),
    (JobStatus::Succeeded, true, false, false),
    (JobStatus::Succeeded, false, false, true),
    (JobStatus::Failed, false, false, false),
    (JobStatus::Failed, false, true, false),
    (JobStatus::Running, false, false, false),
    (JobStatus::Retrying, false, false, false),
    (JobStatus::WaitingApproval, false, false, false),
    (JobStatus::Delayed, false, false, false),
    (JobStatus::Ready, false, false, false),
    (JobStatus::Pending, false, false, false),
    (JobStatus::Cancelled, false, false, false),
    (JobStatus::Skipped, false, false, false),
];

/// Colour choices for one screen.
#[derive(Debug, Clone, Copy)]
pub struct Theme {
    pub color: bool,
    pub ascii: bool,
}

impl Theme {
    pub fn fg(&self, c: Color) -> Style {
        if self.color {
            Style::default().fg(c)
        } else {
            Style::default()
        }
    }

    pub fn status(&self, status: JobStatus, flaky: bool, allowed: bool, cached: bool) -> (String, Style) {
        let l = look(status, flaky, allowed, cached);
        let glyph = if self.ascii { l.ascii } else { l.glyph };
        let mut style = self.fg(l.color);
        if !self.color
            && matches!(
                status,
                JobStatus::Failed | JobStatus::Running | JobStatus::WaitingApproval
            )
        {
            style = style.add_modifier(Modifier::BOLD);
        }
        (glyph.to_string(), style)
    }

    /// Selected item: reversed, which reads without colour too.
    pub fn selected(&self) -> Style {
        Style::default().add_modifier(Modifier::REVERSED | Modifier::BOLD)
    }

    /// Jobs and edges on the selected job's upstream/downstream path.
    pub fn path(&self) -> Style {
        if self.color {
            Style::default().fg(Color::Cyan).add_modifier(Modifier::BOLD)
        } else {
            Style::default().add_modifier(Modifier::BOLD)
        }
    }

    pub fn dim(&self) -> Style {
        if self.color {
            Style::default().fg(Color::DarkGray)
        } else {
            Style::default().add_modifier(Modifier::DIM)
        }
    }

    pub fn title(&self) -> Style {
        Style::default().add_modifier(Modifier::BOLD)
    }

    pub fn warn(&self) -> Style {
        self.fg(Color::Yellow).add_modifier(Modifier::BOLD)
    }

    /// Something healthy (a ready node).
    pub fn ok(&self) -> Style {
        self.fg(Color::Green)
    }

    pub fn error(&self) -> Style {
        self.fg(Color::Red).add_modifier(Modifier::BOLD)
    }

    pub fn search_hit(&self) -> Style {
        if self.color {
            Style::default().fg(Color::Black).bg(Color::Yellow)
        } else {
            Style::default().add_modifier(Modifier::REVERSED)
        }
    }

    /// A glyph, or its ASCII stand-in.
    pub fn glyph(&self, unicode: &'static str, ascii: &'static str) -> &'static str {
        if self.ascii { ascii } else { unicode }
    }

    /// Key names as the help and footer show them.
    pub fn key_name(&self, shown: &'static str) -> String {
        if !self.ascii {
            return shown.to_string();
        }
        shown
            .replace('↑', "Up")
            .replace('↓', "Down")
            .replace('←', "Left")
            .replace('→', "Right")
    }

    pub fn border_set(&self) -> ratatui::symbols::border::Set<'static> {
        if self.ascii {
            ratatui::symbols::border::Set {
                top_left: "+",
                top_right: "+",
                bottom_left: "+",
                bottom_right: "+",
                vertical_left: "|",
                vertical_right: "|",
                horizontal_top: "-",
                horizontal_bottom: "-",
            }
        } else {
            ratatui::symbols::border::PLAIN
        }
    }
}
