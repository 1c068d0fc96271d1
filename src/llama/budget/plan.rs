//! The run-time residency plan: under a memory budget, which weight tensors stay decoded in
//! memory for the whole run and which are decoded just before each use and released after.
//!
//! Streaming a tensor saves its decoded bytes (less its compressed bytes when those are held
//! in RAM) and costs one decode per use. The plan keeps resident the tensors whose decode
//! costs most per byte saved, as many as the budget allows after reserving room for the
//! streamed working set: the largest run of consecutive layers decoded at once (the layer
//! being computed and the next one; one more when the next layer is prefetched).

use super::spec::{CompressedHome, Settings};

/// What the plan needs to know of one tensor.
#[derive(Clone, Debug)]
pub struct TensorCost {
    pub name: String,
    pub raw: u64,
    pub stored: u64,
    /// Decode speed of this tensor's type (bytes of output per second).
    pub decode_bps: f64,
    /// Only ever read by row lookups (an untied token embedding): each use decodes just the
    /// chunks holding the rows asked for, and copies out just those rows.
    pub lookup_only: bool,
    /// Decoded bytes per chunk (the unit a row lookup decodes).
    pub chunk_bytes: u64,
}

/// Tensors smaller than this always stay resident: streaming them saves little and costs a
/// page-granular release and a callback per use.
pub const MIN_STREAMED: u64 = 256 << 10;

/// The plan for one model.
#[derive(Clone, Debug, PartialEq)]
pub struct ResidencyPlan {
    /// Per tensor: decoded on demand (`true`) or resident.
    pub streamed: Vec<bool>,
    /// Per tensor: the group decoded together (a layer `blk.N`, or the tensor alone).
    pub group: Vec<u32>,
    /// The budget asked for, in bytes.
    pub budget_bytes: u64,
    /// Weight memory with everything streamable streamed.
    pub min_bytes: u64,
    pub resident_bytes: u64,
    /// Room kept for streamed tensors decoded at the same time.
    pub reserve_bytes: u64,
    /// Compressed bytes of streamed tensors (held in RAM in [`CompressedHome::Ram`]).
    pub streamed_stored_bytes: u64,
    pub decoded_weight_bytes: u64,
}

impl ResidencyPlan {
    /// Compressed bytes held in the process.
    pub fn held_bytes(&self, home: CompressedHome) -> u64 {
        match home {
            CompressedHome::Ram => self.streamed_stored_bytes,
            CompressedHome::File => 0,
        }
    }

    /// Weight memory the plan needs at least: resident, held and the working-set reserve.
    pub fn needed_bytes(&self, home: CompressedHome) -> u64 {
        self.resident_bytes + self.held_bytes(home) + self.reserve_bytes
    }

    /// Bytes the streamed tensors may occupy decoded at once.
    pub fn streaming_room(&self, home: CompressedHome) -> u64 {
        self.budget_bytes
            .max(self.needed_bytes(home))
            .saturating_sub(self.resident_bytes + self.held_bytes(home))
    }

    pub fn streamed_count(&self) -> usize {
        self.streamed.iter().filter(|&&s| s).count()
    }
}

/// `blk.N.` -> N; other tensors get ids past every layer, one each.
pub fn groups(names: &[&str]) -> Vec<u32> {
    let layer =
        |n: &str| -> Option<u32> { n.strip_prefix("blk.")?.split('.').next()?.parse().ok() };
    let mut next_other = names
        .iter()
        .filter_map(|n| layer(n))
        .max()
        .map_or(0, |m| m + 1);
    names
        .iter()
        .map(|n| {
            layer(n).unwrap_or_else(|| {
                next_other += 1;
                next_other - 1
            })
        })
        .collect()
}

/// Working-set reserve: the `window` largest streamed groups together (an upper bound on any
/// `window` consecutive ones).
fn reserve(group_bytes: &[u64], window: usize) -> u64 {
    let mut v = group_bytes.to_vec();
    v.sort_unstable_by(|a, b| b.cmp(a));
    v.iter().take(window).sum()
}

fn group_bytes_with(g: &[u64], at: usize, plus: u64) -> Vec<u64> {
    let mut v = g.to_vec();
    v[at] += plus;
    v
}

/// Chunks of a lookup-only tensor the working set allows for (a prompt's rows).
const LOOKUP_CHUNKS: u64 = 4;

/// ... and at least these bytes: a lookup copies each row it reads into the tensor's own
/// pages, one page or more a row wherever the chunks are small. MiniLM BF16's first batch
/// under llama-embedding (2046 tokens) held 3.6 MB of them, with 1 MiB chunks and with 64 KiB
/// ones alike (`peak_present` of the lookup stats, 2026-12-02).
const LOOKUP_ROWS_MIN: u64 = 4 << 20;

/// Decoded bytes a lookup-only tensor's rows hold at most: [`LOOKUP_CHUNKS`] of its chunks,
/// [`LOOKUP_ROWS_MIN`] at least, the whole tensor at most.
fn lookup_reserve(t: &TensorCost) -> u64 {
    t.raw
        .min((LOOKUP_CHUNKS * t.chunk_bytes.max(1)).max(LOOKUP_ROWS_MIN))
}

/// The plan for a load under `s`: its budget (a fraction of the decoded weight bytes, or
/// bytes) applied to `tensors`. `None` when it streams nothing (the budget covers the whole
/// model, or nothing is worth streaming).
pub fn plan_for(tensors: &[TensorCost], s: &Settings) -> Option<ResidencyPlan> {
    let decoded: u64 = tensors.iter().map(|t| t.raw).sum();
    let budget = s.budget.bytes(decoded);
    if budget >= decoded {
        return None;
    }
    let p = plan(tensors, budget, s.home, s.prefetch != Some(false));
    (p.streamed_count() > 0).then_some(p)
}

/// The plan of the default when the decoded model fits in memory: only the lookup tables
/// (untied token embeddings) worth it stream, everything else stays resident. A lookup
/// decodes the chunks holding the rows it asks for (a few per batch), so this costs almost
/// no time, and holds the chunks' compressed bytes and the rows instead of the decoded table.
/// A table written in lookup-sized chunks ([`crate::dc::LOOKUP_CHUNK`], which the converter
/// chooses for a big vocabulary or a table that compresses well) is worth it where the rows a
/// lookup holds take at least [`MIN_STREAMED`] less than the decoded table: a batch reads
/// only the chunks its tokens fall in (MiniLM F16, 18.9 MiB stored of 22.4: the uncapped
/// peak 6.1 MiB lower than with the table decoded, session 43). A table in bigger chunks, whose
/// batches read most of them, is worth it where its compressed bytes and rows together take
/// [`MIN_STREAMED`] less: MiniLM BF16's in 1 MiB chunks (14.8 MiB stored and at most 4 MiB
/// of rows instead of 22.4); MiniLM Q8_0's (11.3 MiB stored, 11.9 decoded) kept compressed
/// made the uncapped peak 3.4 MiB higher than plain mmap's (session 31). `None` when the model
/// has no such table.
pub fn lookups_plan(tensors: &[TensorCost]) -> Option<ResidencyPlan> {
    lookups_plan_where(tensors, |t| {
        let batches_read_only_their_chunks = t.chunk_bytes <= crate::dc::LOOKUP_CHUNK as u64;
        rows_held_are_worth_it(t)
            && (batches_read_only_their_chunks
                || t.raw
                    >= t.stored
                        .saturating_add(lookup_reserve(t))
                        .saturating_add(MIN_STREAMED))
    })
}

/// Whether the rows a lookup holds take at least [`MIN_STREAMED`] less than the decoded
/// table: the test every lookups-only plan makes.
fn rows_held_are_worth_it(t: &TensorCost) -> bool {
    t.raw >= lookup_reserve(t).saturating_add(MIN_STREAMED)
}

/// The lookups-only plan for a model whose batch would not fit under a memory limit
/// ([`super::refit`]): every lookup table whose rows a lookup holds take at least
/// [`MIN_STREAMED`] less than the decoded table. Its compressed bytes do not count: they are
/// the DC file's pages, which the limit reclaims (and a lookup reads back the chunks it
/// decodes), so what the table holds is the rows. MiniLM Q8_0's (11.9 MiB decoded, 11.3
/// stored in 1 MiB chunks, at most 4 MiB of rows), which [`lookups_plan`] keeps decoded.
pub fn lookups_plan_under_a_limit(tensors: &[TensorCost]) -> Option<ResidencyPlan> {
    lookups_plan_where(tensors, rows_held_are_worth_it)
}

/// The lookups-only plan streaming the lookup-only tensors `worth` takes.
fn lookups_plan_where(
    tensors: &[TensorCost],
    worth: impl Fn(&TensorCost) -> bool,
) -> Option<ResidencyPlan> {
    let names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    let streamed: Vec<bool> = tensors.iter().map(|t| t.lookup_only && worth(t)).collect();
    if !streamed.contains(&true) {
        return None;
    }
    let sum = |f: &dyn Fn(&TensorCost) -> u64, want: bool| -> u64 {
        tensors
            .iter()
            .zip(&streamed)
            .filter(|(_, s)| **s == want)
            .map(|(t, _)| f(t))
            .sum()
    };
    let resident_bytes = sum(&|t| t.raw, false);
    let streamed_stored_bytes = sum(&|t| t.stored, true);
    let reserve_bytes = sum(&lookup_reserve, true);
    let budget_bytes = resident_bytes + streamed_stored_bytes + reserve_bytes;
    let decoded_weight_bytes = tensors.iter().map(|t| t.raw).sum();
    Some(ResidencyPlan {
        streamed,
        group: groups(&names),
        budget_bytes,
        min_bytes: budget_bytes,
        resident_bytes,
        reserve_bytes,
        streamed_stored_bytes,
        decoded_weight_bytes,
    })
}

/// Plans residency for `budget_bytes` of weight memory.
pub fn plan(
    tensors: &[TensorCost],
    budget_bytes: u64,
    home: CompressedHome,
    prefetch: bool,
) -> ResidencyPlan {
    let names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    let group = groups(&names);
    let decoded: u64 = tensors.iter().map(|t| t.raw).sum();
    if budget_bytes >= decoded {
        return ResidencyPlan {
            streamed: vec![false; tensors.len()],
            group,
            budget_bytes,
            min_bytes: 0,
            resident_bytes: decoded,
            reserve_bytes: 0,
            streamed_stored_bytes: 0,
            decoded_weight_bytes: decoded,
        };
    }
    let n_groups = group.iter().map(|&g| g as usize + 1).max().unwrap_or(0);
    let window = if prefetch { 3 } else { 2 };
    let ctx = Planner {
        tensors,
        group: &group,
        n_groups,
        window,
        home,
    };
    let streamable: Vec<bool> = tensors
        .iter()
        .map(|t| t.raw >= MIN_STREAMED && ctx.saving(t) > 0)
        .collect();
    // Greedy by decode cost per byte saved, optionally first making the k largest groups
    // resident (one big tensor, e.g. a tied embedding that is also the output head, can
    // dominate the working set); the variant that decodes least per token wins.
    let mut by_size: Vec<usize> = (0..n_groups).collect();
    let mut group_raw = vec![0u64; n_groups];
    for (i, t) in tensors.iter().enumerate() {
        if streamable[i] {
            group_raw[group[i] as usize] += ctx.working(t);
        }
    }
    by_size.sort_by(|&a, &b| group_raw[b].cmp(&group_raw[a]));
    let mut best: Option<(f64, ResidencyPlan)> = None;
    for k in 0..=window.min(n_groups) {
        let p = ctx.greedy(&streamable, budget_bytes, &by_size[..k]);
        let cost = ctx.decode_seconds_per_pass(&p.streamed);
        if best.as_ref().is_none_or(|(c, _)| cost < *c) {
            best = Some((cost, p));
        }
    }
    best.map(|(_, p)| p).expect("k = 0 always runs")
}

struct Planner<'a> {
    tensors: &'a [TensorCost],
    group: &'a [u32],
    n_groups: usize,
    window: usize,
    home: CompressedHome,
}

impl Planner<'_> {
    fn saving(&self, t: &TensorCost) -> u64 {
        match self.home {
            CompressedHome::Ram => t.raw.saturating_sub(t.stored),
            CompressedHome::File => t.raw,
        }
    }

    fn held(&self, t: &TensorCost) -> u64 {
        match self.home {
            CompressedHome::Ram => t.stored,
            CompressedHome::File => 0,
        }
    }

    /// Decoded bytes one use of a streamed tensor needs in memory.
    fn working(&self, t: &TensorCost) -> u64 {
        if t.lookup_only {
            lookup_reserve(t)
        } else {
            t.raw
        }
    }

    /// Seconds of decoding one pass over the model costs (per generated token).
    fn decode_seconds_per_pass(&self, streamed: &[bool]) -> f64 {
        self.tensors
            .iter()
            .zip(streamed)
            .filter(|(_, s)| **s)
            .map(|(t, _)| {
                let per_use = if t.lookup_only {
                    t.chunk_bytes.min(t.raw)
                } else {
                    t.raw
                };
                per_use as f64 / t.decode_bps.max(1.0)
            })
            .sum()
    }

    fn greedy(
        &self,
        streamable: &[bool],
        budget_bytes: u64,
        resident_groups: &[usize],
    ) -> ResidencyPlan {
        let tensors = self.tensors;
        let mut streamed = streamable.to_vec();
        let mut group_bytes = vec![0u64; self.n_groups];
        for (i, t) in tensors.iter().enumerate() {
            if streamed[i] {
                group_bytes[self.group[i] as usize] += self.working(t);
            }
        }
        let sum = |f: &dyn Fn(&TensorCost) -> u64, want: bool, streamed: &[bool]| -> u64 {
            tensors
                .iter()
                .zip(streamed)
                .filter(|(_, s)| **s == want)
                .map(|(t, _)| f(t))
                .sum()
        };
        let mut resident = sum(&|t| t.raw, false, &streamed);
        let mut stored_held = sum(&|t| self.held(t), true, &streamed);
        let need = |resident: u64, stored_held: u64, group_bytes: &[u64]| {
            resident + stored_held + reserve(group_bytes, self.window)
        };
        let min_bytes = need(resident, stored_held, &group_bytes);

        // The forced groups first, then the tensors whose decode costs most per byte saved.
        let cost_per_saved = |i: usize| {
            let t = &tensors[i];
            let per_use = if t.lookup_only {
                t.chunk_bytes.min(t.raw)
            } else {
                t.raw
            };
            (per_use as f64 / t.decode_bps.max(1.0)) / self.saving(t) as f64
        };
        let forced = |i: usize| resident_groups.contains(&(self.group[i] as usize));
        let mut order: Vec<usize> = (0..tensors.len()).filter(|&i| streamable[i]).collect();
        order.sort_by(|&a, &b| {
            forced(b)
                .cmp(&forced(a))
                .then(cost_per_saved(b).total_cmp(&cost_per_saved(a)))
        });
        for i in order {
            let t = &tensors[i];
            let g = self.group[i] as usize;
            group_bytes[g] -= self.working(t);
            let before = need(
                resident,
                stored_held,
                &group_bytes_with(&group_bytes, g, self.working(t)),
            );
            let after = need(resident + t.raw, stored_held - self.held(t), &group_bytes);
            // Also take steps that do not grow the need: from a start above the budget (the
            // compressed bytes plus the reserve), they lead back under it.
            if after <= budget_bytes || after <= before {
                streamed[i] = false;
                resident += t.raw;
                stored_held -= self.held(t);
            } else {
                group_bytes[g] += self.working(t);
            }
        }
        ResidencyPlan {
            reserve_bytes: reserve(&group_bytes, self.window),
            streamed_stored_bytes: sum(&|t| t.stored, true, &streamed),
            streamed,
            group: self.group.to_vec(),
            budget_bytes,
            min_bytes,
            resident_bytes: resident,
            decoded_weight_bytes: tensors.iter().map(|t| t.raw).sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llama::budget::spec::Budget;

    fn t(name: &str, raw: u64, stored: u64, bps: f64) -> TensorCost {
        TensorCost {
            name: name.into(),
            raw,
            stored,
            decode_bps: bps,
            lookup_only: false,
            chunk_bytes: 1 << 20,
        }
    }

    #[test]
    fn lookup_tables_stream_first_and_reserve_a_few_chunks() {
        let mut m = model();
        m[0].lookup_only = true;
        let total: u64 = m.iter().map(|t| t.raw).sum();
        let p = plan(&m, total * 80 / 100, CompressedHome::File, true);
        assert!(
            p.streamed[0],
            "the 40 MiB lookup table is the cheapest to stream"
        );
        assert!(p.reserve_bytes < 40 << 20);
    }

    #[test]
    fn with_memory_to_spare_only_lookup_tables_that_compression_shrinks_stream() {
        let mut m = model();
        assert_eq!(
            lookups_plan(&m),
            None,
            "a tied embedding is no lookup table"
        );
        m[0].lookup_only = true;
        m[0].stored = 30 << 20;
        let p = lookups_plan(&m).unwrap();
        assert_eq!(p.streamed_count(), 1);
        assert!(p.streamed[0]);
        assert_eq!(p.streamed_stored_bytes, 30 << 20);
        assert_eq!(p.reserve_bytes, 4 << 20);
        assert_eq!(p.resident_bytes + (40 << 20), p.decoded_weight_bytes);
        // Held in RAM: the stored table and a few chunks' rows instead of the decoded table.
        assert_eq!(p.needed_bytes(CompressedHome::Ram), p.budget_bytes);
        assert_eq!(
            p.budget_bytes,
            p.decoded_weight_bytes - (40 << 20) + (30 << 20) + (4 << 20)
        );
        // A table whose compressed bytes and held rows save less than MIN_STREAMED stays
        // decoded: streaming it would hold more than decoding it does.
        m[0].stored = m[0].raw - (4 << 20) - (MIN_STREAMED - 1);
        assert_eq!(lookups_plan(&m), None);
        m[0].stored = 36 << 20;
        assert_eq!(
            lookups_plan(&m),
            None,
            "36 MiB stored + 4 MiB of rows = 40 decoded"
        );
        // Written in lookup-sized chunks, a batch reads only the chunks its tokens fall in:
        // the table streams whatever it stores.
        m[0].chunk_bytes = crate::dc::LOOKUP_CHUNK as u64;
        assert!(lookups_plan(&m).is_some_and(|p| p.streamed[0]));
        m[0].raw = (4 << 20) + MIN_STREAMED - 1;
        assert_eq!(
            lookups_plan(&m),
            None,
            "the rows held would take the whole table"
        );
        m[0].raw = 40 << 20;
        m[0].chunk_bytes = 1 << 20;
        // Under a limit its compressed bytes are file pages the limit reclaims: the rows
        // held count, and the table streams.
        let p = lookups_plan_under_a_limit(&m).unwrap();
        assert!(p.streamed[0] && p.streamed_count() == 1);
        assert_eq!(p.reserve_bytes, 4 << 20);
        // Unless even its rows would hold nearly as much as the decoded table.
        m[0].raw = (4 << 20) + MIN_STREAMED - 1;
        assert_eq!(lookups_plan_under_a_limit(&m), None);
        m[0].lookup_only = false;
        m[0].raw = 40 << 20;
        assert_eq!(
            lookups_plan_under_a_limit(&m),
            None,
            "a tied embedding is no lookup table"
        );
    }

    #[test]
    fn a_big_output_head_stays_resident_when_that_decodes_less() {
        // Tied embedding (also the output head): streaming it means decoding 40 MiB a token
        // and reserving 40 MiB; keeping it resident streams the layers instead.
        let m = model();
        let total: u64 = m.iter().map(|t| t.raw).sum();
        let p = plan(&m, total * 65 / 100, CompressedHome::File, true);
        assert!(!p.streamed[0]);
        assert!(p.streamed_count() > 0);
    }

    #[test]
    fn layers_group_and_others_stand_alone() {
        let g = groups(&[
            "token_embd.weight",
            "blk.0.a",
            "blk.1.a",
            "blk.0.b",
            "output.weight",
        ]);
        assert_eq!(g, vec![2, 0, 1, 0, 3]);
    }

    fn model() -> Vec<TensorCost> {
        let mut v = vec![t("token_embd.weight", 40 << 20, 36 << 20, 2e9)];
        for l in 0..8 {
            v.push(t(&format!("blk.{l}.attn_q.weight"), 4 << 20, 3 << 20, 3e9));
            v.push(t(&format!("blk.{l}.ffn_up.weight"), 8 << 20, 7 << 20, 1e9));
            v.push(t(
                &format!("blk.{l}.attn_norm.weight"),
                4 << 10,
                4 << 10,
                1e9,
            ));
        }
        v
    }

    #[test]
    fn full_budget_keeps_everything_resident() {
        let m = model();
        let total: u64 = m.iter().map(|t| t.raw).sum();
        let p = plan(&m, total, CompressedHome::Ram, true);
        assert_eq!(p.streamed_count(), 0);
        assert_eq!(p.resident_bytes, total);
    }

    #[test]
    fn smaller_budgets_stream_more_and_fit() {
        let m = model();
        let total: u64 = m.iter().map(|t| t.raw).sum();
        let mut last = 0;
        for home in [CompressedHome::Ram, CompressedHome::File] {
            for pct in [90u64, 70, 50, 30] {
                let b = total * pct / 100;
                let p = plan(&m, b, home, true);
                let held = if home == CompressedHome::Ram {
                    p.streamed_stored_bytes
                } else {
                    0
                };
                let used = p.resident_bytes + held + p.reserve_bytes;
                assert!(used <= b.max(p.min_bytes), "{home:?} {pct}%: {used} > {b}");
                assert!(p.streamed_count() >= last || pct == 90);
                last = p.streamed_count();
                // Norms never stream.
                for (i, t) in m.iter().enumerate() {
                    if t.raw < MIN_STREAMED {
                        assert!(!p.streamed[i]);
                    }
                }
            }
            last = 0;
        }
    }

    #[test]
    fn slow_decoders_stay_resident_first() {
        let m = model();
        let total: u64 = m.iter().map(|t| t.raw).sum();
        let p = plan(&m, total * 85 / 100, CompressedHome::File, false);
        // ffn_up decodes 3x slower per byte than attn_q: streaming starts with attn_q.
        let streamed_up = (0..m.len())
            .filter(|&i| p.streamed[i] && m[i].name.contains("ffn_up"))
            .count();
        let streamed_q = (0..m.len())
            .filter(|&i| p.streamed[i] && m[i].name.contains("attn_q"))
            .count();
        assert!(streamed_q > 0);
        assert!(streamed_up <= streamed_q, "{streamed_up} {streamed_q}");
    }

    #[test]
    fn budget_below_minimum_uses_the_least_memory() {
        let m = model();
        let p = plan(&m, 1, CompressedHome::Ram, true);
        // As little memory as the model allows: no more than with everything streamed.
        let used = p.resident_bytes + p.streamed_stored_bytes + p.reserve_bytes;
        assert!(
            p.min_bytes > 1 && used <= p.min_bytes,
            "{used} {}",
            p.min_bytes
        );
        assert!(p.streamed_count() >= m.iter().filter(|t| t.raw >= MIN_STREAMED).count() - 1);
    }

    /// Memory a plan takes: resident, held compressed and the working-set reserve.
    fn used(p: &ResidencyPlan, home: CompressedHome) -> u64 {
        p.needed_bytes(home)
    }

    /// `layers` layers of a fast-decoding and a slow-decoding tensor of the same size.
    fn fast_and_slow(layers: u32) -> Vec<TensorCost> {
        let mut v = Vec::new();
        for l in 0..layers {
            v.push(t(&format!("blk.{l}.fast.weight"), 4 << 20, 2 << 20, 4e9));
            v.push(t(&format!("blk.{l}.slow.weight"), 4 << 20, 2 << 20, 1e9));
        }
        v
    }

    #[test]
    fn the_costliest_decodes_per_byte_saved_stay_resident_within_the_budget() {
        let m = fast_and_slow(12);
        let total: u64 = m.iter().map(|t| t.raw).sum();
        // (With `ram`, the compressed half of every streamed tensor stays held.)
        for (home, pcts) in [
            (CompressedHome::Ram, [95u64, 90, 85, 75]),
            (CompressedHome::File, [85, 70, 55, 40]),
        ] {
            for pct in pcts {
                let budget = total * pct / 100;
                let p = plan(&m, budget, home, false);
                let u = used(&p, home);
                assert!(u <= budget, "{home:?} {pct}%: {u} > {budget}");
                assert!(p.streamed_count() > 0, "{home:?} {pct}%");
                // A slow tensor (4x the decode time for the same bytes saved) is streamed
                // only once every fast one is.
                let streamed = |kind: &str| {
                    (0..m.len())
                        .filter(|&i| p.streamed[i] && m[i].name.contains(kind))
                        .count()
                };
                if streamed("slow") > 0 {
                    assert_eq!(streamed("fast"), 12, "{home:?} {pct}%");
                }
                assert!(streamed("fast") > 0, "{home:?} {pct}%");
            }
        }
        // The two kinds differ only in speed: with room for the slow half and the working
        // set (two layers of fast tensors), the fast ones are exactly the ones streamed.
        let p = plan(&m, total * 60 / 100, CompressedHome::File, false);
        for (i, t) in m.iter().enumerate() {
            assert_eq!(p.streamed[i], t.name.contains("fast"), "{}", t.name);
        }
    }

    #[test]
    fn a_bigger_saving_streams_first_at_equal_decode_speed() {
        // Same size and speed, but `ram` holds the compressed bytes: the tensor that
        // compresses better saves more per decode and streams first.
        let mut m = Vec::new();
        for l in 0..12 {
            m.push(t(&format!("blk.{l}.tight.weight"), 4 << 20, 1 << 20, 2e9));
            m.push(t(&format!("blk.{l}.loose.weight"), 4 << 20, 3 << 20, 2e9));
        }
        let total: u64 = m.iter().map(|t| t.raw).sum();
        let p = plan(&m, total * 75 / 100, CompressedHome::Ram, false);
        assert!(used(&p, CompressedHome::Ram) <= total * 75 / 100);
        let streamed = |kind: &str| {
            (0..m.len())
                .filter(|&i| p.streamed[i] && m[i].name.contains(kind))
                .count()
        };
        assert!(streamed("tight") > 0);
        assert!(streamed("loose") == 0 || streamed("tight") == 12);
    }

    #[test]
    fn fraction_and_byte_budgets() {
        let settings = |budget| Settings {
            budget,
            home: CompressedHome::File,
            prefetch: Some(false),
        };
        let small = fast_and_slow(12);
        let big = fast_and_slow(24);
        let total = |m: &[TensorCost]| m.iter().map(|t| t.raw).sum::<u64>();
        // A fraction is of this model's decoded weights: the same plan as those bytes.
        for m in [&small, &big] {
            let half = plan_for(m, &settings(Budget::Fraction(0.5))).unwrap();
            assert_eq!(half.budget_bytes, total(m) / 2);
            assert_eq!(
                Some(&half),
                plan_for(m, &settings(Budget::Bytes(total(m) / 2))).as_ref()
            );
            assert!(half.needed_bytes(CompressedHome::File) <= total(m) / 2);
        }
        // Bytes are bytes whatever the model: 60 MiB is half of the small one's 96 MiB
        // and under a third of the big one's 192 MiB, which streams more.
        let bytes = settings(Budget::Bytes(60 << 20));
        let (ps, pb) = (
            plan_for(&small, &bytes).unwrap(),
            plan_for(&big, &bytes).unwrap(),
        );
        assert_eq!((ps.budget_bytes, pb.budget_bytes), (60 << 20, 60 << 20));
        assert!(pb.needed_bytes(CompressedHome::File) <= 60 << 20);
        assert!(
            pb.decoded_weight_bytes - pb.resident_bytes
                > ps.decoded_weight_bytes - ps.resident_bytes
        );
        // A budget covering the model (100%, or more bytes than it has) plans nothing.
        assert!(plan_for(&small, &settings(Budget::Fraction(1.0))).is_none());
        assert!(plan_for(&small, &settings(Budget::Bytes(total(&small)))).is_none());
        // Prefetch (unless turned off) reserves room for one more layer.
        let with = plan_for(
            &small,
            &Settings {
                prefetch: None,
                ..settings(Budget::Fraction(0.5))
            },
        );
        let without = plan_for(&small, &settings(Budget::Fraction(0.5)));
        assert!(with.unwrap().reserve_bytes > without.unwrap().reserve_bytes);
    }
}
