//! The per-pass covariance files of `dcgguf calibrate`: their group table and the size of an
//! input's accumulator. Shared by the recorder inside llama.cpp (`llama::covar`, which writes
//! them) and the merge in `quant::calibrate` (which reads them), so it lives in the lower of
//! the two layers.

use std::collections::BTreeSet;

/// Key of the group table in a per-pass file.
pub const GROUPS_KEY: &str = "dcgguf.cov_groups";
/// Channels per accumulator block row.
pub const BLOCK: usize = 64;
/// Budget when `DCGGUF_COV_BUDGET` is unset.
pub const DEFAULT_BUDGET: u64 = 2 << 30;

/// Bytes of the f64 accumulator of an `n`-wide input (upper triangle in block rows).
pub fn accumulator_bytes(n: usize) -> u64 {
    (0..n)
        .step_by(BLOCK)
        .map(|r0| ((BLOCK.min(n - r0)) * (n - r0) * 8) as u64)
        .sum()
}

/// Names in a per-pass group table (for tests and the merge): `(recorded, lead, n, tokens,
/// members)`.
pub type GroupLine = (bool, String, usize, u64, Vec<String>);

/// Parses a per-pass file's group table.
pub fn parse_groups(table: &str) -> Option<Vec<GroupLine>> {
    table
        .lines()
        .map(|l| {
            let mut it = l.split(' ');
            let rec = match it.next()? {
                "rec" => true,
                "def" => false,
                _ => return None,
            };
            let lead = it.next()?.to_owned();
            let n = it.next()?.parse().ok()?;
            let tokens = it.next()?.parse().ok()?;
            let members: Vec<String> = it.map(str::to_owned).collect();
            (!members.is_empty()).then_some((rec, lead, n, tokens, members))
        })
        .collect()
}

/// Every weight named in a group table (recorded or not).
pub fn all_members(groups: &[GroupLine]) -> BTreeSet<String> {
    groups.iter().flat_map(|g| g.4.iter().cloned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_table_round_trips() {
        let t = "rec blk.0.attn_q.weight 384 100 blk.0.attn_q.weight blk.0.attn_k.weight\n\
                 def blk.0.ffn_down.weight 1536 0 blk.0.ffn_down.weight\n";
        let g = parse_groups(t).unwrap();
        assert_eq!(g.len(), 2);
        assert!(g[0].0 && !g[1].0);
        assert_eq!(g[0].4.len(), 2);
        assert_eq!(all_members(&g).len(), 3);
        assert!(parse_groups("bad line\n").is_none());
    }
}
