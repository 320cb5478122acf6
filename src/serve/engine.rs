//! The serving loop: one thread owns the model and a KV cache of `max_seqs` slots, and runs one
//! forward pass a step over every sequence in flight. Requests join at step boundaries (their
//! prompts prefilled in chunks beside the others' decode rows) and leave when they finish or
//! their client goes away; every row carries its own request's adapter weights, so requests with
//! different mixes share one batch. `split_by_mix` runs one mix a batch instead (as servers
//! without per-row adapter weights must), for the comparison.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::lora::peft::Adapter;
use crate::model::batch::Batch;
use crate::model::generate::{Finish, GenerateOptions, Sequence};
use crate::model::llama::{KvCache, Llama};
use crate::model::tokenizer::Tokenizer;
use crate::serve::metrics::Metrics;

/// Adapter weights by adapter name; adapters not named are at weight 0.
pub type Mix = BTreeMap<String, f32>;

/// The mix's name in metrics and logs: "base", or "a:0.6+b:0.4" (sorted, zero weights left out).
pub fn mix_label(mix: &Mix) -> String {
    let parts: Vec<String> = mix.iter().filter(|(_, w)| **w != 0.0).map(|(n, w)| format!("{n}:{w}")).collect();
    if parts.is_empty() { "base".into() } else { parts.join("+") }
}

/// A request as the engine runs it.
pub struct Job {
    pub prompt: Vec<u32>,
    pub opts: GenerateOptions,
    /// None: every loaded adapter at its default weight.
    pub mix: Option<Mix>,
    pub events: mpsc::UnboundedSender<Event>,
    /// When the request arrived (time to first token counts from here).
    pub arrived: Instant,
}

/// What a job's client hears.
#[derive(Debug)]
pub enum Event {
    /// Generated text (stop strings cut, text that may begin one held back).
    Text(String),
    Done {
        finish: Finish,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    /// The job could not run or was cancelled; `status` is the HTTP status it deserves.
    Failed {
        status: u16,
        message: String,
    },
}

pub struct EngineOptions {
    pub max_seqs: usize,
    /// Positions a slot holds: prompt and completion together.
    pub context: usize,
    /// Jobs waiting for a slot before submissions are refused.
    pub max_queue: usize,
    /// Prompt tokens prefilled a step (beside the decode rows), so long prompts do not stall
    /// the sequences already generating.
    pub prefill_chunk: usize,
    pub split_by_mix: bool,
}

/// A loaded adapter: its name, where it came from, the weight requests get by default.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AdapterInfo {
    pub name: String,
    pub path: PathBuf,
    pub weight: f32,
}

enum Control {
    Load { info: AdapterInfo, adapter: Box<Adapter>, reply: oneshot::Sender<Result<()>> },
    Unload { name: String, reply: oneshot::Sender<std::result::Result<(), (u16, String)>> },
}

#[derive(Default)]
struct Inbox {
    jobs: VecDeque<Job>,
    /// Slots no job holds or is about to: the queue's bound counts the jobs past these.
    free: usize,
    control: VecDeque<Control>,
    /// Set on shutdown: no job is taken any more, and what runs past the deadline is cancelled.
    drain_by: Option<Instant>,
}

/// What the HTTP side and the engine thread share.
pub struct Shared {
    inbox: Mutex<Inbox>,
    wake: Condvar,
    adapters: Mutex<Vec<AdapterInfo>>,
    /// EngineOptions::split_by_mix, switchable while serving (for the benchmark's comparison).
    split_by_mix: AtomicBool,
    pub metrics: Metrics,
    pub opts: EngineOptions,
}

/// Why a job was not queued.
#[derive(Debug)]
pub enum Refused {
    /// The queue holds `max_queue` jobs already.
    Full,
    ShuttingDown,
}

#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

impl Engine {
    /// Starts the engine thread on `model` (no adapters attached) with `adapters` loaded; the
    /// thread ends after `shutdown` once what runs has finished or been cancelled.
    pub fn start(
        model: Llama,
        tok: Arc<Tokenizer>,
        adapters: Vec<(AdapterInfo, Adapter)>,
        opts: EngineOptions,
    ) -> Result<(Engine, std::thread::JoinHandle<()>)> {
        if opts.max_seqs == 0 || opts.prefill_chunk == 0 {
            return Err(Error::Invalid("--max-seqs and the prefill chunk must be at least 1".into()));
        }
        let cache = model.new_cache(opts.max_seqs, opts.context)?;
        let shared = Arc::new(Shared {
            inbox: Mutex::new(Inbox { free: opts.max_seqs, ..Inbox::default() }),
            wake: Condvar::new(),
            adapters: Mutex::new(adapters.iter().map(|(i, _)| i.clone()).collect()),
            split_by_mix: AtomicBool::new(opts.split_by_mix),
            metrics: Metrics::default(),
            opts,
        });
        let mut worker = Worker::new(model, tok, cache, shared.clone(), adapters)?;
        let engine = Engine { shared };
        let after = engine.clone();
        let handle = std::thread::Builder::new()
            .name("lorafuse-engine".into())
            .spawn(move || {
                // a panic ends the engine: its running jobs' channels close as it unwinds, and
                // queued and later jobs are refused rather than left waiting
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker.run())).is_err() {
                    eprintln!("serve: the engine stopped on an internal error; requests are refused");
                    after.abandon();
                }
            })
            .map_err(|e| Error::Invalid(format!("starting the engine thread: {e}")))?;
        Ok((engine, handle))
    }

    /// Whether the engine has stopped taking jobs (shutting down, or stopped).
    pub fn draining(&self) -> bool {
        self.shared.inbox.lock().map_or(true, |i| i.drain_by.is_some())
    }

    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// One mix a batch from now on (true), or every mix in one batch.
    pub fn set_split_by_mix(&self, split: bool) {
        self.shared.split_by_mix.store(split, Ordering::Relaxed);
    }

    pub fn adapters(&self) -> Vec<AdapterInfo> {
        self.shared.adapters.lock().expect("adapter list").clone()
    }

    /// Queues `job`, or says why not (the job's client should hear 429 or 503).
    pub fn submit(&self, job: Job) -> std::result::Result<(), Refused> {
        let Ok(mut inbox) = self.shared.inbox.lock() else { return Err(Refused::ShuttingDown) };
        if inbox.drain_by.is_some() {
            return Err(Refused::ShuttingDown);
        }
        if inbox.jobs.len() >= self.shared.opts.max_queue + inbox.free {
            return Err(Refused::Full);
        }
        inbox.jobs.push_back(job);
        self.shared.metrics.set_queue(inbox.jobs.len());
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Loads an adapter at run time (attached between two steps).
    pub async fn load(&self, info: AdapterInfo, adapter: Adapter) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.control(Control::Load { info, adapter: Box::new(adapter), reply });
        rx.await.map_err(|_| Error::Invalid("the engine stopped".into()))?
    }

    /// Unloads an adapter between two steps; refused (409) while a running request weighs it.
    pub async fn unload(&self, name: String) -> std::result::Result<(), (u16, String)> {
        let (reply, rx) = oneshot::channel();
        self.control(Control::Unload { name, reply });
        rx.await.map_err(|_| (503, "the engine stopped".to_string()))?
    }

    fn control(&self, c: Control) {
        self.shared.inbox.lock().expect("inbox").control.push_back(c);
        self.shared.wake.notify_one();
    }

    /// Stops taking jobs: those accepted (queued or running) are served while `grace` lasts,
    /// then what is left is cancelled.
    pub fn shutdown(&self, grace: Duration) {
        let mut inbox = self.shared.inbox.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        inbox.drain_by = Some(Instant::now() + grace);
        self.shared.wake.notify_one();
    }

    /// After the engine thread died: refuses every queued job and all later ones.
    fn abandon(&self) {
        let mut inbox = self.shared.inbox.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        inbox.drain_by = Some(Instant::now());
        fail_queued(&mut inbox, &self.shared.metrics);
    }
}

fn fail_queued(inbox: &mut Inbox, metrics: &Metrics) {
    for job in inbox.jobs.drain(..) {
        let _ =
            job.events.send(Event::Failed { status: 503, message: "cancelled: the server is shutting down".into() });
    }
    metrics.set_queue(0);
}

/// A job holding a cache slot.
struct Active {
    job: Job,
    slot: u32,
    /// Prompt tokens in the cache so far.
    prefilled: usize,
    seq: Sequence,
    mix: Mix,
    label: String,
    first_token: bool,
}

impl Active {
    fn decoding(&self) -> bool {
        self.prefilled == self.job.prompt.len()
    }
}

struct Worker {
    model: Llama,
    tok: Arc<Tokenizer>,
    cache: KvCache,
    shared: Arc<Shared>,
    /// Loaded adapters in attach order, with their host copies for re-attaching.
    loaded: Vec<(AdapterInfo, Adapter)>,
    active: Vec<Active>,
    free: Vec<u32>,
}

impl Worker {
    fn new(
        model: Llama,
        tok: Arc<Tokenizer>,
        cache: KvCache,
        shared: Arc<Shared>,
        loaded: Vec<(AdapterInfo, Adapter)>,
    ) -> Result<Worker> {
        let free = (0..shared.opts.max_seqs as u32).rev().collect();
        let mut w = Worker { model, tok, cache, shared, loaded, active: Vec::new(), free };
        w.attach()?;
        w.model.warm_up(false, || w.rehearse())?;
        Ok(w)
    }

    /// Records (without running) the passes serving meets, so their kernels are tuned and
    /// compiled before the first request: a full prefill chunk, a step of every slot decoding
    /// beside a chunk, and one decode row.
    fn rehearse(&self) -> Result<()> {
        let (o, n) = (&self.shared.opts, self.loaded.len());
        let chunk = o.prefill_chunk.min(o.context - 1);
        let row = |b: &mut Batch, slot: usize, start: usize, len: usize| {
            b.push_sequence(slot as u32, start as u32, &vec![0; len], true);
            b.adapter_weights.extend(std::iter::repeat_n(0.0, n * len));
        };
        let (mut prefill, mut mixed, mut one) = (Batch::default(), Batch::default(), Batch::default());
        row(&mut prefill, 0, 0, chunk);
        for s in 1..o.max_seqs {
            row(&mut mixed, s, chunk, 1);
        }
        row(&mut mixed, 0, 0, chunk);
        row(&mut one, 0, chunk, 1);
        for b in [prefill, mixed, one] {
            self.model.forward(&b, &self.cache)?;
        }
        Ok(())
    }

    fn attach(&mut self) -> Result<()> {
        if self.loaded.is_empty() {
            self.model.detach();
            return Ok(());
        }
        let adapters: Vec<Adapter> = self.loaded.iter().map(|(_, a)| a.clone()).collect();
        let weights: Vec<f32> = self.loaded.iter().map(|(i, _)| i.weight).collect();
        self.model.attach(&adapters, &weights)?;
        *self.shared.adapters.lock().expect("adapter list") = self.loaded.iter().map(|(i, _)| i.clone()).collect();
        Ok(())
    }

    fn run(&mut self) {
        loop {
            let (control, jobs, drain_by) = self.wait();
            for c in control {
                self.apply(c);
            }
            if let Some(deadline) = drain_by {
                let queued = self.shared.inbox.lock().expect("inbox").jobs.len();
                if self.active.is_empty() && jobs.is_empty() && queued == 0 {
                    return;
                }
                if Instant::now() >= deadline {
                    const GONE: &str = "cancelled: the server is shutting down";
                    for job in jobs {
                        let _ = job.events.send(Event::Failed { status: 503, message: GONE.into() });
                    }
                    self.fail_all(503, GONE);
                    fail_queued(&mut self.shared.inbox.lock().expect("inbox"), &self.shared.metrics);
                    return;
                }
            }
            for job in jobs {
                self.admit(job);
            }
            if !self.active.is_empty()
                && let Err(e) = self.step()
            {
                eprintln!("serve: a step failed: {e}");
                self.fail_all(500, &format!("generation failed: {e}"));
            }
        }
    }

    /// Blocks until there is work: control messages, and the jobs that fit the free slots.
    fn wait(&mut self) -> (Vec<Control>, Vec<Job>, Option<Instant>) {
        let mut inbox = self.shared.inbox.lock().expect("inbox");
        while self.active.is_empty() && inbox.jobs.is_empty() && inbox.control.is_empty() && inbox.drain_by.is_none() {
            inbox = self.shared.wake.wait(inbox).expect("inbox");
        }
        let control: Vec<Control> = inbox.control.drain(..).collect();
        let mut jobs = Vec::new();
        let split = self.shared.split_by_mix.load(Ordering::Relaxed);
        // One mix a batch: while a batch runs, only jobs of its mix join, and only while no
        // other mix waits (so no mix starves); an empty batch takes the oldest job's mix.
        // A job naming an adapter not loaded matches any batch (admitting it fails it).
        let mix_of = |j: &Job| self.resolve(j.mix.as_ref()).ok().map(|m| self.weights(&m));
        // (resolved only when splitting: a step of the fused engine looks at no queued mix)
        let running = if split { self.active.first().map(|a| self.weights(&a.mix)) } else { None };
        let other_waits = running.is_some() && inbox.jobs.iter().any(|j| mix_of(j).is_some_and(|m| Some(m) != running));
        if !other_waits {
            let batch_mix = if split { running.or_else(|| inbox.jobs.front().and_then(mix_of)) } else { None };
            let mut i = 0;
            while jobs.len() < self.free.len() && i < inbox.jobs.len() {
                if split && mix_of(&inbox.jobs[i]).is_some_and(|m| Some(m) != batch_mix) {
                    i += 1;
                    continue;
                }
                jobs.extend(inbox.jobs.remove(i));
            }
        }
        inbox.free = self.free.len() - jobs.len();
        self.shared.metrics.set_queue(inbox.jobs.len());
        (control, jobs, inbox.drain_by)
    }

    /// A request's mix over the loaded adapters: None, their default weights.
    fn resolve(&self, mix: Option<&Mix>) -> std::result::Result<Mix, String> {
        match mix {
            None => Ok(self.loaded.iter().map(|(i, _)| (i.name.clone(), i.weight)).collect()),
            Some(m) => {
                if let Some(n) = m.keys().find(|n| !self.loaded.iter().any(|(i, _)| &i.name == *n)) {
                    return Err(format!("no adapter named '{n}' is loaded"));
                }
                Ok(m.clone())
            }
        }
    }

    fn weights(&self, mix: &Mix) -> Vec<f32> {
        self.loaded.iter().map(|(i, _)| mix.get(&i.name).copied().unwrap_or(0.0)).collect()
    }

    fn apply(&mut self, c: Control) {
        match c {
            Control::Load { info, adapter, reply } => {
                let result = if self.loaded.iter().any(|(i, _)| i.name == info.name) {
                    Err(Error::Invalid(format!("an adapter named '{}' is loaded already", info.name)))
                } else {
                    self.loaded.push((info, *adapter));
                    let r = self.attach();
                    if r.is_err() {
                        self.loaded.pop();
                        let _ = self.attach();
                    }
                    r
                };
                let _ = reply.send(result);
            }
            Control::Unload { name, reply } => {
                let result = match self.loaded.iter().position(|(i, _)| i.name == name) {
                    None => Err((404, format!("no adapter named '{name}' is loaded"))),
                    Some(k) => {
                        let users = self.active.iter().filter(|a| a.mix.get(&name).is_some_and(|w| *w != 0.0)).count();
                        if users > 0 {
                            Err((409, format!("adapter '{name}' is in use by {users} running request(s)")))
                        } else {
                            let gone = self.loaded.remove(k);
                            for a in &mut self.active {
                                a.mix.remove(&name);
                            }
                            self.attach().map_err(|e| {
                                self.loaded.insert(k, gone);
                                (500, e.to_string())
                            })
                        }
                    }
                };
                let _ = reply.send(result);
            }
        }
    }

    fn admit(&mut self, job: Job) {
        let mix = match self.resolve(job.mix.as_ref()) {
            Ok(m) => m,
            Err(message) => {
                let _ = job.events.send(Event::Failed { status: 400, message });
                return;
            }
        };
        let slot = self.free.pop().expect("jobs are taken only for free slots");
        let label = mix_label(&mix);
        self.shared.metrics.admitted(&label, job.prompt.len());
        let seq = Sequence::new(&job.prompt, job.opts.sampling.seed);
        self.active.push(Active { job, slot, prefilled: 0, seq, mix, label, first_token: true });
    }

    /// One forward pass: a decode row for each sequence generating, then prompt chunks up to the
    /// step's budget; then each row with logits samples its next token.
    fn step(&mut self) -> Result<()> {
        // clients gone: their rows free now
        let before = self.active.len();
        self.active.retain(|a| !a.job.events.is_closed());
        if self.active.len() < before {
            self.shared.metrics.cancelled(before - self.active.len());
            self.reclaim();
            if self.active.is_empty() {
                return Ok(());
            }
        }
        let mut batch = Batch::default();
        let mut wanted = Vec::new(); // index into active of each logits row
        let mut budget = self.shared.opts.prefill_chunk;
        let with_weights = !self.loaded.is_empty();
        for k in 0..self.active.len() {
            let a = &self.active[k];
            let weights = if with_weights { self.weights(&a.mix) } else { Vec::new() };
            let (start, tokens, logits) = if a.decoding() {
                let pos = a.job.prompt.len() + a.seq.ids.len() - 1;
                (pos, vec![*a.seq.ids.last().expect("a decoding sequence has sampled")], true)
            } else {
                if budget == 0 {
                    continue;
                }
                let n = budget.min(a.job.prompt.len() - a.prefilled);
                budget -= n;
                let end = a.prefilled + n;
                (a.prefilled, a.job.prompt[a.prefilled..end].to_vec(), end == a.job.prompt.len())
            };
            batch.push_sequence(a.slot, start as u32, &tokens, logits);
            for _ in &tokens {
                batch.adapter_weights.extend_from_slice(&weights);
            }
            if logits {
                wanted.push(k);
            }
            if !self.active[k].decoding() {
                self.active[k].prefilled += tokens.len();
            }
        }
        let started = Instant::now();
        let logits = self.model.forward(&batch, &self.cache)?.read_f32(self.model.gpu())?;
        let active = &self.active;
        self.model.check_logits(&logits, |row| format!("the step of request {}", active[wanted[row]].label))?;
        let vocab = self.model.cfg().vocab;
        let mut finished = Vec::new();
        for (row, &k) in wanted.iter().enumerate() {
            let a = &mut self.active[k];
            let step = a.seq.step(&logits[row * vocab..(row + 1) * vocab], &self.tok, &a.job.opts)?;
            if a.first_token {
                a.first_token = false;
                self.shared.metrics.first_token(a.job.arrived.elapsed());
            }
            let mut gone = !step.piece.is_empty() && a.job.events.send(Event::Text(step.piece)).is_err();
            if let Some(c) = step.done {
                let done =
                    Event::Done { finish: c.finish, prompt_tokens: a.job.prompt.len(), completion_tokens: c.ids.len() };
                gone |= a.job.events.send(done).is_err();
                finished.push(k);
            } else if gone {
                self.shared.metrics.cancelled(1);
                finished.push(k);
            }
        }
        self.shared.metrics.stepped(batch.rows(), wanted.len(), started.elapsed());
        for k in finished.into_iter().rev() {
            self.active.remove(k);
        }
        self.reclaim();
        Ok(())
    }

    /// Returns the slots no active sequence holds to the free list.
    fn reclaim(&mut self) {
        let held: Vec<u32> = self.active.iter().map(|a| a.slot).collect();
        self.free = (0..self.shared.opts.max_seqs as u32).rev().filter(|s| !held.contains(s)).collect();
        self.shared.inbox.lock().expect("inbox").free = self.free.len();
        self.shared.metrics.set_running(self.active.len());
    }

    fn fail_all(&mut self, status: u16, message: &str) {
        for a in self.active.drain(..) {
            let _ = a.job.events.send(Event::Failed { status, message: message.to_string() });
        }
        self.reclaim();
    }
}
