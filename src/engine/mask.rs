//! Secret masking: every secret value becomes `[MASKED]` in anything
//! trackside writes or shows (log lines, events, records).
//!
//! Masking happens once, in the actor, before an event is recorded or
//! broadcast, so no consumer can forget it. A line too long to pass whole
//! is split by the executor; the actor's [`SplitMasker`] masks across the
//! split points, so a secret cut in two is still masked.

pub const MASK: &str = "[MASKED]";
/// What GitHub shows in a secret's place (a GitHub workflow's runs).
pub const GITHUB_MASK: &str = "***";

#[derive(Debug, Clone, Default)]
pub struct Masker {
    /// Longest first, so a secret containing another is masked whole.
    values: Vec<String>,
    /// What a secret becomes; [`MASK`] unless set.
    mark: Option<&'static str>,
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
        Masker { values, mark: None }
    }

    /// Masks with `mark` instead of [`MASK`].
    pub fn marked(mut self, mark: &'static str) -> Self {
        self.mark = Some(mark);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Masks every string of `value`, keys too: string by string, before
    /// it is JSON text, whose escapes would hide a secret holding a quote
    /// or a line break, or be cut by a mask.
    pub fn mask_json(&self, value: &mut serde_json::Value) {
        use serde_json::Value;
        let mut stack = vec![value];
        while let Some(v) = stack.pop() {
            match v {
                Value::String(s) => {
                    if let Some(m) = self.mask(s) {
                        *s = m;
                    }
                }
                Value::Array(items) => stack.extend(items.iter_mut()),
                Value::Object(map) => {
                    if map.keys().any(|k| self.mask(k).is_some()) {
                        *map = std::mem::take(map)
                            .into_iter()
                            .map(|(k, v)| (self.mask(&k).unwrap_or(k), v))
                            .collect();
                    }
                    stack.extend(map.values_mut());
                }
                Value::Null | Value::Bool(_) | Value::Number(_) => {}
            }
        }
    }

    /// Masks `secret` too from now on (GitHub's `::add-mask::`).
    pub fn add(&mut self, secret: &str) {
        let mut values = std::mem::take(&mut self.values);
        values.push(secret.to_string());
        let mark = self.mark;
        *self = Masker::new(values);
        self.mark = mark;
    }

    /// Length in bytes of the longest secret (0 when there are none).
    pub fn longest(&self) -> usize {
        self.values.first().map_or(0, String::len)
    }

    /// Byte ranges of the secrets in `text` (longest first wins; no overlaps).
    fn occurrences(&self, text: &str) -> Vec<(usize, usize)> {
        let mut found: Vec<(usize, usize)> = Vec::new();
        for v in &self.values {
            for (at, _) in text.match_indices(v.as_str()) {
                let end = at + v.len();
                if !found.iter().any(|&(s, e)| at < e && s < end) {
                    found.push((at, end));
                }
            }
        }
        found
    }

    /// The masked text, or `None` when nothing needed masking.
    pub fn mask(&self, text: &str) -> Option<String> {
        if !self.values.iter().any(|v| text.contains(v.as_str())) {
            return None;
        }
        let mut out = text.to_string();
        for v in &self.values {
            if out.contains(v.as_str()) {
                out = out.replace(v.as_str(), self.mark.unwrap_or(MASK));
            }
        }
        Some(out)
    }
}

/// Masks one output stream whose long lines arrive in pieces. Each piece
/// but the last of a line keeps back a tail as long as the longest secret
/// (less one byte), which goes in front of the next piece: a secret that
/// straddles a split is whole in one of them. A tail never ends inside a
/// secret found whole, so nothing is emitted half-masked.
#[derive(Debug, Default)]
pub struct SplitMasker {
    carry: String,
}

impl SplitMasker {
    /// The masked text to emit for `piece` (`partial`: the line goes on in
    /// the next piece). May be empty when everything is held back.
    pub fn piece(&mut self, masker: &Masker, piece: &str, partial: bool) -> String {
        let mut text = std::mem::take(&mut self.carry);
        text.push_str(piece);
        if !partial || masker.is_empty() {
            return masker.mask(&text).unwrap_or(text);
        }
        let keep = masker.longest().saturating_sub(1);
        let mut cut = text.len().saturating_sub(keep);
        // Not inside a secret found whole: emit it, masked, with this piece.
        for (s, e) in masker.occurrences(&text) {
            if s < cut && cut < e {
                cut = e;
            }
        }
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        self.carry = text[cut..].to_string();
        text.truncate(cut);
        masker.mask(&text).unwrap_or(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_values_are_masked_string_by_string_keys_too() {
        let m = Masker::new([
            "plain-77".to_string(),
            "quo\"te\\back\ttab".to_string(),
            "two\nlines".to_string(),
            "nopass".to_string(),
        ])
        .marked(GITHUB_MASK);
        let mut value = serde_json::json!({
            "a": "x plain-77 y",
            "b": ["quo\"te\\back\ttab", {"deep": "two\nlines"}],
            "key plain-77": 1,
            "c": "x\nopass",
            "n": null,
        });
        // As JSON text the escaped secrets are not there to find, and one
        // is there across an escape (`x\nopass`) that no string holds.
        let text = serde_json::to_string_pretty(&value).unwrap();
        assert!(!text.contains("quo\"te") && !text.contains("two\nlines") && text.contains("nopass"));
        m.mask_json(&mut value);
        assert_eq!(
            value,
            serde_json::json!({
                "a": "x *** y",
                "b": ["***", {"deep": "***"}],
                "key ***": 1,
                "c": "x\nopass",
                "n": null,
            })
        );
    }

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

    #[test]
    fn a_secret_split_across_pieces_is_masked() {
        let m = Masker::new(["S3cretToken".to_string()]);
        for split in 1..11 {
            let line = "xxxxxxxxxxS3cretTokenyyyy";
            let (a, b) = line.split_at(10 + split);
            let mut sm = SplitMasker::default();
            let out = sm.piece(&m, a, true) + &sm.piece(&m, b, false);
            assert_eq!(out, "xxxxxxxxxx[MASKED]yyyy", "split at {split}");
        }
    }

    #[test]
    fn a_secret_split_over_three_pieces_and_whole_ones_are_masked() {
        let m = Masker::new(["abcdefgh".to_string()]);
        let mut sm = SplitMasker::default();
        let out = [("1abcdefgh2abc", true), ("de", true), ("fgh3", false)]
            .iter()
            .map(|(p, partial)| sm.piece(&m, p, *partial))
            .collect::<String>();
        assert_eq!(out, "1[MASKED]2[MASKED]3");
    }

    #[test]
    fn without_secrets_pieces_pass_unchanged() {
        let mut sm = SplitMasker::default();
        assert_eq!(sm.piece(&Masker::default(), "abc", true), "abc");
        assert_eq!(sm.piece(&Masker::default(), "def", false), "def");
    }
}
