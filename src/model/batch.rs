//! The rows of a pass on the host: a forward's (`Batch`: generation and scoring, any mix of
//! sequences and positions) and a loss's (`TrainBatch`: whole labelled sequences, for training,
//! held-out and task loss), and their row tensors on the GPU.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};

/// The target of a row that counts in no loss (prompts, padding).
pub use crate::kernels::cross_entropy::MASKED;

/// The rows of one forward pass: token, cache slot and position of each row, and the rows whose
/// logits are wanted (in the order the logits come out).
#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub tokens: Vec<u32>,
    pub slots: Vec<u32>,
    pub positions: Vec<u32>,
    pub logits_rows: Vec<u32>,
    /// Per-row adapter weights, [rows × attached adapters] row-major; empty: the weights given
    /// when the adapters were attached, for every row.
    pub adapter_weights: Vec<f32>,
}

impl Batch {
    /// Appends `tokens` of the sequence in `slot`, starting at position `start`; its last row's
    /// logits are wanted when `want_logits`.
    pub fn push_sequence(&mut self, slot: u32, start: u32, tokens: &[u32], want_logits: bool) {
        for (i, &t) in tokens.iter().enumerate() {
            self.tokens.push(t);
            self.slots.push(slot);
            self.positions.push(start + i as u32);
        }
        if want_logits && !tokens.is_empty() {
            self.logits_rows.push(self.tokens.len() as u32 - 1);
        }
    }

    /// `push_sequence` with its last row's logits wanted and every row at the adapter weights
    /// `mix` (nothing when empty: the attached weights).
    pub fn push_mixed(&mut self, slot: u32, start: u32, tokens: &[u32], mix: &[f32]) {
        self.push_sequence(slot, start, tokens, true);
        for _ in tokens {
            self.adapter_weights.extend_from_slice(mix);
        }
    }

    pub fn rows(&self) -> usize {
        self.tokens.len()
    }
}

/// A conversation as the model reads it: token ids, and for each the token it should predict
/// (MASKED where no loss is taken).
#[derive(Clone, Debug, PartialEq)]
pub struct Encoded {
    pub tokens: Vec<u32>,
    pub targets: Vec<u32>,
}

impl Encoded {
    pub fn labelled(&self) -> usize {
        self.targets.iter().filter(|&&t| t != MASKED).count()
    }
}

/// Sequences of a loss pass, their rows together: sequence s is rows spans[s].0 ..
/// spans[s].0 + spans[s].1 at positions 0.. in cache slot s. `targets[r]` is the token row r
/// should predict, or MASKED.
#[derive(Clone, Debug, Default)]
pub struct TrainBatch {
    pub tokens: Vec<u32>,
    pub targets: Vec<u32>,
    pub spans: Vec<(usize, usize)>,
}

impl TrainBatch {
    /// Appends a sequence: `tokens` with its `targets` (same length).
    pub fn push(&mut self, tokens: &[u32], targets: &[u32]) {
        self.spans.push((self.tokens.len(), tokens.len()));
        self.tokens.extend_from_slice(tokens);
        self.targets.extend_from_slice(targets);
    }

    /// The sequences `examples` together.
    pub fn of<'a>(examples: impl IntoIterator<Item = &'a Encoded>) -> TrainBatch {
        let mut b = TrainBatch::default();
        for e in examples {
            b.push(&e.tokens, &e.targets);
        }
        b
    }

    pub fn rows(&self) -> usize {
        self.tokens.len()
    }

    /// Rows that count in the loss.
    pub fn counted(&self) -> usize {
        self.targets.iter().filter(|&&t| t != MASKED).count()
    }

    /// The longest sequence.
    pub fn max_len(&self) -> usize {
        self.spans.iter().map(|s| s.1).max().unwrap_or(1)
    }

    /// Checks the spans cover the rows and the targets lie in a vocabulary of `vocab`.
    pub(crate) fn check(&self, vocab: usize) -> Result<()> {
        let r = self.rows();
        if r == 0 || self.targets.len() != r || self.spans.iter().map(|s| s.1).sum::<usize>() != r {
            return Err(Error::Invalid(format!(
                "a training batch of {r} tokens, {} targets, spans {:?}",
                self.targets.len(),
                self.spans
            )));
        }
        if let Some(&t) = self.targets.iter().find(|&&t| t != MASKED && t as usize >= vocab) {
            return Err(Error::Invalid(format!("target {t} is outside the vocabulary of {vocab}")));
        }
        Ok(())
    }

    /// The forward's rows: each sequence in its own cache slot from position 0 (no logits rows:
    /// the loss reads the final hidden states).
    pub(crate) fn forward_rows(&self) -> Batch {
        let mut b = Batch::default();
        for (s, &(start, len)) in self.spans.iter().enumerate() {
            b.push_sequence(s as u32, 0, &self.tokens[start..start + len], false);
        }
        b
    }
}

/// The row tensors of a pass on the GPU: tokens, positions and cache slots, and for a loss pass
/// where each sequence's rows start and how many there are ([slots] each).
pub(crate) struct RowTensors {
    pub tokens: Tensor,
    pub pos: Tensor,
    pub slot: Tensor,
    pub spans: Option<(Tensor, Tensor)>,
    /// No slot has two rows here (a decode step): each row's earlier keys are all cached before
    /// the pass, so attention may store the row's own key as it attends.
    pub distinct_slots: bool,
}

impl RowTensors {
    pub fn new(gpu: &Gpu, b: &Batch, spans: Option<&[(usize, usize)]>) -> Result<RowTensors> {
        let r = b.rows();
        let spans = match spans {
            None => None,
            Some(s) => {
                let starts: Vec<u32> = s.iter().map(|s| s.0 as u32).collect();
                let lens: Vec<u32> = s.iter().map(|s| s.1 as u32).collect();
                Some((
                    Tensor::from_u32(gpu, &[s.len()], &starts, "seq start")?,
                    Tensor::from_u32(gpu, &[s.len()], &lens, "seq len")?,
                ))
            }
        };
        Ok(RowTensors {
            tokens: Tensor::from_u32(gpu, &[r], &b.tokens, "tokens")?,
            pos: Tensor::from_u32(gpu, &[r], &b.positions, "positions")?,
            slot: Tensor::from_u32(gpu, &[r], &b.slots, "slots")?,
            spans,
            distinct_slots: {
                let mut seen = std::collections::BTreeSet::new();
                b.slots.iter().all(|s| seen.insert(*s))
            },
        })
    }
}
