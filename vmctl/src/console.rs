//! Console tails in metad, so that a VM's console can be read from any
//! node (`vmctl vm console`, `/gvs/.grid/vms/VM/console`): the console is
//! a file on the VM's node (QEMU's serial port), and each agent copies the
//! last [`TAIL`] bytes of its VMs' consoles to `dvm/console/<vm>` when
//! they grow, at most every [`EVERY`]. Bounded: one tail per VM, deleted
//! with the application.

use crate::model::{self, VmStatus};
use crate::store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Bytes of a console kept in metad.
pub const TAIL: u64 = 16 * 1024;
/// How often an agent looks for console output to copy.
pub const EVERY: Duration = Duration::from_secs(2);

/// The end of a VM's console, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleTail {
    /// The node whose console file it is.
    pub node: String,
    /// The console file's size when copied: the tail ends there.
    pub size: u64,
    /// The last bytes (at most [`TAIL`]), invalid UTF-8 replaced.
    pub tail: String,
}

/// The last `max` bytes of a file, and its size.
fn read_tail(path: &Path, max: u64) -> std::io::Result<(u64, String)> {
    let mut f = std::fs::File::open(path)?;
    let size = f.metadata()?.len();
    f.seek(SeekFrom::Start(size.saturating_sub(max)))?;
    let mut buf = Vec::new();
    f.take(max).read_to_end(&mut buf)?;
    Ok((size, String::from_utf8_lossy(&buf).into_owned()))
}

/// One round: copies the tails of `node`'s VMs' consoles that changed
/// since `seen` (console path to size).
async fn copy_changed(
    store: &Store,
    node: &str,
    seen: &mut HashMap<String, u64>,
) -> Result<(), StoreError> {
    let (status, _) = store.list::<VmStatus>(model::STATUS).await?;
    let mut still = HashMap::new();
    for (vm, st) in status.into_iter().filter(|(_, s)| s.value.node == node) {
        let path = st.value.console;
        let Ok(size) = std::fs::metadata(&path).map(|m| m.len()) else {
            continue;
        };
        let known = seen.get(&path).copied();
        still.insert(path.clone(), known.unwrap_or(u64::MAX));
        if known == Some(size) {
            continue;
        }
        let Ok((size, tail)) = read_tail(Path::new(&path), TAIL) else {
            continue;
        };
        let rec = ConsoleTail {
            node: node.into(),
            size,
            tail,
        };
        store.put(&model::console_key(&vm), &rec).await?;
        still.insert(path, size);
    }
    *seen = still;
    Ok(())
}

/// Copies this node's console tails to metad, for ever (the agent runs it).
pub async fn mirror(store: Arc<Store>, node: String) {
    let mut seen = HashMap::new();
    loop {
        if let Err(e) = copy_changed(&store, &node, &mut seen).await {
            tracing::debug!("console tails: {e}");
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// A VM's console tail as last copied, if its node has copied one.
pub async fn tail(store: &Store, vm: &str) -> Result<Option<ConsoleTail>, StoreError> {
    Ok(store
        .get::<ConsoleTail>(&model::console_key(vm))
        .await?
        .map(|v| v.value))
}

/// What `new` adds to a console whose tail was `old` (all of `new`'s tail
/// when they do not overlap), for following a console from another node.
pub fn added<'a>(old: Option<&ConsoleTail>, new: &'a ConsoleTail) -> &'a str {
    let Some(old) = old.filter(|o| o.node == new.node && o.size <= new.size) else {
        return &new.tail;
    };
    let grew = (new.size - old.size).min(new.tail.len() as u64) as usize;
    let mut start = new.tail.len() - grew;
    while !new.tail.is_char_boundary(start) {
        start += 1;
    }
    &new.tail[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_is_the_end_and_follows_by_size() {
        let dir = std::env::temp_dir().join(format!("vmctl-console-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("console.log");
        std::fs::write(&f, "0123456789").unwrap();
        assert_eq!(read_tail(&f, 4).unwrap(), (10, "6789".into()));
        std::fs::remove_dir_all(&dir).unwrap();
        let at = |size, tail: &str| ConsoleTail {
            node: "n".into(),
            size,
            tail: tail.into(),
        };
        assert_eq!(added(None, &at(10, "6789")), "6789");
        assert_eq!(added(Some(&at(8, "4567")), &at(10, "6789")), "89");
        assert_eq!(added(Some(&at(10, "6789")), &at(10, "6789")), "");
    }
}
