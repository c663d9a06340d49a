//! Where a volume's mirrors live: capacity-weighted rendezvous hashing over
//! the live nodes. Each node scores `-capacity / ln(u)` with `u` a uniform
//! hash of (volume, node); the R highest scores win. Adding a node moves
//! only the volumes it now wins, and bigger nodes win proportionally more.

/// A candidate node for placement.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// The node's name.
    pub name: String,
    /// Its weight (capacity in bytes; only ratios matter).
    pub capacity: u64,
}

fn score(volume: u64, node: &str, capacity: u64) -> f64 {
    let mut h = blake3::Hasher::new();
    h.update(&volume.to_le_bytes());
    h.update(node.as_bytes());
    let b = h.finalize();
    let x = u64::from_le_bytes(b.as_bytes()[..8].try_into().unwrap_or([0; 8]));
    // u in (0, 1): never 0 (ln would be -inf) nor 1 (ln would be 0).
    let u = ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -(capacity.max(1) as f64) / u.ln()
}

/// The `r` nodes that hold `volume`, best first (fewer if fewer nodes).
pub fn place(volume: u64, nodes: &[Candidate], r: usize) -> Vec<String> {
    let mut scored: Vec<(f64, &str)> = nodes
        .iter()
        .map(|n| (score(volume, &n.name, n.capacity), n.name.as_str()))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
    scored
        .into_iter()
        .take(r)
        .map(|(_, n)| n.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(caps: &[u64]) -> Vec<Candidate> {
        caps.iter()
            .enumerate()
            .map(|(i, &c)| Candidate {
                name: format!("node{}", i + 1),
                capacity: c,
            })
            .collect()
    }

    #[test]
    fn picks_r_distinct_and_is_stable() {
        let n = nodes(&[100, 100, 100]);
        for v in 0..100 {
            let p = place(v, &n, 2);
            assert_eq!(p.len(), 2);
            assert_ne!(p[0], p[1]);
            assert_eq!(p, place(v, &n, 2));
        }
        assert_eq!(place(1, &n, 5).len(), 3);
    }

    #[test]
    fn adding_a_node_moves_only_what_it_wins() {
        let three = nodes(&[100, 100, 100]);
        let four = nodes(&[100, 100, 100, 100]);
        let mut moved = 0;
        for v in 0..4000 {
            let a = place(v, &three, 1);
            let b = place(v, &four, 1);
            if a != b {
                assert_eq!(b[0], "node4");
                moved += 1;
            }
        }
        // About a quarter moves to the new node.
        assert!((800..1200).contains(&moved), "moved {moved}");
    }

    #[test]
    fn weight_follows_capacity() {
        let n = nodes(&[100, 300]);
        let big = (0..4000).filter(|&v| place(v, &n, 1)[0] == "node2").count();
        // Expect ~3/4 on the node with 3x the capacity.
        assert!((2800..3200).contains(&big), "big {big}");
    }
}
