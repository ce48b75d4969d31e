//! The Redis URL a process connects with, credentials included.
//!
//! Given as a flag or variable it never changes. Read from a file (`--redis-url-file`: a
//! mounted Kubernetes Secret, which the kubelet updates in place when the Secret changes) it is
//! reread every [`RELOAD_INTERVAL`]; a change makes the store and the cache's invalidation
//! tracking connect again with it, so a rotated password reaches a running sidecar without a
//! restart of its application pod. Connections already open keep serving until the new ones
//! are up, so nothing fails in between.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;

/// How often a URL file is reread.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// The current URL; `changed()` wakes on a new one.
pub(crate) type RedisUrl = watch::Receiver<String>;

/// A URL that never changes.
#[must_use]
pub fn fixed(url: String) -> RedisUrl {
    watch::channel(url).1
}

/// Whether `url` names Redis: every comma-separated seed `redis://` or `rediss://`.
///
/// # Errors
/// The problem, in words (never the URL, which holds a password).
pub(crate) fn check(url: &str) -> Result<(), String> {
    if url.trim().is_empty() {
        return Err("the Redis URL is empty".to_owned());
    }
    if url
        .split(',')
        .map(str::trim)
        .all(|seed| seed.starts_with("redis://") || seed.starts_with("rediss://"))
    {
        Ok(())
    } else {
        Err("Redis URLs must start with redis:// or rediss://".to_owned())
    }
}

/// The URL held in the file at `path` (surrounding whitespace ignored).
///
/// # Errors
/// When the file cannot be read or holds no Redis URL, in words naming the file.
pub(crate) fn read(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the Redis URL file {}: {e}", path.display()))?;
    let url = text.trim().to_owned();
    check(&url).map_err(|problem| format!("{problem} (in {})", path.display()))?;
    Ok(url)
}

/// `initial` (read from `path` at start), then every change of the file, polled every
/// `interval` until nobody holds the returned receiver any more. A file that cannot be read,
/// or holds no URL, leaves the current URL in place (said once in the log until it is fixed).
#[must_use]
pub(crate) fn watch_file(path: PathBuf, initial: String, interval: Duration) -> RedisUrl {
    let (tx, rx) = watch::channel(initial);
    tokio::spawn(async move {
        let mut complained = false;
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = tx.closed() => return,
            }
            let path = path.clone();
            let read = tokio::task::spawn_blocking(move || read(&path))
                .await
                .unwrap_or_else(|e| Err(format!("the Redis URL file's reader failed: {e}")));
            match read {
                Ok(url) => {
                    complained = false;
                    if tx.send_if_modified(|current| {
                        let changed = *current != url;
                        if changed {
                            *current = url;
                        }
                        changed
                    }) {
                        tracing::info!(
                            "the Redis URL file changed (new credentials): connecting with it"
                        );
                    }
                }
                Err(reason) if !complained => {
                    tracing::warn!(%reason, "keeping the Redis URL read before; fix the file (its Secret) and it is picked up within seconds");
                    complained = true;
                }
                Err(_) => {}
            }
        }
    });
    rx
}

/// Waits for the next URL; never returns for a URL that cannot change any more.
pub(crate) async fn next(url: &mut RedisUrl) -> String {
    if url.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
    url.borrow_and_update().clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_redis_urls_pass_and_the_problem_never_shows_the_url() {
        assert!(check("redis://u:p@h:6379").is_ok());
        assert!(check("rediss://a:1, rediss://b:2").is_ok());
        for bad in ["", "  ", "http://u:secret@h", "redis://a,http://u:secret@b"] {
            let problem = check(bad).unwrap_err();
            assert!(!problem.contains("secret"), "{problem}");
        }
    }

    #[tokio::test]
    async fn a_changed_file_is_picked_up_and_a_broken_one_keeps_the_last_url() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("url");
        std::fs::write(&path, "redis://sidecar:one@127.0.0.1:1\n").unwrap();
        let initial = read(&path).unwrap();
        assert_eq!(initial, "redis://sidecar:one@127.0.0.1:1");
        let mut url = watch_file(path.clone(), initial, Duration::from_millis(10));

        std::fs::write(&path, "redis://sidecar:two@127.0.0.1:1").unwrap();
        let changed = tokio::time::timeout(Duration::from_secs(2), next(&mut url)).await;
        assert_eq!(changed.unwrap(), "redis://sidecar:two@127.0.0.1:1");

        std::fs::write(&path, "not a url").unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::fs::remove_file(&path).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!url.has_changed().unwrap());
        assert_eq!(*url.borrow(), "redis://sidecar:two@127.0.0.1:1");

        std::fs::write(&path, "redis://sidecar:three@127.0.0.1:1").unwrap();
        let changed = tokio::time::timeout(Duration::from_secs(2), next(&mut url)).await;
        assert_eq!(changed.unwrap(), "redis://sidecar:three@127.0.0.1:1");
    }

    #[tokio::test]
    async fn a_fixed_url_never_changes() {
        let mut url = fixed("redis://h".to_owned());
        let waited = tokio::time::timeout(Duration::from_millis(50), next(&mut url)).await;
        assert!(waited.is_err());
    }
}
