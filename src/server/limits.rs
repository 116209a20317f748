//! The open-file limit: raised at start, and the default connection cap derived from it.
//!
//! Every connection is a file descriptor, and a turn in flight holds a second one (its upstream
//! connection). When the process runs out, `accept` fails and so do database and upstream
//! connects, so the cap on connections must leave room for everything else.

use crate::config::Settings;

/// Descriptors kept back for everything that is not a client connection: standard streams,
/// the listener, the runtime's epoll and wakers, SQLite's database, WAL and shared-memory files,
/// the metrics exporter, DNS lookups. Database pool connections come on top.
const RESERVED_FDS: u64 = 64;

/// Descriptors one client connection may need: its own socket and, while a turn streams, the
/// upstream connection that feeds it.
const FDS_PER_CONNECTION: u64 = 2;

/// The derived cap never goes below this (a tiny limit leaves redial barely usable, but a cap of
/// zero would leave it useless) nor above [`MAX_DERIVED_CONNECTIONS`].
const MIN_DERIVED_CONNECTIONS: usize = 16;

/// Past this, memory rather than descriptors is what runs out; set `server.max_connections`
/// explicitly to go higher.
const MAX_DERIVED_CONNECTIONS: usize = 65_536;

/// The connection cap when the open-file limit cannot be read (a platform without rlimits).
const UNKNOWN_LIMIT_CONNECTIONS: usize = 4_096;

/// The open-file limit of this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit in force.
    pub soft: u64,
    /// The hard limit: the most the soft limit can be raised to without privileges.
    pub hard: u64,
}

/// Reads the open-file limit; `None` where the platform has none.
pub fn fd_limit() -> Option<FdLimit> {
    rlimit::getrlimit(rlimit::Resource::NOFILE)
        .ok()
        .map(|(soft, hard)| FdLimit { soft, hard })
}

/// Raises the soft open-file limit to the hard limit and returns the limit now in force.
/// Distributions default the soft limit to 1,024, which a few hundred streaming calls exhaust;
/// the hard limit is what the administrator allows.
pub fn raise_fd_limit() -> Option<FdLimit> {
    let before = fd_limit()?;
    if before.soft < before.hard
        && let Err(e) = rlimit::increase_nofile_limit(before.hard)
    {
        tracing::warn!(error = %e, soft = before.soft, hard = before.hard, "could not raise the open-file limit");
    }
    let after = fd_limit()?;
    tracing::info!(
        soft = after.soft,
        hard = after.hard,
        was = before.soft,
        "open-file limit"
    );
    Some(after)
}

/// The connection cap: `server.max_connections`, or when that is 0, what the open-file limit
/// `soft` allows after the reserve (see the constants above).
pub fn max_connections(settings: &Settings, soft: Option<u64>) -> usize {
    if settings.server.max_connections > 0 {
        return settings.server.max_connections;
    }
    let Some(soft) = soft else {
        return UNKNOWN_LIMIT_CONNECTIONS;
    };
    let reserved = RESERVED_FDS
        + u64::from(settings.database.max_connections)
        + u64::from(settings.analysis.workers);
    let derived = soft.saturating_sub(reserved) / FDS_PER_CONNECTION;
    usize::try_from(derived)
        .unwrap_or(usize::MAX)
        .clamp(MIN_DERIVED_CONNECTIONS, MAX_DERIVED_CONNECTIONS)
}

/// Warns when an explicit cap is more than `soft` descriptors can carry: the flood the cap
/// exists to absorb would then end in "too many open files" after all.
pub fn warn_if_cap_exceeds_limit(settings: &Settings, cap: usize, soft: Option<u64>) {
    let Some(soft) = soft else { return };
    let mut derived = settings.clone();
    derived.server.max_connections = 0;
    let allowed = max_connections(&derived, Some(soft));
    if cap > allowed {
        tracing::warn!(
            max_connections = cap,
            open_file_limit = soft,
            allowed,
            "server.max_connections is more than the open-file limit allows; under load, \
             accepts and upstream connects will fail with \"too many open files\""
        );
    }
}

/// Comment lines for `redial check-config`: the limit now, what `serve` raises it to, and the
/// connection cap that follows.
pub fn summary(settings: &Settings) -> String {
    let limit = fd_limit();
    let cap = max_connections(settings, limit.map(|l| l.hard));
    let source = if settings.server.max_connections > 0 {
        "server.max_connections"
    } else {
        "derived from the open-file limit"
    };
    let limit_line = match limit {
        Some(l) => format!(
            "# open-file limit: soft {}, hard {}; `redial serve` raises the soft limit to {}",
            l.soft, l.hard, l.hard
        ),
        None => "# open-file limit: unknown on this platform".to_owned(),
    };
    format!("{limit_line}\n# connections: at most {cap} at once ({source})\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_derived_cap_leaves_room_for_upstream_and_database_descriptors() {
        let settings = Settings::default();
        // 1,024 - 64 reserved - 10 pool - 2 workers = 948, two per connection.
        assert_eq!(max_connections(&settings, Some(1_024)), 474);
        assert_eq!(
            max_connections(&settings, Some(10)),
            MIN_DERIVED_CONNECTIONS
        );
        assert_eq!(
            max_connections(&settings, Some(u64::MAX)),
            MAX_DERIVED_CONNECTIONS
        );
        assert_eq!(max_connections(&settings, None), UNKNOWN_LIMIT_CONNECTIONS);
    }

    #[test]
    fn an_explicit_cap_wins_over_the_limit() {
        let mut settings = Settings::default();
        settings.server.max_connections = 3;
        assert_eq!(max_connections(&settings, Some(1_024)), 3);
    }
}
