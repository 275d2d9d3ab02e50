//! Prefix-cache keys: `BlockHash`, the chained hash of a full block, and the hash -> block map.
//!
//! Owns: how a full block's hash is computed (`hash_block`, `extend_block_hashes`) and the map
//! from a registered hash to the one block holding it (`PrefixCache`). Does not own: which
//! blocks are free or when a hash is registered or evicted (`BlockPool` keeps the map next to
//! each block's metadata and evicts on `allocate`), nor which request holds a block.
//!
//! Hash: a full block's hash is `H(parent hash | cache_salt, the block's token ids)`; the first
//! block has no parent and mixes in the salt instead, and every later block inherits the salt
//! through its parent. So two blocks have the same hash only if their whole prefixes (and salts)
//! are equal, up to collisions. `H` is std's `DefaultHasher::new()` (SipHash with fixed keys):
//! deterministic within a build, not stable across Rust releases (the cache is never
//! persisted, so that is enough). It is a 64-bit hash: with `n` registered blocks one lookup
//! falsely matches with probability about `n / 2^64` (1e6 blocks: ~5e-14), and the chance that
//! any two of `n` blocks collide is about `n^2 / 2^65` (1e6 blocks: ~3e-8). A collision would
//! make a request reuse another prefix's K/V; at these odds we accept it rather than compare
//! token ids on every hit.
//!
//! Invariants (`PrefixCache`): one block per hash; `BlockPool::check_invariants` checks that
//! the map and the blocks' metadata agree in both directions.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::fmt;
use std::hash::Hasher;

use crate::block_pool::BlockId;

/// Chained hash of a full block's token ids (and, through the chain, of everything before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockHash(pub u64);

impl fmt::Display for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Hash of one full block: `parent` is the previous block's hash (`None` for the first block,
/// which mixes in `cache_salt` instead).
pub fn hash_block(parent: Option<BlockHash>, token_ids: &[u32], cache_salt: u64) -> BlockHash {
    let mut hasher = DefaultHasher::new();
    match parent {
        None => {
            hasher.write_u8(0);
            hasher.write_u64(cache_salt);
        }
        Some(parent) => {
            hasher.write_u8(1);
            hasher.write_u64(parent.0);
        }
    }
    hasher.write_usize(token_ids.len());
    for &token_id in token_ids {
        hasher.write_u32(token_id);
    }
    BlockHash(hasher.finish())
}

/// Appends the hashes of the full blocks of `token_ids` that `hashes` does not cover yet, so
/// that afterwards `hashes.len() == token_ids.len() / block_size` (`block_size >= 1`).
pub(crate) fn extend_block_hashes(
    hashes: &mut Vec<BlockHash>,
    token_ids: &[u32],
    block_size: usize,
    cache_salt: u64,
) {
    let num_full_blocks = token_ids.len() / block_size;
    for block_idx in hashes.len()..num_full_blocks {
        let start = block_idx * block_size;
        let parent = hashes.last().copied();
        let hash = hash_block(parent, &token_ids[start..start + block_size], cache_salt);
        hashes.push(hash);
    }
}

/// Registered hashes and the block holding each.
#[derive(Debug, Clone, Default)]
pub(crate) struct PrefixCache {
    blocks_by_hash: HashMap<BlockHash, BlockId>,
}

impl PrefixCache {
    pub(crate) fn get(&self, hash: BlockHash) -> Option<BlockId> {
        self.blocks_by_hash.get(&hash).copied()
    }

    /// Maps `hash` to `id` unless the hash is already registered (to any block); returns the
    /// block holding the hash afterwards.
    pub(crate) fn insert_if_absent(&mut self, hash: BlockHash, id: BlockId) -> BlockId {
        *self.blocks_by_hash.entry(hash).or_insert(id)
    }

    /// Removes `hash` if it maps to `id`.
    pub(crate) fn remove(&mut self, hash: BlockHash, id: BlockId) {
        if self.get(hash) == Some(id) {
            self.blocks_by_hash.remove(&hash);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.blocks_by_hash.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (BlockHash, BlockId)> + '_ {
        self.blocks_by_hash.iter().map(|(&hash, &id)| (hash, id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_tokens_and_salt_hash_equal_and_salt_or_parent_separates() {
        let tokens = [1, 2, 3, 4];
        let first = hash_block(None, &tokens, 7);
        assert_eq!(first, hash_block(None, &tokens, 7));
        assert_ne!(first, hash_block(None, &tokens, 8));
        assert_ne!(first, hash_block(None, &[1, 2, 3, 5], 7));
        let second = hash_block(Some(first), &tokens, 7);
        assert_ne!(second, first);
        assert_ne!(second, hash_block(Some(BlockHash(0)), &tokens, 7));
    }

    #[test]
    fn extend_block_hashes_hashes_only_full_blocks_incrementally() {
        let tokens: Vec<u32> = (0..10).collect();
        let mut hashes = Vec::new();
        extend_block_hashes(&mut hashes, &tokens[..5], 4, 0);
        assert_eq!(hashes.len(), 1);
        extend_block_hashes(&mut hashes, &tokens, 4, 0);
        assert_eq!(hashes.len(), 2);
        let mut all_at_once = Vec::new();
        extend_block_hashes(&mut all_at_once, &tokens, 4, 0);
        assert_eq!(hashes, all_at_once);
        assert_eq!(hashes[1], hash_block(Some(hashes[0]), &tokens[4..8], 0));
    }

    #[test]
    fn insert_if_absent_keeps_the_first_block_for_a_hash() {
        let mut cache = PrefixCache::default();
        assert_eq!(cache.insert_if_absent(BlockHash(1), BlockId(3)), BlockId(3));
        assert_eq!(cache.insert_if_absent(BlockHash(1), BlockId(4)), BlockId(3));
        cache.remove(BlockHash(1), BlockId(4));
        assert_eq!(cache.get(BlockHash(1)), Some(BlockId(3)));
        cache.remove(BlockHash(1), BlockId(3));
        assert_eq!(cache.len(), 0);
    }
}
