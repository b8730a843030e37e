//! A job's `strategy.matrix`, expanded as GitHub documents it: the product
//! of its keys' values in the order written, `exclude` removing every
//! combination it matches (partially), then each `include` entry added to
//! every combination whose original values it leaves alone, or made a
//! combination of its own when it fits none. At most [`MAX_JOBS`]
//! combinations (GitHub's limit), checked before each is built.

use serde_json::Value;

/// GitHub's limit on the jobs one matrix makes.
pub const MAX_JOBS: usize = 256;

/// One combination: keys and values in the order GitHub names them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Combo(pub Vec<(String, Value)>);

impl Combo {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Sets `key` (in its place when there, else last).
    pub fn insert(&mut self, key: String, value: Value) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    /// The `matrix` context.
    pub fn to_json(&self) -> Value {
        Value::Object(self.0.iter().cloned().collect())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum MatrixError {
    /// The combinations would be more than [`MAX_JOBS`].
    TooMany(usize),
    /// Nothing is left (every combination excluded, or empty lists).
    Empty,
}

/// The combinations of `keys` (each with its values, in the order written),
/// less `exclude`, plus `include`.
pub fn expand(keys: &[(String, Vec<Value>)], include: &[Combo], exclude: &[Combo]) -> Result<Vec<Combo>, MatrixError> {
    let mut combos: Vec<Combo> = Vec::new();
    if !keys.is_empty() {
        let total = keys
            .iter()
            .try_fold(1usize, |n, (_, values)| n.checked_mul(values.len()))
            .unwrap_or(usize::MAX);
        // Exclusions may bring a large product under the limit, but the
        // product is built first: bound it before allocating.
        if total > MAX_JOBS.saturating_mul(16) {
            return Err(MatrixError::TooMany(total));
        }
        combos.push(Combo::default());
        for (key, values) in keys {
            let mut next = Vec::with_capacity(combos.len() * values.len());
            for c in &combos {
                for v in values {
                    let mut c = c.clone();
                    c.insert(key.clone(), v.clone());
                    next.push(c);
                }
            }
            combos = next;
        }
        combos.retain(|c| !exclude.iter().any(|x| matches(c, x)));
    }
    let originals: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
    let base = combos.len();
    for entry in include {
        let mut added = false;
        for c in combos.iter_mut().take(base) {
            // Added only where it changes none of the matrix's own values.
            let fits = entry
                .0
                .iter()
                .all(|(k, v)| !originals.contains(&k.as_str()) || c.get(k).is_none_or(|have| have == v));
            if fits && !originals.is_empty() {
                for (k, v) in &entry.0 {
                    c.insert(k.clone(), v.clone());
                }
                added = true;
            }
        }
        if !added {
            combos.push(entry.clone());
        }
        if combos.len() > MAX_JOBS {
            return Err(MatrixError::TooMany(combos.len()));
        }
    }
    if combos.len() > MAX_JOBS {
        return Err(MatrixError::TooMany(combos.len()));
    }
    if combos.is_empty() {
        return Err(MatrixError::Empty);
    }
    Ok(combos)
}

/// Whether `combo` has every value `filter` names.
fn matches(combo: &Combo, filter: &Combo) -> bool {
    filter.0.iter().all(|(k, v)| combo.get(k) == Some(v))
}

/// A matrix job's name as GitHub shows it: `build (ubuntu-latest, 18)`.
pub fn job_name(base: &str, combo: &Combo) -> String {
    let values: Vec<String> = combo.0.iter().map(|(_, v)| display(v)).collect();
    format!("{base} ({})", values.join(", "))
}

/// A matrix value in a job's name: text as it is, anything else as JSON.
fn display(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `[["key", [values]], ...]`: keys in order.
    fn keys(spec: Value) -> Vec<(String, Vec<Value>)> {
        spec.as_array()
            .unwrap()
            .iter()
            .map(|kv| (kv[0].as_str().unwrap().to_string(), kv[1].as_array().unwrap().clone()))
            .collect()
    }

    /// `[[["key", value], ...], ...]`.
    fn combos(v: Value) -> Vec<Combo> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| {
                Combo(
                    c.as_array()
                        .unwrap()
                        .iter()
                        .map(|kv| (kv[0].as_str().unwrap().to_string(), kv[1].clone()))
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn the_product_in_the_order_written() {
        let got = expand(
            &keys(json!([["os", ["ubuntu", "windows"]], ["node", [18, 20]]])),
            &[],
            &[],
        )
        .unwrap();
        let names: Vec<String> = got.iter().map(|c| job_name("test", c)).collect();
        assert_eq!(
            names,
            [
                "test (ubuntu, 18)",
                "test (ubuntu, 20)",
                "test (windows, 18)",
                "test (windows, 20)"
            ]
        );
    }

    /// GitHub's documented example: include adds `color: green` to every
    /// combination, `shape: circle` where fruit is apple, a new
    /// combination for banana, and `animal: cat` ... (docs, "Expanding or
    /// adding matrix configurations").
    #[test]
    fn include_follows_githubs_documented_example() {
        let got = expand(
            &keys(json!([["fruit", ["apple", "pear"]], ["animal", ["cat", "dog"]]])),
            &combos(json!([
                [["color", "green"]],
                [["color", "pink"], ["animal", "cat"]],
                [["fruit", "apple"], ["shape", "circle"]],
                [["fruit", "banana"]],
                [["fruit", "banana"], ["animal", "cat"]]
            ])),
            &[],
        )
        .unwrap();
        let names: Vec<String> = got.iter().map(|c| job_name("j", c)).collect();
        assert_eq!(
            names,
            [
                "j (apple, cat, pink, circle)",
                "j (apple, dog, green, circle)",
                "j (pear, cat, pink)",
                "j (pear, dog, green)",
                "j (banana)",
                "j (banana, cat)"
            ]
        );
    }

    #[test]
    fn exclude_matches_partially_and_limits_hold() {
        let got = expand(
            &keys(json!([["os", ["a", "b"]], ["v", [1, 2, 3]]])),
            &[],
            &combos(json!([[["os", "b"], ["v", 2]], [["v", 3]]])),
        )
        .unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(
            expand(&keys(json!([["os", ["a"]]])), &[], &combos(json!([[["os", "a"]]]))),
            Err(MatrixError::Empty)
        );
        let many: Vec<Value> = (0..17).map(Value::from).collect();
        let big = vec![("a".to_string(), many.clone()), ("b".to_string(), many)];
        assert_eq!(expand(&big, &[], &[]), Err(MatrixError::TooMany(289)));
        // Only include: each entry is a job.
        let only = expand(&[], &combos(json!([[["x", 1]], [["x", 2]]])), &[]).unwrap();
        assert_eq!(only.len(), 2);
    }
}
