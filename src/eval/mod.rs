//! Safety evaluation: harmful prompts (keyword refusal, attack success, a local judge's
//! harmfulness score), XSTest (exaggerated safety), MMLU (5-shot log-likelihood) and held-out
//! task loss, for any number of adapter mixes at once; records kept as they are produced so a
//! killed run resumes; reports with 95% intervals.

pub mod judge;
pub mod mmlu;
pub mod prompts;
pub mod records;
pub mod refusal;
pub mod report;
pub mod run;
pub mod stats;
pub mod sweep;
pub mod xstest;
