//! What a grid daemon sets about its own process at start.

/// Raises this process's soft limit of open files (RLIMIT_NOFILE) to its
/// hard limit. Every daemon calls it first thing: the soft default (often
/// 1024) is far below what a node's connections, chunk files and guests'
/// sockets take, and only the soft limit is raised, which needs no
/// privilege. Returns the limit now in force.
pub fn raise_nofile_limit() -> std::io::Result<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if r.rlim_cur < r.rlim_max {
        r.rlim_cur = r.rlim_max;
        // SAFETY: setrlimit(2) reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(r.rlim_cur)
}

/// Calls [`raise_nofile_limit`] and logs the outcome: a daemon runs on
/// with the limit it has when it cannot be raised.
pub fn raise_nofile_limit_or_warn() {
    match raise_nofile_limit() {
        Ok(n) => tracing::debug!("open files limit: {n}"),
        Err(e) => tracing::warn!("open files limit not raised: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nofile() -> libc::rlimit {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit(2) writes the struct it is given.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) }, 0);
        r
    }

    #[test]
    fn the_soft_open_files_limit_is_raised_to_the_hard_one() {
        // Start below the hard limit, as a daemon started by a shell or an
        // init system with the usual soft default does.
        let before = nofile();
        let lowered = libc::rlimit {
            rlim_cur: before.rlim_max.saturating_sub(1),
            rlim_max: before.rlim_max,
        };
        // SAFETY: setrlimit(2) reads the struct it is given.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) }, 0);
        let now = raise_nofile_limit().unwrap();
        let after = nofile();
        assert_eq!(after.rlim_cur, after.rlim_max, "soft limit not raised");
        assert_eq!(now, after.rlim_cur);
    }
}
