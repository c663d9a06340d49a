//! A volume's block map, itself stored as chunks: map pages of up to
//! [`PAGE_SLOTS`] block ids each, and one index chunk listing the pages.
//! The hash of the index chunk is the volume's root: one value names the
//! whole content of a volume, so a clone or a snapshot is a copy of the
//! root (O(1)), and a commit is one metad write.
//!
//! Never-written blocks have no id and read as zeros. Pages are loaded
//! lazily, so a huge sparse volume costs only what it holds.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::chunk::{decode_chunk, ChunkId, Delta};
use crate::error::Result;

/// Block ids per map page.
pub const PAGE_SLOTS: u64 = 1024;

/// A way to read a chunk by id (local store, cache or a mirror).
pub type Fetch<'a> = &'a dyn Fn(&ChunkId) -> Result<Vec<u8>>;

/// The index chunk: every non-empty page with its id and its count of
/// written blocks (so `du` needs no page reads).
#[derive(Serialize, Deserialize, Default)]
struct Index {
    pages: Vec<(u64, ChunkId, u32)>,
}

/// A map page: written slots in slot order.
#[derive(Serialize, Deserialize, Default)]
struct Page {
    slots: Vec<(u32, ChunkId)>,
}

/// New chunks produced by a commit, to be stored on every mirror.
pub type NewChunks = Vec<(ChunkId, Arc<Vec<u8>>)>;

/// Every chunk a root names: the index, its pages and their data chunks,
/// added to `marked` (the collector's mark phase, and what a repair
/// copies). Maps already walked (listed in `walked`) are skipped: clones
/// and snapshots share them, so each distinct map is read once.
pub fn mark(
    root: ChunkId,
    fetch: Fetch,
    walked: &mut HashSet<ChunkId>,
    marked: &mut HashSet<ChunkId>,
) -> Result<()> {
    marked.insert(root);
    if !walked.insert(root) {
        return Ok(());
    }
    let idx: Index = decode_chunk(&root, &fetch(&root)?)?;
    for (_, page, _) in idx.pages {
        marked.insert(page);
        if !walked.insert(page) {
            continue;
        }
        let p: Page = decode_chunk(&page, &fetch(&page)?)?;
        marked.extend(p.slots.into_iter().map(|(_, id)| id));
    }
    Ok(())
}

/// A volume's block map in memory.
#[derive(Default)]
pub struct BlockMap {
    /// Committed pages: page number → (page chunk, written count).
    index: BTreeMap<u64, (ChunkId, u32)>,
    /// Pages read or changed since loading.
    loaded: HashMap<u64, BTreeMap<u32, ChunkId>>,
    /// The committed bytes of the loaded pages, so that a commit can send
    /// a changed page as a delta (a few slots) rather than whole.
    bytes: HashMap<u64, Vec<u8>>,
    dirty: BTreeSet<u64>,
}

impl BlockMap {
    /// The map of `root` (`None`: an empty volume); reads the index chunk.
    pub fn load(root: Option<ChunkId>, fetch: Fetch) -> Result<BlockMap> {
        let mut m = BlockMap::default();
        if let Some(r) = root {
            let idx: Index = decode_chunk(&r, &fetch(&r)?)?;
            m.index = idx
                .pages
                .into_iter()
                .map(|(p, id, n)| (p, (id, n)))
                .collect();
        }
        Ok(m)
    }

    fn page(&mut self, p: u64, fetch: Fetch) -> Result<&mut BTreeMap<u32, ChunkId>> {
        if !self.loaded.contains_key(&p) {
            let slots = match self.index.get(&p) {
                Some((id, _)) => {
                    let bytes = fetch(id)?;
                    let slots = decode_chunk::<Page>(id, &bytes)?
                        .slots
                        .into_iter()
                        .collect();
                    self.bytes.insert(p, bytes);
                    slots
                }
                None => BTreeMap::new(),
            };
            self.loaded.insert(p, slots);
        }
        Ok(self.loaded.get_mut(&p).expect("just loaded"))
    }

    /// The chunk of block `b`, `None` for a hole.
    pub fn get(&mut self, b: u64, fetch: Fetch) -> Result<Option<ChunkId>> {
        if !self.loaded.contains_key(&(b / PAGE_SLOTS))
            && !self.index.contains_key(&(b / PAGE_SLOTS))
        {
            return Ok(None);
        }
        Ok(self
            .page(b / PAGE_SLOTS, fetch)?
            .get(&((b % PAGE_SLOTS) as u32))
            .copied())
    }

    /// Sets block `b` to a chunk, or to a hole.
    pub fn set(&mut self, b: u64, id: Option<ChunkId>, fetch: Fetch) -> Result<()> {
        let p = b / PAGE_SLOTS;
        if id.is_none() && !self.loaded.contains_key(&p) && !self.index.contains_key(&p) {
            return Ok(());
        }
        let page = self.page(p, fetch)?;
        let slot = (b % PAGE_SLOTS) as u32;
        let changed = match id {
            Some(id) => page.insert(slot, id) != Some(id),
            None => page.remove(&slot).is_some(),
        };
        if changed {
            self.dirty.insert(p);
        }
        Ok(())
    }

    /// Drops every block at or past `nblocks` (a shrinking truncate).
    pub fn truncate(&mut self, nblocks: u64, fetch: Fetch) -> Result<()> {
        let first_page = nblocks / PAGE_SLOTS;
        let pages: BTreeSet<u64> = self
            .index
            .range(first_page..)
            .map(|(p, _)| *p)
            .chain(self.loaded.keys().copied().filter(|p| *p >= first_page))
            .collect();
        for p in pages {
            let cut = if p == first_page {
                (nblocks % PAGE_SLOTS) as u32
            } else {
                0
            };
            let page = self.page(p, fetch)?;
            let before = page.len();
            page.retain(|s, _| *s < cut);
            if page.len() != before {
                self.dirty.insert(p);
            }
        }
        Ok(())
    }

    /// The first block at or after `from` that holds data (SEEK_DATA), if any.
    pub fn next_data(&mut self, from: u64, fetch: Fetch) -> Result<Option<u64>> {
        let pages: BTreeSet<u64> = self
            .index
            .range(from / PAGE_SLOTS..)
            .map(|(p, _)| *p)
            .chain(
                self.loaded
                    .keys()
                    .copied()
                    .filter(|p| *p >= from / PAGE_SLOTS),
            )
            .collect();
        for p in pages {
            let start = if p == from / PAGE_SLOTS {
                (from % PAGE_SLOTS) as u32
            } else {
                0
            };
            if let Some((s, _)) = self.page(p, fetch)?.range(start..).next() {
                return Ok(Some(p * PAGE_SLOTS + *s as u64));
            }
        }
        Ok(None)
    }

    /// The first block at or after `from` that is a hole (SEEK_HOLE).
    pub fn next_hole(&mut self, from: u64, fetch: Fetch) -> Result<u64> {
        let mut b = from;
        loop {
            let p = b / PAGE_SLOTS;
            if !self.index.contains_key(&p) && !self.loaded.contains_key(&p) {
                return Ok(b);
            }
            let page = self.page(p, fetch)?;
            let mut s = (b % PAGE_SLOTS) as u32;
            while (s as u64) < PAGE_SLOTS {
                if !page.contains_key(&s) {
                    return Ok(p * PAGE_SLOTS + s as u64);
                }
                s += 1;
            }
            b = (p + 1) * PAGE_SLOTS;
        }
    }

    /// How many blocks hold data (for `st_blocks`).
    pub fn written(&self) -> u64 {
        let mut n: u64 = self
            .index
            .iter()
            .filter(|(p, _)| !self.loaded.contains_key(p))
            .map(|(_, (_, c))| *c as u64)
            .sum();
        n += self.loaded.values().map(|p| p.len() as u64).sum::<u64>();
        n
    }

    /// Whether there are changes not yet committed.
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Writes the changed pages and a new index as chunks. Returns the new
    /// root (`None` when the volume holds no data), the chunks made, and
    /// for the pages that changed in place, their deltas from the
    /// committed page (see [`Delta`]).
    pub fn commit(&mut self) -> Result<(Option<ChunkId>, NewChunks, Vec<Delta>)> {
        let mut new = Vec::new();
        let mut deltas = Vec::new();
        for p in std::mem::take(&mut self.dirty) {
            let slots = self.loaded.get(&p).cloned().unwrap_or_default();
            if slots.is_empty() {
                self.index.remove(&p);
                self.bytes.remove(&p);
                continue;
            }
            let n = slots.len() as u32;
            let bytes = postcard::to_allocvec(&Page {
                slots: slots.into_iter().collect(),
            })?;
            let id = ChunkId::of(&bytes);
            if let (Some((old, _)), Some(before)) = (self.index.get(&p), self.bytes.get(&p)) {
                deltas.extend(Delta::between(*old, before, id, &bytes));
            }
            self.bytes.insert(p, bytes.clone());
            new.push((id, Arc::new(bytes)));
            self.index.insert(p, (id, n));
        }
        if self.index.is_empty() {
            return Ok((None, new, deltas));
        }
        let idx = Index {
            pages: self
                .index
                .iter()
                .map(|(p, (id, n))| (*p, *id, *n))
                .collect(),
        };
        let bytes = postcard::to_allocvec(&idx)?;
        let root = ChunkId::of(&bytes);
        new.push((root, Arc::new(bytes)));
        Ok((Some(root), new, deltas))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Mem(Mutex<HashMap<ChunkId, Vec<u8>>>);
    impl Mem {
        fn fetch(&self, id: &ChunkId) -> Result<Vec<u8>> {
            Ok(self
                .0
                .lock()
                .unwrap()
                .get(id)
                .cloned()
                .expect("chunk present"))
        }
        fn keep(&self, c: NewChunks) {
            for (id, d) in c {
                self.0.lock().unwrap().insert(id, d.to_vec());
            }
        }
    }

    fn cid(n: u64) -> ChunkId {
        ChunkId::of(&n.to_le_bytes())
    }

    #[test]
    fn set_commit_reload_and_holes() {
        let mem = Mem::default();
        let f = |id: &ChunkId| mem.fetch(id);
        let mut m = BlockMap::load(None, &f).unwrap();
        assert_eq!(m.get(5, &f).unwrap(), None);
        for b in [0u64, 1, 2, 1023, 1024, 5000, 1 << 30] {
            m.set(b, Some(cid(b)), &f).unwrap();
        }
        assert_eq!(m.written(), 7);
        let (root, chunks, _) = m.commit().unwrap();
        mem.keep(chunks);
        let mut m2 = BlockMap::load(root, &f).unwrap();
        assert_eq!(m2.written(), 7);
        assert_eq!(m2.get(1024, &f).unwrap(), Some(cid(1024)));
        assert_eq!(m2.get(3, &f).unwrap(), None);
        assert_eq!(m2.next_data(3, &f).unwrap(), Some(1023));
        assert_eq!(m2.next_data(5001, &f).unwrap(), Some(1 << 30));
        assert_eq!(m2.next_hole(0, &f).unwrap(), 3);
        assert_eq!(m2.next_hole(1023, &f).unwrap(), 1025);
        m2.truncate(1024, &f).unwrap();
        assert_eq!(m2.written(), 4);
        assert_eq!(m2.next_data(1024, &f).unwrap(), None);
        m2.set(0, None, &f).unwrap();
        let (root2, chunks, deltas) = m2.commit().unwrap();
        assert!(deltas.is_empty(), "slots removed: the pages changed length");
        mem.keep(chunks);
        let mut m3 = BlockMap::load(root2, &f).unwrap();
        assert_eq!(m3.written(), 3);
        assert_eq!(m3.get(0, &f).unwrap(), None);
        // The old root still names the old content (what clones rely on).
        let mut old = BlockMap::load(root, &f).unwrap();
        assert_eq!(old.get(5000, &f).unwrap(), Some(cid(5000)));
        // The mark walk names the index, every page and every data chunk.
        let (mut walked, mut marked) = (HashSet::new(), HashSet::new());
        mark(root.unwrap(), &f, &mut walked, &mut marked).unwrap();
        assert_eq!(marked.len(), 1 + 4 + 7, "index, 4 pages, 7 blocks");
        // Emptying the map gives back no root.
        m3.truncate(0, &f).unwrap();
        assert_eq!(m3.commit().unwrap().0, None);
    }

    #[test]
    fn a_page_changed_in_place_comes_with_its_delta() {
        let mem = Mem::default();
        let f = |id: &ChunkId| mem.fetch(id);
        let mut m = BlockMap::load(None, &f).unwrap();
        for b in 0..1024 {
            m.set(b, Some(cid(b)), &f).unwrap();
        }
        let (root, c, _) = m.commit().unwrap();
        mem.keep(c);
        // Reloaded, one slot changed: the page goes as a delta of 32 bytes.
        let mut m = BlockMap::load(root, &f).unwrap();
        m.set(500, Some(cid(9999)), &f).unwrap();
        let (_, c, deltas) = m.commit().unwrap();
        assert_eq!(deltas.len(), 1);
        assert!(deltas[0].patch_bytes() <= 32, "one chunk id's worth");
        let page = c.iter().find(|(id, _)| *id == deltas[0].id).unwrap();
        let old = Idx::page_of(&mem, root.unwrap());
        assert_eq!(deltas[0].base, old);
        let mut rebuilt = mem.fetch(&old).unwrap();
        for (off, b) in &deltas[0].patches {
            rebuilt[*off as usize..*off as usize + b.0.len()].copy_from_slice(&b.0);
        }
        assert_eq!(&rebuilt, page.1.as_ref());
    }

    /// The index's first page id, read from the store.
    struct Idx;
    impl Idx {
        fn page_of(mem: &Mem, root: ChunkId) -> ChunkId {
            let idx: Index = decode_chunk(&root, &mem.fetch(&root).unwrap()).unwrap();
            idx.pages[0].1
        }
    }

    #[test]
    fn unchanged_commit_keeps_root() {
        let mem = Mem::default();
        let f = |id: &ChunkId| mem.fetch(id);
        let mut m = BlockMap::load(None, &f).unwrap();
        m.set(9, Some(cid(9)), &f).unwrap();
        let (r1, c, _) = m.commit().unwrap();
        mem.keep(c);
        m.set(9, Some(cid(9)), &f).unwrap();
        assert!(!m.is_dirty());
        let (r2, c2, _) = m.commit().unwrap();
        assert_eq!(r1, r2);
        assert_eq!(c2.len(), 1, "only the index is rewritten");
    }
}
