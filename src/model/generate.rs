//! Batched generation: one ragged prefill of every prompt, then decode steps over the sequences
//! still running, each step one forward pass with one row per sequence. Stops on the model's
//! end tokens, on stop strings, or at the token budget.

use std::ops::Range;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::gpu::Profile;
use crate::model::batch::Batch;
use crate::model::chat::{ChatTemplate, Message};
use crate::model::llama::{KvCache, Llama};
use crate::model::sampling::{Rng, SamplingOptions, sample};
use crate::model::tokenizer::Tokenizer;

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: SamplingOptions,
    /// Generation stops when the text produced contains one of these (cut before it).
    pub stop: Vec<String>,
    /// Per prompt, the weights of the attached adapters (one each) for its rows: several
    /// fusions in one batch. Empty: the weights the adapters were attached with.
    pub mixes: Vec<Vec<f32>>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 256,
            sampling: SamplingOptions::default(),
            stop: Vec::new(),
            mixes: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// The model produced an end-of-turn or end-of-sequence token.
    Eos,
    /// A stop string appeared.
    Stop,
    /// The token budget ran out.
    Length,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Completion {
    /// Generated token ids, the end token included when there was one.
    pub ids: Vec<u32>,
    /// Generated text, special tokens left out and cut at a stop string.
    pub text: String,
    pub finish: Finish,
}

#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Stats {
    pub prefill_tokens: usize,
    pub prefill_secs: f64,
    pub decode_tokens: usize,
    pub decode_secs: f64,
}

impl Stats {
    pub fn prefill_tps(&self) -> f64 {
        self.prefill_tokens as f64 / self.prefill_secs.max(1e-9)
    }

    pub fn decode_tps(&self) -> f64 {
        self.decode_tokens as f64 / self.decode_secs.max(1e-9)
    }

    pub fn add(&mut self, o: &Stats) {
        self.prefill_tokens += o.prefill_tokens;
        self.prefill_secs += o.prefill_secs;
        self.decode_tokens += o.decode_tokens;
        self.decode_secs += o.decode_secs;
    }
}

/// The token ids of a prompt: the chat template applied to `messages` (with the generation
/// prompt), or, with `raw` or without a template, the last message's text as it is.
pub fn prompt_ids(
    tok: &Tokenizer,
    template: Option<&ChatTemplate>,
    messages: &[Message],
    raw: bool,
) -> Result<Vec<u32>> {
    match template {
        Some(t) if !raw => {
            let text = t.render(messages, true, tok.bos_token.as_deref(), tok.eos_token.as_deref())?;
            // The template prints BOS itself where the model wants one.
            tok.encode(&text, false)
        }
        _ => {
            let last = messages.last().ok_or_else(|| Error::Invalid("an empty prompt".into()))?;
            tok.encode(&last.content, true)
        }
    }
}

/// A prompt's random stream: derived from its tokens, so it samples the same alone or at any
/// place in any batch (vary the seed for different samples of one prompt).
fn stream_of(prompt: &[u32]) -> u64 {
    prompt.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &t| (h ^ t as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// A sequence being generated: its tokens so far, its random stream, and how much of its text
/// has been handed out (text that may still turn out to begin a stop string is held back).
pub struct Sequence {
    pub ids: Vec<u32>,
    emitted: usize,
    rng: Rng,
}

/// What one token did to a sequence: the text it released, and the completion when it ended it.
pub struct Step {
    pub piece: String,
    pub done: Option<Completion>,
}

impl Sequence {
    /// A sequence for `prompt` sampling under `seed`: the same stream alone or in any batch.
    pub fn new(prompt: &[u32], seed: u64) -> Sequence {
        Sequence { ids: Vec::new(), emitted: 0, rng: Rng::new(seed, stream_of(prompt)) }
    }

    /// Samples the next token from this sequence's `logits` row and says what it released.
    pub fn step(&mut self, logits: &[f32], tok: &Tokenizer, opts: &GenerateOptions) -> Result<Step> {
        let next = sample(logits, &opts.sampling, &mut self.rng);
        self.ids.push(next);
        let text = tok.decode(&self.ids, true)?;
        let stop_at = opts.stop.iter().filter_map(|s| text.find(s.as_str())).min();
        let finish = if tok.eos.contains(&next) {
            Some(Finish::Eos)
        } else if stop_at.is_some() {
            Some(Finish::Stop)
        } else if self.ids.len() >= opts.max_new_tokens {
            Some(Finish::Length)
        } else {
            None
        };
        let text = match stop_at {
            Some(cut) => text[..cut].to_string(),
            None => text,
        };
        // Released: all of it at the end; before, what no stop string can still claim and no
        // half-decoded character ends.
        let ready = match finish {
            Some(_) => text.len(),
            None if text.ends_with('\u{FFFD}') => self.emitted,
            None => text.len() - held_back(&text, &opts.stop),
        };
        let piece = text.get(self.emitted..ready.max(self.emitted)).unwrap_or("").to_string();
        self.emitted = self.emitted.max(ready);
        let done = finish.map(|finish| Completion { ids: std::mem::take(&mut self.ids), text, finish });
        Ok(Step { piece, done })
    }
}

/// The length of the longest end of `text` that begins one of `stops` (and so may yet become it).
fn held_back(text: &str, stops: &[String]) -> usize {
    let mut held = 0;
    for s in stops {
        for (i, _) in s.char_indices().skip(1) {
            if i > held && text.ends_with(&s[..i]) {
                held = i;
            }
        }
    }
    held
}

struct Running {
    index: usize,
    slot: u32,
    next_pos: u32,
    seq: Sequence,
}

/// Contiguous groups of sequences (lengths `lens`, each growing by `extra` positions) whose KV
/// cache, [group size × longest] positions, fits `capacity`. A sequence too long for any cache
/// gets a group of its own (and the cache's clear error).
pub fn cache_groups(lens: &[usize], extra: usize, capacity: usize) -> Vec<Range<usize>> {
    let mut groups = Vec::new();
    let (mut start, mut longest) = (0, 0);
    for (i, &len) in lens.iter().enumerate() {
        let l = longest.max(len + extra);
        if i > start && (i + 1 - start) * l > capacity {
            groups.push(start..i);
            (start, longest) = (i, len + extra);
        } else {
            longest = l;
        }
    }
    if start < lens.len() {
        groups.push(start..lens.len());
    }
    groups
}

/// Generates a completion for every prompt: one batch, or as many as the KV cache needs to fit
/// the device's binding limit. `on_text(i, piece)` receives the text of prompt i as it is
/// produced (for streaming). With `profile`, every launch is timed into it (phases "prefill"
/// and "decode"); that waits for the GPU after each step.
pub fn generate(
    model: &Llama,
    tok: &Tokenizer,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    mut profile: Option<&mut Profile>,
    mut on_text: impl FnMut(usize, &str),
) -> Result<(Vec<Completion>, Stats)> {
    if !opts.mixes.is_empty() && opts.mixes.len() != prompts.len() {
        return Err(Error::Invalid(format!("{} adapter mixes for {} prompts", opts.mixes.len(), prompts.len())));
    }
    if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
        return Err(Error::Invalid(format!("prompt {i} has no tokens")));
    }
    let lens: Vec<usize> = prompts.iter().map(Vec::len).collect();
    let longest = lens.iter().copied().max().unwrap_or(0);
    let max_len = longest + opts.max_new_tokens;
    if max_len > model.cfg().max_positions {
        let i = lens.iter().position(|&l| l == longest).unwrap_or(0);
        return Err(Error::Invalid(format!(
            "prompt {i} has {longest} tokens; with {} new ones that is {max_len}, over the model's context of {} ({})",
            opts.max_new_tokens,
            model.cfg().max_positions,
            model.cfg().context_source
        )));
    }
    let (mut completions, mut stats) = (Vec::with_capacity(prompts.len()), Stats::default());
    for g in cache_groups(&lens, opts.max_new_tokens, model.cache_capacity()) {
        let gopts = GenerateOptions {
            mixes: if opts.mixes.is_empty() { Vec::new() } else { opts.mixes[g.clone()].to_vec() },
            ..opts.clone()
        };
        let (done, s) = generate_batch(model, tok, &prompts[g.clone()], &gopts, profile.as_deref_mut(), |i, t| {
            on_text(g.start + i, t)
        })?;
        completions.extend(done);
        stats.add(&s);
    }
    Ok((completions, stats))
}

/// `generate` in one batch.
fn generate_batch(
    model: &Llama,
    tok: &Tokenizer,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    mut profile: Option<&mut Profile>,
    mut on_text: impl FnMut(usize, &str),
) -> Result<(Vec<Completion>, Stats)> {
    let mut forward = |batch: &Batch, cache: &KvCache, phase: &str| -> Result<Vec<f32>> {
        let logits = match profile.as_deref_mut() {
            Some(p) => model.forward_profiled(batch, cache, p, phase)?,
            None => model.forward(batch, cache)?,
        };
        logits.read_f32(model.gpu())
    };
    let mut stats = Stats::default();
    let max_len = prompts.iter().map(Vec::len).max().unwrap_or(0) + opts.max_new_tokens;
    let cache = model.new_cache(prompts.len(), max_len.max(1))?;
    let mut done: Vec<Option<Completion>> = vec![None; prompts.len()];
    let mut running: Vec<Running> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| Running {
            index: i,
            slot: i as u32,
            next_pos: p.len() as u32,
            seq: Sequence::new(p, opts.sampling.seed),
        })
        .collect();

    let start = Instant::now();
    let batch = prefill_batch(prompts, &opts.mixes);
    let mut logits = forward(&batch, &cache, "prefill")?;
    model.check_logits(&logits, |row| format!("the prefill of prompt {row}"))?;
    stats.prefill_tokens = batch.rows();
    stats.prefill_secs = start.elapsed().as_secs_f64();

    let vocab = model.cfg().vocab;
    let decode_start = Instant::now();
    while !running.is_empty() {
        let mut still = Vec::with_capacity(running.len());
        for (row, mut r) in running.into_iter().enumerate() {
            if opts.max_new_tokens == 0 {
                done[r.index] = Some(Completion { ids: vec![], text: String::new(), finish: Finish::Length });
                continue;
            }
            let step = r.seq.step(&logits[row * vocab..(row + 1) * vocab], tok, opts)?;
            if !step.piece.is_empty() {
                on_text(r.index, &step.piece);
            }
            match step.done {
                Some(c) => done[r.index] = Some(c),
                None => still.push(r),
            }
        }
        running = still;
        if running.is_empty() {
            break;
        }
        let mut b = Batch::default();
        for r in running.iter_mut() {
            let last = *r.seq.ids.last().expect("every running sequence has a token");
            b.push_mixed(r.slot, r.next_pos, &[last], opts.mixes.get(r.index).map_or(&[], Vec::as_slice));
            r.next_pos += 1;
        }
        logits = forward(&b, &cache, "decode")?;
        let step = running[0].seq.ids.len();
        model.check_logits(&logits, |row| format!("decode step {step} of prompt {}", running[row].index))?;
        stats.decode_tokens += b.rows();
    }
    stats.decode_secs = decode_start.elapsed().as_secs_f64();
    let completions = done.into_iter().map(|c| c.expect("every prompt finishes")).collect();
    Ok((completions, stats))
}

/// The prefill of `prompts` in one batch: prompt i in cache slot i from position 0, its last
/// row's logits wanted, its rows at the adapter weights `mixes[i]` when mixes are given.
fn prefill_batch(prompts: &[Vec<u32>], mixes: &[Vec<f32>]) -> Batch {
    let mut batch = Batch::default();
    for (i, p) in prompts.iter().enumerate() {
        batch.push_mixed(i as u32, 0, p, mixes.get(i).map_or(&[], Vec::as_slice));
    }
    batch
}

/// Records the passes `generate` runs for `prompts` (as a warm-up's dry run does, to learn their
/// kernel shapes): the prefill of the first cache group, a decode step of its sequences, and a
/// decode step of one sequence. Sampling does not run: a dry run's logits are not computed.
pub fn rehearse(model: &Llama, prompts: &[Vec<u32>], opts: &GenerateOptions) -> Result<()> {
    let over = |p: &Vec<u32>| p.len() + opts.max_new_tokens > model.cfg().max_positions;
    if prompts.iter().any(|p| p.is_empty() || over(p)) || (!opts.mixes.is_empty() && opts.mixes.len() != prompts.len())
    {
        return Ok(()); // generate itself says what is wrong, naming the context's source
    }
    let lens: Vec<usize> = prompts.iter().map(Vec::len).collect();
    let Some(g) = cache_groups(&lens, opts.max_new_tokens, model.cache_capacity()).into_iter().next() else {
        return Ok(());
    };
    let (prompts, mixes) = (&prompts[g.clone()], if opts.mixes.is_empty() { &[][..] } else { &opts.mixes[g] });
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(1);
    let cache =
        model.new_cache(prompts.len(), (longest + opts.max_new_tokens.max(1)).min(model.cfg().max_positions))?;
    model.forward(&prefill_batch(prompts, mixes), &cache)?;
    if opts.max_new_tokens == 0 || longest >= cache.max_len {
        return Ok(());
    }
    for n in [prompts.len(), 1] {
        let mut b = Batch::default();
        for (i, p) in prompts.iter().enumerate().take(n) {
            b.push_mixed(i as u32, p.len() as u32, &[p[p.len() - 1]], mixes.get(i).map_or(&[], Vec::as_slice));
        }
        model.forward(&b, &cache)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{cache_groups, held_back};

    #[test]
    fn text_that_may_begin_a_stop_string_is_held_back() {
        let stops = ["\nUser:".to_string(), "###".to_string()];
        assert_eq!(held_back("Hello\nUs", &stops), 3);
        assert_eq!(held_back("Hello #", &stops), 1);
        assert_eq!(held_back("Hello", &stops), 0);
        assert_eq!(held_back("a\n", &[]), 0);
        // a character of several bytes is held whole or not at all
        assert_eq!(held_back("ab é", &["éclair".to_string()]), "é".len());
    }

    #[test]
    fn cache_groups_fit_the_capacity_and_cover_every_sequence() {
        // capacity 100 positions, 4 new tokens each
        let lens = [10, 20, 16, 46, 3, 200, 5];
        let groups = cache_groups(&lens, 4, 100);
        assert_eq!(groups, vec![0..3, 3..5, 5..6, 6..7]);
        for g in &groups[..2] {
            let longest = lens[g.clone()].iter().max().unwrap() + 4;
            assert!(g.len() * longest <= 100, "{g:?}");
        }
        assert!(cache_groups(&[], 4, 100).is_empty());
        assert_eq!(cache_groups(&[1; 10], 0, 1_000), vec![0..10]);
    }
}
