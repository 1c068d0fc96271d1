//! The memory budget: run a DC-GGUF model in llama.cpp with less memory than its decoded
//! weights, by keeping some tensors compressed and decoding them just before each use.
//!
//! **What is asked** ([`spec`]): a budget (`60%` of the decoded weight bytes, or `512M`),
//! where the compressed bytes of streamed tensors live (`ram`: mapped in the process; `file`:
//! re-read from the page cache), and whether a thread prefetches the next layer. One syntax,
//! `60%,file,noprefetch`, from the C API (`dcgguf_set_memory_budget`) or the environment
//! (`DCGGUF_MEM_BUDGET`, with `DCGGUF_MEM_SOURCE` and `DCGGUF_PREFETCH` as defaults).
//!
//! **When nothing is asked** ([`limit`]): the limit this process runs under (cgroup or
//! `MemAvailable`) decides: no budget when the decoded model fits (but for its lookup
//! tables, an untied token embedding, which stay compressed: a lookup decodes the rows it
//! reads, [`plan::lookups_plan`]), else a budget that fits, else (no budget fits: weights
//! compression barely shrinks; or the one that fits decodes more each pass than the disk
//! would read back without it, [`limit::spill_instead`]) no budget with part of the decoded
//! weights (twice what the limit lacks, [`limit::spill_quota`]) moved to a file, evictable
//! page cache as plain llama.cpp's mapped model is ([`spill`]);
//! and again when a batch
//! allocates a buffer ([`refit`]), once the context's needs show (without the preload's
//! hooks, when a context is created: [`unhooked`]). A budget (asked for or
//! chosen) is checked there too: where a batch would not fit next to it, the weights it keeps
//! resident move to a file as far as the batch needs.
//!
//! **What is decided at load** ([`plan`]): which tensors stay resident and which are
//! streamed. Streaming a tensor saves its decoded bytes and costs a decode per use, so the
//! plan keeps resident the tensors whose decode costs most per byte saved, as many as fit
//! in the budget once room is kept for the streamed working set (the layers decoded at
//! once). Pure functions over a list of tensor costs, tested without llama.cpp.
//!
//! **What happens while llama.cpp computes** ([`runtime`]): streamed tensors are not read at
//! load (llama.cpp allocates their memory, whose pages are never touched). dcgguf's graph
//! callback ([`graph_hook`], chained with the caller's) sees each node before it runs; when
//! a node reads a streamed weight of a new layer, the runtime decodes that layer, on the
//! host's OpenMP compute threads ([`team`]), into an arena whose space evicted tensors hand
//! on (the weight pointed there while it is decoded) or in place into pages moved over from
//! them ([`recycle`]), then cuts the graph range there so that computed layers can be
//! evicted. Eviction takes the layer needed furthest ahead in the layer order seen in
//! earlier graphs ([`eviction`], pure and tested without llama.cpp). llama.cpp and every
//! backend op work unchanged.
//!
//! Where it plugs in: `crate::llama` asks [`spec::settings`] at each DC load, builds a
//! [`Residency`] from the plan, hands it to the load stream (which skips streamed tensors'
//! reads) and registers it by model; the context and model hooks in `crate::llama::hooks`
//! install [`graph_hook`] and forget the model at `llama_model_free`. The memory report in
//! verbose logs is [`crate::io::rss_report`].

pub mod eviction;
pub mod graph_hook;
pub mod limit;
pub mod plan;
pub mod recycle;
pub mod refit;
pub mod runtime;
pub mod spec;
pub mod spill;
pub mod team;
pub mod unhooked;

pub use plan::{MIN_STREAMED, ResidencyPlan, TensorCost};
pub use refit::{ComputeDecoding, compute_decoding};
pub use runtime::{Residency, Stats, model_residency, register_model, unregister_model};
pub use spec::{Budget, CompressedHome, Settings};

/// `bytes` in MiB, for the log lines of the budget's decisions.
pub(crate) fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}
