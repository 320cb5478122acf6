//! MMLU (Hendrycks et al.) 5-shot by log-likelihood: per subject, the five dev questions with
//! their answers, then the test question and "Answer:"; the prediction is whichever of " A",
//! " B", " C", " D" the model gives the highest logit at the next position. Per-subject, macro
//! (mean over subjects) and micro (over questions) accuracy.

use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Question {
    pub subject: String,
    pub question: String,
    pub choices: [String; 4],
    /// 0..4 for A..D.
    pub answer: usize,
}

fn read_csv(path: &Path, subject: &str) -> Result<Vec<Question>> {
    let text = crate::validate::csv_text(path)?;
    let mut rdr = csv::ReaderBuilder::new().has_headers(false).from_reader(text.as_bytes());
    let mut out = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.map_err(|e| Error::file(path, format!("line {}: {e}", i + 1)))?;
        if rec.len() != 6 {
            return Err(Error::file(
                path,
                format!("line {}: {} columns (question, A, B, C, D, answer)", i + 1, rec.len()),
            ));
        }
        let answer = match rec[5].trim() {
            "A" => 0,
            "B" => 1,
            "C" => 2,
            "D" => 3,
            other => return Err(Error::file(path, format!("line {}: answer '{other}' is not A, B, C or D", i + 1))),
        };
        out.push(Question {
            subject: subject.to_string(),
            question: rec[0].trim().to_string(),
            choices: [0, 1, 2, 3].map(|c| rec[c + 1].trim().to_string()),
            answer,
        });
    }
    if out.is_empty() {
        return Err(Error::file(path, "no questions"));
    }
    Ok(out)
}

/// One subject: its dev (few-shot) and test questions.
#[derive(Clone, Debug)]
pub struct Subject {
    pub name: String,
    pub dev: Vec<Question>,
    pub test: Vec<Question>,
}

/// Reads DIR/dev/{subject}_dev.csv and DIR/test/{subject}_test.csv for every subject (or those
/// named), the first `limit` test questions of each when given.
pub fn load(dir: &Path, subjects: Option<&[String]>, limit: Option<usize>) -> Result<Vec<Subject>> {
    let test_dir = dir.join("test");
    let mut names: Vec<String> = std::fs::read_dir(&test_dir)
        .map_err(|e| Error::file(&test_dir, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix("_test.csv")).map(str::to_string))
        .collect();
    names.sort();
    if let Some(want) = subjects {
        if let Some(w) = want.iter().find(|w| !names.contains(w)) {
            return Err(Error::file(&test_dir, format!("no subject '{w}' (there are {})", names.join(", "))));
        }
        names.retain(|n| want.contains(n));
    }
    if names.is_empty() {
        return Err(Error::file(&test_dir, "no *_test.csv files"));
    }
    names
        .into_iter()
        .map(|name| {
            let dev = read_csv(&dir.join("dev").join(format!("{name}_dev.csv")), &name)?;
            let mut test = read_csv(&test_dir.join(format!("{name}_test.csv")), &name)?;
            if let Some(l) = limit {
                test.truncate(l);
            }
            Ok(Subject { name, dev, test })
        })
        .collect()
}

fn format_question(q: &Question, with_answer: bool) -> String {
    let mut s = q.question.clone();
    for (l, c) in ["A", "B", "C", "D"].iter().zip(&q.choices) {
        s.push_str(&format!("\n{l}. {c}"));
    }
    s.push_str("\nAnswer:");
    if with_answer {
        s.push_str(&format!(" {}\n\n", ["A", "B", "C", "D"][q.answer]));
    }
    s
}

/// The 5-shot prompt of a test question (Hendrycks et al.'s format).
pub fn prompt(subject: &Subject, q: &Question, shots: usize) -> String {
    let mut s = format!(
        "The following are multiple choice questions (with answers) about {}.\n\n",
        subject.name.replace('_', " ")
    );
    for d in subject.dev.iter().take(shots) {
        s.push_str(&format_question(d, true));
    }
    s.push_str(&format_question(q, false));
    s
}

/// The choice with the largest logit (the first of equals); `choice_logits` are those of
/// " A", " B", " C", " D" in order.
pub fn predict(choice_logits: [f32; 4]) -> usize {
    let mut best = 0;
    for i in 1..4 {
        if choice_logits[i] > choice_logits[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_and_predictions() {
        let q = |t: &str, a| Question {
            subject: "high_school_physics".into(),
            question: t.into(),
            choices: ["1".into(), "2".into(), "3".into(), "4".into()],
            answer: a,
        };
        let s = Subject { name: "high_school_physics".into(), dev: vec![q("dev?", 2)], test: vec![q("test?", 0)] };
        let p = prompt(&s, &s.test[0], 5);
        assert_eq!(
            p,
            "The following are multiple choice questions (with answers) about high school physics.\n\n\
             dev?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: C\n\ntest?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:"
        );
        assert_eq!(predict([0.1, 2.0, -1.0, 1.9]), 1);
        assert_eq!(predict([1.0, 1.0, 0.0, 0.0]), 0);
    }
}
