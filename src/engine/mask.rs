//! Secret masking: every secret value becomes `[MASKED]` in anything
//! trackside writes or shows (log lines, events, records).
//!
//! Masking happens once, in the actor, before an event is recorded or
//! broadcast, so no consumer can forget it.

pub const MASK: &str = "[MASKED]";

#[derive(Debug, Clone, Default)]
pub struct Masker {
    /// Longest first, so a secret containing another is masked whole.
    values: Vec<String>,
}

impl Masker {
    pub fn new<I: IntoIterator<Item = String>>(secrets: I) -> Self {
        let mut values: Vec<String> = Vec::new();
        for s in secrets {
            // A multi-line secret is masked whole and line by line, since
            // output arrives one line at a time.
            for part in std::iter::once(s.as_str()).chain(s.lines()) {
                let part = part.trim_end_matches('\r');
                if !part.trim().is_empty() && !values.iter().any(|v| v == part) {
                    values.push(part.to_string());
                }
            }
        }
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        Masker { values }
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The masked text, or `None` when nothing needed masking.
    pub fn mask(&self, text: &str) -> Option<String> {
        if !self.values.iter().any(|v| text.contains(v.as_str())) {
            return None;
        }
        let mut out = text.to_string();
        for v in &self.values {
            if out.contains(v.as_str()) {
                out = out.replace(v.as_str(), MASK);
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_every_occurrence_and_lines_of_multiline_secrets() {
        let m = Masker::new(["hunter2".to_string(), "line-one\nline-two".to_string()]);
        assert_eq!(
            m.mask("pw=hunter2 again hunter2").as_deref(),
            Some("pw=[MASKED] again [MASKED]")
        );
        assert_eq!(m.mask("got line-two").as_deref(), Some("got [MASKED]"));
        assert_eq!(m.mask("nothing here"), None);
    }

    #[test]
    fn longer_secrets_win_over_their_parts() {
        let m = Masker::new(["abc".to_string(), "abcdef".to_string()]);
        assert_eq!(m.mask("xabcdefx").as_deref(), Some("x[MASKED]x"));
    }
}
