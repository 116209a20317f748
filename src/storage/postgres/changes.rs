//! Change notices on Postgres: a listener connection on [`CHANNEL`], fed by the triggers of
//! migration `20261220000001_change_notices` (see [`crate::storage::changes`]).

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use uuid::Uuid;

use crate::storage::changes::{CHANNEL, Change, ChangeSink};

/// First and longest wait before listening again after the connection failed.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Listens until dropped: every notice goes to `sink`; a dropped connection is reported as
/// [`Change::Lost`] and listening starts again (with backoff), reported as [`Change::Watching`].
pub(super) async fn listen(pool: PgPool, sink: ChangeSink) {
    let mut delay = RETRY_MIN;
    loop {
        match subscribe(&pool).await {
            Ok(mut listener) => {
                delay = RETRY_MIN;
                sink(Change::Watching);
                relay(&mut listener, &sink).await;
                sink(Change::Lost);
            }
            Err(e) => {
                tracing::warn!(error = %e, ?delay, "cannot listen for change notices; the call cache is off until it can");
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RETRY_MAX);
    }
}

async fn subscribe(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    // Not reconnected behind our back: a reconnection would hide the notices it missed (a new
    // listener is made instead, after telling the sink).
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// Relays notices until the connection drops or fails.
async fn relay(listener: &mut PgListener, sink: &ChangeSink) {
    loop {
        match listener.try_recv().await {
            Ok(Some(notice)) => match notice.payload().parse::<Uuid>() {
                Ok(id) => sink(Change::Row(id)),
                Err(_) => {
                    tracing::warn!(
                        payload = notice.payload(),
                        "a change notice that is not an id; forgetting every cached call"
                    );
                    sink(Change::Lost);
                    sink(Change::Watching);
                }
            },
            Ok(None) => {
                tracing::warn!(
                    "the change-notice connection dropped; forgetting every cached call"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "the change-notice connection failed; forgetting every cached call");
                return;
            }
        }
    }
}
