//! GVS's entries in the grid's event log ([`metad::events`]): what the
//! background work that heals the store (re-mirroring, repair, scrub) is
//! doing, so that an operator sees it in `/gvs/.grid/events` and
//! `vmctl events` rather than only in one node's log.
//!
//! Long work reports through a [`Progress`]: `<work>-started`, then
//! `<work>-progress` each time it passes another [`STEP_PERCENT`] or every
//! [`PROGRESS_EVERY`], whichever comes first, then `<work>-done`, each
//! with the bytes and volumes so far as fields.

use std::time::{Duration, Instant};

use metad::events::{self, Fields, GridEvent, Source};

use crate::gvs::Gvs;

/// A progress event at least this often while work goes on.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// A progress event each time the work passes another this many percent.
pub const STEP_PERCENT: u8 = 25;

/// Appends a GVS event from this node (best effort: a metad outage loses
/// the event, never the work it reports; it is logged either way).
pub fn post(gvs: &Gvs, kind: &str, subject: &str, message: String, fields: Fields) {
    tracing::info!("event {kind} {subject}: {message}");
    let ev = GridEvent::new(&gvs.me, Source::Gvs, kind, subject, message).with(fields);
    if let Err(e) = gvs.rt.block_on(events::append(&gvs.client(), &ev)) {
        tracing::warn!("event not recorded: {e}");
    }
}

/// Posts `degraded`: a commit of volume `ino` (what an fsync
/// acknowledged) reached fewer of its `replicas` than all: `missed` lack
/// it until the repair copies it to them.
pub fn degraded(gvs: &Gvs, ino: u64, replicas: &[String], missed: &[String]) {
    let name = gvs.path_of(ino).unwrap_or_else(|| format!("{ino:#x}"));
    let copies = replicas.iter().filter(|r| !missed.contains(r)).count();
    post(
        gvs,
        "degraded",
        &name,
        format!(
            "{name}: a commit was acknowledged with {copies} of {} copies; {} missed it and get it from the repair",
            replicas.len(),
            missed.join(", ")
        ),
        Fields {
            volumes: Some(1),
            ..Fields::default()
        },
    );
}

/// The progress of one piece of background work, reported as events.
pub struct Progress {
    work: &'static str,
    subject: String,
    /// Volumes the work is about.
    pub volumes: u64,
    /// Bytes done so far.
    pub bytes: u64,
    last_at: Instant,
    last_step: u8,
    /// Counts without posting (work already reported as failing).
    muted: bool,
}

impl Progress {
    /// Starts reporting `work` (e.g. "repair") about `subject`, posting
    /// `<work>-started` with `message`; `muted`, it only counts.
    pub fn start(
        gvs: &Gvs,
        work: &'static str,
        subject: &str,
        volumes: u64,
        message: String,
        muted: bool,
    ) -> Progress {
        let p = Progress {
            work,
            subject: subject.into(),
            volumes,
            bytes: 0,
            last_at: Instant::now(),
            last_step: 0,
            muted,
        };
        if muted {
            return p;
        }
        post(
            gvs,
            &format!("{work}-started"),
            subject,
            message,
            p.fields(None),
        );
        p
    }

    fn fields(&self, percent: Option<u8>) -> Fields {
        Fields {
            volumes: Some(self.volumes),
            bytes: Some(self.bytes),
            percent,
            ..Fields::default()
        }
    }

    /// Records `bytes` more done, now `percent` of the whole; posts
    /// `<work>-progress` if a step was passed or it is time.
    pub fn advance(&mut self, gvs: &Gvs, bytes: u64, percent: u8) {
        self.bytes += bytes;
        let step = percent / STEP_PERCENT;
        if step <= self.last_step && self.last_at.elapsed() < PROGRESS_EVERY {
            return;
        }
        if percent >= 100 || self.muted {
            return; // `done` says it.
        }
        self.last_step = self.last_step.max(step);
        self.last_at = Instant::now();
        post(
            gvs,
            &format!("{}-progress", self.work),
            &self.subject,
            if self.bytes > 0 {
                format!("{percent}%, {} copied", mib(self.bytes))
            } else {
                format!("{percent}%")
            },
            self.fields(Some(percent)),
        );
    }

    /// Posts `<work>-done` with `message` (unless muted).
    pub fn done(self, gvs: &Gvs, message: String) {
        if self.muted {
            return;
        }
        post(
            gvs,
            &format!("{}-done", self.work),
            &self.subject,
            message,
            self.fields(Some(100)),
        );
    }
}

/// Bytes as MiB with one decimal, for messages.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
