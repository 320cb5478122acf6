//! The KV cache: per layer, K and V of `slots` sequences up to `max_len` positions, the RoPE
//! table for those positions, and which slots share a prefix.
//!
//! A prefix shared by several prompts (MMLU's five examples before each of a subject's
//! questions, a system prompt) is prefilled once into a slot of its own; each prompt's slot then
//! reads its first keys from there (attention.wgsl's PREFIX) and holds only its own positions
//! after them. Rows written into a slot must lie past its shared part.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::kernels::rope::{Cache, RopeTable};

pub struct KvCache {
    pub k: Vec<Tensor>,
    pub v: Vec<Tensor>,
    pub slots: usize,
    pub max_len: usize,
    rope: RopeTable,
    gpu: Gpu,
    /// Per slot: the slot holding its first keys, and how many (itself and 0: none shared).
    shared: Vec<[u32; 2]>,
    /// `shared` on the GPU, when any slot shares.
    table: Option<Tensor>,
}

impl KvCache {
    pub(crate) fn new(gpu: &Gpu, k: Vec<Tensor>, v: Vec<Tensor>, max_len: usize, rope: RopeTable) -> KvCache {
        let slots = k.first().map_or(0, |t| t.shape()[0]);
        let shared = (0..slots as u32).map(|s| [s, 0]).collect();
        KvCache { k, v, slots, max_len, rope, gpu: gpu.clone(), shared, table: None }
    }

    pub fn rope(&self) -> &RopeTable {
        &self.rope
    }

    /// Layer `i`'s K and V.
    pub(crate) fn layer(&self, i: usize) -> Cache<'_> {
        Cache { k: &self.k[i], v: &self.v[i] }
    }

    /// From now on, for each (slot, from, len) of `shares`, slot `slot` reads its keys at
    /// positions below `len` from slot `from`, which holds a prefix prefilled there; the slot's
    /// own rows start at position `len`. `len` 0 shares nothing. The table goes to the GPU once.
    pub fn share_prefixes(&mut self, shares: &[(usize, usize, usize)]) -> Result<()> {
        for &(slot, from, len) in shares {
            if slot >= self.slots || from >= self.slots || len > self.max_len {
                return Err(Error::Invalid(format!(
                    "slot {slot} cannot share {len} positions of slot {from} ({} slots of {} positions)",
                    self.slots, self.max_len
                )));
            }
            self.shared[slot] = if len == 0 { [slot as u32, 0] } else { [from as u32, len as u32] };
        }
        if let Some(s) =
            (0..self.slots).find(|&s| self.shared[s][1] > 0 && self.shared[self.shared[s][0] as usize][1] > 0)
        {
            return Err(Error::Invalid(format!("slot {s} shares the prefix of a slot that itself shares one")));
        }
        let flat: Vec<u32> = self.shared.iter().flatten().copied().collect();
        self.table = match self.shared.iter().any(|s| s[1] > 0) {
            true => Some(Tensor::from_u32(&self.gpu, &[self.slots, 2], &flat, "shared prefixes")?),
            false => None,
        };
        Ok(())
    }

    /// How many of slot `slot`'s first positions come from a shared prefix.
    pub fn shared_len(&self, slot: usize) -> u32 {
        self.shared.get(slot).map_or(0, |s| s[1])
    }

    /// The prefix table attention reads, when any slot shares one.
    pub(crate) fn prefix(&self) -> Option<&Tensor> {
        self.table.as_ref()
    }
}
