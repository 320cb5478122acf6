//! Next-token logits of prompts that share long prefixes (MMLU's five examples before each of a
//! subject's questions), each distinct prefix prefilled once.
//!
//! Prompts of one adapter mix whose tokens begin alike (at least `MIN_SHARED` tokens) form a
//! cluster; the cluster's common tokens are prefilled once into a prefix slot of the KV cache,
//! which the prompts' own slots read their first keys from (cache.rs); each prompt then prefills
//! only its own tail. Prefixes stay for later calls, the least recently used given up first, so
//! a subject's questions spread over many batches pay for their examples once per mix. Prompts
//! of different mixes never share: an adapter anywhere below a layer changes that layer's keys.
//! The common prefix is found on the token ids themselves, so a prompt's tokens are exactly those
//! of the whole prompt tokenized at once.

use crate::error::{Error, Result};
use crate::model::batch::Batch;
use crate::model::cache::KvCache;
use crate::model::llama::Llama;

/// Shorter common prefixes are not worth a slot.
const MIN_SHARED: usize = 32;

/// A prefix kept in a slot: the mix it was prefilled at and its tokens.
struct Prefix {
    mix: Vec<f32>,
    tokens: Vec<u32>,
    used: u64,
}

/// Prefill counts: what was prefilled, and what the prompts cost past their shared prefixes
/// (their own tokens).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub prompts: usize,
    /// Every token of every prompt.
    pub prompt_tokens: usize,
    /// The tokens after each prompt's shared prefix (all of it when it shares none).
    pub own_tokens: usize,
    /// What was prefilled: own tokens plus each prefix once.
    pub prefilled: usize,
}

/// Scores prompts against prefixes kept in one KV cache: slots 0..prefix_slots hold prefixes,
/// the rest a call's prompts.
pub struct Scorer<'m> {
    model: &'m Llama,
    cache: Option<KvCache>,
    /// By slot.
    prefixes: Vec<Option<Prefix>>,
    clock: u64,
    counts: Counts,
}

fn common(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Where a prompt's first keys come from, and how many.
#[derive(Clone, Copy)]
enum Source {
    /// Nothing shared.
    Own,
    /// The first `len` keys of the prefix in this slot (a prefix serves every prompt that
    /// begins with enough of it: keys depend only on the tokens up to their own).
    Kept { slot: usize, len: usize },
    /// The first `len` keys of the call's new prefix `k`.
    Fresh { k: usize, len: usize },
}

impl<'m> Scorer<'m> {
    /// A scorer keeping up to `prefix_slots` prefixes alive between calls (0: every prompt
    /// prefilled whole).
    pub fn new(model: &'m Llama, prefix_slots: usize) -> Scorer<'m> {
        let prefixes = (0..prefix_slots).map(|_| None).collect();
        Scorer { model, cache: None, prefixes, clock: 0, counts: Counts::default() }
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// The next-token logits after each prompt ([prompts][vocab]), the prompts at the adapter
    /// weights `mixes[i]` when mixes are given (empty: the attached weights for all).
    pub fn next_logits(&mut self, prompts: &[Vec<u32>], mixes: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        if !mixes.is_empty() && mixes.len() != prompts.len() {
            return Err(Error::Invalid(format!("{} adapter mixes for {} prompts", mixes.len(), prompts.len())));
        }
        let cfg = self.model.cfg();
        if let Some(i) = prompts.iter().position(|p| p.is_empty() || p.len() > cfg.max_positions) {
            return Err(Error::Invalid(format!(
                "prompt {i} has {} tokens (at least 1 and at most the model's context of {}, {})",
                prompts[i].len(),
                cfg.max_positions,
                cfg.context_source
            )));
        }
        self.reserve(prompts.len(), prompts.iter().map(Vec::len).max().unwrap_or(1))?;
        let mix: Vec<&[f32]> = (0..prompts.len()).map(|i| mixes.get(i).map_or(&[][..], Vec::as_slice)).collect();
        let (fresh, sources) = self.place(self.plan(prompts, &mix));
        self.clock += 1;
        let nslots = self.prefixes.len();
        let cache = self.cache.as_mut().expect("fitted above");
        // the new prefixes, each in its slot
        if !fresh.is_empty() {
            let mut b = Batch::default();
            let own: Vec<(usize, usize, usize)> = fresh.iter().map(|&(slot, ..)| (slot, slot, 0)).collect();
            cache.share_prefixes(&own)?;
            for &(slot, i, len) in &fresh {
                b.push_mixed(slot as u32, 0, &prompts[i][..len], mix[i]);
                self.counts.prefilled += len;
                self.prefixes[slot] =
                    Some(Prefix { mix: mix[i].to_vec(), tokens: prompts[i][..len].to_vec(), used: 0 });
            }
            self.model.forward(&b, cache)?;
        }
        // then every prompt's own tokens in its own slot, past its shared prefix
        let mut b = Batch::default();
        let mut shares = Vec::with_capacity(prompts.len());
        for (i, p) in prompts.iter().enumerate() {
            let slot = nslots + i;
            let (from, len) = match sources[i] {
                Source::Own | Source::Fresh { .. } => (slot, 0),
                Source::Kept { slot: from, len } => (from, len),
            };
            if let Some(x) = self.prefixes.get_mut(from).and_then(Option::as_mut) {
                x.used = self.clock;
            }
            shares.push((slot, from, len));
            b.push_mixed(slot as u32, len as u32, &p[len..], mix[i]);
            self.counts.prompts += 1;
            self.counts.prompt_tokens += p.len();
            self.counts.own_tokens += p.len() - len;
            self.counts.prefilled += p.len() - len;
        }
        cache.share_prefixes(&shares)?;
        let logits = self.model.forward(&b, cache)?.read_f32(self.model.gpu())?;
        self.model.check_logits(&logits, |row| format!("the next-token logits of prompt {row}"))?;
        Ok(logits.chunks(cfg.vocab).map(<[f32]>::to_vec).collect())
    }

    /// The cache length for prompts of up to `max_len` tokens: rounded up to 256 (fewer remakes
    /// as lengths vary), within the model's context.
    fn cache_len(&self, max_len: usize) -> usize {
        max_len.next_multiple_of(256).min(self.model.cfg().max_positions).max(max_len)
    }

    /// Makes the cache hold `prompts` prompts of up to `max_len` tokens beside the prefix slots
    /// from the start: a cache made anew drops the prefixes kept in the old one, so a caller
    /// that knows its longest prompt ahead reserves it once.
    pub fn reserve(&mut self, prompts: usize, max_len: usize) -> Result<()> {
        let slots = self.prefixes.len() + prompts;
        if self.cache.as_ref().is_some_and(|c| c.slots >= slots && c.max_len >= max_len) {
            return Ok(());
        }
        let (capacity, max_len) = (self.model.cache_capacity(), self.cache_len(max_len));
        // as many slots as the last cache had, when they fit: fewer remakes
        let kept = slots.max(self.cache.as_ref().map_or(0, |c| c.slots));
        let slots = if kept * max_len <= capacity { kept } else { slots };
        if slots * max_len > capacity {
            return Err(Error::Invalid(format!(
                "{slots} sequences of {max_len} positions do not fit one KV-cache binding ({capacity} positions): score fewer prompts at once"
            )));
        }
        self.cache = Some(self.model.new_cache(slots, max_len)?);
        self.prefixes.iter_mut().for_each(|p| *p = None);
        Ok(())
    }

    /// How many prompts of up to `max_len` tokens one call can score beside the prefix slots.
    pub fn capacity_for(&self, max_len: usize) -> usize {
        (self.model.cache_capacity() / self.cache_len(max_len).max(1)).saturating_sub(self.prefixes.len()).max(1)
    }

    /// Each prompt's source: the kept prefix of its mix it shares most with, else the call's new
    /// prefix of its mix it shares most with, else a new prefix (its own first tokens, as many
    /// as it shares with any later prompt of its mix), when at least MIN_SHARED tokens are
    /// shared; else none. Every prompt keeps at least one token of its own, for its logits.
    /// Returns the sources and the new prefixes (the prompt each is cut from, its length).
    fn plan(&self, prompts: &[Vec<u32>], mix: &[&[f32]]) -> (Vec<Source>, Vec<(usize, usize)>) {
        let mut out = Vec::with_capacity(prompts.len());
        let mut fresh: Vec<(usize, usize)> = Vec::new();
        for (i, p) in prompts.iter().enumerate() {
            let room = p.len() - 1;
            let kept = (self.prefixes.iter().enumerate())
                .filter_map(|(slot, x)| Some((slot, x.as_ref()?)))
                .filter(|(_, x)| x.mix == mix[i])
                .map(|(slot, x)| (slot, common(&x.tokens, p).min(room)))
                .max_by_key(|&(_, len)| len);
            if let Some((slot, len)) = kept.filter(|k| k.1 >= MIN_SHARED) {
                out.push(Source::Kept { slot, len });
                continue;
            }
            let known = (fresh.iter().enumerate())
                .filter(|(_, (j, _))| mix[*j] == mix[i])
                .map(|(k, &(j, len))| (k, common(&prompts[j][..len], p).min(room)))
                .max_by_key(|&(_, len)| len);
            if let Some((k, len)) = known.filter(|k| k.1 >= MIN_SHARED) {
                out.push(Source::Fresh { k, len });
                continue;
            }
            let len = (i + 1..prompts.len())
                .filter(|&j| mix[j] == mix[i])
                .map(|j| common(p, &prompts[j]).min(room))
                .max()
                .unwrap_or(0);
            if len >= MIN_SHARED {
                fresh.push((i, len));
                out.push(Source::Fresh { k: fresh.len() - 1, len });
            } else {
                out.push(Source::Own);
            }
        }
        (out, fresh)
    }

    /// Slots for the new prefixes: free ones first, then those of the least recently used kept
    /// prefixes this call does not read. A new prefix without a slot is not shared this time.
    /// Returns the new prefixes as (slot, prompt, length) and every prompt's final source.
    fn place(
        &mut self,
        (plan, fresh): (Vec<Source>, Vec<(usize, usize)>),
    ) -> (Vec<(usize, usize, usize)>, Vec<Source>) {
        let reading: Vec<usize> =
            plan.iter().filter_map(|s| if let Source::Kept { slot, .. } = s { Some(*slot) } else { None }).collect();
        let mut free: Vec<usize> = (0..self.prefixes.len()).filter(|&s| self.prefixes[s].is_none()).collect();
        let mut evictable: Vec<usize> =
            (0..self.prefixes.len()).filter(|s| self.prefixes[*s].is_some() && !reading.contains(s)).collect();
        // most recently used first, so pop() gives up the least recently used
        evictable.sort_by_key(|&s| std::cmp::Reverse(self.prefixes[s].as_ref().map_or(0, |p| p.used)));
        let slots: Vec<Option<usize>> = fresh.iter().map(|_| free.pop().or_else(|| evictable.pop())).collect();
        let placed = (fresh.iter().zip(&slots)).filter_map(|(&(i, len), s)| Some(((*s)?, i, len))).collect();
        let sources = (plan.into_iter())
            .map(|s| match s {
                Source::Fresh { k, len } => slots[k].map_or(Source::Own, |slot| Source::Kept { slot, len }),
                other => other,
            })
            .collect();
        (placed, sources)
    }
}
