//! Snapshot storage of the sled store: opaque named parts under a seq.
//!
//! # Key layout (tree `snapshots`, one batch per snapshot)
//!
//! | key                                         | value                    |
//! |---------------------------------------------|--------------------------|
//! | `p` seq (u64 BE) part `\0` chunk (u32 BE)   | up to `CHUNK_BYTES` bytes|
//! | `m` seq (u64 BE)                            | part count (u64 BE)      |
//!
//! A part is split into chunks so that no sled value grows past the size
//! sled would move to an unsynced blob file (see "Blob files" in
//! `sled_store.rs`). The marker `m` is in the same batch as the parts, so a
//! snapshot is either whole or absent. Snapshots are flushed but not fsynced
//! on their own: they are rebuilt from the log, and losing the newest one in a
//! crash costs only a longer replay.
//!
//! **Architecture Invariant:** the store does not know what a part holds; the
//! projection layer names and encodes them.

use super::StoreError;

const PART_PREFIX: u8 = b'p';
const MARKER_PREFIX: u8 = b'm';
const CHUNK_BYTES: usize = 32 * 1024;

/// The name of the sled tree that holds snapshots.
pub(super) const TREE_NAME: &[u8] = b"snapshots";

fn io_error(error: impl std::fmt::Display) -> StoreError {
    StoreError::Io(error.to_string())
}

fn marker_key(seq: u64) -> [u8; 9] {
    let mut key = [MARKER_PREFIX; 9];
    key[1..].copy_from_slice(&seq.to_be_bytes());
    key
}

fn part_prefix(seq: u64, part: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(10 + part.len() + 4);
    key.push(PART_PREFIX);
    key.extend_from_slice(&seq.to_be_bytes());
    key.extend_from_slice(part.as_bytes());
    key.push(0);
    key
}

/// Stores a whole snapshot in one batch.
pub(super) fn save(
    tree: &sled::Tree,
    seq: u64,
    parts: &[(String, Vec<u8>)],
) -> Result<(), StoreError> {
    let mut batch = sled::Batch::default();
    // A snapshot saved again at the same seq replaces the old one whole:
    // chunks of a longer old part must not stay behind.
    let mut prefix = vec![PART_PREFIX];
    prefix.extend_from_slice(&seq.to_be_bytes());
    for entry in tree.scan_prefix(&prefix) {
        let (key, _) = entry.map_err(io_error)?;
        batch.remove(key);
    }
    for (name, bytes) in parts {
        if name.contains('\0') {
            return Err(StoreError::InvalidRequest(format!(
                "snapshot part name {name:?} contains a NUL byte"
            )));
        }
        let prefix = part_prefix(seq, name);
        // An empty part still gets one (empty) chunk, so that it exists.
        let chunks: Vec<&[u8]> = if bytes.is_empty() {
            vec![&[][..]]
        } else {
            bytes.chunks(CHUNK_BYTES).collect()
        };
        for (index, chunk) in chunks.into_iter().enumerate() {
            let mut key = prefix.clone();
            key.extend_from_slice(&(index as u32).to_be_bytes());
            batch.insert(key, chunk);
        }
    }
    batch.insert(
        &marker_key(seq)[..],
        &(parts.len() as u64).to_be_bytes()[..],
    );
    tree.apply_batch(batch).map_err(io_error)?;
    tree.flush().map_err(io_error)?;
    Ok(())
}

/// The seqs of every complete snapshot, ascending.
pub(super) fn seqs(tree: &sled::Tree) -> Result<Vec<u64>, StoreError> {
    let mut seqs = Vec::new();
    for entry in tree.scan_prefix([MARKER_PREFIX]) {
        let (key, _) = entry.map_err(io_error)?;
        if let Ok(bytes) = key[1..].try_into() {
            seqs.push(u64::from_be_bytes(bytes));
        }
    }
    Ok(seqs)
}

/// One part of a complete snapshot.
pub(super) fn part(tree: &sled::Tree, seq: u64, part: &str) -> Result<Option<Vec<u8>>, StoreError> {
    if tree.get(marker_key(seq)).map_err(io_error)?.is_none() {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    let mut found = false;
    for entry in tree.scan_prefix(part_prefix(seq, part)) {
        let (key, chunk) = entry.map_err(io_error)?;
        // Only the chunk index may follow the prefix.
        if key.len() != 1 + 8 + part.len() + 1 + 4 {
            continue;
        }
        found = true;
        bytes.extend_from_slice(&chunk);
    }
    Ok(found.then_some(bytes))
}

/// Every part of a complete snapshot, by name.
pub(super) fn parts(tree: &sled::Tree, seq: u64) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    if tree.get(marker_key(seq)).map_err(io_error)?.is_none() {
        return Ok(Vec::new());
    }
    let mut prefix = vec![PART_PREFIX];
    prefix.extend_from_slice(&seq.to_be_bytes());
    let mut parts: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in tree.scan_prefix(&prefix) {
        let (key, chunk) = entry.map_err(io_error)?;
        let Some(name) = key
            .get(prefix.len()..key.len().saturating_sub(5))
            .and_then(|name| std::str::from_utf8(name).ok())
        else {
            continue;
        };
        match parts.last_mut() {
            Some((last, bytes)) if last == name => bytes.extend_from_slice(&chunk),
            _ => parts.push((name.to_string(), chunk.to_vec())),
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip_across_chunks_and_snapshots() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree(TREE_NAME).unwrap();
        let big: Vec<u8> = (0..CHUNK_BYTES * 2 + 17).map(|i| i as u8).collect();
        let saved = vec![
            (String::new(), vec![1, 2, 3]),
            ("a".to_string(), big.clone()),
            ("ab".to_string(), Vec::new()),
        ];
        save(&tree, 10, &saved).unwrap();
        save(&tree, 20, &[("a".to_string(), vec![9])]).unwrap();
        assert_eq!(seqs(&tree).unwrap(), vec![10, 20]);
        assert_eq!(part(&tree, 10, "a").unwrap(), Some(big));
        assert_eq!(part(&tree, 10, "ab").unwrap(), Some(Vec::new()));
        assert_eq!(part(&tree, 10, "b").unwrap(), None);
        assert_eq!(part(&tree, 20, "a").unwrap(), Some(vec![9]));
        assert_eq!(part(&tree, 15, "a").unwrap(), None);
        assert_eq!(parts(&tree, 10).unwrap(), saved, "sorted by name");

        // Saved again at the same seq, smaller: no chunk of the old one stays.
        save(&tree, 10, &[("a".to_string(), vec![7; 10])]).unwrap();
        assert_eq!(part(&tree, 10, "a").unwrap(), Some(vec![7; 10]));
        assert_eq!(
            parts(&tree, 10).unwrap(),
            vec![("a".to_string(), vec![7; 10])]
        );
    }
}
