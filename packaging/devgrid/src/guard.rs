//! A grid owned by a test: torn down when the guard drops, also when the
//! test panics, with the daemons' logs printed first so a failure explains
//! itself.

use std::fs;
use std::ops::{Deref, DerefMut};

use crate::error::Result;
use crate::grid::{teardown, Grid, GridConfig};

/// A grid that is torn down when dropped.
#[derive(Debug)]
pub struct GridGuard {
    grid: Grid,
}

impl GridGuard {
    /// Brings up a grid of `nodes` nodes running the project's daemons,
    /// named `name` (give each test its own name so tests run in parallel).
    pub fn up(name: &str, nodes: usize) -> Result<GridGuard> {
        Self::up_with(&GridConfig::new(name, nodes))
    }

    /// Brings up the grid `cfg` describes. A grid of the same name left over
    /// from an earlier, killed run is torn down first.
    pub fn up_with(cfg: &GridConfig) -> Result<GridGuard> {
        teardown(&cfg.name)?;
        Ok(GridGuard {
            grid: Grid::up(cfg)?,
        })
    }

    /// Prints the last lines of every daemon log to stderr.
    fn dump_logs(&self) {
        let dir = self.grid.layout().data_dir().join("log");
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let text = fs::read_to_string(entry.path()).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("----- {} (last 40 lines) -----", entry.path().display());
            for l in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{l}");
            }
        }
    }
}

impl Deref for GridGuard {
    type Target = Grid;
    fn deref(&self) -> &Grid {
        &self.grid
    }
}

impl DerefMut for GridGuard {
    fn deref_mut(&mut self) -> &mut Grid {
        &mut self.grid
    }
}

impl Drop for GridGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        if let Err(e) = teardown(self.grid.name()) {
            eprintln!("devgrid: tearing down grid {}: {e}", self.grid.name());
        }
    }
}
