//! Checks at the door: what a file brings in (tensor values, text, CSV quoting) is checked where
//! it is read, so a corrupt input is an error naming the file and the place, never a NaN or a
//! merged row three steps later.

use std::path::Path;

use crate::error::{Error, Result};

/// The first value of `v` that is NaN or infinite, with its index.
pub fn first_non_finite(v: &[f32]) -> Option<(usize, f32)> {
    v.iter().position(|x| !x.is_finite()).map(|i| (i, v[i]))
}

/// Tensor `name` of `path` holds finite values only.
pub fn finite_tensor(path: &Path, name: &str, v: &[f32]) -> Result<()> {
    match first_non_finite(v) {
        Some((i, x)) => {
            Err(Error::file(path, format!("tensor '{name}' holds {x} at index {i}: only finite values load")))
        }
        None => Ok(()),
    }
}

/// The largest adapter weight taken (PEFT's combination weights are a few units at most; a
/// weight of 1e30 is a typo, and its logits would not be finite).
pub const MAX_ADAPTER_WEIGHT: f64 = 1e4;

/// An adapter weight from the command line or a prompts file: finite and at most
/// MAX_ADAPTER_WEIGHT in size (as f32, so 1e300 does not become infinity).
pub fn adapter_weight(w: f64) -> std::result::Result<f32, String> {
    if !w.is_finite() || w.abs() > MAX_ADAPTER_WEIGHT {
        return Err(format!("an adapter weight must be a finite number of size at most {MAX_ADAPTER_WEIGHT}, not {w}"));
    }
    Ok(w as f32)
}

/// (line, column) from 1 of byte `at` in `bytes`.
fn line_col(bytes: &[u8], at: usize) -> (usize, usize) {
    let before = &bytes[..at];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let col = at - before.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1) + 1;
    (line, col)
}

/// A text file as UTF-8; bytes that are not UTF-8 are an error naming the line and byte.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let (line, col) = line_col(e.as_bytes(), at);
        Error::file(path, format!("line {line}, column {col} (byte {at}): not UTF-8 text"))
    })
}

/// The line (from 1) where a quoted field opens that no quote closes, as RFC 4180 reads it (a
/// quote opens a field only at its start; "" inside one is a literal quote). The csv crate
/// reads such a field to the end of the file, merging every row after it into one.
fn unterminated_quote(text: &str) -> Option<usize> {
    let (mut line, mut opened) = (1, None);
    let (mut in_quotes, mut at_field_start) = (false, true);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if in_quotes {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                } else {
                    in_quotes = false;
                }
            }
        } else if c == '"' && at_field_start {
            (in_quotes, opened) = (true, Some(line));
        }
        if c == '\n' {
            line += 1;
        }
        at_field_start = !in_quotes && matches!(c, ',' | '\n' | '\r');
    }
    if in_quotes { opened } else { None }
}

/// A CSV file's text, UTF-8 and with every quoted field closed.
pub fn csv_text(path: &Path) -> Result<String> {
    let text = read_text(path)?;
    if let Some(line) = unterminated_quote(&text) {
        return Err(Error::file(path, format!("line {line}: a quoted field opens here and no quote closes it")));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unterminated_quotes_are_found_at_their_line() {
        assert_eq!(unterminated_quote("goal,target\n\"a, b\",c\n\"x \"\"y\"\"\",z\n"), None);
        assert_eq!(unterminated_quote("a\"b,c\n"), None, "a quote inside an unquoted field is literal");
        assert_eq!(unterminated_quote("goal\n\"first\nsecond\n"), Some(2));
        assert_eq!(unterminated_quote("a\n\"ok\"\n\"open \"\" still\nmore"), Some(3));
    }

    #[test]
    fn non_utf8_text_names_line_and_byte() {
        let path = std::env::temp_dir().join(format!("lorafuse-utf8-{}.jsonl", std::process::id()));
        std::fs::write(&path, b"{\"prompt\": \"ok\"}\n{\"prompt\": \"b\xffd\"}\n").unwrap();
        let e = read_text(&path).unwrap_err().to_string();
        assert!(e.contains("lorafuse-utf8") && e.contains("line 2, column 14 (byte 30)"), "{e}");
        std::fs::write(&path, "a,\"b\nc\n").unwrap();
        let e = csv_text(&path).unwrap_err().to_string();
        assert!(e.contains("line 1: a quoted field"), "{e}");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn non_finite_tensors_are_named() {
        assert!(finite_tensor(Path::new("m.gguf"), "w", &[1.0, 2.0]).is_ok());
        let e = finite_tensor(Path::new("m.gguf"), "output_norm.weight", &[1.0, f32::NAN]).unwrap_err().to_string();
        assert!(e.contains("m.gguf") && e.contains("'output_norm.weight' holds NaN at index 1"), "{e}");
    }
}
