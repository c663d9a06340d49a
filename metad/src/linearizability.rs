//! A linearizability checker for histories of single-register operations
//! (read, write, compare-and-swap), one register per key.
//!
//! Linearizability is local, so each key is checked alone, with a
//! Wing–Gong search: repeatedly pick an operation that could take effect
//! first (invoked before every pending operation returned), apply it to the
//! model register if its observed result agrees, and backtrack on failure;
//! visited (set of linearized operations, register value) pairs are
//! memoized. An operation whose outcome is unknown (the client gave up) has
//! no return time: it may take effect at any point after its call, or never.

use std::collections::{BTreeMap, HashSet};

/// A register operation with what the client observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegOp {
    /// A read that saw this value (`None`: absent).
    Read(Option<Vec<u8>>),
    /// A write of this value.
    Write(Vec<u8>),
    /// Set `new` if the value is `expected` (`None`: absent); `ok` is what
    /// the client was told (ignored when the outcome is unknown).
    Cas {
        /// Value compared with.
        expected: Option<Vec<u8>>,
        /// Value set on success.
        new: Vec<u8>,
        /// Whether the client was told it succeeded.
        ok: bool,
    },
}

/// One operation of a history.
#[derive(Clone, Debug)]
pub struct HistOp {
    /// The register.
    pub key: Vec<u8>,
    /// When the client invoked it (any monotonic unit).
    pub call: u64,
    /// When the client got its result; `None`: unknown outcome.
    pub ret: Option<u64>,
    /// What it was and what was observed.
    pub op: RegOp,
}

/// Checks a history; `Err` names a key whose operations are not
/// linearizable.
pub fn check(history: &[HistOp]) -> Result<(), String> {
    let mut by_key: BTreeMap<&[u8], Vec<&HistOp>> = BTreeMap::new();
    for op in history {
        // An unknown read constrains nothing.
        if op.ret.is_none() && matches!(op.op, RegOp::Read(_)) {
            continue;
        }
        by_key.entry(&op.key).or_default().push(op);
    }
    for (key, ops) in by_key {
        let mut s = Search {
            ops: &ops,
            done: vec![false; ops.len()],
            memo: HashSet::new(),
        };
        if !s.run(None) {
            return Err(format!(
                "history of key {:?} ({} operations) is not linearizable",
                String::from_utf8_lossy(key),
                ops.len()
            ));
        }
    }
    Ok(())
}

struct Search<'a> {
    ops: &'a [&'a HistOp],
    done: Vec<bool>,
    memo: HashSet<(Vec<bool>, Option<Vec<u8>>)>,
}

impl Search<'_> {
    /// The register after `op` from `value`, if `op`'s observation agrees.
    fn step(op: &HistOp, value: &Option<Vec<u8>>) -> Option<Option<Vec<u8>>> {
        match &op.op {
            RegOp::Read(seen) => (seen == value).then(|| value.clone()),
            RegOp::Write(v) => Some(Some(v.clone())),
            RegOp::Cas { expected, new, ok } => {
                let holds = expected == value;
                // An unknown outcome agrees with whatever the compare gives.
                (op.ret.is_none() || holds == *ok).then(|| {
                    if holds {
                        Some(new.clone())
                    } else {
                        value.clone()
                    }
                })
            }
        }
    }

    fn run(&mut self, value: Option<Vec<u8>>) -> bool {
        let pending: Vec<usize> = (0..self.ops.len()).filter(|i| !self.done[*i]).collect();
        if pending.iter().all(|i| self.ops[*i].ret.is_none()) {
            return true;
        }
        if !self.memo.insert((self.done.clone(), value.clone())) {
            return false;
        }
        let horizon = pending
            .iter()
            .filter_map(|i| self.ops[*i].ret)
            .min()
            .unwrap_or(u64::MAX);
        for i in pending {
            let op = self.ops[i];
            if op.call > horizon {
                continue;
            }
            if let Some(next) = Self::step(op, &value) {
                self.done[i] = true;
                if self.run(next) {
                    return true;
                }
                self.done[i] = false;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(call: u64, ret: Option<u64>, op: RegOp) -> HistOp {
        HistOp {
            key: b"x".to_vec(),
            call,
            ret,
            op,
        }
    }
    fn v(s: &str) -> Option<Vec<u8>> {
        Some(s.as_bytes().to_vec())
    }

    #[test]
    fn accepts_a_linearizable_history() {
        let h = vec![
            op(0, Some(10), RegOp::Write(b"a".to_vec())),
            op(
                5,
                Some(20),
                RegOp::Cas {
                    expected: v("a"),
                    new: b"b".to_vec(),
                    ok: true,
                },
            ),
            op(
                6,
                Some(21),
                RegOp::Cas {
                    expected: v("a"),
                    new: b"c".to_vec(),
                    ok: false,
                },
            ),
            op(22, Some(30), RegOp::Read(v("b"))),
            // unknown outcome that did not happen
            op(
                23,
                None,
                RegOp::Cas {
                    expected: v("zz"),
                    new: b"q".to_vec(),
                    ok: false,
                },
            ),
        ];
        assert!(check(&h).is_ok());
    }

    #[test]
    fn rejects_a_non_linearizable_history() {
        // Both CAS from "a" succeed: impossible.
        let h = vec![
            op(0, Some(10), RegOp::Write(b"a".to_vec())),
            op(
                11,
                Some(20),
                RegOp::Cas {
                    expected: v("a"),
                    new: b"b".to_vec(),
                    ok: true,
                },
            ),
            op(
                12,
                Some(21),
                RegOp::Cas {
                    expected: v("a"),
                    new: b"c".to_vec(),
                    ok: true,
                },
            ),
        ];
        assert!(check(&h).is_err());
        // A stale read after a completed write.
        let h = vec![
            op(0, Some(10), RegOp::Write(b"a".to_vec())),
            op(11, Some(20), RegOp::Write(b"b".to_vec())),
            op(21, Some(30), RegOp::Read(v("a"))),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn unknown_outcomes_may_or_may_not_apply() {
        let h = vec![
            op(0, Some(10), RegOp::Write(b"a".to_vec())),
            op(
                11,
                None,
                RegOp::Cas {
                    expected: v("a"),
                    new: b"b".to_vec(),
                    ok: false,
                },
            ),
            op(12, Some(20), RegOp::Read(v("b"))),
            op(21, Some(30), RegOp::Read(v("b"))),
        ];
        assert!(check(&h).is_ok());
    }
}
